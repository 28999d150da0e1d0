"""The sha256 state of staged uploads between requests, so a resume need not read back and hash
again every byte staged so far (a resumable upload is one request per PATCH, HEAD and complete)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable

# A state is a hash object (~0.2 KB) and the staged bytes' description: this many uploads in
# progress at once keep theirs; the least recently left ones are hashed again on resume.
HASH_STATES_MAX = 4096


class HashStates:
    """Per upload id, the hash of its staged bytes as the last writer left them, and what those
    bytes were then (`staged`, a store's own description: a file's inode, size and times; the list
    of S3 parts). A state is handed out only for staged bytes described exactly so, and only once:
    the holder of an upload owns its hash until it leaves the upload again (`keep`). A writer that
    went away uncleanly (a killed request, a failed write) keeps nothing, so what it left is hashed
    again; so are bytes another server process appended (their description changed) and anything
    staged before this process started (nothing is kept)."""

    def __init__(self, limit: int = HASH_STATES_MAX) -> None:
        self._limit = limit
        self._states: OrderedDict[str, tuple[Hashable, hashlib._Hash]] = OrderedDict()
        # Taken on the blob threads (local store) as well as on the event loop (S3).
        self._lock = threading.Lock()

    def keep(self, upload_id: str, staged: Hashable, hasher: hashlib._Hash) -> None:
        """Remember `hasher` (a copy of it) as the hash of the bytes `staged` describes."""
        state = (staged, hasher.copy())
        with self._lock:
            self._states[upload_id] = state
            self._states.move_to_end(upload_id)
            while len(self._states) > self._limit:
                self._states.popitem(last=False)

    def take(self, upload_id: str, staged: Hashable) -> hashlib._Hash | None:
        """The hash kept for the upload if its bytes are still exactly `staged`, else None; either
        way the state is forgotten (the caller holds the upload now)."""
        with self._lock:
            state = self._states.pop(upload_id, None)
        if state is None or state[0] != staged:
            return None
        return state[1]

    def drop(self, upload_id: str) -> None:
        with self._lock:
            self._states.pop(upload_id, None)

    def __len__(self) -> int:
        return len(self._states)
