"""The dashboard in headless Chromium, as a user drives it: paste a key, open a model, read its chart
and table, page, switch metrics, open a checkpoint and download a file, delete a step, preview and
apply retention; a bad key; a 100,000-checkpoint model opening fast; a metric only old checkpoints
have, picked and charted."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from ..bulk import bulk_load
from ..conftest import RunningServer
from ..server.helpers import create_model, register
from .conftest import ARTIFACTS, new_key, origin, read_only_key, screenshot, sign_in

STEPS = [10 * index for index in range(30)]  # 0, 10, .. 290
BEST_LOSS_STEP = 170
SHARED = b"tokenizer" * 50
OWN = {0: b"a" * 1000, 10: b"b" * 2000, 290: b"latest" * 10}


def loss(step: int) -> float:
    return abs(step - BEST_LOSS_STEP) / 100 + 0.05


@pytest.fixture(scope="module")
def api(site: RunningServer, site_key: str) -> Iterator[httpx.Client]:
    with site.client(site_key) as client:
        yield client


@pytest.fixture(scope="module")
def model(api: httpx.Client) -> str:
    """30 checkpoints with `loss` (best: lowest, at step 170) and `reward` (best at 290); files on
    steps 0, 10 and 290, the tokenizer shared by 0 and 290."""
    model_id = create_model(api, "qwen-grpo", project="agents")
    create_model(api, "other-model", project="vision")
    for step in STEPS:
        checkpoint = register(api, model_id, step, {"loss": loss(step), "reward": step / 290})
        for path, data in (
            ("adapter_model.safetensors", OWN.get(step)),
            ("tokenizer.json", SHARED),
        ):
            if data is not None and (path != "tokenizer.json" or step in (0, 290)):
                url = f"/preview/models/{model_id}/checkpoints/{checkpoint['id']}/files/{path}"
                assert api.put(url, content=data).status_code == 201
    return model_id


def chart(page: Page, metric: str) -> dict[str, str]:
    figure = page.locator(f'figure.chart[data-metric="{metric}"] .plot')
    expect(figure.locator("canvas")).to_be_visible()
    return {
        name: figure.get_attribute(f"data-{name}") or ""
        for name in ("points", "count", "best-step", "latest-step")
    }


def table_steps(page: Page) -> list[int]:
    rows = page.locator("#checkpoints-table tbody tr")
    return [int(step) for step in rows.evaluate_all("rows => rows.map(r => r.dataset.step)")]


def test_a_user_reads_a_model_and_acts_on_it(
    page: Page, site: RunningServer, site_key: str, model: str, api: httpx.Client
) -> None:
    sign_in(page, site, site_key)
    models_table = page.locator("#models-table")
    expect(models_table).to_contain_text("qwen-grpo")
    expect(models_table).to_contain_text("other-model")
    row = models_table.locator(f'tr[data-model-id="{model}"]')
    expect(row).to_contain_text("agents")
    expect(row.locator("td").nth(3)).to_have_text("30")  # checkpoints
    expect(row.locator("td").nth(4)).to_have_text("290")  # the latest step
    # Stored: each content once (the tokenizer is on two checkpoints).
    stored = sum(map(len, OWN.values())) + len(SHARED)
    expect(row.locator("td").nth(6)).to_have_attribute("title", f"{stored} bytes")
    # The key lives in session storage and nowhere else.
    assert page.evaluate("() => document.cookie") == ""
    assert page.evaluate("() => sessionStorage.length") == 1
    screenshot(page, "models")

    page.get_by_label("Project").fill("vision")
    page.get_by_role("button", name="Apply").click()
    expect(models_table).not_to_contain_text("qwen-grpo")
    page.get_by_label("Project").fill("")
    page.get_by_role("button", name="Apply").click()

    page.get_by_role("link", name="qwen-grpo").click()
    expect(page.get_by_role("heading", name="qwen-grpo")).to_be_visible()
    # The chart: every one of the 30 points (fewer than the budget), best and latest marked.
    assert chart(page, "loss") == {
        "points": "30",
        "count": "30",
        "best-step": str(BEST_LOSS_STEP),
        "latest-step": "290",
    }
    assert table_steps(page) == STEPS[::-1][:20]
    screenshot(page, "model")
    page.emulate_media(color_scheme="dark")  # the chart is drawn again in the dark colours
    expect(page.locator('figure.chart[data-metric="loss"] canvas')).to_be_visible()
    assert (
        page.evaluate("() => getComputedStyle(document.body).backgroundColor") == "rgb(13, 17, 23)"
    )
    screenshot(page, "model-dark")
    page.emulate_media(color_scheme="light")
    expect(page.locator('figure.chart[data-metric="loss"] canvas')).to_be_visible()

    # Values on hover: uPlot's legend shows the hovered step's value.
    plot = page.locator('figure.chart[data-metric="loss"] .u-over')
    plot.hover()
    legend = page.locator('figure.chart[data-metric="loss"] .u-legend .u-value')
    expect(legend.first).not_to_have_text("--")  # the hovered step
    expect(legend.nth(1)).not_to_have_text("--")  # its loss

    # Paging forward and back, then oldest first.
    page.locator("#table-next").click()
    expect(page.locator("#checkpoints-table tbody tr")).to_have_count(10)
    assert table_steps(page) == STEPS[::-1][20:]
    page.locator("#table-prev").click()
    expect(page.locator("#checkpoints-table tbody tr")).to_have_count(20)
    assert table_steps(page)[0] == 290
    page.locator("#table-order").select_option("asc")
    expect(page.locator("#checkpoints-table tbody tr").first).to_have_attribute("data-step", "0")

    # Another metric: its own chart, the best marker following the "best by" choice.
    page.get_by_label("reward").check()
    expect(page.locator("figure.chart")).to_have_count(2)
    page.locator("#best-metric").select_option("reward")
    expect(page.locator("#best-mode")).to_have_value("max")
    page.locator("#zoom-apply").click()
    expect(page.locator('figure.chart[data-metric="reward"] .plot')).to_have_attribute(
        "data-best-step", "290"
    )
    # Zoom to a step range: the series is fetched again for it.
    page.locator("#zoom-from").fill("100")
    page.locator("#zoom-to").fill("200")
    page.locator("#zoom-apply").click()
    expect(page.locator('figure.chart[data-metric="loss"] .plot')).to_have_attribute(
        "data-count", "11"
    )
    page.locator("#zoom-reset").click()
    expect(page.locator('figure.chart[data-metric="loss"] .plot')).to_have_attribute(
        "data-count", "30"
    )
    page.get_by_label("Log scale").check()
    expect(page.locator('figure.chart[data-metric="loss"] canvas')).to_be_visible()

    # A click on the chart opens the checkpoint under the cursor.
    plot = page.locator('figure.chart[data-metric="loss"] .u-over')
    # The log scale toggle redraws the chart: its overlay may be replaced between lookups, so wait
    # for the one that stays (a box is None while no element is attached).
    expect(plot).to_be_visible()
    box = None
    for _ in range(50):
        box = plot.bounding_box()
        if box is not None:
            break
        page.wait_for_timeout(100)
    assert box is not None
    plot.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
    expect(page).to_have_url(re.compile("/steps/[0-9]+$"))
    expect(page.locator("#checkpoint-title")).to_contain_text("Step")
    page.go_back()

    # A checkpoint's files, and a download that carries the key.
    page.locator("#table-order").select_option("desc")
    page.get_by_role("link", name="290", exact=True).click()
    expect(page.locator("#checkpoint-title")).to_have_text("Step 290")
    files = page.locator("#files-table")
    expect(files).to_contain_text("adapter_model.safetensors")
    expect(files).to_contain_text(hashlib.sha256(SHARED).hexdigest())
    expect(page.locator("#metrics-table")).to_contain_text("reward")
    screenshot(page, "checkpoint")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download adapter_model.safetensors").click()
    assert Path(download.value.path()).read_bytes() == OWN[290]
    page.locator(".crumbs").get_by_role("link", name="qwen-grpo").click()

    # Delete a step: the confirmation names it; cancelling keeps it.
    page.locator('.select-step[value="280"]').check()
    page.locator("#delete-selected").click()
    expect(page.locator("#confirm")).to_contain_text("Steps 280")
    page.locator("#confirm-cancel").click()
    assert 280 in table_steps(page)
    page.locator('.select-step[value="280"]').check()
    page.locator("#delete-selected").click()
    page.locator("#confirm-ok").click()
    expect(page.locator('#checkpoints-table tr[data-step="280"]')).to_have_count(0)
    assert api.get(f"/preview/models/{model}/checkpoints/steps/280").status_code == 404

    # Retention: keep the latest 3 and the best loss; the preview names what goes and the bytes.
    page.locator("#keep-latest").fill("3")
    page.locator("#keep-best").fill("1")
    page.locator("#keep-metric").select_option("loss")
    page.locator("#keep-mode").select_option("min")
    page.locator("#retention-preview").click()
    summary = page.locator("#retention-summary")
    expect(summary).to_contain_text("Would delete 25 checkpoint(s)")
    going = [s for s in STEPS if s not in (170, 260, 270, 280, 290)]
    expect(summary).to_have_attribute("data-steps", ",".join(map(str, going)))
    # Steps 0 and 10 hold 3,000 bytes no survivor holds; the tokenizer stays with step 290.
    expect(summary).to_have_attribute("data-freed-bytes", "3000")
    assert (
        len(api.get(f"/preview/models/{model}/checkpoints", params={"limit": 100}).json()["data"])
        == 29
    )
    page.locator("#retention-apply").click()
    expect(page.locator("#confirm")).to_contain_text("Steps 0, 10, 20")
    page.locator("#confirm-ok").click()
    expect(page.locator("#checkpoints-table tbody tr")).to_have_count(4)
    assert table_steps(page) == [290, 270, 260, 170]


def test_a_bad_key_shows_a_message_and_the_form_again(
    page: Page, site: RunningServer, site_key: str
) -> None:
    sign_in(page, site, "ckpt_not-a-key")
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("This key was not accepted")
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0
    screenshot(page, "error")
    # The right key then works, from the same form.
    page.get_by_label("API key").fill(site_key)
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", name="Models")).to_be_visible()


def test_a_narrow_window_scrolls_no_page_sideways(
    page: Page, site: RunningServer, site_key: str, model: str
) -> None:
    page.set_viewport_size({"width": 390, "height": 800})
    sign_in(page, site, site_key)
    page.goto(origin(site) + f"/#/models/{model}")
    expect(page.locator("#charts")).to_have_attribute("data-ready", "true")
    # Wide tables scroll inside their own box; the page itself never does.
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    # Everything is reachable from the keyboard: Tab reaches the chart controls.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement !== document.body")


def test_a_100000_checkpoint_model_opens_with_its_chart_quickly(
    page: Page, site: RunningServer, api: httpx.Client
) -> None:
    model_id = create_model(api, "big", project="scale")
    bulk_load(site.database_url, model_id, 100_000)
    sign_in(page, site, new_key(site))
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    timings = []
    for _ in range(3):
        page.goto("about:blank")
        start = time.perf_counter()
        page.goto(origin(site) + f"/#/models/{model_id}")
        expect(page.locator("#charts")).to_have_attribute("data-ready", "true")
        timings.append(time.perf_counter() - start)
    figure = page.locator('figure.chart[data-metric="loss"] .plot')
    assert figure.get_attribute("data-count") == "100000"
    assert int(figure.get_attribute("data-points") or 0) <= 2000
    ARTIFACTS.mkdir(exist_ok=True)
    line = f"100,000-checkpoint model page to chart: {', '.join(f'{t:.3f}' for t in timings)} s\n"
    with (ARTIFACTS / "timings.txt").open("a") as timing_file:
        timing_file.write(line)
    print(line)  # noqa: T201
    # The goal is under 1 s (docs/dashboard.md); this bound only catches a gross regression
    # without making a busy CI machine flaky.
    assert min(timings) < 5


def test_a_read_only_key_sees_no_write_action(
    page: Page, site: RunningServer, model: str, api: httpx.Client
) -> None:
    # A real read-only key: the server itself answers `GET /v1/preview/key` with read_only true.
    key = read_only_key(site)
    with site.client(key) as reader:
        assert reader.get("/preview/key").json() == {"entity": "default", "read_only": True}
    sign_in(page, site, key)
    expect(page.locator("#who")).to_have_text("default (read-only)")
    # It reads everything: the models, their summaries, a model's chart and table, a checkpoint.
    row = page.locator(f'#models-table tr[data-model-id="{model}"]')
    expect(row).to_contain_text("qwen-grpo")
    count = len(
        api.get(f"/preview/models/{model}/checkpoints", params={"limit": 100}).json()["data"]
    )
    expect(row.locator("td").nth(3)).to_have_text(str(count))
    row.get_by_role("link", name="qwen-grpo").click()
    expect(page.locator("#charts")).to_have_attribute("data-ready", "true")
    expect(page.locator('figure.chart[data-metric="loss"] canvas')).to_be_visible()
    expect(page.locator("#checkpoints-table tbody tr")).to_have_count(min(count, 20))
    # No write action is offered: no step selection, no delete, no retention preview or apply.
    expect(page.locator("#delete-selected")).to_have_count(0)
    expect(page.locator(".select-step")).to_have_count(0)
    expect(page.locator("#retention-form")).to_have_count(0)
    expect(page.locator("#retention-apply")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("null")  # what is left out leaves no trace
    page.locator("#checkpoints-table tbody tr a").first.click()
    expect(page.locator("#checkpoint-title")).to_contain_text("Step")
    expect(page.locator("#metrics-table")).to_contain_text("loss")
    expect(page.locator("#delete-checkpoint")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("null")
    screenshot(page, "read-only")


def test_models_sort_and_page_across_all_of_the_entitys_models(
    page: Page, site: RunningServer
) -> None:
    # 105 models: more than one page of the models API (100) and six of the dashboard (20),
    # created in an order that is neither their names' nor their updates'.
    key = new_key(site, "many-models")
    count = 105
    created = [(index * 37) % count for index in range(count)]  # a permutation of 0..104
    names = {index: f"run-{index:03d}" for index in range(count)}
    with site.client(key) as many:
        ids = {index: create_model(many, names[index], project="sweep") for index in created}
        # The last update: models 5, 80 and 40 get a checkpoint, in that order.
        for index in (5, 80, 40):
            register(many, ids[index], 1, {"loss": 1.0})
    sign_in(page, site, key)
    table = page.locator("#models-table tbody tr td:first-child")
    # Newest created first, by default.
    expect(table.first).to_have_text(names[created[-1]])

    page.get_by_label("Sort by").select_option("name")
    page.get_by_role("button", name="Apply").click()
    expect(table.first).to_have_text("run-000")
    assert table.all_inner_texts() == [names[index] for index in range(20)]
    expect(page.locator("#models-range")).to_have_text("1\u201320 of 105")
    seen = table.all_inner_texts()
    for _ in range(5):
        page.locator("#models-next").click()
        expect(table.first).not_to_have_text(seen[-20])
        seen += table.all_inner_texts()
    assert seen == sorted(names.values())
    expect(page.locator("#models-next")).to_be_disabled()
    expect(page.locator("#models-range")).to_have_text("101\u2013105 of 105")
    page.locator("#models-prev").click()
    expect(table.first).to_have_text("run-080")

    # The last update, across every model: the three with checkpoints first, newest first.
    page.get_by_label("Sort by").select_option("updated")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#models-range")).to_have_text("1\u201320 of 105")
    expect(table.first).to_have_text("run-040")
    assert table.all_inner_texts()[:3] == ["run-040", "run-080", "run-005"]
    expect(page.locator("#models-truncated")).to_have_count(0)
    expect(page.locator("main")).not_to_contain_text("null")


def test_a_metric_only_early_checkpoints_have_can_be_picked_and_charted(
    page: Page, site: RunningServer, site_key: str, api: httpx.Client
) -> None:
    # 30 checkpoints; `eval/early` only on the first five, which the latest 20 do not reach.
    model_id = create_model(api, "early-evals", project="evals")
    for step in range(30):
        early = {"eval/early": step / 10} if step < 5 else {}
        register(api, model_id, step, {"loss": 1 / (step + 1), **early})
    sign_in(page, site, site_key)
    page.goto(origin(site) + f"/#/models/{model_id}")
    expect(page.locator("#charts")).to_have_attribute("data-ready", "true")
    # The first chart is of what the run logs now; the table (the latest 20) has no such column.
    expect(page.locator("figure.chart")).to_have_count(1)
    assert chart(page, "loss")["count"] == "30"
    expect(page.locator("#checkpoints-table thead")).not_to_contain_text("eval/early")

    page.get_by_label("eval/early").check()
    page.locator("#best-metric").select_option("eval/early")
    page.locator("#zoom-apply").click()

    expect(page.locator("figure.chart")).to_have_count(2)
    expect(page.locator('figure.chart[data-metric="eval/early"] .plot')).to_have_attribute(
        "data-best-step", "4"
    )
    early_chart = chart(page, "eval/early")
    assert (early_chart["points"], early_chart["count"]) == ("5", "5")
    expect(page.locator("#keep-metric option")).to_have_text(["eval/early", "loss"])
