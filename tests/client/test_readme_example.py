"""The SDK example the README and docs/sdk.md show, run as written."""

from __future__ import annotations

import pytest

from ckpt_registry import Client, UnprocessableEntityError


def test_the_readme_example(
    server_url: str,
    api_key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CKPT_API_KEY", api_key)
    monkeypatch.setenv("CKPT_BASE_URL", server_url)

    with Client() as client:  # CKPT_API_KEY, CKPT_BASE_URL
        model = client.models.create(
            project="rl", name="agent-7", base_model="Qwen/Qwen2.5-7B", return_existing=True
        )
        client.checkpoints.register(model.id, step=500, metrics={"loss": 0.42})
        for checkpoint in client.checkpoints.list(model.id):  # every page
            print(checkpoint.step, checkpoint.metrics)  # noqa: T201

    assert capsys.readouterr().out == "500 {'loss': 0.42}\n"


def test_validation_errors_read_as_one_line(client: Client, model_id: str) -> None:
    with pytest.raises(UnprocessableEntityError) as caught:
        client.checkpoints.list(model_id, limit=101)

    assert str(caught.value) == "422 query.limit: Input should be less than or equal to 100"
