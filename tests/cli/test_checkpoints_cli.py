"""`ckpt checkpoints ...` against a real server, as a user runs them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result

from ckpt_registry.cli.checkpoints import parse_keep_best
from ckpt_registry.cli.main import cli
from ckpt_registry.client import Client

from .conftest import Ckpt


@pytest.fixture
def ckpt(ckpt_command: Callable[..., Ckpt]) -> Ckpt:
    return ckpt_command("checkpoints")


@pytest.fixture
def model_id(sdk: Client) -> str:
    return sdk.models.create(project="rl", name="agent", base_model="b").id


@pytest.fixture
def ten_steps(sdk: Client, model_id: str) -> list[int]:
    steps = list(range(100, 1100, 100))
    for step in steps:
        sdk.checkpoints.register(
            model_id, step=step, metrics={"loss": 1000.0 / step, "val/reward": step % 300}
        )
    return steps


def json_out(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_register_with_metrics_then_again_then_with_other_metrics(
    ckpt: Ckpt, model_id: str
) -> None:
    args = ["register", model_id, "--step", "5", "--metric", "loss=0.5", "--metric", "acc=0.9"]

    first = ckpt(*args)
    again = ckpt(*args, "--json")
    conflict = ckpt("register", model_id, "--step", "5", "--metric", "loss=0.6")

    assert first.exit_code == 0, first.output
    assert "Registered step 5" in first.stderr
    assert "loss" in first.stdout and "0.5" in first.stdout
    body = json_out(again)
    assert body["metrics"] == {"loss": 0.5, "acc": 0.9}
    assert body["created"] is False
    assert body["created_at"].endswith("Z")
    assert conflict.exit_code == 1
    assert conflict.stderr.startswith("Error: 409 ")


def test_register_from_json_merged_with_pairs(ckpt: Ckpt, model_id: str) -> None:
    result = ckpt(
        "register", model_id, "--step", "0",
        "--metrics-json", '{"loss": 1, "eval:acc/top-1": 0.5}', "--metric", "loss=2", "--json",
    )  # fmt: skip

    assert json_out(result)["metrics"] == {"loss": 2.0, "eval:acc/top-1": 0.5}


@pytest.mark.parametrize(
    "bad",
    [
        ["--metric", "loss"],
        ["--metric", "loss=high"],
        ["--metric", "loss=nan"],
        ["--metrics-json", "{not json"],
        ["--metrics-json", "[1, 2]"],
        ["--metrics-json", '{"ok": true}'],
    ],
)
def test_register_refuses_bad_metrics_before_sending(
    ckpt: Ckpt, model_id: str, sdk: Client, bad: list[str]
) -> None:
    result = ckpt("register", model_id, "--step", "1", *bad)

    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert sdk.checkpoints.latest(model_id) is None


@pytest.mark.usefixtures("ten_steps")
def test_list_one_page_as_a_table_with_a_hint(ckpt: Ckpt, model_id: str) -> None:
    result = ckpt("list", model_id, "--limit", "3")

    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header == ["step", "id", "loss", "val/reward"]
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["100", "200", "300"]
    assert "--all" in result.stderr


def test_list_json_and_ndjson_are_complete_whatever_the_page_size(
    ckpt: Ckpt, model_id: str, ten_steps: list[int]
) -> None:
    as_json = ckpt("list", model_id, "--limit", "4", "--json")
    desc = ckpt("list", model_id, "--order", "desc", "--limit", "4", "--ndjson")
    after = json_out(
        ckpt("list", model_id, "--limit", "4", "--after", json_out(as_json)[2]["id"], "--json")
    )

    # Every checkpoint, not the first page of four, and nothing on stderr to miss.
    assert [c["step"] for c in json_out(as_json)] == ten_steps
    assert as_json.stderr == "" and desc.stderr == ""
    assert set(json_out(as_json)[0]) == {"id", "step", "metrics"}
    assert [json.loads(line)["step"] for line in desc.stdout.splitlines()] == ten_steps[::-1]
    assert [c["step"] for c in after] == ten_steps[3:]


def test_list_one_page_as_json_is_the_envelope_that_says_what_follows(
    ckpt: Ckpt, model_id: str, ten_steps: list[int]
) -> None:
    first = json_out(ckpt("list", model_id, "--order", "desc", "--limit", "4", "--page", "--json"))
    last = json_out(
        ckpt("list", model_id, "--after", first["last_id"], "--limit", "100",
             "--order", "desc", "--page", "--json")
    )  # fmt: skip

    assert [c["step"] for c in first["data"]] == ten_steps[::-1][:4]
    assert first["has_more"] is True and first["last_id"] == first["data"][-1]["id"]
    assert [c["step"] for c in last["data"]] == ten_steps[::-1][4:]
    assert last["has_more"] is False
    refused = ckpt("list", model_id, "--page", "--ndjson")
    assert refused.exit_code == 2 and "--page" in refused.stderr


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_list_all_streams_every_page(
    ckpt: Ckpt, model_id: str, ten_steps: list[int], order: str
) -> None:
    expected = ten_steps if order == "asc" else ten_steps[::-1]

    ndjson = ckpt("list", model_id, "--all", "--limit", "3", "--order", order, "--ndjson")
    as_json = json_out(ckpt("list", model_id, "--all", "--limit", "3", "--order", order, "--json"))
    table = ckpt("list", model_id, "--all", "--limit", "3", "--order", order)

    assert [json.loads(line)["step"] for line in ndjson.stdout.splitlines()] == expected
    assert [c["step"] for c in as_json] == expected
    rows = [line.split() for line in table.stdout.splitlines()]
    assert rows[0] == ["step", "id", "loss", "val/reward"]
    assert [int(row[0]) for row in rows[1:]] == expected
    assert table.stderr == ""


def test_list_of_an_empty_model(ckpt: Ckpt, model_id: str) -> None:
    assert json_out(ckpt("list", model_id, "--all", "--json")) == []
    assert ckpt("list", model_id, "--ndjson").stdout == ""


@pytest.mark.usefixtures("ten_steps")
def test_get_latest_and_best(ckpt: Ckpt, model_id: str) -> None:
    latest = json_out(ckpt("latest", model_id, "--json"))
    fetched = json_out(ckpt("get", model_id, latest["id"], "--json"))
    best = json_out(ckpt("best", model_id, "--metric", "val/reward", "--mode", "max", "--json"))
    lowest_loss = ckpt("best", model_id, "--metric", "loss", "--mode", "min")
    table = ckpt("get", model_id, latest["id"])

    assert latest["step"] == 1000
    assert fetched["id"] == latest["id"] and "updated_at" in fetched
    assert best["step"] == 800  # 200 and 500 and 800 all have 200; ties go to the later step
    assert "1000" in lowest_loss.stdout
    assert "created_at" in table.stdout and "val/reward" in table.stdout


def test_latest_of_an_empty_model(ckpt: Ckpt, model_id: str) -> None:
    as_json = ckpt("latest", model_id, "--json")
    human = ckpt("latest", model_id)

    assert as_json.stdout.strip() == "null"
    assert human.exit_code == 0
    assert "no checkpoints" in human.stderr


@pytest.mark.usefixtures("ten_steps")
def test_best_of_a_metric_nobody_has_is_404(ckpt: Ckpt, model_id: str) -> None:
    result = ckpt("best", model_id, "--metric", "accuracy", "--mode", "max")

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: 404 ")


@pytest.mark.usefixtures("ten_steps")
def test_best_without_a_mode_is_refused_rather_than_guessed(ckpt: Ckpt, model_id: str) -> None:
    # A default of max would print the worst checkpoint by a loss as "the best".
    result = ckpt("best", model_id, "--metric", "loss", "--json")

    assert result.exit_code == 2
    assert "Missing option '--mode'" in result.stderr
    assert result.stdout == ""


def test_update_merges_metrics(ckpt: Ckpt, model_id: str, sdk: Client) -> None:
    checkpoint = sdk.checkpoints.register(model_id, step=1, metrics={"loss": 1.0})

    result = ckpt("update", model_id, checkpoint.id, "--metric", "eval/acc=0.75", "--json")

    assert json_out(result)["metrics"] == {"loss": 1.0, "eval/acc": 0.75}


def test_delete_reports_what_it_did_not_find(
    ckpt: Ckpt, model_id: str, ten_steps: list[int], sdk: Client
) -> None:
    human = ckpt("delete", model_id, "--step", "100", "--step", "7")
    as_json = json_out(ckpt("delete", model_id, "--step", "200", "--step", "100", "--json"))

    assert "Deleted 1 checkpoint(s)" in human.stdout
    assert "Not found: steps 7" in human.stdout
    assert as_json == {"deleted_count": 1, "not_found_steps": [100]}
    assert [c.step for c in sdk.checkpoints.list(model_id)] == ten_steps[2:]


@pytest.mark.usefixtures("ten_steps")
def test_retention_dry_run_then_for_real(ckpt: Ckpt, model_id: str, sdk: Client) -> None:
    args = ["retention", model_id, "--keep-latest", "2", "--keep-best", "val/reward:max:3"]

    plan = ckpt(*args, "--dry-run")
    plan_json = json_out(ckpt(*args, "--dry-run", "--json"))
    done = ckpt(*args)

    kept = [200, 500, 800, 900, 1000]
    deleted = [100, 300, 400, 600, 700]
    assert plan.exit_code == 0, plan.output
    assert "Would delete 5 checkpoint(s): 100, 300, 400, 600, 700" in plan.stdout
    assert plan_json == {
        "dry_run": True,
        "kept_steps": kept,
        "deleted_steps": deleted,
        "freed_bytes": 0,
    }
    assert "Deleted 5 checkpoint(s)" in done.stdout
    assert [c.step for c in sdk.checkpoints.list(model_id)] == kept


def test_retention_tells_the_bytes_it_would_free_and_frees(
    ckpt: Ckpt, model_id: str, sdk: Client, api: httpx.Client
) -> None:
    for step in (1, 2):
        checkpoint = sdk.checkpoints.register(model_id, step=step).id
        url = f"/preview/models/{model_id}/checkpoints/{checkpoint}/files/weights.bin"
        assert api.put(url, content=b"w" * 1500 * step).status_code == 201

    plan = ckpt("retention", model_id, "--keep-latest", "1", "--dry-run")
    assert "Would free 1.5 kB of file storage." in plan.stdout
    done = ckpt("retention", model_id, "--keep-latest", "1")
    assert "Freed 1.5 kB of file storage." in done.stdout


def test_keep_best_is_parsed_from_the_right() -> None:
    assert parse_keep_best("val/reward:max:3") == ("val/reward", "max", 3)
    assert parse_keep_best("eval:acc:top-1:min:0") == ("eval:acc:top-1", "min", 0)
    assert parse_keep_best(None) is None
    for bad in ("reward:3", "reward:best:3", "reward:max:-1", ":max:3", "reward:max:x"):
        with pytest.raises(click.BadParameter):
            parse_keep_best(bad)


def test_a_bad_keep_best_is_a_usage_error(ckpt: Ckpt, model_id: str) -> None:
    result = ckpt("retention", model_id, "--keep-latest", "1", "--keep-best", "reward:3")

    assert result.exit_code == 2
    assert "METRIC:MODE:K" in result.stderr


def test_an_unknown_model_is_one_line(ckpt: Ckpt) -> None:
    result = ckpt("list", "no-such-model")

    assert result.exit_code == 1
    assert result.stderr == "Error: 404 Model not found\n"


def test_tables_print_names_literally(ckpt: Ckpt, model_id: str, sdk: Client) -> None:
    sdk.checkpoints.register(model_id, step=1, metrics={"[bold]loss[/]": 1.0, ":thumbs_up:": 2.0})

    listed = ckpt("list", model_id)
    shown = ckpt("latest", model_id)

    for result in (listed, shown):
        assert result.exit_code == 0, result.output
        assert "[bold]loss[/]" in result.stdout
        assert ":thumbs_up:" in result.stdout


@pytest.mark.usefixtures("ten_steps")
def test_a_model_is_named_by_id_or_by_project_and_name(
    ckpt: Ckpt, model_id: str, ten_steps: list[int]
) -> None:
    by_name = json_out(ckpt("list", "rl/agent", "--json"))
    latest = json_out(ckpt("latest", "rl/agent", "--json"))
    shown = CliRunner().invoke(cli, ["models", "get", "rl/agent", "--json"])
    unknown = ckpt("list", "rl/nobody")

    assert [c["step"] for c in by_name] == ten_steps
    assert latest["step"] == ten_steps[-1]
    assert json_out(shown)["id"] == model_id
    assert unknown.exit_code == 1
    assert unknown.stderr == (
        "Error: No model rl/nobody (PROJECT/NAME) for this key: `ckpt models list`\n"
    )
    dots = ckpt("list", "..")
    assert dots.exit_code == 1 and "'..' is not a model id" in dots.stderr


def test_a_name_with_slashes_is_found_and_an_ambiguous_one_asks_for_the_id(
    ckpt: Ckpt, sdk: Client
) -> None:
    nested = sdk.models.create(project="hf/team", name="run", base_model="b")
    sdk.checkpoints.register(nested.id, step=7)
    sdk.models.create(project="x", name="y/z", base_model="b")
    sdk.models.create(project="x/y", name="z", base_model="b")

    found = json_out(ckpt("list", "hf/team/run", "--json"))
    ambiguous = ckpt("list", "x/y/z")

    assert [c["step"] for c in found] == [7]
    assert ambiguous.exit_code == 1
    assert ambiguous.stderr.startswith("Error: x/y/z names more than one model (project 'x' name")
    assert ambiguous.stderr.rstrip().endswith("use its id")
