"""Every value the SDK puts into a URL path is one escaped segment: an id can name an unknown model
or checkpoint (404 "... not found"), never another route. What no escaping can keep in one segment
('/', which the server decodes before routing; '.', '..'; a sibling route's name) is refused
before any request, saying what to do instead."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ckpt_registry.client import Client, InvalidIdError, NotFoundError

ESCAPED = ["a?limit=1", "a#b", "a b", "%2F", "best", "steps", "ü"]
REFUSED = ["hf/run1", "x/../..", "..", ".", ""]


def model_calls(client: Client, odd: str) -> list[Callable[[], Any]]:
    return [
        lambda: client.models.get(odd),
        lambda: client.models.delete(odd),
        lambda: client.checkpoints.list(odd),
        lambda: client.checkpoints.latest(odd),
        lambda: client.checkpoints.register(odd, step=1),
        lambda: client.checkpoints.at_step(odd, 1),
        lambda: client.checkpoints.best(odd, metric="loss", mode="min"),
        lambda: list(client.checkpoints.deleted_steps(odd)),
        lambda: list(client.checkpoints.metric_names(odd)),
    ]


def test_an_odd_model_id_is_an_unknown_model(client: Client, model_id: str) -> None:
    client.checkpoints.register(model_id, step=1)

    for odd in ESCAPED:
        for call in model_calls(client, odd):
            with pytest.raises(NotFoundError) as caught:
                call()
            assert caught.value.message == "404 Model not found", odd


def test_a_model_id_no_escaping_keeps_in_one_segment_is_refused(client: Client) -> None:
    for odd in REFUSED:
        for call in model_calls(client, odd):
            with pytest.raises(InvalidIdError) as caught:
                call()
            assert f"{odd!r} is not a model id" in caught.value.message
            assert "client.models.find(project=..., name=...)" in caught.value.message


def sibling_routes(server_url: str) -> set[str]:
    """The names the server routes beside `.../checkpoints/{checkpoint_id}`, from its OpenAPI
    document: a route added there is refused as a checkpoint id without this list changing."""
    document = httpx.get(server_url.removesuffix("/v1") + "/openapi.json").json()
    prefix = "/v1/preview/models/{model_id}/checkpoints/"
    segments = {
        path.removeprefix(prefix).split("/")[0]
        for path in document["paths"]
        if path.startswith(prefix)
    }
    names = {segment for segment in segments if not segment.startswith("{")}
    assert {"best", "metrics", "series", "deleted-steps"} <= names
    return names


def test_odd_checkpoint_ids_are_unknown_or_refused(
    client: Client, model_id: str, server_url: str
) -> None:
    client.checkpoints.register(model_id, step=1)

    for odd in ("a?b", "%2F", "a b", "ü"):
        with pytest.raises(NotFoundError) as caught:
            client.checkpoints.get(model_id, odd)
        assert caught.value.message == "404 Checkpoint not found", odd
    for odd in (*sibling_routes(server_url), "a/b", ".."):
        with pytest.raises(InvalidIdError, match="is not a checkpoint id"):
            client.checkpoints.get(model_id, odd)
        with pytest.raises(InvalidIdError, match="is not a checkpoint id"):
            client.checkpoints.update_metrics(model_id, odd, {"loss": 1.0})


def test_models_find_by_project_and_name(client: Client) -> None:
    made = client.models.create(project="hf/team", name="run/1", base_model="gpt2")
    client.models.create(project="hf/team", name="run/2", base_model="gpt2")

    assert client.models.find(project="hf/team", name="run/1") == made
    assert client.models.find(project="hf/team", name="run/3") is None
    assert client.models.find(project="hf", name="team/run/1") is None
