"""A client-only install: with the `[server]` extra's packages impossible to import, the SDK and the
client commands of `ckpt` work against a real server, and `ckpt serve`/`db`/`keys` say in one line
what to install. A blocking import hook in a subprocess stands in for a venv without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ckpt_registry.cli.main import SERVER_PACKAGES
from ckpt_registry.client import Client

# Installed first in the subprocess: every import of a server package fails, as in a client-only
# install, and is recorded; at exit the attempts and any server module loaded are printed.
BLOCK_SERVER = f"""
import atexit, sys
BLOCKED = {sorted(SERVER_PACKAGES)!r}
attempted = []

class BlockServer:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            attempted.append(name)
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, BlockServer())

def report():
    ours = sorted(m for m in sys.modules if m.startswith(("ckpt_registry.server",
                  "ckpt_registry.storage", "ckpt_registry.blobs", "ckpt_registry.cli.server")))
    print("CLIENT-ONLY", {{"attempted": attempted, "loaded": ours}}, file=sys.stderr)

atexit.register(report)
"""


def client_only(code: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_SERVER + code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def ckpt_client_only(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return client_only("from ckpt_registry.cli.main import cli\ncli()", *args, **env)


def clean(result: subprocess.CompletedProcess[str]) -> bool:
    return "CLIENT-ONLY {'attempted': [], 'loaded': []}" in result.stderr


def test_the_sdk_imports_nothing_of_the_server() -> None:
    result = client_only(
        "import ckpt_registry, ckpt_registry.client, ckpt_registry.integrations.hf_trainer\n"
        "import ckpt_registry.cli.main, ckpt_registry.cli.checkpoints, ckpt_registry.cli.importer\n"
        "print(ckpt_registry.Client.__name__)"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == "Client\n"
    assert clean(result), result.stderr


@pytest.mark.parametrize(
    "args",
    [["serve"], ["serve", "--port", "9000", "--workers", "2"], ["db", "upgrade"], ["keys", "list"]],
)
def test_server_commands_say_what_to_install(args: list[str]) -> None:
    result = ckpt_client_only(*args)

    assert result.returncode == 1
    hint = result.stderr.splitlines()[0]
    assert hint.startswith(f"Error: `ckpt {args[0]}` needs the server, which this install does")
    assert hint.endswith("pip install 'ckpt-registry[server]'")
    assert "Traceback" not in result.stderr


def test_help_lists_the_server_commands_and_what_they_need() -> None:
    result = ckpt_client_only("--help")

    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "[needs the server extra]" in result.stdout
    assert "checkpoints" in result.stdout


def test_client_commands_work_against_a_real_server(server_url: str, api_key: str) -> None:
    with Client(api_key=api_key, base_url=server_url) as sdk:
        model = sdk.models.create(project="hf", name="run1", base_model="gpt2")
        for step in (1, 2, 3):
            sdk.checkpoints.register(model.id, step=step, metrics={"loss": 1 / step})
    env = {"CKPT_API_KEY": api_key, "CKPT_BASE_URL": server_url}

    listed = ckpt_client_only("checkpoints", "list", "hf/run1", "--limit", "2", "--json", **env)
    best = ckpt_client_only(
        "checkpoints", "best", model.id, "--metric", "loss", "--mode", "min", "--json", **env
    )

    assert listed.returncode == 0, listed.stderr
    assert [c["step"] for c in json.loads(listed.stdout)] == [1, 2, 3]
    assert json.loads(best.stdout)["step"] == 3
    assert clean(listed) and clean(best), listed.stderr + best.stderr
