"""The Hub download surface driven by the real `huggingface_hub`, `transformers` and `peft` with HF_ENDPOINT
pointing at a live server: snapshots by step, latest and best, resumed downloads, listings, weights
identical to the uploaded folder, and the client's own errors. Both databases, both blob stores.

The client runs in a subprocess (tests/hub/hub_client.py), since HF_ENDPOINT is read when
huggingface_hub is imported; one server and one client per combination.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from ckpt_registry.server import Settings
from tests.conftest import add_key, serving
from tests.moto import create_bucket, moto_endpoint  # noqa: F401  (the session fixture)

Json = dict[str, Any]

COMBINATIONS = [
    ("sqlite", "local"),
    ("postgresql", "local"),
    ("sqlite", "s3"),
    ("postgresql", "s3"),
]
# step -> metrics: latest is step 3, best eval_loss (min) step 2, best accuracy (max) step 1.
# `eval/loss` as W&B names metrics: a `/` the client sends as %2F inside the revision.
STEPS = {
    1: {"eval_loss": 0.9, "eval/loss": 0.9, "accuracy": 0.4},
    2: {"eval_loss": 0.5, "eval/loss": 0.5, "accuracy": 0.3},
    3: {"eval_loss": 0.7, "eval/loss": 0.7, "accuracy": 0.2},
}
NESTED = {
    "extra/notes/readme.md": b"# notes\n",
    "extra/run.json": b'{"seed": 0}\n',
    "notes café #1.md": b"percent-encoded in the URL\n",
}


class HubClient:
    """The client process: `call(op, **args)` returns the op's result, or the error it raised as
    `{"error": class name, "classes": [...], "message": ...}`."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("hub_client.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        ready = self._read()
        assert "ready" in ready, ready

    def _read(self) -> Json:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the Hub client exited ({self.process.wait()})")
        answer: Json = json.loads(line)
        return answer

    def ask(self, op: str, **args: Any) -> Json:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
        self.process.stdin.flush()
        return self._read()

    def call(self, op: str, **args: Any) -> Any:
        answer = self.ask(op, **args)
        assert "error" not in answer, answer.get("traceback")
        return answer["result"]

    def error(self, op: str, **args: Any) -> str:
        answer = self.ask(op, **args)
        assert "error" in answer, f"{op}({args}) succeeded: {answer}"
        return str(answer["error"])

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()


@dataclass
class Hub:
    root: str  # the server's root URL: HF_ENDPOINT
    key: str
    other_key: str
    read_only_key: str  # of the same entity as `key`
    client: HubClient
    model_folder: Path
    adapter_folder: Path
    blob_store: str
    checkpoints: dict[int, str] = field(default_factory=dict)  # step -> checkpoint id
    uploaded: dict[int, dict[str, str]] = field(default_factory=dict)  # step -> path -> sha256

    def api(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.Client(base_url=self.root + "/v1/preview", headers=headers, timeout=30)


def _create(api: httpx.Client, project: str, name: str) -> str:
    response = api.post("/models", json={"project": project, "name": name, "base_model": "gpt2"})
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


def _register(api: httpx.Client, model_id: str, step: int, metrics: dict[str, float]) -> str:
    response = api.post(f"/models/{model_id}/checkpoints", json={"step": step, "metrics": metrics})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _upload(api: httpx.Client, model_id: str, checkpoint_id: str, files: dict[str, bytes]) -> None:
    """Plain PUTs of the contract's files route, as any HTTP client can send them."""
    for path, data in files.items():
        response = api.put(
            f"/models/{model_id}/checkpoints/{checkpoint_id}/files/{quote(path)}", content=data
        )
        assert response.status_code == 201, response.text


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    database, store = request.param
    tmp = tmp_path
    with pytest.MonkeyPatch.context() as env:
        if database == "sqlite":
            database_url = f"sqlite:///{tmp / 'ckpt.db'}"
            shutil.copyfile(request.getfixturevalue("sqlite_template"), tmp / "ckpt.db")
            database_cm: Any = None
        else:
            from tests import pg

            admin_url = pg.postgres_admin_url()
            if admin_url is None:
                pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
            database_cm = pg.fresh_database(admin_url)
            database_url = database_cm.__enter__()
        try:
            if store == "local":
                blob_url = str(tmp / "blobs")
            else:
                endpoint = request.getfixturevalue("moto_endpoint")
                for name, value in {
                    "AWS_ACCESS_KEY_ID": "testing",
                    "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": endpoint,
                }.items():
                    env.setenv(name, value)
                for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
                    env.delenv(name, raising=False)
                blob_url = f"s3://{create_bucket(endpoint)}/registry"
            key = add_key(database_url, "default")
            other_key = add_key(database_url, "other")
            read_only_key = add_key(database_url, "default", "viewer", read_only=True)
            settings = Settings(database_url=database_url, blob_url=blob_url, gc_interval_seconds=0)
            with serving(settings) as server:
                root = server.url.removesuffix("/v1")
                client_env = {
                    name: value
                    for name, value in os.environ.items()
                    if not name.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))
                }
                client_env |= {
                    "HF_ENDPOINT": root,
                    "HF_TOKEN": key,
                    "HF_HOME": str(tmp / "hf-home"),
                    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                }
                client = HubClient(client_env)
                try:
                    hub = Hub(
                        root,
                        key,
                        other_key,
                        read_only_key,
                        client,
                        tmp / "model",
                        tmp / "adapter",
                        store,
                    )
                    _populate(hub)
                    yield hub
                finally:
                    client.close()
        finally:
            if database_cm is not None:
                database_cm.__exit__(None, None, None)


def _populate(hub: Hub) -> None:
    """`team/agent-7` at steps 1-3 (the tiny model, a step marker and nested files), its LoRA adapter
    as `team/agent-7-lora`, and `team/secret` of another entity."""
    hub.client.call("save_tiny_model", folder=str(hub.model_folder))
    model_files = _folder_files(hub.model_folder)
    with hub.api() as api:
        model_id = _create(api, "team", "agent-7")
        for step, metrics in STEPS.items():
            files = model_files | NESTED | {"step.txt": str(step).encode()}
            checkpoint_id = _register(api, model_id, step, metrics)
            _upload(api, model_id, checkpoint_id, files)
            hub.checkpoints[step] = checkpoint_id
            hub.uploaded[step] = {path: _sha(data) for path, data in files.items()}
        hub.client.call(
            "save_adapter", base_repo=str(hub.model_folder), folder=str(hub.adapter_folder)
        )
        adapter_id = _create(api, "team", "agent-7-lora")
        _upload(
            api, adapter_id, _register(api, adapter_id, 10, {}), _folder_files(hub.adapter_folder)
        )
    with hub.api(hub.other_key) as other:
        secret = _create(other, "team", "secret")
        _upload(
            other, secret, _register(other, secret, 1, {"eval_loss": 0.1}), {"config.json": b"{}"}
        )


def test_the_hub_client_against_the_server(hub: Hub) -> None:
    """One test per server: under pytest-xdist, tests sharing a module fixture on two workers would
    each start a server and a client (~10 s of imports each)."""
    check_snapshot_download_by_revision(hub)
    check_snapshot_into_a_folder(hub)
    check_revision_by_checkpoint_id_and_by_commit(hub)
    check_from_pretrained_loads_the_uploaded_weights(hub)
    check_peft_adapter_loads_through_the_hub_surface(hub)
    check_resumed_download_ends_with_the_whole_file(hub)
    check_resolve_headers_and_ranges(hub)
    check_list_repo_files_and_tree(hub)
    check_model_info_lists_files_with_their_sha256(hub)
    check_paths_info_and_existence_checks(hub)
    check_expanded_entries_name_the_revisions_commit(hub)
    check_refs_are_main_and_a_branch_per_step(hub)
    check_commits_are_the_checkpoints_up_to_the_revision(hub)
    check_whoami_names_the_keys_entity_and_role(hub)
    check_hf_file_system_reads_revisions(hub)
    check_what_is_not_served_is_a_readable_error(hub)
    check_commit_changes_with_the_files_and_the_old_one_is_gone(hub)
    check_errors_are_the_clients_own(hub)
    if hub.blob_store == "local":  # listing is the database's work: once per database is enough
        check_a_long_tree_comes_in_pages(hub)
        check_a_long_history_comes_in_pages(hub)
    check_another_entitys_model_answers_exactly_as_an_unknown_one(hub)
    check_malformed_requests_are_refused_not_failed(hub)


REVISIONS = {
    "step-1": 1,
    "step-2": 2,
    "main": 3,
    "latest": 3,
    "best-eval_loss": 2,  # a loss: lower is better
    "best-eval_loss-max": 1,
    "best-eval/loss": 2,
    "best-accuracy": 1,  # anything else: higher is better
    "best-accuracy-min": 3,
}


def check_snapshot_download_by_revision(hub: Hub) -> None:
    for revision, step in REVISIONS.items():
        snapshot = hub.client.call("snapshot_download", repo_id="team/agent-7", revision=revision)
        assert snapshot["files"] == hub.uploaded[step], revision
        info = hub.client.call("model_info", repo_id="team/agent-7", revision=revision)
        assert snapshot["commit"] == info["sha"]
        assert info["ckpt"]["step"] == step
        assert info["ckpt"]["checkpoint_id"] == hub.checkpoints[step]


def check_snapshot_into_a_folder(hub: Hub) -> None:
    """`local_dir=`, as serving setups download: twice, the second time checked against the
    server's ETags and left alone."""
    folder = str(hub.model_folder.parent / "served")
    for _ in range(2):
        snapshot = hub.client.call(
            "snapshot_download", repo_id="team/agent-7", revision="step-2", local_dir=folder
        )
        assert snapshot["files"] == hub.uploaded[2]


def check_revision_by_checkpoint_id_and_by_commit(hub: Hub) -> None:
    by_id = hub.client.call("model_info", repo_id="team/agent-7", revision=hub.checkpoints[2])
    assert by_id["ckpt"]["step"] == 2
    assert len(by_id["sha"]) == 40 and by_id["sha"].startswith(hub.checkpoints[2].replace("-", ""))
    by_commit = hub.client.call("snapshot_download", repo_id="team/agent-7", revision=by_id["sha"])
    assert by_commit["files"] == hub.uploaded[2]
    # Each checkpoint its own commit, the same one every time it is asked.
    shas = {
        hub.client.call("model_info", repo_id="team/agent-7", revision=f"step-{s}")["sha"]
        for s in STEPS
    }
    assert len(shas) == 3 and by_id["sha"] in shas


def check_from_pretrained_loads_the_uploaded_weights(hub: Hub) -> None:
    local = hub.client.call("local_weights", folder=str(hub.model_folder))
    assert hub.client.call("from_pretrained", repo_id="team/agent-7", revision="step-2") == local
    text = "the registry loads the checkpoint"
    tokens = hub.client.call("tokenize", repo_id="team/agent-7", revision="step-2", text=text)
    assert tokens == hub.client.call("tokenize", repo_id=str(hub.model_folder), text=text)
    assert 0 not in tokens  # every word known: the uploaded vocabulary, not a stand-in
    config = hub.client.call("config", repo_id="team/agent-7", revision="best-accuracy")
    saved = json.loads((hub.model_folder / "config.json").read_text())
    assert {name: config.get(name) for name in saved} == saved | {
        "transformers_version": config["transformers_version"]
    }
    assert config["_name_or_path"] == "team/agent-7"
    # By model id as well as by name.
    model_id = hub.client.call("model_info", repo_id="team/agent-7")["ckpt"]["model_id"]
    assert hub.client.call("from_pretrained", repo_id=model_id) == local


def check_peft_adapter_loads_through_the_hub_surface(hub: Hub) -> None:
    local = hub.client.call(
        "peft_weights", base=str(hub.model_folder), adapter=str(hub.adapter_folder)
    )
    remote = hub.client.call("peft_weights", base="team/agent-7", adapter="team/agent-7-lora")
    assert remote == local and remote


def check_resumed_download_ends_with_the_whole_file(hub: Hub) -> None:
    data = (hub.model_folder / "model.safetensors").read_bytes()
    have = len(data) // 3
    resumed = hub.client.call(
        "resumed_download", repo_id="team/agent-7", filename="model.safetensors", have=have
    )
    assert resumed["sha256"] == _sha(data) == resumed["etag"]
    assert resumed["size"] == len(data)
    assert resumed["redirected"] == (hub.blob_store == "s3")
    # The same file through hf_hub_download, into the cache.
    assert hub.client.call(
        "hf_hub_download", repo_id="team/agent-7", filename="model.safetensors"
    ) == _sha(data)


def check_resolve_headers_and_ranges(hub: Hub) -> None:
    data = (hub.model_folder / "model.safetensors").read_bytes()
    commit = hub.client.call("model_info", repo_id="team/agent-7", revision="main")["sha"]
    url = f"{hub.root}/team/agent-7/resolve/main/model.safetensors"
    auth = {"Authorization": f"Bearer {hub.key}"}
    with httpx.Client(timeout=30) as http:
        head = http.head(url, headers=auth)
        assert head.headers["X-Repo-Commit"] == commit
        assert head.headers["X-Linked-Etag"] == f'"{_sha(data)}"'
        assert head.headers["X-Linked-Size"] == str(len(data))
        if hub.blob_store == "s3":
            assert head.status_code == 302  # a presigned URL, as the Hub redirects large files
            target = head.headers["Location"]
            ranged = http.get(target, headers={"Range": "bytes=10-"})
        else:
            assert head.status_code == 200
            assert head.headers["Content-Length"] == str(len(data))
            ranged = http.get(url, headers={**auth, "Range": "bytes=10-"})
        assert ranged.status_code == 206
        assert ranged.content == data[10:]


def check_list_repo_files_and_tree(hub: Hub) -> None:
    files = hub.client.call("list_repo_files", repo_id="team/agent-7", revision="step-1")
    assert files == sorted(hub.uploaded[1], key=str.encode)
    root = hub.client.call("list_repo_tree", repo_id="team/agent-7")
    assert {"type": "directory", "path": "extra"} in root
    assert {"type": "file", "path": "step.txt"} in root
    assert not any(entry["path"].startswith("extra/") for entry in root)
    extra = hub.client.call(
        "list_repo_tree", repo_id="team/agent-7", path_in_repo="extra", recursive=True
    )
    assert extra == [
        {"type": "directory", "path": "extra/notes"},
        {"type": "file", "path": "extra/notes/readme.md"},
        {"type": "file", "path": "extra/run.json"},
    ]


def check_model_info_lists_files_with_their_sha256(hub: Hub) -> None:
    info = hub.client.call("model_info", repo_id="team/agent-7", revision="step-3")
    assert info["id"] == "team/agent-7"
    assert {path: sibling["sha256"] for path, sibling in info["siblings"].items()} == hub.uploaded[
        3
    ]


def _commits(hub: Hub, repo_id: str = "team/agent-7") -> dict[str, str]:
    """revision -> commit, as model_info answers it (the commit the other endpoints must agree on)."""
    return {
        revision: hub.client.call("model_info", repo_id=repo_id, revision=revision)["sha"]
        for revision in ("main", "step-1", "step-2", "step-3")
    }


def check_paths_info_and_existence_checks(hub: Hub) -> None:
    """`get_paths_info` (a POST that only reads: a read-only key may send it), `file_exists`,
    `repo_exists`, `revision_exists` and `auth_check`, as a user script calls them."""
    asked = ["notes café #1.md", "extra", "missing.bin", "extra/notes", "step.txt", "extra"]
    for key in (hub.key, hub.read_only_key):
        entries = hub.client.call(
            "hf_api",
            method="get_paths_info",
            repo_id="team/agent-7",
            paths=asked,
            revision="step-2",
            token=key,
        )
        # In the order asked, each once, a path that does not exist left out (as the Hub does).
        assert [(entry["_type"], entry["path"]) for entry in entries] == [
            ("RepoFile", "notes café #1.md"),
            ("RepoFolder", "extra"),
            ("RepoFolder", "extra/notes"),
            ("RepoFile", "step.txt"),
        ]
        step = entries[3]
        assert step["lfs"]["sha256"] == hub.uploaded[2]["step.txt"] and step["size"] == 1
        assert step["last_commit"] is None  # only with expand=True
    api = "hf_api"
    for path, exists in (("extra/run.json", True), ("missing.bin", False), ("extra", False)):
        assert (
            hub.client.call(api, method="file_exists", repo_id="team/agent-7", filename=path)
            is exists
        ), path
    assert not hub.client.call(
        api, method="file_exists", repo_id="team/agent-7", filename="step.txt", revision="step-9"
    )
    model_id = hub.client.call("model_info", repo_id="team/agent-7")["ckpt"]["model_id"]
    for repo, exists in (
        ("team/agent-7", True),
        (model_id, True),
        ("team/secret", False),  # another entity's: as a repository that does not exist
        ("team/nothing-here", False),
    ):
        assert hub.client.call(api, method="repo_exists", repo_id=repo) is exists, repo
    commit = _commits(hub)["step-1"]
    for revision, exists in (
        ("step-1", True),
        ("best-eval_loss", True),
        (commit, True),
        (hub.checkpoints[3], True),
        ("step-99", False),
        ("v1.0", False),
        ("best-no_such_metric", False),
    ):
        assert (
            hub.client.call(
                api, method="revision_exists", repo_id="team/agent-7", revision=revision
            )
            is exists
        ), revision
    assert hub.client.call(api, method="auth_check", repo_id="team/agent-7") is None
    assert hub.client.error(api, method="auth_check", repo_id="team/secret") == (
        "RepositoryNotFoundError"
    )
    refused = hub.client.ask(api, method="auth_check", repo_id="team/agent-7", write=True)
    assert refused["error"] == "HfHubHTTPError", refused
    assert "403 Forbidden: This registry's Hub API is read-only" in refused["message"], refused
    metadata = hub.client.call("file_metadata", repo_id="team/agent-7", filename="step.txt")
    assert metadata == {
        "commit": _commits(hub)["main"],
        "etag": hub.uploaded[3]["step.txt"],
        "size": 1,
    }


def check_expanded_entries_name_the_revisions_commit(hub: Hub) -> None:
    """`expand=True` (tree, recursive or not, and paths-info): each entry's `last_commit` is the
    revision's own commit, titled by its step (a checkpoint sets all of its files)."""
    commits = _commits(hub)
    listings = {
        "main": hub.client.call(
            "hf_api", method="list_repo_tree", repo_id="team/agent-7", expand=True
        ),
        "step-1": hub.client.call(
            "hf_api",
            method="list_repo_tree",
            repo_id="team/agent-7",
            revision="step-1",
            recursive=True,
            expand=True,
        ),
        "step-2": hub.client.call(
            "hf_api",
            method="get_paths_info",
            repo_id="team/agent-7",
            paths=["extra", "config.json"],
            revision="step-2",
            expand=True,
        ),
    }
    for revision, entries in listings.items():
        assert entries
        step = 3 if revision == "main" else int(revision[-1])
        for entry in entries:
            assert entry["last_commit"]["oid"] == commits[revision], (revision, entry)
            assert entry["last_commit"]["title"] == f"step {step}"
    recursive = [entry["path"] for entry in listings["step-1"] if entry["_type"] == "RepoFile"]
    assert recursive == sorted(hub.uploaded[1], key=str.encode)
    # Without expand, no last commit: what the client shows for the Hub's plain listing.
    plain = hub.client.call("hf_api", method="list_repo_tree", repo_id="team/agent-7")
    assert all(entry["last_commit"] is None for entry in plain)


def check_refs_are_main_and_a_branch_per_step(hub: Hub) -> None:
    commits = _commits(hub)
    refs = hub.client.call("hf_api", method="list_repo_refs", repo_id="team/agent-7")
    assert [(ref["name"], ref["ref"], ref["target_commit"]) for ref in refs["branches"]] == [
        (name, f"refs/heads/{name}", commits[name])
        for name in ("main", "step-1", "step-2", "step-3")
    ]
    assert (refs["tags"], refs["converts"], refs["pull_requests"]) == ([], [], None)
    with_prs = hub.client.call(
        "hf_api", method="list_repo_refs", repo_id="team/agent-7", include_pull_requests=True
    )
    assert with_prs["pull_requests"] == []
    # Every branch is a revision the other endpoints take.
    for ref in refs["branches"]:
        assert hub.client.call(
            "hf_api", method="revision_exists", repo_id="team/agent-7", revision=ref["name"]
        )
    assert hub.client.error("hf_api", method="list_repo_refs", repo_id="team/secret") == (
        "RepositoryNotFoundError"
    )


def check_commits_are_the_checkpoints_up_to_the_revision(hub: Hub) -> None:
    """A revision's history is its checkpoint and the live ones below it, newest first."""
    commits = _commits(hub)
    history = hub.client.call("hf_api", method="list_repo_commits", repo_id="team/agent-7")
    assert [commit["commit_id"] for commit in history] == [
        commits["step-3"],
        commits["step-2"],
        commits["step-1"],
    ]
    assert [commit["title"] for commit in history] == ["step 3", "step 2", "step 1"]
    assert all(commit["authors"] == ["default"] for commit in history)
    assert history[1]["message"].splitlines() == [
        f"checkpoint {hub.checkpoints[2]}",
        "accuracy: 0.3",
        "eval/loss: 0.5",
        "eval_loss: 0.5",
    ]
    assert history[0]["formatted_title"] is None
    best = hub.client.call(
        "hf_api",
        method="list_repo_commits",
        repo_id="team/agent-7",
        revision="best-eval_loss",
        formatted=True,
    )
    assert [commit["commit_id"] for commit in best] == [commits["step-2"], commits["step-1"]]
    assert best[0]["formatted_title"] == "step 2"
    assert best[0]["formatted_message"].startswith(f"checkpoint {hub.checkpoints[2]}<br>")
    by_commit = hub.client.call(
        "hf_api", method="list_repo_commits", repo_id="team/agent-7", revision=commits["step-1"]
    )
    assert [commit["commit_id"] for commit in by_commit] == [commits["step-1"]]
    assert hub.client.error(
        "hf_api", method="list_repo_commits", repo_id="team/agent-7", revision="step-99"
    ) == ("RevisionNotFoundError")


def check_whoami_names_the_keys_entity_and_role(hub: Hub) -> None:
    me = hub.client.call("hf_api", method="whoami")
    assert (me["name"], me["auth"]["accessToken"]["role"]) == ("default", "write")
    viewer = hub.client.call("hf_api", method="whoami", token=hub.read_only_key)
    assert (viewer["name"], viewer["auth"]["accessToken"]["role"]) == ("default", "read")
    assert hub.client.call("hf_api", method="whoami", token=hub.other_key)["name"] == "other"
    wrong = hub.client.ask("hf_api", method="whoami", token="not-a-key")
    assert wrong["error"] == "HfHubHTTPError"
    assert "Invalid user token" in wrong["message"]


def check_hf_file_system_reads_revisions(hub: Hub) -> None:
    """`hf://` paths (HfFileSystem: pandas, datasets, fsspec): listing, glob, info and reading, at a
    revision written `repo@revision` (the client percent-encodes its `/`)."""
    fs = "hf_file_system"
    assert hub.client.call(fs, method="ls", path="team/agent-7/extra", detail=False) == [
        "team/agent-7/extra/notes",
        "team/agent-7/extra/run.json",
    ]
    found = hub.client.call(fs, method="glob", path="team/agent-7@step-1/**/*.md")
    assert found == [
        "team/agent-7@step-1/extra/notes/readme.md",
        "team/agent-7@step-1/notes café #1.md",
    ]
    for revision, step in (("step-1", 1), ("best-eval/loss", 2)):
        path = f"team/agent-7@{quote(revision, safe='')}/step.txt"
        assert hub.client.call(fs, method="read_text", path=path) == str(step)
    info = hub.client.call(fs, method="info", path="team/agent-7/extra/run.json")
    assert (info["type"], info["lfs"]["sha256"]) == ("file", hub.uploaded[3]["extra/run.json"])
    assert hub.client.call(fs, method="exists", path="team/agent-7/extra") is True
    assert hub.client.call(fs, method="exists", path="team/agent-7/missing.bin") is False


def check_what_is_not_served_is_a_readable_error(hub: Hub) -> None:
    """Writes, model search, datasets and spaces: the client's own error with a message that says
    why, never a 5xx or a page of HTML."""
    api = "hf_api"
    for key in (hub.key, hub.read_only_key):
        for method, args in (
            (
                "upload_file",
                {"path_or_fileobj": str(hub.model_folder / "config.json"), "path_in_repo": "c"},
            ),
            ("delete_file", {"path_in_repo": "step.txt"}),
            ("create_branch", {"branch": "v1"}),
        ):
            refused = hub.client.ask(api, method=method, repo_id="team/agent-7", token=key, **args)
            assert refused["error"] == "HfHubHTTPError", refused
            assert "405" in refused["message"] and "read-only" in refused["message"], refused
    created = hub.client.ask(api, method="create_repo", repo_id="team/new-one")
    assert "read-only" in created["message"], created
    listed = hub.client.ask(api, method="list_models", author="team")
    assert listed["error"] == "HfHubHTTPError" and "GET /v1/preview/models" in listed["message"]
    assert hub.client.error(api, method="dataset_info", repo_id="team/agent-7") == (
        "RepositoryNotFoundError"
    )
    assert (
        hub.client.error(
            "hf_hub_download", repo_id="team/data", filename="x.csv", repo_type="dataset"
        )
        == "RepositoryNotFoundError"
    )
    with httpx.Client(base_url=hub.root, timeout=30) as http:
        auth = {"Authorization": f"Bearer {hub.key}"}
        answers = {
            ("GET", "/api/models"): http.get("/api/models", headers=auth),
            ("GET", "discussions"): http.get("/api/models/team/agent-7/discussions", headers=auth),
            ("GET", "spaces"): http.get("/api/spaces/team/app", headers=auth),
            ("POST", "commit"): http.post("/api/models/team/agent-7/commit/main", headers=auth),
            ("DELETE", "repo"): http.request("DELETE", "/api/repos/delete", headers=auth),
            ("POST", "no key"): http.post("/api/models/team/agent-7/paths-info/main"),
            ("GET", "whoami, no key"): http.get("/api/whoami-v2"),
            ("GET", "bad cursor"): http.get(
                "/api/models/team/agent-7/commits/main?cursor=x", headers=auth
            ),
            ("POST", "bad body"): http.post(
                "/api/models/team/agent-7/paths-info/main",
                json={"paths": "config.json"},
                headers=auth,
            ),
        }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        ("GET", "/api/models"): 404,
        ("GET", "discussions"): 404,
        ("GET", "spaces"): 404,
        ("POST", "commit"): 405,
        ("DELETE", "repo"): 405,
        ("POST", "no key"): 401,
        ("GET", "whoami, no key"): 401,
        ("GET", "bad cursor"): 400,
        ("POST", "bad body"): 400,
    }
    for answer in answers.values():
        assert answer.headers["content-type"] == "application/json"
        assert answer.json()["error"]
    assert answers[("POST", "commit")].headers["Allow"] == "GET, HEAD"
    assert answers[("GET", "spaces")].headers["X-Error-Code"] == "RepoNotFound"


def check_a_long_history_comes_in_pages(hub: Hub) -> None:
    """Over a page of commits (50): the client follows the Link header to the end, in step order,
    and the refs list every step."""
    with hub.api() as api:
        model_id = _create(api, "team", "long-run")
        for step in range(1, 62):
            _upload(api, model_id, _register(api, model_id, step, {}), {"step.txt": b"%d" % step})
    history = hub.client.call("hf_api", method="list_repo_commits", repo_id="team/long-run")
    assert [commit["title"] for commit in history] == [f"step {s}" for s in range(61, 0, -1)]
    assert len({commit["commit_id"] for commit in history}) == 61
    below = hub.client.call(
        "hf_api", method="list_repo_commits", repo_id="team/long-run", revision="step-55"
    )
    assert [commit["title"] for commit in below] == [f"step {s}" for s in range(55, 0, -1)]
    refs = hub.client.call("hf_api", method="list_repo_refs", repo_id="team/long-run")
    names = [ref["name"] for ref in refs["branches"]]
    assert names == ["main"] + [f"step-{s}" for s in range(1, 62)]
    assert refs["branches"][0]["target_commit"] == history[0]["commit_id"]


def check_commit_changes_with_the_files_and_the_old_one_is_gone(hub: Hub) -> None:
    with hub.api() as api:
        model_id = _create(api, "team", "changing")
        # No checkpoint yet: a repository without branches or history.
        empty = hub.client.call("hf_api", method="list_repo_refs", repo_id="team/changing")
        assert empty["branches"] == []
        assert hub.client.error("hf_api", method="list_repo_commits", repo_id="team/changing") == (
            "RevisionNotFoundError"
        )
        checkpoint_id = _register(api, model_id, 1, {})
        _upload(api, model_id, checkpoint_id, {"config.json": b"{}"})
        before = hub.client.call("snapshot_download", repo_id="team/changing")
        _upload(api, model_id, checkpoint_id, {"weights.bin": b"\x00" * 100})
        after = hub.client.call("snapshot_download", repo_id="team/changing")
    assert before["commit"] != after["commit"]
    assert set(after["files"]) == {"config.json", "weights.bin"}
    assert hub.client.error("model_info", repo_id="team/changing", revision=before["commit"]) == (
        "RevisionNotFoundError"
    )
    # A deleted checkpoint's revisions are gone, and a deleted model's repository.
    with hub.api() as api:
        second = _register(api, model_id, 2, {})
        response = api.request("DELETE", f"/models/{model_id}/checkpoints", json={"steps": [1]})
        assert response.json()["deleted_count"] == 1
        for revision in ("step-1", checkpoint_id, after["commit"]):
            assert hub.client.error("model_info", repo_id="team/changing", revision=revision) == (
                "RevisionNotFoundError"
            )
        info = hub.client.call("model_info", repo_id="team/changing")
        assert (info["ckpt"]["checkpoint_id"], info["siblings"]) == (second, {})
        # Gone from the refs and the history too, as a commit is after a force-push.
        refs = hub.client.call("hf_api", method="list_repo_refs", repo_id="team/changing")
        assert [(ref["name"], ref["target_commit"]) for ref in refs["branches"]] == [
            ("main", info["sha"]),
            ("step-2", info["sha"]),
        ]
        history = hub.client.call("hf_api", method="list_repo_commits", repo_id="team/changing")
        assert [commit["commit_id"] for commit in history] == [info["sha"]]
        assert api.delete(f"/models/{model_id}").status_code == 200
    assert hub.client.error("model_info", repo_id="team/changing") == "RepositoryNotFoundError"


def check_errors_are_the_clients_own(hub: Hub) -> None:
    client = hub.client
    assert (
        client.error("snapshot_download", repo_id="team/nothing-here") == "RepositoryNotFoundError"
    )
    for revision in ("step-99", "best-no_such_metric", "v1.0", "step-01"):
        assert client.error("snapshot_download", repo_id="team/agent-7", revision=revision) == (
            "RevisionNotFoundError"
        )
    assert client.error("hf_hub_download", repo_id="team/agent-7", filename="missing.bin") == (
        "RemoteEntryNotFoundError"
    )
    # A cache of its own: with a file cached, the client answers from the cache when the server
    # refuses (as it does when offline).
    uncached = {"cache_dir": str(hub.model_folder.parent / "uncached")}
    assert (
        client.error(
            "hf_hub_download",
            repo_id="team/agent-7",
            filename="config.json",
            token="not-a-key",
            **uncached,
        )
        == "RepositoryNotFoundError"
    )
    assert (
        client.error("model_info", repo_id="team/agent-7", token=False) == "RepositoryNotFoundError"
    )
    for op in ("model_info", "list_repo_files", "snapshot_download"):
        assert client.error(op, repo_id="team/secret") == "RepositoryNotFoundError"
    assert (
        client.error("hf_hub_download", repo_id="team/secret", filename="config.json", **uncached)
        == "RepositoryNotFoundError"
    )
    # The other entity reaches its own model with its own key.
    assert (
        client.call("model_info", repo_id="team/secret", token=hub.other_key)["id"] == "team/secret"
    )


def check_another_entitys_model_answers_exactly_as_an_unknown_one(hub: Hub) -> None:
    auth = {"Authorization": f"Bearer {hub.key}"}
    with httpx.Client(base_url=hub.root, headers=auth, timeout=30) as http:
        for path in (
            "/api/models/{}",
            "/api/models/{}/revision/main",
            "/{}/resolve/main/config.json",
        ):
            secret = http.get(path.format("team/secret"))
            unknown = http.get(path.format("team/no-such-model"))
            assert secret.status_code == unknown.status_code == 404
            assert secret.content == unknown.content
            assert (
                secret.headers["X-Error-Code"] == unknown.headers["X-Error-Code"] == "RepoNotFound"
            )
        # Without a key the answer never depends on what exists.
        for repo in ("team/secret", "team/agent-7", "team/no-such-model"):
            answer = httpx.head(f"{hub.root}/{repo}/resolve/main/config.json")
            assert answer.status_code == 401
            assert answer.headers["X-Error-Code"] == "RepoNotFound"


def check_a_long_tree_comes_in_pages(hub: Hub) -> None:
    """Over 1,000 files: the recursive tree comes in pages joined by the Link header, a folder that
    spans two pages (`a/zz`) listed once, and the client reads every file across them."""
    paths = [f"a/{index:04d}.txt" for index in range(999)] + ["a/zz/1.txt", "a/zz/2.txt", "b.txt"]
    with hub.api() as api:
        model_id = _create(api, "team", "many-files")
        _upload(api, model_id, _register(api, model_id, 1, {}), {path: b"x" for path in paths})
        first = httpx.get(
            f"{hub.root}/api/models/team/many-files/tree/main",
            params={"recursive": "true"},
            headers={"Authorization": f"Bearer {hub.key}"},
        )
    assert first.status_code == 200
    assert "next" in first.links
    assert sum(entry["type"] == "file" for entry in first.json()) == 1000
    assert hub.client.call("list_repo_files", repo_id="team/many-files") == paths
    tree = hub.client.call("list_repo_tree", repo_id="team/many-files", recursive=True)
    folders = [entry["path"] for entry in tree if entry["type"] == "directory"]
    assert folders == ["a", "a/zz"]
    assert [entry["path"] for entry in tree if entry["type"] == "file"] == paths


def check_malformed_requests_are_refused_not_failed(hub: Hub) -> None:
    """Input no client sends (NUL, invalid UTF-8, `..`, a forged cursor) is a 4xx, never a 5xx."""
    answers = {}
    with httpx.Client(base_url=hub.root, headers={"Authorization": f"Bearer {hub.key}"}) as http:
        for path in (
            "/api/models/team/agent-7/revision/best-%00",
            "/api/models/team/agent-7/revision/%ff",
            "/api/models/team/agent-7/revision/" + "x" * 5000,
            "/api/models/team/agent-7/tree/main/extra%2F..%2Fstep.txt",
            "/api/models/team/agent-7/tree/main?recursive=true&cursor=%00",
            "/api/models/team/agent-7/commits/main?cursor=%00",
            "/api/models/team/agent-7/commits/main?cursor=00000000-0000-0000-0000-000000000000",
            "/api/models/team/agent-7/commits/%ff",
            "/api/models/team/agent-7/paths-info/main",  # a GET of the POST-only path
            "/api/%ff/x",
            "/api/models/team%00/agent-7",
            "/api/models/a--b/c",
            "/team/agent-7/resolve/main/extra/%2E%2E/step.txt",
            "/team/agent-7/resolve/main/%ff",
            "/team/agent-7/resolve/best-%00/step.txt",
            "/team/agent-7/resolve/main",
        ):
            answers[path] = http.get(path).status_code
        for body in (b"paths=%ff", b"\xff"):
            answers[f"paths-info {body[:10]!r}"] = http.post(
                "/api/models/team/agent-7/paths-info/main",
                content=body,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ).status_code
    failed = {path: status for path, status in answers.items() if not 400 <= status < 500}
    assert not failed
