"""The Trainer callback in real ``transformers.Trainer`` runs against a real server.

A tiny GPT-2 built from a config (random weights, nothing downloaded) trains on CPU for a few dozen
steps, saving and evaluating every 10; every save must reach the registry with its metrics and its
files, and a resumed run must carry on without duplicating a step.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing may come from a hub

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from ckpt_registry.client import Client, NotFoundError, RetryPolicy
from ckpt_registry.integrations.hf_trainer import metrics_from_history
from ckpt_registry.integrations.transformers import CkptRegistryCallback

VOCAB = 64
SEQ = 16


class RandomTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.rows = torch.randint(0, VOCAB, (size, SEQ), generator=generator)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[index], "labels": self.rows[index]}


def tiny_model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=1, n_head=2)
    return GPT2LMHeadModel(config)


def trainer(
    output_dir: Path, max_steps: int, callbacks: list[TrainerCallback], **extra: Any
) -> Trainer:
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        logging_steps=5,
        save_steps=10,
        eval_strategy="steps",
        eval_steps=10,
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
        **extra,
    )
    return Trainer(
        model=tiny_model(),
        args=args,
        train_dataset=RandomTokens(64, seed=1),
        eval_dataset=RandomTokens(16, seed=2),
        callbacks=callbacks,
    )


@pytest.fixture
def client(server_url: str, api_key: str) -> Iterator[Client]:
    retries = RetryPolicy(initial_delay=0.01, max_delay=0.05, max_total=5.0)
    with Client(api_key=api_key, base_url=server_url, retry_policy=retries) as client:
        yield client


def registered(client: Client, model_id: str) -> dict[int, dict[str, float]]:
    steps: dict[int, dict[str, float]] = {}
    for checkpoint in client.checkpoints.list(model_id):
        assert checkpoint.step not in steps, f"step {checkpoint.step} registered twice"
        steps[checkpoint.step] = checkpoint.metrics
    return steps


def files_on_disk(folder: Path) -> dict[str, bytes]:
    return {
        path.relative_to(folder).as_posix(): path.read_bytes()
        for path in folder.rglob("*")
        if path.is_file()
    }


def download(server_url: str, api_key: str, model_id: str, checkpoint_id: str) -> dict[str, bytes]:
    """Every file of a checkpoint, through the HTTP API as any client sees it."""
    base = f"{server_url}/preview/models/{model_id}/checkpoints/{checkpoint_id}/files"
    with httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as http:
        listing = http.get(base, params={"limit": 1000})
        assert listing.status_code == 200, listing.text
        assert listing.json()["has_more"] is False
        files = {}
        for item in listing.json()["data"]:
            response = http.get(f"{base}/{item['path']}")
            assert response.status_code == 200, response.text
            assert hashlib.sha256(response.content).hexdigest() == item["sha256"]
            files[item["path"]] = response.content
        return files


def test_every_save_is_registered_uploaded_and_a_resumed_run_continues(
    client: Client, server_url: str, api_key: str, tmp_path: Path
) -> None:
    output_dir = tmp_path / "out"
    callback = CkptRegistryCallback(client=client, project="hf", name="tiny-gpt2")
    first = trainer(output_dir, 30, [callback])
    first.train()

    assert callback.failures == []
    model_id = callback.model_id
    assert model_id is not None
    assert client.models.get(model_id).name == "tiny-gpt2"
    history = first.state.log_history
    steps = registered(client, model_id)
    assert sorted(steps) == [10, 20, 30]
    for step, metrics in steps.items():
        # The logs of the step (training and evaluation); at 30 also the end-of-training summary,
        # which arrives after the save and is sent as an update.
        assert metrics == metrics_from_history(history, step)
        assert {"loss", "eval_loss", "learning_rate"} <= set(metrics)
        assert not [name for name in metrics if name.endswith(("_runtime", "_per_second"))]
    assert "train_loss" in steps[30]

    # Every file of every save, byte for byte; the best one (lowest eval_loss) among them.
    for step in steps:
        checkpoint = client.checkpoints.at_step(model_id, step)
        on_disk = files_on_disk(output_dir / f"checkpoint-{step}")
        assert "model.safetensors" in on_disk and "trainer_state.json" in on_disk
        assert checkpoint.files == len(on_disk)
        assert checkpoint.size_bytes == sum(len(data) for data in on_disk.values())
    best = client.checkpoints.best(model_id, metric="eval_loss", mode="min")
    assert best.metrics["eval_loss"] == min(metrics["eval_loss"] for metrics in steps.values())
    assert download(server_url, api_key, model_id, best.id) == files_on_disk(
        output_dir / f"checkpoint-{best.step}"
    )
    # No temporary snapshot is left in the output directory.
    assert sorted(path.name for path in output_dir.iterdir()) == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-30",
    ]

    # An evaluation after train() returns reaches the saved step at once.
    first.evaluate(metric_key_prefix="final")
    assert "final_loss" in client.checkpoints.at_step(model_id, 30).metrics

    # Resume from step 30 up to 50, in a new process's worth of objects, keeping the latest 2
    # and the best 1 by eval_loss after each upload.
    resumed_callback = CkptRegistryCallback(
        client=client,
        project="hf",
        name="tiny-gpt2",
        keep_latest=2,
        keep_best=("eval_loss", "min", 1),
    )
    resumed = trainer(output_dir, 50, [resumed_callback])
    resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-30"))

    assert resumed_callback.failures == []
    assert resumed_callback.model_id == model_id
    after = registered(client, model_id)
    eval_losses = {
        entry["step"]: entry["eval_loss"]
        for entry in resumed.state.log_history
        if "eval_loss" in entry
    }
    best_step = min(eval_losses, key=lambda step: (eval_losses[step], -step))
    assert sorted(after) == sorted({40, 50, best_step})
    for step in (40, 50):
        assert after[step] == metrics_from_history(resumed.state.log_history, step)
        checkpoint = client.checkpoints.at_step(model_id, step)
        assert download(server_url, api_key, model_id, checkpoint.id) == files_on_disk(
            output_dir / f"checkpoint-{step}"
        )


class AddFileTheServerRefuses(TrainerCallback):
    """Runs before the registry's callback: puts a file whose name no checkpoint path may have
    (a backslash) into checkpoint-20, so that step's upload fails on the server."""

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == 20:
            (Path(args.output_dir) / "checkpoint-20" / "bad\\name").write_bytes(b"x")


def test_failures_are_reported_and_never_stop_training(client: Client, tmp_path: Path) -> None:
    model_id = client.models.create(project="hf", name="failing", base_model="none").id
    callback = CkptRegistryCallback(client=client, model_id=model_id)
    run = trainer(tmp_path / "out", 30, [AddFileTheServerRefuses(), callback])
    run.train()

    assert run.state.global_step == 30
    assert [(failure.step, failure.what) for failure in callback.failures] == [(20, "upload")]
    assert sorted(registered(client, model_id)) == [10, 20, 30]
    assert client.checkpoints.at_step(model_id, 30).files > 0

    # A model deleted under a running training: every registration fails, training finishes.
    client.models.delete(model_id)
    orphan = CkptRegistryCallback(client=client, model_id=model_id)
    again = trainer(tmp_path / "out2", 20, [orphan])
    again.train()
    assert again.state.global_step == 20
    assert [(failure.step, failure.what) for failure in orphan.failures] == [
        (10, "register"),
        (20, "register"),
    ]
    assert all(isinstance(failure.error, NotFoundError) for failure in orphan.failures)


def test_importing_the_package_does_not_import_transformers() -> None:
    import subprocess
    import sys

    code = "import sys, ckpt_registry, ckpt_registry.integrations.hf_trainer; print('transformers' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
