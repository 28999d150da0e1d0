"""`ckpt import hf-trainer` on Trainer-shaped output directories that the tests write."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ckpt_registry.client import Client

from .conftest import Ckpt


@pytest.fixture
def ckpt(ckpt_command: Callable[..., Ckpt]) -> Ckpt:
    return ckpt_command("import", "hf-trainer")


@pytest.fixture
def model_id(sdk: Client) -> str:
    return sdk.models.create(project="hf", name="run-3", base_model="gpt2").id


def log_history(up_to: int) -> list[dict[str, Any]]:
    """What the Trainer logs: a training entry every 10 steps, an evaluation entry every 20."""
    history: list[dict[str, Any]] = []
    for step in range(10, up_to + 1, 10):
        history.append(
            {"epoch": step / 40, "grad_norm": 1.5, "learning_rate": 5e-5, "loss": 2.0 - step / 100,
             "step": step}
        )  # fmt: skip
        if step % 20 == 0:
            history.append(
                {"epoch": step / 40, "eval_loss": 1.0 - step / 200, "eval_runtime": 3.2,
                 "eval_samples_per_second": float("nan"), "eval_note": "ok", "step": step}
            )  # fmt: skip
    return history


def write_checkpoint(output_dir: Path, step: int, state: str | None = None) -> Path:
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if state is None:
        state = json.dumps({"global_step": step, "log_history": log_history(step)})
    (folder / "trainer_state.json").write_text(state)
    return folder


@pytest.fixture
def output_dir(tmp_path: Path) -> Path:
    """Three good checkpoints, one with a corrupt state file, one without one, and clutter."""
    out = tmp_path / "outputs"
    for step in (20, 40, 10):
        write_checkpoint(out, step)
    write_checkpoint(out, 30, state='{"log_history": [{"loss": 1.0, "st')
    (write_checkpoint(out, 50) / "trainer_state.json").unlink()
    (out / "runs").mkdir()
    (out / "checkpoint-final").mkdir()
    (out / "checkpoint-60.tmp").write_text("not a folder")
    return out


def test_import_registers_each_step_with_the_metrics_logged_at_it(
    ckpt: Ckpt, sdk: Client, model_id: str, output_dir: Path
) -> None:
    result = ckpt(str(output_dir), "--model", model_id)

    assert result.exit_code == 1  # two folders were skipped
    assert "3 registered, 0 already present, 0 merged, 2 skipped" in result.stdout
    assert "checkpoint-30" in result.stderr and "unreadable" in result.stderr
    assert "checkpoint-50" in result.stderr and "missing" in result.stderr
    imported = {c.step: c.metrics for c in sdk.checkpoints.list(model_id)}
    assert sorted(imported) == [10, 20, 40]
    # Training and evaluation entries of the step merged; `step`, NaN, strings and timing
    # metrics dropped.
    assert imported[20] == {
        "epoch": 0.5,
        "grad_norm": 1.5,
        "learning_rate": 5e-5,
        "loss": 1.8,
        "eval_loss": 0.9,
    }
    assert imported[10] == {"epoch": 0.25, "grad_norm": 1.5, "learning_rate": 5e-5, "loss": 1.9}


def test_a_rerun_registers_nothing_twice(
    ckpt: Ckpt, sdk: Client, model_id: str, output_dir: Path
) -> None:
    ckpt(str(output_dir), "--model", model_id)
    before = [(c.id, c.step) for c in sdk.checkpoints.list(model_id)]

    again = ckpt(str(output_dir), "--model", model_id, "--json")

    assert again.exit_code == 1
    report = json.loads(again.stdout)
    assert report["registered"] == []
    assert report["already_present"] == [10, 20, 40]
    assert [s["folder"] for s in report["skipped"]] == ["checkpoint-30", "checkpoint-50"]
    assert [(c.id, c.step) for c in sdk.checkpoints.list(model_id)] == before


def test_once_the_folders_are_fixed_the_import_completes_and_exits_0(
    ckpt: Ckpt, sdk: Client, model_id: str, output_dir: Path
) -> None:
    ckpt(str(output_dir), "--model", model_id)
    (output_dir / "checkpoint-30" / "trainer_state.json").write_text(
        json.dumps({"log_history": log_history(30)})
    )
    (output_dir / "checkpoint-50" / "trainer_state.json").write_text(
        json.dumps({"log_history": []})
    )

    result = ckpt(str(output_dir), "--model", model_id)

    assert result.exit_code == 0, result.output
    assert "2 registered, 3 already present, 0 merged, 0 skipped" in result.stdout
    assert result.stderr == ""
    steps = {c.step: c.metrics for c in sdk.checkpoints.list(model_id)}
    assert sorted(steps) == [10, 20, 30, 40, 50]
    assert steps[50] == {}  # nothing was logged at step 50: registered without metrics


def test_a_step_registered_with_other_metrics_is_reported_and_skipped(
    ckpt: Ckpt, sdk: Client, model_id: str, tmp_path: Path
) -> None:
    for step in (10, 20):
        write_checkpoint(tmp_path, step)
    sdk.checkpoints.register(model_id, step=20, metrics={"loss": 123.0})

    result = ckpt(str(tmp_path), "--model", model_id)

    assert result.exit_code == 1
    assert "1 registered, 0 already present, 0 merged, 1 skipped" in result.stdout
    assert "checkpoint-20" in result.stderr
    assert "step 20 is registered with loss=123.0, not 1.8" in result.stderr
    assert sdk.checkpoints.latest(model_id) is not None
    assert {c.step: c.metrics for c in sdk.checkpoints.list(model_id)}[20] == {"loss": 123.0}


def test_an_unknown_model_stops_the_import_in_one_line(ckpt: Ckpt, output_dir: Path) -> None:
    result = ckpt(str(output_dir), "--model", "00000000-0000-4000-8000-000000000000")

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "Error: 404 Model not found"
    assert "Traceback" not in result.output


def test_a_directory_without_checkpoints_is_an_error(
    ckpt: Ckpt, model_id: str, tmp_path: Path
) -> None:
    result = ckpt(str(tmp_path), "--model", model_id)

    assert result.exit_code == 1
    assert "No checkpoint-N folders" in result.stderr


def test_timing_metrics_come_in_only_when_asked(
    ckpt: Ckpt, sdk: Client, model_id: str, tmp_path: Path
) -> None:
    write_checkpoint(tmp_path, 20)

    result = ckpt(str(tmp_path), "--model", model_id, "--include-timing")

    assert result.exit_code == 0, result.output
    assert sdk.checkpoints.at_step(model_id, 20).metrics["eval_runtime"] == 3.2


def test_a_rerun_merges_metrics_added_since_and_the_ones_it_lacked(
    ckpt: Ckpt, sdk: Client, model_id: str, tmp_path: Path
) -> None:
    write_checkpoint(tmp_path, 10)
    write_checkpoint(tmp_path, 20)
    ckpt(str(tmp_path), "--model", model_id)
    # A late metric added by hand, and step 10 registered by someone with only some metrics.
    twenty = sdk.checkpoints.at_step(model_id, 20)
    sdk.checkpoints.update_metrics(model_id, twenty.id, {"human_eval": 0.5})
    sdk.checkpoints.delete(model_id, steps=[10])
    sdk.checkpoints.register(model_id, step=10, metrics={"loss": 1.9})

    result = ckpt(str(tmp_path), "--model", model_id, "--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["registered"], report["already_present"], report["merged"]) == ([], [20], [10])
    steps = {c.step: c.metrics for c in sdk.checkpoints.list(model_id)}
    assert steps[10] == {"epoch": 0.25, "grad_norm": 1.5, "learning_rate": 5e-5, "loss": 1.9}
    assert steps[20]["human_eval"] == 0.5 and steps[20]["eval_loss"] == 0.9


def checkpoint_files(
    server_url: str, api_key: str, model_id: str, checkpoint_id: str
) -> dict[str, bytes]:
    base = f"{server_url}/preview/models/{model_id}/checkpoints/{checkpoint_id}/files"
    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}) as http:
        listing = http.get(base).json()["data"]
        return {item["path"]: http.get(f"{base}/{item['path']}").content for item in listing}


def test_with_files_uploads_every_folder_and_a_rerun_adds_nothing(
    ckpt: Ckpt, sdk: Client, model_id: str, tmp_path: Path, server_url: str, api_key: str
) -> None:
    for step in (10, 20):
        folder = write_checkpoint(tmp_path, step)
        (folder / "tokenizer").mkdir()
        (folder / "tokenizer" / "tokenizer.json").write_text('{"vocab": {}}')
        (folder / "optimizer.pt").write_bytes(bytes(range(256)) * (step * 100))

    result = ckpt(str(tmp_path), "--model", model_id, "--with-files")

    assert result.exit_code == 0, result.output
    assert "2 registered, 0 already present, 0 merged, 0 skipped" in result.stdout
    assert "8 files uploaded" in result.stdout
    for step in (10, 20):
        checkpoint = sdk.checkpoints.at_step(model_id, step)
        folder = tmp_path / f"checkpoint-{step}"
        assert checkpoint_files(server_url, api_key, model_id, checkpoint.id) == {
            "model.safetensors": b"weights",
            "optimizer.pt": (folder / "optimizer.pt").read_bytes(),
            "tokenizer/tokenizer.json": b'{"vocab": {}}',
            "trainer_state.json": (folder / "trainer_state.json").read_bytes(),
        }

    again = ckpt(str(tmp_path), "--model", model_id, "--with-files", "--json")

    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["already_present"] == [10, 20]
    assert [c.step for c in sdk.checkpoints.list(model_id)] == [10, 20]
    assert sdk.checkpoints.at_step(model_id, 20).files == 4


def test_with_files_reports_a_folder_whose_files_differ_from_the_registered_ones(
    ckpt: Ckpt, sdk: Client, model_id: str, tmp_path: Path
) -> None:
    write_checkpoint(tmp_path, 10)
    ckpt(str(tmp_path), "--model", model_id, "--with-files")
    (tmp_path / "checkpoint-10" / "model.safetensors").write_bytes(b"other weights")

    result = ckpt(str(tmp_path), "--model", model_id, "--with-files")

    assert result.exit_code == 1
    assert "Skipped checkpoint-10: files:" in result.stderr
    assert sdk.checkpoints.at_step(model_id, 10).size_bytes == len(b"weights") + len(
        (tmp_path / "checkpoint-10" / "trainer_state.json").read_bytes()
    )


def test_create_makes_the_model_named_project_name_from_the_trainer_config(
    ckpt: Ckpt, sdk: Client, tmp_path: Path
) -> None:
    for step in (10, 20):
        folder = write_checkpoint(tmp_path, step)
        (folder / "config.json").write_text(json.dumps({"_name_or_path": "openai-community/gpt2"}))

    missing = ckpt(str(tmp_path), "--model", "hf/run1")
    created = ckpt(str(tmp_path), "--model", "hf/run1", "--create")
    again = ckpt(str(tmp_path), "--model", "hf/run1", "--create", "--json")

    assert missing.exit_code == 1
    assert "No model hf/run1 (PROJECT/NAME) for this key: add --create" in missing.stderr
    assert created.exit_code == 0, created.output
    assert "Created model hf/run1" in created.stderr and "openai-community/gpt2" in created.stderr
    assert "2 registered" in created.stdout
    model = sdk.models.find(project="hf", name="run1")
    assert model is not None and model.base_model == "openai-community/gpt2"
    assert [c.step for c in sdk.checkpoints.list(model.id)] == [10, 20]
    assert json.loads(again.stdout)["already_present"] == [10, 20]
    assert len(list(sdk.models.list(project="hf"))) == 1


def test_create_without_a_known_base_model_asks_for_one(
    ckpt: Ckpt, sdk: Client, tmp_path: Path
) -> None:
    folder = write_checkpoint(tmp_path, 10)
    # What a model built from a config alone saves: no name to borrow.
    (folder / "config.json").write_text(json.dumps({"_name_or_path": "", "model_type": "gpt2"}))

    refused = ckpt(str(tmp_path), "--model", "hf/tiny", "--create")
    given = ckpt(str(tmp_path), "--model", "hf/tiny", "--create", "--base-model", "scratch")
    by_id = ckpt(str(tmp_path), "--model", "0b9e6c1e-0000-4000-8000-000000000000", "--create")
    alone = ckpt(str(tmp_path), "--model", "hf/tiny", "--base-model", "other")

    assert refused.exit_code == 2 and "--create needs --base-model" in refused.stderr
    assert given.exit_code == 0, given.output
    model = sdk.models.find(project="hf", name="tiny")
    assert model is not None and model.base_model == "scratch"
    assert by_id.exit_code == 2 and "PROJECT/NAME" in by_id.stderr
    assert alone.exit_code == 2 and "--base-model goes with --create" in alone.stderr


def test_a_step_deleted_on_the_server_is_not_brought_back_unless_asked(
    ckpt: Ckpt, sdk: Client, model_id: str, tmp_path: Path
) -> None:
    for step in (10, 20, 30, 40):
        write_checkpoint(tmp_path, step)
    ckpt(str(tmp_path), "--model", model_id)
    sdk.checkpoints.retention(model_id, keep_latest=2)  # deletes 10 and 20
    sdk.checkpoints.delete(model_id, steps=[40])  # a person deletes one

    again = ckpt(str(tmp_path), "--model", model_id)
    as_json = ckpt(str(tmp_path), "--model", model_id, "--json")

    assert again.exit_code == 0, again.output
    assert "0 registered, 1 already present, 0 merged, 0 skipped, 3 left deleted" in again.stdout
    assert "Left deleted (by a person or retention): steps 10, 20, 40" in again.stderr
    assert json.loads(as_json.stdout)["deleted"] == [10, 20, 40]
    assert [c.step for c in sdk.checkpoints.list(model_id)] == [30]

    asked = ckpt(str(tmp_path), "--model", model_id, "--include-deleted", "--json")

    assert asked.exit_code == 0, asked.output
    assert json.loads(asked.stdout)["registered"] == [10, 20, 40]
    assert [c.step for c in sdk.checkpoints.list(model_id)] == [10, 20, 30, 40]


def test_registered_steps_whose_folders_are_gone_are_reported(
    ckpt: Ckpt, sdk: Client, model_id: str, tmp_path: Path
) -> None:
    # save_total_limit=2: the Trainer removed checkpoint-10 and -20 after they were imported
    # (step 10 with its files), and step 5 was registered by hand, without files.
    for step in (10, 20, 30, 40):
        write_checkpoint(tmp_path, step)
    ckpt(str(tmp_path), "--model", model_id, "--with-files")
    sdk.checkpoints.register(model_id, step=5)
    sdk.checkpoints.delete(model_id, steps=[20])
    sdk.checkpoints.register(model_id, step=20)  # again, without files
    for step in (10, 20):
        for path in sorted((tmp_path / f"checkpoint-{step}").iterdir()):
            path.unlink()
        (tmp_path / f"checkpoint-{step}").rmdir()

    plain = ckpt(str(tmp_path), "--model", model_id)
    files = ckpt(str(tmp_path), "--model", model_id, "--with-files", "--json")

    assert plain.exit_code == 0, plain.output
    assert "Registered but not in this folder (removed by save_total_limit?): steps 5, 10, 20." in (
        plain.stderr
    )
    assert "without files" not in plain.stderr
    assert files.exit_code == 0, files.output
    report = json.loads(files.stdout)
    assert report["not_on_disk"] == [5, 10, 20]
    assert report["without_files"] == [5, 20]


def test_the_import_is_one_sdk_call(sdk: Client, model_id: str, tmp_path: Path) -> None:
    from ckpt_registry.integrations.hf_trainer import import_trainer_output

    for step in (10, 20):
        write_checkpoint(tmp_path, step)
    seen: list[tuple[int, str | None]] = []

    report = import_trainer_output(
        sdk, model_id, tmp_path, on_folder=lambda c, reason: seen.append((c.step, reason))
    )

    assert (report.registered, report.skipped, report.not_on_disk) == ([10, 20], [], [])
    assert seen == [(10, None), (20, None)]
    assert sdk.checkpoints.at_step(model_id, 20).metrics["eval_loss"] == 0.9
