"""The Hugging Face Hub download protocol mapped onto the registry (docs/hub.md): repository ids, revisions,
the commit sha of a checkpoint's file set, refs and commit history, the entries the Hub lists for files
and folders, and the answers to what is not served."""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ..contract import MAX_STEP
from ..storage.base import Caller, Checkpoint, FileRecord, Mode, canonical_uuid
from .responses import timestamp

__all__ = [
    "HubError",
    "RepoRef",
    "Revision",
    "branch",
    "commit_entry",
    "commit_sha",
    "file_entry",
    "folder_entry",
    "last_commit",
    "natural_mode",
    "parse_repo",
    "parse_revision",
    "refs",
    "sibling",
    "step_revision",
    "unserved",
    "whoami",
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
    def invalid_token(cls, reason: str) -> HubError:
        # Outside a repository (whoami) a bad key is a plain 401: the client says "Invalid user
        # token" rather than "Repository not found".
        return cls(401, None, f"{reason}; the token is a ckpt-registry API key")

    @classmethod
    def read_only(cls) -> HubError:
        return cls(
            405,
            None,
            "This registry's Hub API is read-only: make checkpoints and upload their files with"
            " ckpt's own API (the SDK, `ckpt import --with-files`, the files routes; docs/hub.md)",
        )

    @classmethod
    def cannot_write(cls) -> HubError:
        # `auth-check/write` asks whether the key may write: no key may, here (the Hub's 403).
        return cls(403, None, "No key writes through this registry's Hub API: it is read-only")

    @classmethod
    def bad_request(cls, message: str) -> HubError:
        return cls(400, None, message)

    @classmethod
    def bad_cursor(cls) -> HubError:
        return cls.bad_request("cursor: use the Link header's URL as it is")

    @classmethod
    def models_only(cls) -> HubError:
        return cls(
            404,
            "RepoNotFound",
            "Repository not found: this registry holds models only (no datasets or spaces)",
        )

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


def unserved(segments: list[str]) -> HubError:
    """The answer to a read of `/api/...` this server does not serve: a dataset or a space is a
    repository that does not exist here; anything else names what is served instead."""
    if segments and segments[0] in ("datasets", "spaces"):
        return HubError.models_only()
    return HubError(
        404,
        None,
        "Not served: this registry answers the Hub's model reads (info, tree, paths-info, refs,"
        " commits, file resolution) and whoami; list models with GET /v1/preview/models",
    )


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


def step_revision(step: int) -> str:
    """The revision that names the checkpoint at `step`, as `parse_revision` reads it."""
    return f"step-{step}"


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


def file_entry(record: FileRecord, expanded: dict[str, Any] | None = None) -> dict[str, Any]:
    """A file as `GET /api/models/{repo}/tree/...` and paths-info list it; `expanded` holds the
    fields `expand=true` adds (`last_commit`)."""
    pointer = _lfs_pointer(record)
    return {
        "type": "file",
        "oid": _git_blob_id(pointer),
        "size": record.size_bytes,
        "path": record.path,
        "lfs": {"oid": record.sha256, "size": record.size_bytes, "pointerSize": len(pointer)},
    } | (expanded or {})


def folder_entry(path: str, commit: str, expanded: dict[str, Any] | None = None) -> dict[str, Any]:
    """A folder as the tree lists it; its oid changes with the commit (no git tree is kept)."""
    oid = hashlib.sha1(f"{commit}\x00{path}".encode(), usedforsecurity=False).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path} | (expanded or {})


# Commits and refs. A checkpoint is a commit: each one sets all of its files at once, so a revision's
# history is the model's live checkpoints at its step and below, newest first, and every file and
# folder of a revision was last changed by the revision's own commit. The refs are branches, as the
# Hub's checkpoint series (Pythia, OLMo) name one branch per training step: `main` and `step-N`.


def _commit_title(checkpoint: Checkpoint) -> str:
    return f"step {checkpoint.step}"


def last_commit(checkpoint: Checkpoint, commit: str) -> dict[str, Any]:
    """The `lastCommit` that `expand=true` adds to every entry of a revision: its own commit."""
    return {
        "lastCommit": {
            "id": commit,
            "title": _commit_title(checkpoint),
            "date": timestamp(checkpoint.updated_at),
        }
    }


def commit_entry(
    checkpoint: Checkpoint, commit: str, author: str, *, formatted: bool
) -> dict[str, Any]:
    """A commit as `GET /api/models/{repo}/commits/{revision}` lists it: titled by its step, the
    message naming the checkpoint and its metrics, dated by the checkpoint's last change."""
    metrics: dict[str, float] = json.loads(checkpoint.metrics_json)
    message = "\n".join(
        [f"checkpoint {checkpoint.id}"] + [f"{name}: {metrics[name]!r}" for name in sorted(metrics)]
    )
    entry: dict[str, Any] = {
        "id": commit,
        "title": _commit_title(checkpoint),
        "message": message,
        "authors": [{"user": author}],
        "date": timestamp(checkpoint.updated_at),
    }
    if formatted:
        entry["formatted"] = {
            "title": html.escape(entry["title"]),
            "message": html.escape(message).replace("\n", "<br>"),
        }
    return entry


def branch(name: str, commit: str) -> dict[str, str]:
    return {"name": name, "ref": f"refs/heads/{name}", "targetCommit": commit}


def refs(branches: list[dict[str, str]], *, pull_requests: bool) -> dict[str, Any]:
    """`GET /api/models/{repo}/refs`: the branches; no tags, converts or pull requests are kept."""
    answer: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
    if pull_requests:
        answer["pullRequests"] = []
    return answer


def whoami(caller: Caller) -> dict[str, Any]:
    """`GET /api/whoami-v2` for a key: the user is the key's entity (not a part of any repository
    id here), the token's role `read` for a read-only key and `write` for any other."""
    return {
        "type": "user",
        "id": caller.entity,
        "name": caller.entity,
        "fullname": caller.entity,
        "orgs": [],
        "auth": {
            "type": "access_token",
            "accessToken": {"role": "read" if caller.read_only else "write"},
        },
    }


def sibling(record: FileRecord) -> dict[str, Any]:
    """A file as repository info lists it in `siblings`."""
    pointer = _lfs_pointer(record)
    return {
        "rfilename": record.path,
        "size": record.size_bytes,
        "blobId": _git_blob_id(pointer),
        "lfs": {"size": record.size_bytes, "sha256": record.sha256, "pointerSize": len(pointer)},
    }
