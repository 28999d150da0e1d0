"""The per-key rate limit: off by default; when on, a key's burst beyond it gets 429 with
`Retry-After` on every path (the fast paths included), other keys are unaffected, and the key is
served again after waiting."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from ckpt_registry.server import Settings
from tests.conftest import RunningServer, add_key, serving

from .helpers import create_model

RATE = "2/s"
BURST = 3


@pytest.fixture
def limited(settings: Settings) -> Iterator[RunningServer]:
    with serving(
        settings.model_copy(update={"rate_limit": RATE, "rate_limit_burst": BURST})
    ) as running:
        yield running


def burst(api: httpx.Client, model_id: str, count: int = 20) -> list[httpx.Response]:
    """Lists (the list fast path), registrations (its fast path) and model reads (a FastAPI route),
    as fast as they go."""
    calls = [
        lambda _step: api.get(f"/preview/models/{model_id}/checkpoints"),
        lambda step: api.post(f"/preview/models/{model_id}/checkpoints", json={"step": step}),
        lambda _step: api.get(f"/preview/models/{model_id}"),
    ]
    return [calls[index % 3](index) for index in range(count)]


def test_a_burst_over_the_limit_gets_429_with_retry_after_and_then_is_served_again(
    limited: RunningServer, database_url: str
) -> None:
    key, other_key = add_key(database_url), add_key(database_url, "other")
    with limited.client(key) as api, limited.client(other_key) as other:
        model_id = create_model(api, "limited")  # the first of the burst's 3
        responses = burst(api, model_id)
        statuses = [response.status_code for response in responses]
        assert statuses[:2] == [200, 201], statuses
        refused = [response for response in responses if response.status_code == 429]
        # 2 a second refill: a slow machine serves a few more, but most of the 20 are refused.
        assert len(refused) >= 10, statuses
        assert set(statuses) <= {200, 201, 429}, statuses
        for response in refused:
            assert response.headers["retry-after"] == "1"
            assert response.json() == {
                "detail": "Rate limit exceeded: this key may make 2/s requests; retry after 1 s"
            }

        # Another key is not held back by this one's bucket; requests without a key never are.
        assert other.get("/preview/models").status_code == 200
        assert httpx.get(f"{limited.url}/health").status_code == 200

        time.sleep(int(refused[-1].headers["retry-after"]))
        listed = api.get(f"/preview/models/{model_id}/checkpoints")
        assert listed.status_code == 200, listed.text
        # Nothing refused was stored: the registered steps are those answered 201.
        stored = {item["step"] for item in listed.json()["data"]}
        assert stored == {
            index for index, status in enumerate(statuses) if index % 3 == 1 and status == 201
        }


def test_off_by_default(api: httpx.Client) -> None:
    assert Settings().rate_limit is None
    model_id = create_model(api, "unlimited")
    assert {response.status_code for response in burst(api, model_id, 60)} <= {200, 201}


def test_bad_rate_settings_say_what_to_write() -> None:
    with pytest.raises(ValueError, match="such as 10/s"):
        Settings(rate_limit="fast")
    assert Settings(rate_limit="off").rate is None
    assert str(Settings(rate_limit="600/min").rate) == "600/min"
