"""`ckpt serve` run in process (CliRunner) sets `CKPT_*` variables for its uvicorn workers: put the
environment back after each test, so no later test's server inherits another test's settings."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def restored_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
