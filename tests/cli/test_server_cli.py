"""`ckpt serve`, `ckpt db` and `ckpt keys`: the commands an operator runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from ckpt_registry.cli.main import cli

from ..conftest import RunningServer


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_keys_create_prints_the_key_alone_on_the_last_line(server: RunningServer) -> None:
    code, out, _ = run(
        "keys",
        "create",
        "--entity",
        "team-a",
        "--name",
        "laptop",
        "--database-url",
        server.database_url,
    )
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key.startswith("ckpt_")
    with server.client(key) as client:
        created = client.post(
            "/preview/models", json={"project": "p", "name": "n", "base_model": "b"}
        )
    assert created.status_code == 200
    assert created.json()["entity"] == "team-a"


def test_keys_list_never_shows_keys_and_revoke_takes_effect(server: RunningServer) -> None:
    _, out, _ = run("keys", "create", "--entity", "team-b", "--database-url", server.database_url)
    key = out.strip().splitlines()[-1]
    code, listing, _ = run("keys", "list", "--database-url", server.database_url)
    assert code == 0
    assert "team-b" in listing
    assert key not in listing
    (key_id,) = [line.split()[0] for line in listing.splitlines() if "team-b" in line]
    with server.client(key) as client:
        assert client.get("/preview/models").status_code == 200
        code, _, _ = run("keys", "revoke", key_id, "--database-url", server.database_url)
        assert code == 0
        response = client.get("/preview/models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    _, listing, _ = run("keys", "list", "--database-url", server.database_url)
    assert "revoked" in next(line for line in listing.splitlines() if line.startswith(key_id))


def test_revoking_an_unknown_key_is_one_line_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    assert run("db", "upgrade", "--database-url", url)[0] == 0
    code, _, err = run(
        "keys", "revoke", "00000000-0000-0000-0000-000000000000", "--database-url", url
    )
    assert code != 0
    assert err.strip().count("\n") == 0
    assert "no key" in err


def test_db_upgrade_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    assert run("db", "upgrade", "--database-url", url)[0] == 0
    code, _, _ = run("keys", "create", "--entity", "e", "--database-url", url)
    assert code == 0
    assert run("db", "downgrade", "base", "--database-url", url)[0] == 0
    code, _, err = run("keys", "list", "--database-url", url)
    assert code != 0
    assert "Traceback" not in err


def test_unsupported_database_url_is_a_clear_error() -> None:
    code, _, err = run("keys", "list", "--database-url", "mysql://localhost/x")
    assert code != 0
    assert "sqlite:///" in err
    assert "Traceback" not in err


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    port = free_port()
    env = {**os.environ, "CKPT_DATABASE_URL": "sqlite:///./ckpt.db"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ckpt_registry.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process, port, tmp_path
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("ckpt serve did not come up")


def test_serve_creates_the_database_and_prints_a_first_key_once(
    serve_process: tuple[subprocess.Popen[str], int, Path],
) -> None:
    process, port, cwd = serve_process
    assert process.stdout is not None
    key = ""
    for line in process.stdout:
        if line.startswith("ckpt_"):
            key = line.strip()
            break
    assert key
    wait_until_up(port)
    assert (cwd / "ckpt.db").exists()
    headers = {"Authorization": f"Bearer {key}"}
    base = f"http://127.0.0.1:{port}/v1"
    created = httpx.post(
        f"{base}/preview/models",
        headers=headers,
        json={"project": "p", "name": "n", "base_model": "b"},
    )
    assert created.status_code == 200
    assert created.json()["entity"] == "default"
    assert httpx.get(f"{base}/system-check").json() == {
        "status": "ok",
        "checks": {"database": "ok", "blobs": "ok"},
    }

    process.terminate()
    process.communicate(timeout=10)
    port = free_port()
    second = subprocess.Popen(
        [sys.executable, "-m", "ckpt_registry.cli", "serve", "--port", str(port)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_up(port)
        assert (
            httpx.get(f"http://127.0.0.1:{port}/v1/preview/models", headers=headers).status_code
            == 200
        )
    finally:
        second.terminate()
        output, _ = second.communicate(timeout=10)
    assert "ckpt_" not in output  # the first key is made and shown once, not at every start
