"""`ckpt serve` fails safe: no password from a URL in any message, one line for a database it cannot
write, loopback by default and a warning when bound to every interface."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ckpt_registry.cli.main import cli
from ckpt_registry.server import Settings
from ckpt_registry.storage.migrate import upgrade
from ckpt_registry.storage.urls import redacted
from tests.cli.test_server_cli import free_port

SECRET = "s3cretpw"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["serve", "--database-url", f"mysql://admin:{SECRET}@db/x"],
        [
            "serve",
            "--database-url",
            f"postgresql://admin:{SECRET}@127.0.0.1:1/x",
            "--blob-url",
            "b",
        ],
        ["keys", "list", "--database-url", f"mysql://admin:{SECRET}@db/x"],
        ["db", "upgrade", "--database-url", f"mysql+pymysql://admin:{SECRET}@db/x"],
    ],
    ids=["serve mysql", "serve unreachable postgresql", "keys list", "db upgrade"],
)
def test_no_password_from_a_database_url_in_any_message(args: list[str]) -> None:
    code, output = invoke(*args)

    assert code == 1
    assert SECRET not in output
    assert "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert "admin:***@" in output


def test_no_password_from_a_blob_url_in_any_message(tmp_path: Path) -> None:
    code, output = invoke(
        "serve",
        "--database-url",
        f"sqlite:///{tmp_path / 'ckpt.db'}",
        "--blob-url",
        f"s3://AKIAEXAMPLE:{SECRET}@bucket/prefix",
    )

    assert code == 1
    assert SECRET not in output
    assert "AKIAEXAMPLE:***@bucket" in output and "AWS_SECRET_ACCESS_KEY" in output


def test_settings_never_repeat_a_refused_url() -> None:
    with pytest.raises(ValueError) as refused:
        Settings(database_url=f"mysql://admin:{SECRET}@db/x")
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://admin:{SECRET}@db:5432/x", "postgresql://admin:***@db:5432/x"),
        (f"http://user:{SECRET}@minio:9000", "http://user:***@minio:9000"),
        ("postgresql://admin@db/x", "postgresql://***@db/x"),
        ("sqlite:///./ckpt.db", "sqlite:///./ckpt.db"),
        (f"s3://{SECRET}@bucket/p", "s3://***@bucket/p"),
    ],
)
def test_redacted_urls(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.fixture
def read_only_database() -> Iterator[Path]:
    """A migrated SQLite file this test's `ckpt serve` may read but not write."""
    folder = Path(tempfile.mkdtemp(prefix="ckpt-ro-"))
    try:
        folder.chmod(0o755)
        path = folder / "ckpt.db"
        upgrade(f"sqlite:///{path}")
        path.chmod(0o444)
        yield path
    finally:
        shutil.rmtree(folder)


def test_a_read_only_database_file_fails_start_up_in_one_line(read_only_database: Path) -> None:
    command = [sys.executable, "-m", "ckpt_registry.cli", "serve", "--port", str(free_port())]
    command += ["--database-url", f"sqlite:///{read_only_database}"]
    command += ["--blob-url", str(read_only_database.parent / "blobs")]
    if os.geteuid() == 0:  # root writes any file: run as `nobody`, as a service account would
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv")
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]

    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"Error: not starting: the database file {read_only_database} is read-only for this "
        f"user: make it writable (chmod u+w {read_only_database}) or run ckpt serve as its owner"
    ]


def test_serve_binds_loopback_by_default() -> None:
    assert Settings().host == "127.0.0.1"
    code, output = invoke("serve", "--help")
    assert code == 0
    assert "[default: 127.0.0.1]" in output


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serve_warns_when_bound_to_every_interface(tmp_path: Path, host: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "ckpt_registry.cli", "serve", "--host", host, "--port", str(port)],
        cwd=tmp_path,
        env={**os.environ, "CKPT_DATABASE_URL": "sqlite:///./ckpt.db"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        warning = ""
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if line.startswith("warning:") or not line:
                warning = line
                break
        assert "listening on every network interface" in warning
        assert "--host 127.0.0.1" in warning
    finally:
        process.terminate()
        process.communicate(timeout=10)
