"""Every error class, provoked for real against the server, carries the status and the detail."""

from __future__ import annotations

import socket
import uuid

import pytest

from ckpt_registry.client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    CkptError,
    Client,
    ConflictError,
    InvalidIdError,
    NotFoundError,
    PermissionDeniedError,
    RequestTooLargeError,
    UnprocessableEntityError,
)


def test_a_missing_key_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKPT_API_KEY", raising=False)

    with pytest.raises(CkptError) as caught:
        Client()

    assert "api_key=" in str(caught.value)
    assert "CKPT_API_KEY" in str(caught.value)
    assert "ckpt keys create" in str(caught.value)


def test_key_and_base_url_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, server_url: str, api_key: str
) -> None:
    monkeypatch.setenv("CKPT_API_KEY", api_key)
    monkeypatch.setenv("CKPT_BASE_URL", server_url)

    with Client() as client:
        assert client.base_url == server_url
        assert list(client.models.list()) == []


def test_the_default_base_url_is_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CKPT_BASE_URL", raising=False)

    with Client(api_key="k") as client:
        assert client.base_url == "http://127.0.0.1:8000/v1"


def test_401_for_an_unknown_key(server_url: str) -> None:
    with (
        Client(api_key="ckpt_not-a-key", base_url=server_url) as client,
        pytest.raises(AuthenticationError) as caught,
    ):
        client.models.list()

    error = caught.value
    assert error.status_code == 401
    assert isinstance(error.detail, str) and error.detail
    assert error.response.headers["www-authenticate"] == "Bearer"
    assert str(error).startswith("401 ")


def test_403_for_a_model_of_another_entity(client: Client) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        client.models.create(project="p", name="n", base_model="b", entity="someone-else")

    assert caught.value.status_code == 403


def test_404_for_an_unknown_model(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.models.get(str(uuid.uuid4()))

    assert caught.value.status_code == 404
    assert caught.value.detail == "Model not found"
    assert str(caught.value) == "404 Model not found"


def test_ids_cannot_escape_their_path_segment(client: Client, model_id: str) -> None:
    # "../" must not turn a checkpoint lookup into another route: the server decodes %2F before
    # routing, so no quoting can keep it in one segment and it is refused before any request
    # (tests/client/test_path_segments.py has the rest).
    with pytest.raises(InvalidIdError, match="is not a checkpoint id"):
        client.checkpoints.get(model_id, "../../" + model_id)


def test_404_when_no_checkpoint_has_the_metric(client: Client, model_id: str) -> None:
    client.checkpoints.register(model_id, step=1, metrics={"loss": 1.0})

    with pytest.raises(NotFoundError):
        client.checkpoints.best(model_id, metric="accuracy")


def test_409_for_a_taken_name_and_a_step_with_other_metrics(client: Client, model_id: str) -> None:
    with pytest.raises(ConflictError) as name_taken:
        client.models.create(project="sdk", name="m", base_model="base")
    client.checkpoints.register(model_id, step=1, metrics={"loss": 1.0})
    with pytest.raises(ConflictError) as step_taken:
        client.checkpoints.register(model_id, step=1, metrics={"loss": 2.0})

    assert name_taken.value.status_code == 409
    assert step_taken.value.status_code == 409


def test_413_for_a_body_over_one_mebibyte(client: Client, model_id: str) -> None:
    metrics = {f"{i:0>250}": 1.0 for i in range(5000)}

    with pytest.raises(RequestTooLargeError) as caught:
        client.checkpoints.register(model_id, step=1, metrics=metrics)

    assert caught.value.status_code == 413
    assert client.checkpoints.latest(model_id) is None


def test_422_carries_the_validation_errors(client: Client, model_id: str) -> None:
    with pytest.raises(UnprocessableEntityError) as caught:
        client.checkpoints.list(model_id, limit=0)

    error = caught.value
    assert error.status_code == 422
    assert isinstance(error.detail, list)
    assert error.detail[0]["loc"] == ["query", "limit"]
    assert str(error).startswith("422 query.limit: ")


def test_every_status_error_is_an_api_status_error(client: Client) -> None:
    with pytest.raises(APIStatusError):
        client.models.get("not-a-uuid")


def test_connection_errors_are_not_timeouts() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port any more.
    with (
        Client(api_key="k", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0) as client,
        pytest.raises(APIConnectionError) as caught,
    ):
        client.models.list()

    assert not isinstance(caught.value, APITimeoutError)
    assert "Connection error" in str(caught.value)
