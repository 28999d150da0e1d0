"""The read side of the Hugging Face Hub protocol (docs/hub.md), at the paths `huggingface_hub` uses:
repository info, the file tree, paths-info, refs, commits, whoami and file resolution, so
`HF_ENDPOINT=<server>` loads checkpoints; every other Hub path answers an error its client reads.

Paths are parsed from the raw request path: the client percent-encodes `/` inside a revision
(`best-eval%2Floss`) and a tree folder, which the decoded path would split into segments.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes

from fastapi import APIRouter, Request
from starlette.responses import Response

from ...contract import (
    FILES_LIMIT_MAX,
    HUB_API_PATH,
    HUB_COMMITS_PAGE,
    HUB_PATH_PREFIX,
    HUB_WHOAMI_PATH,
    LIST_LIMIT_MAX,
    MAX_NAME_LENGTH,
    file_path_problem,
)
from ...storage.base import (
    Caller,
    Checkpoint,
    CheckpointRow,
    FileRecord,
    Model,
    Storage,
    canonical_uuid,
)
from ...storage.errors import CheckpointNotFound, InvalidCursor, MetricNotFound, ModelNotFound
from ..auth import AuthenticationFailed, StorageDep, caller_for_authorization
from ..bodies import BodyUnreadable, JSONBodyRoute, json_content_type, parse_json_body
from ..hub import (
    HubError,
    RepoRef,
    branch,
    commit_entry,
    commit_sha,
    file_entry,
    folder_entry,
    last_commit,
    parse_repo,
    parse_revision,
    refs,
    sibling,
    step_revision,
    unserved,
    whoami,
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


async def _caller(request: Request, storage: Storage) -> Caller:
    try:
        # Every Hub route only reads (paths-info is a POST that reads; a write is refused whatever
        # the key): a read-only key may use them all.
        return await caller_for_authorization(request.headers.get("authorization"), storage)
    except AuthenticationFailed as failed:
        raise HubError.unauthenticated(failed.detail) from None


async def _entity(request: Request, storage: Storage) -> str:
    return (await _caller(request, storage)).entity


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
    """`/api/models/{repo}`, `.../revision/{revision}`, `.../tree/{revision}[/{folder}]`, `.../refs`,
    `.../commits/{revision}` and `.../auth-check`."""
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
    if rest == ["refs"]:
        return await _refs(request, storage, entity, ref)
    if rest[0] == "commits" and len(rest) == 2:
        return await _commits(request, storage, entity, ref, rest[1])
    await _model(storage, entity, ref)
    if rest == ["auth-check"]:  # `HfApi.auth_check`: the key reads the repository
        return JSONBytes({})
    if rest == ["auth-check", "write"]:
        raise HubError.cannot_write()
    raise unserved(rest)


def _flag(request: Request, name: str) -> bool:
    return _true(request.query_params.get(name, ""))


def _true(value: str) -> bool:
    return value.lower() in ("1", "true")


def _expanded(snapshot: Snapshot, expand: bool) -> dict[str, Any] | None:
    return last_commit(snapshot.checkpoint, snapshot.commit) if expand else None


async def _tree(
    request: Request, storage: Storage, entity: str, snapshot: Snapshot, folder: str
) -> Response:
    """The folder's entries: all below it when `recursive`, else its direct children."""
    prefix = f"{folder}/" if folder else ""
    if folder and file_path_problem(folder) is not None:
        raise HubError.entry_not_found(folder, snapshot.commit)
    model_id, checkpoint_id = snapshot.model.id, snapshot.checkpoint.id
    expanded = _expanded(snapshot, _flag(request, "expand"))
    entries: list[dict[str, Any]] = []
    headers: dict[str, str] = {}
    if _flag(request, "recursive"):
        # One page of files per request, with the Hub's Link header to the next: the cursor is the
        # last path listed. A folder is listed before its first file, on the page that holds it.
        cursor = request.query_params.get("cursor")
        if cursor is not None and file_path_problem(cursor) is not None:
            raise HubError.bad_cursor()
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
                    entries.append(folder_entry(path, snapshot.commit, expanded))
            entries.append(file_entry(record, expanded))
            seen = record.path
        if page.has_more and len(inside) == len(page.data) and inside:
            url = request.url.include_query_params(cursor=inside[-1].path)
            headers["Link"] = f'<{url}>; rel="next"'
    else:
        entries = await _children(storage, entity, snapshot, prefix, expanded)
    if folder and not entries and "cursor" not in request.query_params:
        raise HubError.entry_not_found(folder, snapshot.commit)
    return JSONBytes(entries, headers=headers)


async def _children(
    storage: Storage,
    entity: str,
    snapshot: Snapshot,
    prefix: str,
    expanded: dict[str, Any] | None,
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
                entries.append(folder_entry(prefix + name, snapshot.commit, expanded))
                after = f"{prefix}{name}/{_PAST_FOLDER}"
                break
            entries.append(file_entry(record, expanded))
            after = record.path
        else:
            if not page.has_more:
                return entries


async def _with_commits(
    storage: Storage, entity: str, model_id: str, rows: list[CheckpointRow]
) -> list[tuple[Checkpoint, str]]:
    """The listed checkpoints with their commits (a file list each); one deleted meanwhile is left
    out, as it is gone from every branch and history."""
    found: list[tuple[Checkpoint, str]] = []
    for checkpoint_id, _, _ in rows:
        try:
            checkpoint = await storage.get_checkpoint(entity, model_id, checkpoint_id)
            files = await _all_files(storage, entity, model_id, checkpoint_id)
        except CheckpointNotFound:
            continue
        found.append((checkpoint, commit_sha(checkpoint_id, files)))
    return found


async def _branch_commits(
    storage: Storage, entity: str, model: Model
) -> list[tuple[Checkpoint, str]]:
    """Every live checkpoint of the model by step, with its commit."""
    found: list[tuple[Checkpoint, str]] = []
    after: str | None = None
    while True:
        page = await storage.list_checkpoints(
            entity, model.id, after=after, limit=LIST_LIMIT_MAX, order="asc"
        )
        found += await _with_commits(storage, entity, model.id, page.data)
        if not page.has_more or not page.data:
            return found
        after = page.data[-1][0]


async def _refs(request: Request, storage: Storage, entity: str, ref: RepoRef) -> Response:
    """`main` (the latest checkpoint) and a `step-N` branch for each live checkpoint."""
    model = await _model(storage, entity, ref)
    try:
        found = await _branch_commits(storage, entity, model)
    except ModelNotFound:  # deleted in between
        raise HubError.repo_not_found() from None
    branches = [branch("main", found[-1][1])] if found else []
    branches += [branch(step_revision(checkpoint.step), commit) for checkpoint, commit in found]
    return JSONBytes(refs(branches, pull_requests=_flag(request, "include_prs")))


async def _commits(
    request: Request, storage: Storage, entity: str, ref: RepoRef, revision: str
) -> Response:
    """The revision's history: its checkpoint, then the live ones below it, newest first, in pages
    joined by the Link header (the cursor: the last checkpoint listed)."""
    snapshot = await _snapshot(storage, entity, ref, revision)
    model_id = snapshot.model.id
    cursor = request.query_params.get("cursor")
    history: list[tuple[Checkpoint, str]] = []
    if cursor is None:
        history.append((snapshot.checkpoint, snapshot.commit))
        cursor = snapshot.checkpoint.id
    elif canonical_uuid(cursor) is None:
        raise HubError.bad_cursor()
    try:
        page = await storage.list_checkpoints(
            entity, model_id, after=cursor, limit=HUB_COMMITS_PAGE - len(history), order="desc"
        )
        history += await _with_commits(storage, entity, model_id, page.data)
    except InvalidCursor:
        raise HubError.bad_cursor() from None
    except ModelNotFound:
        raise HubError.repo_not_found() from None
    headers: dict[str, str] = {}
    if page.has_more and page.data:
        url = request.url.include_query_params(cursor=page.data[-1][0])
        headers["Link"] = f'<{url}>; rel="next"'
    formatted = "formatted" in request.query_params.getlist("expand[]")
    author = snapshot.model.entity
    return JSONBytes(
        [
            commit_entry(checkpoint, commit, author, formatted=formatted)
            for checkpoint, commit in history
        ],
        headers=headers,
    )


async def _paths_query(request: Request) -> tuple[list[str], bool]:
    """The paths and `expand` of a paths-info body: a form, as `huggingface_hub` sends it, or JSON."""
    body = await request.body()
    content_type = request.headers.get("content-type")
    paths: Any
    if json_content_type(content_type):
        try:
            query = parse_json_body(body, content_type)
        except BodyUnreadable as unreadable:
            raise HubError.bad_request(unreadable.msg) from None
        if not isinstance(query, dict):
            raise HubError.bad_request('Send {"paths": [...], "expand": false}')
        paths, expand = query.get("paths"), query.get("expand") is True
    else:
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise HubError.bad_request("The body is not UTF-8") from None
        paths, expand = form.get("paths", []), _true((form.get("expand") or [""])[-1])
    if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
        raise HubError.bad_request("paths: a list of file or folder paths")
    return list(dict.fromkeys(paths)), expand


@router.post(HUB_API_PATH + "/{rest:file_path}")
async def paths_info(request: Request, storage: StorageDep) -> Response:
    """`POST /api/models/{repo}/paths-info/{revision}`: the entries of the paths that exist in the
    revision, files and folders, in the order asked (a path that does not exist is left out, as
    the Hub does). The one POST here, and a read; any other is refused as a write."""
    entity = await _entity(request, storage)
    parsed = parse_repo(_segments(request, skip=HUB_API_PATH.count("/")))
    if parsed is None or len(parsed[1]) != 2 or parsed[1][0] != "paths-info":
        raise HubError.read_only()
    ref, (_, revision) = parsed
    paths, expand = await _paths_query(request)
    snapshot = await _snapshot(storage, entity, ref, revision)
    expanded = _expanded(snapshot, expand)
    by_path = {record.path: record for record in snapshot.files}
    ordered = [record.path for record in snapshot.files]  # byte order: code point order
    entries: list[dict[str, Any]] = []
    for path in paths:
        path = path.strip("/")
        if not path or file_path_problem(path) is not None:
            continue
        record = by_path.get(path)
        if record is not None:
            entries.append(file_entry(record, expanded))
            continue
        below = bisect.bisect_left(ordered, path + "/")
        if below < len(ordered) and ordered[below].startswith(path + "/"):
            entries.append(folder_entry(path, snapshot.commit, expanded))
    return JSONBytes(entries)


@router.get(HUB_WHOAMI_PATH)
async def who_am_i(request: Request, storage: StorageDep) -> Response:
    """The key's entity and whether it may write, as `HfApi.whoami()` and `hf auth login` read it."""
    try:
        caller = await caller_for_authorization(request.headers.get("authorization"), storage)
    except AuthenticationFailed as failed:
        raise HubError.invalid_token(failed.detail) from None
    return JSONBytes(whoami(caller))


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


# What is not served, answered as the Hub answers so its client raises a readable error. After every
# route above, so they only take what none of those matched.


@router.head("/{kind}/{namespace}/{name}/resolve/{rest:file_path}")
@router.get("/{kind}/{namespace}/{name}/resolve/{rest:file_path}")
async def other_repository(request: Request, storage: StorageDep) -> Response:
    """A file of a dataset or a space (`/datasets/{ns}/{name}/resolve/...`): no such repository."""
    await _entity(request, storage)
    raise HubError.models_only()


@router.api_route(HUB_PATH_PREFIX + "/{rest:path}", methods=["GET", "HEAD"])
async def not_served(request: Request, storage: StorageDep) -> Response:
    """A Hub read not served (listing or searching models, datasets, spaces, ...)."""
    await _entity(request, storage)
    raise unserved(_segments(request, skip=HUB_PATH_PREFIX.count("/")))


@router.api_route(HUB_PATH_PREFIX + "/{rest:path}", methods=["POST", "PUT", "PATCH", "DELETE"])
async def writes_refused(request: Request, storage: StorageDep) -> Response:
    """A Hub write (create a repository, upload, commit, delete): 405, whatever the key."""
    await _entity(request, storage)
    raise HubError.read_only()
