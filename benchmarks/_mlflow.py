"""MLflow 3's artifact proxy (`mlflow server --artifacts-destination`), the self-hosted peer the
transfer benchmark compares `ckpt serve` with in the same run.

MLflow is never a dependency of the project: it is installed on demand into its own venv in
benchmarks/out/ (kept for the next run), and the benchmark goes on without it when it cannot be.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from _common import HOST, OUT, log
from _servers import Server, free_port, spawn, stop
from _transfer import SOURCE_CHUNK, tree_cpu_seconds

VENV = OUT / "mlflow-venv"
REQUIREMENT = "mlflow>=3,<4"
# MLflow's start (its database migrations, then uvicorn) takes ~35 s on a loaded 2-core machine.
START_SECONDS = 240
INSTALL_SECONDS = 1800
SETTLE_SECONDS = 90
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


@dataclass(frozen=True)
class Mlflow:
    executable: Path
    version: str


def installed() -> Mlflow | None:
    executable = VENV / "bin" / "mlflow"
    if not executable.exists():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        shown = subprocess.run(
            [str(executable), "--version"], capture_output=True, text=True, timeout=120
        )
        if shown.returncode == 0:  # "mlflow, version 3.17.2"
            return Mlflow(executable, shown.stdout.strip().rsplit(" ", 1)[-1])
    return None


def ensure_installed() -> Mlflow | str:
    """MLflow in its own venv, installed there if it is not yet; or why it cannot be had."""
    found = installed()
    if found is not None:
        return found
    log(f"installing {REQUIREMENT} into {VENV} (once; a few minutes)")
    shutil.rmtree(VENV, ignore_errors=True)
    steps = (
        [sys.executable, "-m", "venv", str(VENV)],
        [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", REQUIREMENT],
    )
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_SECONDS)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"could not install {REQUIREMENT}: {exc}"
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "ignored" not in line]
            last = errors[-1] if errors else f"exit {done.returncode}"
            return f"could not install {REQUIREMENT}: {last}"
    return installed() or f"{REQUIREMENT} installed, but `mlflow --version` fails"


@dataclass
class MlflowServer:
    server: Server
    artifacts: Path  # --artifacts-destination

    def url(self, path: str) -> str:
        return f"{self.server.base_url}{ARTIFACTS_API}/{path}"

    def stored_sha256(self, path: str) -> str:
        """The sha256 of the file MLflow stored for `path` (read from its folder, untimed)."""
        digest = hashlib.sha256()
        with (self.artifacts / path).open("rb", buffering=0) as file:
            while chunk := file.read(SOURCE_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def remove(self, path: str) -> None:
        (self.artifacts / path).unlink(missing_ok=True)


def start(mlflow: Mlflow) -> MlflowServer:
    """`mlflow server` with one worker (as `ckpt serve` runs here), a new SQLite backend store and
    a new artifacts folder; it serves artifacts (its default) through /api/2.0/mlflow-artifacts."""
    database = OUT / "transfer-mlflow.sqlite"
    database.unlink(missing_ok=True)
    artifacts = OUT / "transfer-mlflow-artifacts"
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir()
    port = free_port()
    log_path = OUT / "transfer-mlflow.log"
    child = spawn(
        [
            str(mlflow.executable),
            "server",
            *("--host", HOST, "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", f"sqlite:///{database}"),
            *("--artifacts-destination", str(artifacts)),
        ],
        log_path=log_path,
    )
    server = Server(f"MLflow {mlflow.version}", f"http://{HOST}:{port}", child)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {child.returncode}; see {log_path}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                started = MlflowServer(server, artifacts)
                warm_up(started)
                return started
        time.sleep(0.5)
    stop(child)
    raise RuntimeError(f"mlflow server did not answer within {START_SECONDS} s; see {log_path}")


def warm_up(mlflow: MlflowServer) -> None:
    """A small artifact up and down (first requests load code), then a wait until its processes
    are nearly idle: after its start MLflow spawns a job runner and its consumers, whose own start
    would otherwise take CPU from the first timed transfers."""
    url = mlflow.url("warm-up/probe.bin")
    httpx.put(url, content=b"\0" * SOURCE_CHUNK, timeout=60).raise_for_status()
    httpx.get(url, timeout=60).raise_for_status()
    mlflow.remove("warm-up/probe.bin")
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        before = tree_cpu_seconds(mlflow.server.pid)
        time.sleep(2)
        if tree_cpu_seconds(mlflow.server.pid) - before < 0.2:  # under 10% of a core
            return
    log(f"mlflow server still busy after {SETTLE_SECONDS} s; measuring anyway")
