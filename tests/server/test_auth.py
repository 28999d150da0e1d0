"""Bearer keys: every endpoint but health and system-check answers 401 to a bad key and changes nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import RunningServer

from .helpers import AUTHENTICATED, Endpoint, add_key_with_id, register, revoke_key, snapshot


def bad_credentials(server: RunningServer, api: httpx.Client) -> dict[str, dict[str, str]]:
    """Every kind of bad `Authorization` header, by name; the revoked key worked a moment ago."""
    key_id, revoked = add_key_with_id(server.database_url)
    with server.client(revoked) as client:
        assert client.get("/preview/models").status_code == 200
    revoke_key(server.database_url, key_id)
    valid = str(api.headers["Authorization"]).removeprefix("Bearer ")
    return {
        "missing": {},
        "empty header": {"Authorization": ""},
        "basic scheme": {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
        "a valid key under another scheme": {"Authorization": f"Token {valid}"},
        "a valid key without a scheme": {"Authorization": valid},
        # "Bearer " with an empty key: HTTP strips trailing blanks, so it arrives as "Bearer".
        "bearer with an empty key": {"Authorization": "Bearer"},
        "unknown key": {"Authorization": "Bearer ckpt_this-key-was-never-issued"},
        "revoked key": {"Authorization": f"Bearer {revoked}"},
    }


@pytest.mark.parametrize("endpoint", AUTHENTICATED, ids=str)
def test_a_bad_key_is_401_and_changes_nothing(
    server: RunningServer, api: httpx.Client, model_id: str, endpoint: Endpoint
) -> None:
    checkpoint_id = register(api, model_id, 1, {"loss": 1.0})["id"]
    credentials = bad_credentials(server, api)
    before = snapshot(api)

    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for name, headers in credentials.items():
            response = endpoint.request(anonymous, model_id, checkpoint_id, headers=headers)
            assert response.status_code == 401, f"{name}: {response.status_code} {response.text}"
            assert response.headers["www-authenticate"] == "Bearer", name
            body = response.json()
            assert set(body) == {"detail"} and isinstance(body["detail"], str) and body["detail"]

    assert snapshot(api) == before
    # And the same request with the good key is served (the endpoint really needs only the key).
    assert endpoint.request(api, model_id, checkpoint_id).status_code < 300


def test_an_unauthenticated_request_is_401_before_its_input_is_judged(
    server: RunningServer, api: httpx.Client, model_id: str
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        responses = [
            anonymous.get(f"/preview/models/{model_id}/checkpoints", params={"limit": "abc"}),
            anonymous.get("/preview/models/not-a-model/checkpoints"),
            anonymous.post(f"/preview/models/{model_id}/checkpoints", content=b"{not json"),
            anonymous.post("/preview/models", json={"entity": "someone-else"}),
        ]
    for response in responses:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"] == "Bearer"
    assert snapshot(api)[model_id]["checkpoints"] == []


def test_a_revoked_key_stops_working_at_once(server: RunningServer) -> None:
    key_id, key = add_key_with_id(server.database_url)
    with server.client(key) as client:
        model = client.post(
            "/preview/models", json={"project": "p", "name": "m", "base_model": "b"}
        )
        assert model.status_code == 200
        listed = client.get(f"/preview/models/{model.json()['id']}/checkpoints")
        assert listed.status_code == 200

        revoke_key(server.database_url, key_id)

        for response in (
            client.get(f"/preview/models/{model.json()['id']}/checkpoints"),
            client.get("/preview/models"),
        ):
            assert response.status_code == 401
            assert response.headers["www-authenticate"] == "Bearer"


def test_each_key_acts_for_its_own_entity(server: RunningServer, api: httpx.Client) -> None:
    _, second_key = add_key_with_id(server.database_url, "default")
    with server.client(second_key) as same_entity:
        created = same_entity.post(
            "/preview/models", json={"project": "p", "name": "shared", "base_model": "b"}
        )
    assert created.status_code == 200
    assert created.json()["entity"] == "default"
    assert api.get(f"/preview/models/{created.json()['id']}").status_code == 200


@pytest.mark.parametrize("path", ["/health", "/system-check"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Basic eDp5"}]
)
def test_health_and_system_check_need_no_key(
    server: RunningServer, path: str, headers: dict[str, str]
) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        response = anonymous.get(path, headers=headers)
    assert response.status_code == 200, response.text
    if path == "/health":
        assert response.json() == {}
    else:
        assert response.json() == {"status": "ok", "checks": {"database": "ok", "blobs": "ok"}}


def test_with_two_authorization_headers_the_first_decides(
    server: RunningServer, api_key: str, model_id: str
) -> None:
    """The fast paths read headers as the full routes do, so both answer a request alike."""
    path = f"/preview/models/{model_id}/checkpoints"
    with httpx.Client(base_url=server.url) as client:
        for first, second, status in (
            ("Bearer nope", f"Bearer {api_key}", 401),
            (f"Bearer {api_key}", "Bearer nope", 200),
        ):
            headers = [("Authorization", first), ("Authorization", second)]
            assert client.get(path, headers=headers).status_code == status
            registered = client.post(path, headers=headers, json={"step": 1, "metrics": {}})
            assert registered.status_code == (401 if status == 401 else 201)
