"""Model-based testing: random sequences of registry operations run against the real server and a
small in-memory model of the registry, which must agree after every step (docs/api.md,
docs/lifecycle.md)."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

# A few names and values, so that collisions happen: a taken model name, a repeated step with equal
# or different metrics, ties for `best` and for retention's top k.
MODEL_NAMES = ["a", "b", "c"]
METRIC_NAMES = ["loss", "acc"]
STEPS = st.integers(min_value=0, max_value=12)
VALUES = st.sampled_from([0.0, 0.5, 1.0, 2.0])
METRICS = st.dictionaries(st.sampled_from(METRIC_NAMES), VALUES, max_size=2)
MODES = st.sampled_from(["max", "min"])
MODEL_INDEX = st.integers(min_value=0, max_value=3)

# Bounded: about 30 s per database on a busy 2-core machine (docs/reliability.md).
MAX_EXAMPLES = 25
STEPS_PER_EXAMPLE = 30
# The same sequences on every run, so that CI passes or fails for a reason; set CKPT_FUZZ_SEED (any
# value) to explore new ones (docs/reliability.md).
EXPLORE = "CKPT_FUZZ_SEED" in os.environ


@dataclass
class Checkpoint:
    id: str
    step: int
    metrics: dict[str, float]

    def key(self) -> tuple[int, str]:
        # The list's order: step, ties (a live checkpoint and a deleted one at the same step) by id.
        return (self.step, self.id)


@dataclass
class Model:
    """What the registry should hold for one model."""

    id: str
    name: str
    live: dict[int, Checkpoint] = field(default_factory=dict)  # by step
    deleted: dict[str, Checkpoint] = field(default_factory=dict)  # tombstones, by id
    gone: bool = False  # the model itself was deleted

    def ordered(self) -> list[Checkpoint]:
        return sorted(self.live.values(), key=Checkpoint.key)

    def best(self, metric: str, mode: str) -> list[Checkpoint]:
        """Checkpoints with `metric`, best first: by value, ties to the later step."""
        having = [c for c in self.live.values() if metric in c.metrics]
        sign = -1 if mode == "max" else 1
        return sorted(having, key=lambda c: (sign * c.metrics[metric], -c.step))

    def delete(self, steps: list[int]) -> None:
        for step in steps:
            checkpoint = self.live.pop(step)
            self.deleted[checkpoint.id] = checkpoint

    def position(self, checkpoint_id: str) -> tuple[int, str]:
        for checkpoint in self.live.values():
            if checkpoint.id == checkpoint_id:
                return checkpoint.key()
        return self.deleted[checkpoint_id].key()


def floats(metrics: dict[str, Any]) -> dict[str, float]:
    return {name: float(value) for name, value in metrics.items()}


class RegistryMachine(RuleBasedStateMachine):
    """One example: a fresh project on a shared server; the model is the registry as the docs say."""

    api: httpx.Client  # set by the test before the machine runs
    checks = 0  # invariant checks run (after every step): the figure docs/reliability.md quotes

    def __init__(self) -> None:
        super().__init__()
        self.project = f"p-{uuid.uuid4().hex[:12]}"  # each example starts from an empty project
        self.models: list[Model] = []

    # --- helpers ----------------------------------------------------------------------------

    def pick(self, index: int) -> Model:
        return self.models[index % len(self.models)]

    def checkpoints_url(self, model: Model) -> str:
        return f"/preview/models/{model.id}/checkpoints"

    def expect_gone(self, response: httpx.Response) -> None:
        assert response.status_code == 404, response.text
        assert response.json() == {"detail": "Model not found"}

    def check_detail(self, body: dict[str, Any], expected: Checkpoint) -> None:
        assert body["id"] == expected.id
        assert body["step"] == expected.step
        assert body["metrics"] == expected.metrics

    # --- rules ------------------------------------------------------------------------------

    @initialize(name=st.sampled_from(MODEL_NAMES))
    def first_model(self, name: str) -> None:
        self.create_model(name, return_existing=False)

    @rule(name=st.sampled_from(MODEL_NAMES), return_existing=st.booleans())
    def create_model(self, name: str, return_existing: bool) -> None:
        response = self.api.post(
            "/preview/models",
            json={
                "project": self.project,
                "name": name,
                "base_model": "base",
                "return_existing": return_existing,
            },
        )
        taken = [m for m in self.models if m.name == name and not m.gone]
        if taken and not return_existing:
            assert response.status_code == 409, response.text
            return
        assert response.status_code == 200, response.text
        if taken:
            assert response.json()["id"] == taken[0].id
            return
        self.models.append(Model(response.json()["id"], name))

    @rule(model=MODEL_INDEX, step=STEPS, metrics=METRICS)
    def register(self, model: int, step: int, metrics: dict[str, float]) -> None:
        target = self.pick(model)
        response = self.api.post(
            self.checkpoints_url(target), json={"step": step, "metrics": metrics}
        )
        if target.gone:
            self.expect_gone(response)
            return
        existing = target.live.get(step)
        if existing is None:
            assert response.status_code == 201, response.text
            created = Checkpoint(response.json()["id"], step, floats(metrics))
            assert created.id not in target.deleted  # a re-registered step gets a new id
            target.live[step] = created
            self.check_detail(response.json(), created)
        elif existing.metrics == floats(metrics):
            assert response.status_code == 200, response.text  # an idempotent retry
            self.check_detail(response.json(), existing)
        else:
            assert response.status_code == 409, response.text

    @rule(model=MODEL_INDEX, step=STEPS, metrics=METRICS, deleted=st.booleans())
    def patch_metrics(
        self, model: int, step: int, metrics: dict[str, float], deleted: bool
    ) -> None:
        target = self.pick(model)
        if deleted:  # PATCH a tombstone's id: 404, and nothing comes back to life
            candidates = [c for c in target.deleted.values() if c.step == step]
            if not candidates:
                return
            response = self.api.patch(
                f"{self.checkpoints_url(target)}/{candidates[0].id}", json={"metrics": metrics}
            )
            if target.gone:
                self.expect_gone(response)
                return
            assert response.status_code == 404, response.text
            assert response.json() == {"detail": "Checkpoint not found"}
            return
        checkpoint = target.live.get(step)
        if checkpoint is None:
            return
        response = self.api.patch(
            f"{self.checkpoints_url(target)}/{checkpoint.id}", json={"metrics": metrics}
        )
        if target.gone:
            self.expect_gone(response)
            return
        assert response.status_code == 200, response.text
        checkpoint.metrics.update(floats(metrics))
        self.check_detail(response.json(), checkpoint)

    @rule(model=MODEL_INDEX, steps=st.lists(STEPS, max_size=4))
    def delete_steps(self, model: int, steps: list[int]) -> None:
        target = self.pick(model)
        response = self.api.request("DELETE", self.checkpoints_url(target), json={"steps": steps})
        if target.gone:
            self.expect_gone(response)
            return
        assert response.status_code == 200, response.text
        unique = list(dict.fromkeys(steps))
        found = [step for step in unique if step in target.live]
        assert response.json() == {
            "deleted_count": len(found),
            "not_found_steps": [step for step in unique if step not in target.live],
        }
        target.delete(found)

    @rule(
        model=MODEL_INDEX,
        keep_latest=st.integers(min_value=0, max_value=4),
        metric=st.none() | st.sampled_from(METRIC_NAMES),
        mode=MODES,
        k=st.integers(min_value=0, max_value=3),
        dry_run=st.booleans(),
    )
    def retention(
        self, model: int, keep_latest: int, metric: str | None, mode: str, k: int, dry_run: bool
    ) -> None:
        target = self.pick(model)
        keep_best = None if metric is None else {"metric": metric, "mode": mode, "k": k}
        response = self.api.post(
            f"{self.checkpoints_url(target)}/retention",
            json={"keep_latest": keep_latest, "keep_best": keep_best, "dry_run": dry_run},
        )
        if target.gone:
            self.expect_gone(response)
            return
        assert response.status_code == 200, response.text
        ordered = [c.step for c in target.ordered()]
        # The latest max(keep_latest, 1) steps (the latest is always kept) and the top k.
        kept = set(ordered[-max(keep_latest, 1) :]) if ordered else set()
        if metric is not None:
            kept.update(c.step for c in target.best(metric, mode)[:k])
        deleted = [step for step in ordered if step not in kept]
        body = response.json()
        assert body["dry_run"] is dry_run
        assert body["kept_steps"] == sorted(kept)
        assert body["deleted_steps"] == deleted
        if not dry_run:
            target.delete(deleted)

    @rule(model=MODEL_INDEX, metric=st.sampled_from(METRIC_NAMES), mode=MODES)
    def best(self, model: int, metric: str, mode: str) -> None:
        target = self.pick(model)
        response = self.api.get(
            f"{self.checkpoints_url(target)}/best", params={"metric": metric, "mode": mode}
        )
        if target.gone:
            self.expect_gone(response)
            return
        ranked = target.best(metric, mode)
        if not ranked:
            assert response.status_code == 404, response.text
            return
        assert response.status_code == 200, response.text
        self.check_detail(response.json(), ranked[0])

    @rule(
        model=MODEL_INDEX,
        limit=st.integers(min_value=1, max_value=4),
        order=st.sampled_from(["asc", "desc"]),
        deletes=st.lists(st.lists(STEPS, max_size=2), max_size=4),
    )
    def paged_walk(self, model: int, limit: int, order: str, deletes: list[list[int]]) -> None:
        """Walk the list page by page, deleting steps between pages (the ones just returned, ones
        still ahead): each page holds exactly what is live strictly after the cursor."""
        target = self.pick(model)
        cursor: str | None = None
        for page_number in range(50):
            params: dict[str, Any] = {"limit": limit, "order": order}
            if cursor is not None:
                params["after"] = cursor
            response = self.api.get(self.checkpoints_url(target), params=params)
            if target.gone:
                self.expect_gone(response)
                return
            assert response.status_code == 200, response.text
            ahead = target.ordered()
            if order == "desc":
                ahead.reverse()
            if cursor is not None:
                position = target.position(cursor)
                ahead = [
                    c
                    for c in ahead
                    if (c.key() > position if order == "asc" else c.key() < position)
                ]
            page = response.json()
            assert [(c["id"], c["step"], c["metrics"]) for c in page["data"]] == [
                (c.id, c.step, c.metrics) for c in ahead[:limit]
            ]
            assert page["has_more"] is (len(ahead) > limit)
            if not page["has_more"]:
                return
            cursor = page["last_id"]
            if page_number < len(deletes):
                self.delete_steps(model, deletes[page_number])
        raise AssertionError("the walk did not end")

    @precondition(lambda self: any(not m.gone for m in self.models))
    @rule(model=MODEL_INDEX)
    def delete_model(self, model: int) -> None:
        target = self.pick(model)
        response = self.api.delete(f"/preview/models/{target.id}")
        if target.gone:
            self.expect_gone(response)
            return
        assert response.status_code == 200, response.text
        assert response.json() == {
            "model_id": target.id,
            "deleted_checkpoints": len(target.live),
            "deleted_run": False,
        }
        target.gone = True

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def server_agrees(self) -> None:
        """Every model's list reads as the model says, and the project lists the live models."""
        RegistryMachine.checks += 1
        for target in self.models:
            response = self.api.get(self.checkpoints_url(target), params={"limit": 100})
            if target.gone:
                self.expect_gone(response)
                continue
            assert response.status_code == 200, response.text
            assert [(c["id"], c["step"], c["metrics"]) for c in response.json()["data"]] == [
                (c.id, c.step, c.metrics) for c in target.ordered()
            ]
        listed = self.api.get(
            "/preview/models", params={"project": self.project, "limit": 100}
        ).json()["data"]
        assert [m["id"] for m in listed] == [m.id for m in self.models if not m.gone]


def test_server_agrees_with_the_model(api: httpx.Client) -> None:
    RegistryMachine.api = api
    RegistryMachine.checks = 0
    run_state_machine_as_test(
        RegistryMachine,
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=STEPS_PER_EXAMPLE,
            deadline=None,
            database=None,
            derandomize=not EXPLORE,
            # Explicit, generate and shrink only: the same budget on every run.
            phases=[Phase.explicit, Phase.generate, Phase.shrink],
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    print(f"{MAX_EXAMPLES} sequences, {RegistryMachine.checks} steps checked")  # noqa: T201
