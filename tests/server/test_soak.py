"""A short run of the soak benchmark (benchmarks/soak.py) against `ckpt serve` on both databases:
mixed reads and writes at 16 connections for a few seconds end with zero errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import pg

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_a_short_soak_has_no_errors(database: str) -> None:
    env = dict(os.environ)
    if database == "postgresql":
        admin_url = pg.postgres_admin_url()
        if admin_url is None:
            pytest.skip("PostgreSQL tests need CKPT_TEST_POSTGRES_URL")
        env["CKPT_TEST_POSTGRES_URL"] = admin_url
    # Memory is the full soak's measure (60 s, RSS within 10%), not a few seconds' on a busy machine.
    options = ["--seconds", "5", "--warmup", "1", "--connections", "16", "--checkpoints", "20"]
    run = subprocess.run(
        [sys.executable, str(SOAK), "--databases", database, *options, "--max-rss-growth", "10"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (summary,) = [line for line in run.stdout.splitlines() if line.startswith(database)]
    assert " errors 0 " in summary, run.stdout
    requests = int(summary.split("requests")[1].split()[0])
    assert requests > 50, summary
