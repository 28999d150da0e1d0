"""A live server on SQLite and one headless Chromium per module (Debian's, never a download)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from click.testing import CliRunner
from playwright.sync_api import Browser, Page, sync_playwright

from ckpt_registry.cli.main import cli
from ckpt_registry.server import Settings

from ..conftest import RunningServer, add_key, serving

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SCREENSHOTS = ARTIFACTS / "screenshots"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip("the browser tests need /usr/bin/chromium (scripts/test installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def site(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """One server for the module's tests: the dashboard at `/`, the API under `/v1`."""
    folder = tmp_path_factory.mktemp("dashboard")
    shutil.copyfile(sqlite_template, folder / "ckpt.db")
    settings = Settings(
        database_url=f"sqlite:///{folder / 'ckpt.db'}",
        blob_url=str(folder / "blobs"),
        gc_interval_seconds=0,
    )
    with serving(settings) as running:
        yield running


@pytest.fixture(scope="module")
def site_key(site: RunningServer) -> str:
    return new_key(site)


def new_key(site: RunningServer, entity: str = "default") -> str:
    """A key of `entity`. On a thread: Playwright's sync API runs an event loop on this one, and
    `add_key` runs its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(add_key, site.database_url, entity).result()


def read_only_key(site: RunningServer) -> str:
    """A read-only key of entity `default`, made as an operator does: `ckpt keys create --read-only`.
    On a thread, like `new_key`: the command runs its own event loop."""
    args = ["keys", "create", "--entity", "default", "--name", "viewer", "--read-only"]
    args += ["--database-url", site.database_url]
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(CliRunner().invoke, cli, args).result()
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def origin(site: RunningServer) -> str:
    return site.url.removesuffix("/v1")


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def sign_in(page: Page, site: RunningServer, key: str) -> None:
    page.goto(origin(site) + "/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Continue").click()
