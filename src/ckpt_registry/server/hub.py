"""The Hugging Face Hub download protocol mapped onto the registry (docs/hub.md): repository ids, revisions,
the commit sha of a checkpoint's file set, and the entries the Hub lists for files and folders."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ..contract import MAX_STEP
from ..storage.base import FileRecord, Mode, canonical_uuid

__all__ = [
    "HubError",
    "RepoRef",
    "Revision",
    "commit_sha",
    "file_entry",
    "folder_entry",
    "natural_mode",
    "parse_repo",
    "parse_revision",
    "sibling",
]

# A part of a repository id the Hub client accepts (huggingface_hub's `validate_repo_id`): ASCII
# letters, digits, `_`, `-`, `.`, at most 96, starting and ending with a letter, digit or `_`, and no
# `--` or `..` anywhere. A project or model name outside this can only be reached by the model's id.
_REPO_PART = re.compile(r"(?=[A-Za-z0-9_])[A-Za-z0-9_.\-]{0,95}[A-Za-z0-9_]|[A-Za-z0-9_]", re.ASCII)
_STEP = re.compile(r"step-(0|[1-9][0-9]*)")
_COMMIT = re.compile(r"[0-9a-f]{40}")

# Words that make a metric one to minimise when `best-<metric>` names no direction: losses, error
# rates, perplexities. Anything else (accuracy, reward, score, bleu, f1, ...) is maximised.
_LOWER_IS_BETTER = frozenset(
    {"loss", "error", "err", "perplexity", "ppl", "wer", "cer", "mse", "mae", "rmse", "nll", "bpb"}
)


class HubError(Exception):
    """A failure answered the way the Hub answers it, so its client raises its own error class:
    `code` goes in `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound) or is None."""

    def __init__(
        self, status: int, code: str | None, message: str, *, commit: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.commit = commit

    @classmethod
    def repo_not_found(cls) -> HubError:
        return cls(404, "RepoNotFound", "Repository not found")

    @classmethod
    def unauthenticated(cls, reason: str) -> HubError:
        # 401 with RepoNotFound, as the Hub answers for a private repository without a valid token:
        # the same answer whether the repository exists or not.
        return cls(401, "RepoNotFound", f"{reason}; the token is a ckpt-registry API key")

    @classmethod
    def revision_not_found(cls, revision: str) -> HubError:
        return cls(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    @classmethod
    def entry_not_found(cls, path: str, commit: str | None) -> HubError:
        return cls(404, "EntryNotFound", f"Entry not found: {path}", commit=commit)


@dataclass(frozen=True, slots=True)
class RepoRef:
    """A repository id: `PROJECT/NAME` of the caller's entity, or a bare model id."""

    model_id: str | None = None
    project: str = ""
    name: str = ""


def parse_repo(segments: list[str]) -> tuple[RepoRef, list[str]] | None:
    """The repository a path names and the segments after it, or None when it names none.

    A first segment that is a model id (canonical UUID) is the whole repository id; otherwise the
    first two are `PROJECT/NAME`. So a project named like a UUID is reached by its models' ids.
    """
    if not segments or not segments[0]:
        return None
    if canonical_uuid(segments[0]) is not None:
        return RepoRef(model_id=segments[0]), segments[1:]
    if len(segments) < 2 or not all(_repo_part(part) for part in segments[:2]):
        return None
    return RepoRef(project=segments[0], name=segments[1]), segments[2:]


def _repo_part(text: str) -> bool:
    return bool(_REPO_PART.fullmatch(text)) and "--" not in text and ".." not in text


@dataclass(frozen=True, slots=True)
class Revision:
    """What a revision names. `kind`: latest (`main`, `latest`), step (`step-N`), checkpoint (its
    id), commit (a sha this server gave out), best (`best-<metric>[-min|-max]`)."""

    kind: Literal["latest", "step", "checkpoint", "commit", "best"]
    step: int = 0
    checkpoint_id: str = ""
    commit: str = ""
    metric: str = ""
    mode: Mode = "max"


def parse_revision(text: str) -> Revision | None:
    """The revision `text` names, or None when it names nothing this server knows."""
    if text in ("main", "latest"):
        return Revision("latest")
    step = _STEP.fullmatch(text)
    if step is not None:
        value = int(step.group(1))
        return Revision("step", step=value) if value <= MAX_STEP else None
    if canonical_uuid(text) is not None:
        return Revision("checkpoint", checkpoint_id=text)
    if _COMMIT.fullmatch(text):
        hex_id = text[:32]
        checkpoint_id = "-".join(
            (hex_id[:8], hex_id[8:12], hex_id[12:16], hex_id[16:20], hex_id[20:])
        )
        return Revision("commit", checkpoint_id=checkpoint_id, commit=text)
    if text.startswith("best-") and len(text) > len("best-"):
        metric = text[len("best-") :]
        for mode in ("min", "max"):
            suffix = f"-{mode}"
            if metric.endswith(suffix) and len(metric) > len(suffix):
                return Revision("best", metric=metric[: -len(suffix)], mode=mode)
        return Revision("best", metric=metric, mode=natural_mode(metric))
    return None


def natural_mode(metric: str) -> Mode:
    """`min` for a metric that names a loss, an error or a perplexity (`eval_loss`, `train/loss`,
    `wer`, `valloss`), `max` for anything else."""
    words = [word for word in re.split(r"[^a-z0-9]+", metric.lower()) if word]
    if any(word in _LOWER_IS_BETTER or word.endswith("loss") for word in words):
        return "min"
    return "max"


def commit_sha(checkpoint_id: str, files: Iterable[FileRecord]) -> str:
    """The 40-hex commit of a checkpoint's file set: the checkpoint id's 32 hex digits, then 8 of a
    digest of its sorted (path, sha256) pairs. So a commit names its checkpoint (it resolves back
    without a search), and any change to the files gives a new commit (a collision: 1 in 2^32)."""
    digest = hashlib.sha256()
    for record in sorted(files, key=lambda record: record.path.encode()):
        digest.update(record.path.encode() + b"\x00" + record.sha256.encode() + b"\n")
    return checkpoint_id.replace("-", "") + digest.hexdigest()[:8]


def _lfs_pointer(record: FileRecord) -> bytes:
    # Every file is presented as a Git LFS file, as the Hub presents large ones: its pointer is
    # what git would store, so the listed oid is a real git blob id and `lfs.oid` is the sha256.
    return (
        f"version https://git-lfs.github.com/spec/v1\n"
        f"oid sha256:{record.sha256}\nsize {record.size_bytes}\n"
    ).encode()


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def file_entry(record: FileRecord) -> dict[str, Any]:
    """A file as `GET /api/models/{repo}/tree/...` lists it."""
    pointer = _lfs_pointer(record)
    return {
        "type": "file",
        "oid": _git_blob_id(pointer),
        "size": record.size_bytes,
        "path": record.path,
        "lfs": {"oid": record.sha256, "size": record.size_bytes, "pointerSize": len(pointer)},
    }


def folder_entry(path: str, commit: str) -> dict[str, Any]:
    """A folder as the tree lists it; its oid changes with the commit (no git tree is kept)."""
    oid = hashlib.sha1(f"{commit}\x00{path}".encode(), usedforsecurity=False).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def sibling(record: FileRecord) -> dict[str, Any]:
    """A file as repository info lists it in `siblings`."""
    pointer = _lfs_pointer(record)
    return {
        "rfilename": record.path,
        "size": record.size_bytes,
        "blobId": _git_blob_id(pointer),
        "lfs": {"size": record.size_bytes, "sha256": record.sha256, "pointerSize": len(pointer)},
    }
