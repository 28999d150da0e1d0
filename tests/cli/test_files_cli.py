"""`ckpt checkpoints upload | download | files` and retention's freed bytes against a real server,
as a user runs them: tables and progress for people, JSON for scripts."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from ckpt_registry.client import Client

from .conftest import Ckpt

MIB = 1024 * 1024

FOLDER = {
    "model.safetensors": os.urandom(2 * MIB),
    "config.json": b'{"layers": 2}',
    "tokenizer/vocab.txt": b"a\nb\n" * 100,
}


@pytest.fixture
def ckpt(ckpt_command: Callable[..., Ckpt]) -> Ckpt:
    return ckpt_command("checkpoints")


@pytest.fixture
def model_id(sdk: Client) -> str:
    return sdk.models.create(project="p", name="cli-files", base_model="b").id


def write(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def test_upload_registers_the_step_then_files_and_download_by_best(
    ckpt: Ckpt, model_id: str, tmp_path: Path
) -> None:
    folder = write(tmp_path / "checkpoint-10", FOLDER)
    first = ok(ckpt("upload", model_id, "--step", "10", str(folder), "--metric", "loss=0.5"))
    assert "Registered step 10" in first.stdout
    assert "Sent 3 file(s)" in first.stdout and "skipped 0" in first.stdout

    again = json.loads(ok(ckpt("upload", model_id, "--step", "10", str(folder), "--json")).stdout)
    assert again["outcome"] == "present"
    assert again["upload"]["bytes_sent"] == 0
    assert sorted(again["upload"]["skipped"]) == sorted(FOLDER)
    other = write(tmp_path / "checkpoint-20", {"model.safetensors": b"worse weights"})
    ok(ckpt("upload", model_id, "--step", "20", str(other), "--metric", "loss=0.9"))

    table = ok(ckpt("files", model_id, "--step", "10")).stdout
    assert "tokenizer/vocab.txt" in table and "3 file(s)" in table
    listed = json.loads(ok(ckpt("files", model_id, "--step", "10", "--json")).stdout)
    assert [f["path"] for f in listed] == sorted(FOLDER)
    assert {f["path"]: f["size_bytes"] for f in listed} == {p: len(d) for p, d in FOLDER.items()}

    best = json.loads(
        ok(
            ckpt("download", model_id, "--best", "loss:min", str(tmp_path / "best"), "--json")
        ).stdout
    )
    assert best["checkpoint"]["step"] == 10
    assert sorted(best["downloaded"]) == sorted(FOLDER)
    for path, data in FOLDER.items():
        assert (tmp_path / "best" / path).read_bytes() == data

    latest = ok(ckpt("download", model_id, "--latest", str(tmp_path / "latest")))
    assert "Step 20" in latest.stdout and "downloaded 1 file(s)" in latest.stdout
    no_mode = ok(ckpt("download", model_id, "--best", "loss", str(tmp_path / "max")))
    assert "highest value (max); add :min" in no_mode.stderr
    assert "Step 20" in no_mode.stdout

    both = ckpt("download", model_id, "--latest", "--step", "10", str(tmp_path / "x"))
    assert both.exit_code == 2 and "one of --step" in both.output
    missing = ckpt("download", model_id, "--step", "99", str(tmp_path / "x"))
    assert missing.exit_code == 1 and "Error: 404" in missing.output


def test_progress_shows_bytes_and_files_and_json_stays_clean(
    ckpt: Ckpt, model_id: str, tmp_path: Path
) -> None:
    folder = write(tmp_path / "c", FOLDER)
    shown = ok(ckpt("upload", model_id, "--step", "1", str(folder), "--progress"))
    assert "Uploading 3/3 files" in shown.stderr
    assert "MB" in shown.stderr  # bytes moved, of the total
    quiet = ok(ckpt("download", model_id, "--step", "1", str(tmp_path / "out"), "--json"))
    assert quiet.stderr == ""  # not a terminal: no bar, and --json output alone on stdout
    assert json.loads(quiet.stdout)["bytes_downloaded"] == sum(map(len, FOLDER.values()))


def test_a_terminal_gets_a_live_progress_bar(
    server_url: str, api_key: str, model_id: str, tmp_path: Path
) -> None:
    folder = write(tmp_path / "c", {"big.bin": os.urandom(24 * MIB)})
    leader, follower = pty.openpty()
    command = ["checkpoints", "upload", model_id, "--step", "3", str(folder)]
    process = subprocess.Popen(
        [sys.executable, "-m", "ckpt_registry.cli", *command],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "CKPT_API_KEY": api_key, "CKPT_BASE_URL": server_url, "COLUMNS": "120"},
    )
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            piece = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not piece:
            break
        output += piece
    assert process.wait(timeout=60) == 0, output
    os.close(leader)
    text = output.decode(errors="replace")
    assert "Uploading" in text and "25.2 MB" in text  # 24 MiB, as bytes of the total
    assert "Sent 1 file(s)" in text


def test_retention_says_how_many_bytes_it_freed(
    ckpt: Ckpt, sdk: Client, model_id: str, tmp_path: Path
) -> None:
    shared = b"tokenizer" * 1000
    for step in (1, 2, 3):
        folder = write(tmp_path / f"c{step}", {"w.bin": os.urandom(100_000), "tok.json": shared})
        sdk.checkpoints.save(model_id, step=step, path=folder)

    dry = ok(ckpt("retention", model_id, "--keep-latest", "1", "--dry-run"))
    assert "Would free 200.0 kB of file storage." in dry.stdout
    real = ok(ckpt("retention", model_id, "--keep-latest", "1"))
    # Two checkpoints' own weights went; the tokenizer the kept one shares stays.
    assert "Freed 200.0 kB of file storage." in real.stdout
    result: Any = json.loads(ok(ckpt("retention", model_id, "--keep-latest", "1", "--json")).stdout)
    assert result["freed_bytes"] == 0
