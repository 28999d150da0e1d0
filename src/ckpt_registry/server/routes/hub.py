"""The read side of the Hugging Face Hub protocol (docs/hub.md), at the paths `huggingface_hub` uses:
repository info, the file tree and file resolution, so `HF_ENDPOINT=<server>` loads checkpoints.

Paths are parsed from the raw request path: the client percent-encodes `/` inside a revision
(`best-eval%2Floss`) and a tree folder, which the decoded path would split into segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...contract import FILES_LIMIT_MAX, HUB_API_PATH, MAX_NAME_LENGTH, file_path_problem
from ...storage.base import Checkpoint, FileRecord, Model, Storage
from ...storage.errors import CheckpointNotFound, MetricNotFound, ModelNotFound
from ..auth import AuthenticationFailed, StorageDep, entity_for_authorization
from ..bodies import JSONBodyRoute
from ..hub import (
    HubError,
    RepoRef,
    commit_sha,
    file_entry,
    folder_entry,
    parse_repo,
    parse_revision,
    sibling,
)
from ..responses import JSONBytes, timestamp
from ..transfers import BlobsDep, SettingsDep, download
from . import files as _files  # noqa: F401  (registers the `file_path` convertor used below)

# Read-only, bodiless routes; the body rule too, as on every router, for any added later.
router = APIRouter(include_in_schema=False, tags=["hub"], route_class=JSONBodyRoute)

# Greater than every path under a folder `d/`: a path is at most 1024 bytes, and this suffix alone
# is 1024 bytes of the largest code point. Listing a folder's direct children seeks past a subfolder
# with it instead of reading every file inside.
_PAST_FOLDER = "\U0010ffff" * 256


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A revision resolved: the model, its checkpoint, the checkpoint's files and their commit."""

    model: Model
    checkpoint: Checkpoint
    files: list[FileRecord]
    commit: str


def _segments(request: Request, skip: int) -> list[str]:
    """The raw path's segments after the first `skip`, each percent-decoded as strict UTF-8."""
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    try:
        return [unquote_to_bytes(part).decode("utf-8") for part in raw.split(b"/")[1 + skip :]]
    except UnicodeDecodeError:
        raise HubError.repo_not_found() from None


async def _entity(request: Request, storage: Storage) -> str:
    try:
        # Hub routes only read (GET, HEAD): a read-only key may use them.
        return await entity_for_authorization(
            request.headers.get("authorization"), storage, request.method
        )
    except AuthenticationFailed as failed:
        raise HubError.unauthenticated(failed.detail) from None


async def _model(storage: Storage, entity: str, ref: RepoRef) -> Model:
    try:
        if ref.model_id is not None:
            return await storage.get_model(entity, ref.model_id)
        return await storage.get_model_by_name(entity, ref.project, ref.name)
    except ModelNotFound:
        raise HubError.repo_not_found() from None


async def _checkpoint(storage: Storage, entity: str, model: Model, text: str) -> Checkpoint:
    revision = parse_revision(text)
    if revision is None:
        raise HubError.revision_not_found(text)
    try:
        if revision.kind == "latest":
            page = await storage.list_checkpoints(
                entity, model.id, after=None, limit=1, order="desc"
            )
            if not page.data:
                raise HubError.revision_not_found(text)
            return await storage.get_checkpoint(entity, model.id, page.data[0][0])
        if revision.kind == "step":
            return await storage.get_checkpoint_at_step(entity, model.id, revision.step)
        if revision.kind == "best":
            if not 1 <= len(revision.metric) <= MAX_NAME_LENGTH:
                raise HubError.revision_not_found(text)
            return await storage.best_checkpoint(entity, model.id, revision.metric, revision.mode)
        return await storage.get_checkpoint(entity, model.id, revision.checkpoint_id)
    except (CheckpointNotFound, MetricNotFound):
        raise HubError.revision_not_found(text) from None


async def _all_files(
    storage: Storage, entity: str, model_id: str, checkpoint_id: str
) -> list[FileRecord]:
    files: list[FileRecord] = []
    after: str | None = None
    while True:
        page = await storage.list_files(
            entity, model_id, checkpoint_id, after=after, limit=FILES_LIMIT_MAX
        )
        files.extend(page.data)
        if not page.has_more or not page.data:
            return files
        after = page.data[-1].path


async def _snapshot(storage: Storage, entity: str, ref: RepoRef, revision: str) -> Snapshot:
    model = await _model(storage, entity, ref)
    try:
        checkpoint = await _checkpoint(storage, entity, model, revision)
        files = await _all_files(storage, entity, model.id, checkpoint.id)
    except ModelNotFound:  # deleted in between
        raise HubError.repo_not_found() from None
    except CheckpointNotFound:
        raise HubError.revision_not_found(revision) from None
    commit = commit_sha(checkpoint.id, files)
    parsed = parse_revision(revision)
    if parsed is not None and parsed.kind == "commit" and parsed.commit != commit:
        # The checkpoint's files changed since this commit was given out: it is gone, as a commit
        # is after a force-push.
        raise HubError.revision_not_found(revision)
    return Snapshot(model, checkpoint, files, commit)


def _repo_id(model: Model, ref: RepoRef) -> str:
    return ref.model_id or f"{model.project}/{model.name}"


def _info(model: Model, ref: RepoRef, snapshot: Snapshot | None) -> dict[str, Any]:
    checkpoint = snapshot.checkpoint if snapshot is not None else None
    repo_id = _repo_id(model, ref)
    return {
        "_id": model.id,
        "id": repo_id,
        "modelId": repo_id,
        "author": model.entity,
        "sha": snapshot.commit if snapshot is not None else None,
        "createdAt": timestamp(model.created_at),
        "lastModified": timestamp(checkpoint.updated_at if checkpoint else model.created_at),
        "private": True,
        "gated": False,
        "disabled": False,
        "tags": [],
        "siblings": [sibling(record) for record in snapshot.files] if snapshot else [],
        # Ours, beside the Hub's fields: which checkpoint the revision named.
        "ckpt": {
            "model_id": model.id,
            "project": model.project,
            "name": model.name,
            "base_model": model.base_model,
            "checkpoint_id": checkpoint.id if checkpoint else None,
            "step": checkpoint.step if checkpoint else None,
        },
    }


@router.get(HUB_API_PATH + "/{rest:file_path}")
async def repository(request: Request, storage: StorageDep) -> Response:
    """`/api/models/{repo}`, `.../revision/{revision}` and `.../tree/{revision}[/{folder}]`."""
    entity = await _entity(request, storage)
    parsed = parse_repo(_segments(request, skip=HUB_API_PATH.count("/")))
    if parsed is None:
        raise HubError.repo_not_found()
    ref, rest = parsed
    if not rest or rest == [""]:
        model = await _model(storage, entity, ref)
        try:
            snapshot: Snapshot | None = await _snapshot(storage, entity, ref, "main")
        except HubError:  # no checkpoint yet: the repository exists, with no commit
            snapshot = None
        return JSONBytes(_info(model, ref, snapshot))
    if rest[0] == "revision" and len(rest) == 2:
        snapshot = await _snapshot(storage, entity, ref, rest[1])
        return JSONBytes(_info(snapshot.model, ref, snapshot))
    if rest[0] == "tree" and len(rest) >= 2:
        snapshot = await _snapshot(storage, entity, ref, rest[1])
        folder = "/".join(part for part in rest[2:] if part)
        return await _tree(request, storage, entity, snapshot, folder)
    await _model(storage, entity, ref)
    raise HubError(404, None, "Not found: this server answers the Hub's download paths only")


def _recursive(request: Request) -> bool:
    return request.query_params.get("recursive", "").lower() in ("1", "true")


async def _tree(
    request: Request, storage: Storage, entity: str, snapshot: Snapshot, folder: str
) -> Response:
    """The folder's entries: all below it when `recursive`, else its direct children."""
    prefix = f"{folder}/" if folder else ""
    if folder and file_path_problem(folder) is not None:
        raise HubError.entry_not_found(folder, snapshot.commit)
    model_id, checkpoint_id = snapshot.model.id, snapshot.checkpoint.id
    entries: list[dict[str, Any]] = []
    headers: dict[str, str] = {}
    if _recursive(request):
        # One page of files per request, with the Hub's Link header to the next: the cursor is the
        # last path listed. A folder is listed before its first file, on the page that holds it.
        cursor = request.query_params.get("cursor")
        if cursor is not None and file_path_problem(cursor) is not None:
            raise HubError(400, None, "cursor: use the Link header's URL as it is")
        after = cursor if cursor is not None else (prefix or None)
        page = await storage.list_files(
            entity, model_id, checkpoint_id, after=after, limit=FILES_LIMIT_MAX
        )
        inside = [record for record in page.data if record.path.startswith(prefix)]
        seen = cursor or ""
        for record in inside:
            parts = record.path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                path = prefix + "/".join(parts[:depth])
                if not seen.startswith(path + "/"):
                    entries.append(folder_entry(path, snapshot.commit))
            entries.append(file_entry(record))
            seen = record.path
        if page.has_more and len(inside) == len(page.data) and inside:
            url = request.url.include_query_params(cursor=inside[-1].path)
            headers["Link"] = f'<{url}>; rel="next"'
    else:
        entries = await _children(storage, entity, snapshot, prefix)
    if folder and not entries and "cursor" not in request.query_params:
        raise HubError.entry_not_found(folder, snapshot.commit)
    return JSONBytes(entries, headers=headers)


async def _children(
    storage: Storage, entity: str, snapshot: Snapshot, prefix: str
) -> list[dict[str, Any]]:
    """The files directly under `prefix` and its subfolders, each subfolder skipped in one seek."""
    entries: list[dict[str, Any]] = []
    after = prefix or None
    while True:
        page = await storage.list_files(
            entity, snapshot.model.id, snapshot.checkpoint.id, after=after, limit=FILES_LIMIT_MAX
        )
        for record in page.data:
            if not record.path.startswith(prefix):
                return entries
            name, slash, _ = record.path[len(prefix) :].partition("/")
            if slash:
                entries.append(folder_entry(prefix + name, snapshot.commit))
                after = f"{prefix}{name}/{_PAST_FOLDER}"
                break
            entries.append(file_entry(record))
            after = record.path
        else:
            if not page.has_more:
                return entries


def _resolve_target(request: Request) -> tuple[RepoRef, str, str]:
    """(repository, revision, file path) of `/{repo}/resolve/{revision}/{path}`."""
    parsed = parse_repo(_segments(request, skip=0))
    if parsed is None or len(parsed[1]) < 3 or parsed[1][0] != "resolve":
        raise HubError.repo_not_found()
    ref, rest = parsed
    return ref, rest[1], "/".join(rest[2:])


@router.head("/{repo}/resolve/{rest:file_path}")
@router.get("/{repo}/resolve/{rest:file_path}")
@router.head("/{project}/{name}/resolve/{rest:file_path}")
@router.get("/{project}/{name}/resolve/{rest:file_path}")
async def resolve(
    request: Request, storage: StorageDep, blobs: BlobsDep, settings: SettingsDep
) -> Response:
    """A file of the revision: its bytes (ranges, HEAD), or a redirect to a presigned URL on S3,
    with the headers the Hub client reads: X-Repo-Commit, X-Linked-Etag, X-Linked-Size."""
    entity = await _entity(request, storage)
    ref, revision, path = _resolve_target(request)
    snapshot = await _snapshot(storage, entity, ref, revision)
    record = next((record for record in snapshot.files if record.path == path), None)
    if record is None:
        raise HubError.entry_not_found(path, snapshot.commit)
    headers = {
        "X-Repo-Commit": snapshot.commit,
        "X-Linked-Etag": f'"{record.sha256}"',
        "X-Linked-Size": str(record.size_bytes),
        "ETag": f'"{record.sha256}"',
    }
    if settings.presign:
        # As the Hub does for large files: the bytes come from the store, not through this server.
        url = await blobs.presign_get(
            record.sha256,
            timedelta(seconds=settings.presign_expires_seconds),
            path.rsplit("/", 1)[-1],
        )
        if url is not None:
            return Response(status_code=302, headers={**headers, "Location": url})
    response = await download(request, record, blobs)
    response.headers.update(headers)
    return response
