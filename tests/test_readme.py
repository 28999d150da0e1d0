"""The README's examples, run as written against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import RunningServer

README = (Path(__file__).parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"<!-- readme-test -->\n```(\w+)\n(.*?)```", README, re.DOTALL)


def test_the_readme_has_runnable_examples() -> None:
    assert [language for language, _ in BLOCKS] == ["bash", "bash", "bash", "python", "python"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_readme_examples_run(server: RunningServer, api_key: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CKPT_BASE_URL": server.url,
        "CKPT_API_KEY": api_key,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    shell = "set -euo pipefail\n" + "".join(code for language, code in BLOCKS if language == "bash")
    ran = subprocess.run(
        ["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert '"deleted_count":1,"not_found_steps":[400]' in ran.stdout
    assert '"path":"config.json","size_bytes":22' in ran.stdout  # the upload, then the list
    # The range (bytes 0-13) is printed; the whole file went to downloaded.json, equal to the upload.
    assert '{"model_type":' in ran.stdout
    assert '{"model_type": "gpt2"}' not in ran.stdout
    assert "val/reward" in ran.stdout  # the CLI table shows metrics as columns
    assert '"deleted_steps":[200]' not in ran.stdout  # the dry run printed a table, not JSON
    assert "Registered step 400" not in ran.stdout and "Found step 400" in ran.stdout
    assert (tmp_path / "restored" / "config.json").read_bytes() == b'{"model_type": "gpt2"}'

    python, pytorch = [code for language, code in BLOCKS if language == "python"]
    ran = subprocess.run(
        [sys.executable, "-c", python], env=env, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "200 {'loss': 0.2}",
        "300 {'loss': 0.3}",
        "400 {'loss': 0.25, 'val/reward': 0.71}",
        "500 {'loss': 0.42}",
        "best: 200",
    ]

    ran = subprocess.run(
        [sys.executable, "-c", pytorch],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr
    (line,) = ran.stdout.splitlines()
    assert re.fullmatch(r"restored step (10|20|30) files \['model.pt', 'optimizer.pt'\]", line)
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["model.pt", "optimizer.pt"]
