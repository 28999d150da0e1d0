"""The registry's rules that do not depend on a database; both backends call these and only do SQL.

What retention keeps, how a metrics merge works and where it stops, what a repeated registration
means, which steps a delete reports, how a page of deleted steps or metric names ends, and which text
can be stored are decided here, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson

from ..contract import MAX_METRICS, MAX_STEP
from .base import BestRule, DeletedStep, DeletedStepPage, MetricNamePage, encode_metrics
from .errors import StepConflict, TooManyMetrics, UnstorableText


def storable(*texts: str) -> bool:
    """Whether every backend can store the texts: PostgreSQL refuses NUL, UTF-8 has no surrogates.

    Text that cannot be stored cannot have been stored either, so a lookup by it finds nothing.
    """
    for text in texts:
        if "\x00" in text:
            return False
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def require_storable(*texts: str) -> None:
    """Refuse a write of text no backend can store (the API refuses it earlier, with a 422)."""
    if not storable(*texts):
        raise UnstorableText()


def unique_steps(steps: Iterable[int]) -> list[int]:
    """The requested steps without repeats, in the order they were first named."""
    return list(dict.fromkeys(steps))


def possible_steps(steps: Iterable[int]) -> list[int]:
    """Those of `steps` a checkpoint can have (0..MAX_STEP); the others cannot exist."""
    return [step for step in steps if 0 <= step <= MAX_STEP]


def not_found_steps(requested: list[int], deleted: set[int]) -> list[int]:
    """The requested steps that had no live checkpoint, in request order (`requested` is unique)."""
    return [step for step in requested if step not in deleted]


def deleted_step_page(rows: Sequence[tuple[int, datetime]], limit: int) -> DeletedStepPage:
    """A page of deleted steps from at most `limit + 1` rows by step: the extra row only says
    that more follow (as every list here, never from `len == limit`)."""
    return DeletedStepPage(
        [DeletedStep(int(step), deleted_at) for step, deleted_at in rows[:limit]],
        len(rows) > limit,
    )


def metric_name_page(names: Sequence[str], limit: int) -> MetricNamePage:
    """A page of metric names from at most `limit + 1` names: the extra one only says that more
    follow."""
    return MetricNamePage(list(names[:limit]), len(names) > limit)


def check_repeat_registration(
    step: int, stored_metrics_json: str, metrics: dict[str, float]
) -> None:
    """Registering a live step again is an idempotent retry only with equal metrics (1 == 1.0)."""
    if orjson.loads(stored_metrics_json) != metrics:
        raise StepConflict(step)


def merge_metrics(stored_metrics_json: str, update: dict[str, float]) -> str:
    """The metrics JSON after merging `update` (new names added, existing ones overwritten)."""
    merged = orjson.loads(stored_metrics_json) | update
    if len(merged) > MAX_METRICS:
        raise TooManyMetrics(len(merged))
    return encode_metrics(merged)


def metric_names(metrics_json: str) -> list[str]:
    """The names in a stored metrics document: a checkpoint's metric rows have exactly these."""
    return list(orjson.loads(metrics_json))


def ranks_best(rule: BestRule | None) -> bool:
    """Whether a retention rule asks to keep any best checkpoints (a metric no one can have: none)."""
    return rule is not None and rule.k > 0 and storable(rule.metric)


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    kept_steps: list[int]
    deleted: list[tuple[int, str]]  # (step, id) of each checkpoint to delete, by step


def plan_retention(
    checkpoints: list[tuple[int, str]], keep_latest: int, best_steps: Iterable[int]
) -> RetentionPlan:
    """Keep the latest `keep_latest` (never fewer than one: the latest is always kept) and the best;
    delete the rest. `checkpoints` are the live `(step, id)` pairs in step order.

    Ids travel with the steps so that a delete made from this plan can never remove a checkpoint
    registered at the same step after the plan was made.
    """
    keep = {step for step, _ in checkpoints[-max(keep_latest, 1) :]}
    keep.update(best_steps)
    deleted = [(step, id_) for step, id_ in checkpoints if step not in keep]
    return RetentionPlan(sorted(keep), deleted)


def downsample_series(points: list[tuple[int, float]], budget: int) -> list[tuple[int, float]]:
    """At most `budget` (>= 4) of a metric's `(step, value)` points, in step order, keeping its shape.

    Every point when they fit. Otherwise the first and the last, and the rest cut into equal runs
    of consecutive points, of which each gives its lowest and highest point: every peak and dip
    of the curve survives, so the global minimum and maximum always do (min/max decimation, as
    plotting libraries do it; LTTB would drop a lone spike that a user is looking for).
    """
    if len(points) <= budget:
        return points
    # min/max of a list slice run in C: ~5 ms for 100,000 points, where a key function per point
    # took ~40 ms.
    values = [value for _, value in points]
    inner, buckets = len(points) - 2, (budget - 2) // 2
    kept = [points[0]]
    for index in range(buckets):
        start = 1 + index * inner // buckets
        run = values[start : 1 + (index + 1) * inner // buckets]
        low = start + run.index(min(run))
        high = start + run.index(max(run))
        kept.extend(points[i] for i in sorted({low, high}))
    kept.append(points[-1])
    return kept
