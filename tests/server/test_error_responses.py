"""Every refusal `/openapi.json` lists for an operation (400, 401, 403, 408, 413, 414, 415, 422, 429, 431,
503) is one the server really gives that operation, with the documented body and headers.

Each operation is taken from the live document, so a route added later is checked without a word here.
Refusals do not depend on the database: SQLite only.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis.errors import NoSuchExample
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from ckpt_registry.server import Settings
from ckpt_registry.server.headlimits import MAX_HEADERS, MAX_QUERY_PARAMETERS, MAX_URL_BYTES
from tests.conftest import RunningServer, add_key, serving

from .test_fuzz import Live, make_live
from .test_slow_clients import start

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

MAX_BODY_BYTES = 1024  # the smallest the settings take, so a body over it is small
HEADER_TIMEOUT = "1"
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@dataclass
class Document:
    """The live document, and how to reach each operation."""

    root: str
    body: dict[str, Any]
    schema: Any  # schemathesis' view of it

    def operations(self) -> list[Any]:
        return [result.ok() for result in self.schema.get_all_operations()]

    def responses(self, operation: Any) -> dict[str, Any]:
        """The operation's responses, `$ref`s resolved."""
        declared = self.body["paths"][operation.path][operation.method.lower()]["responses"]
        return {status: self.resolve(response) for status, response in declared.items()}

    def resolve(self, response: dict[str, Any]) -> dict[str, Any]:
        ref = response.get("$ref")
        if ref is None:
            return response
        resolved: dict[str, Any] = self.body
        for part in ref.removeprefix("#/").split("/"):
            resolved = resolved[part]
        return resolved


@dataclass
class Findings:
    failures: list[str] = field(default_factory=list)
    checked: set[tuple[str, int]] = field(default_factory=set)

    def fail(self, label: str, status: int, why: str) -> None:
        self.failures.append(f"{label}: {status}: {why}")


def label_of(operation: Any) -> str:
    return f"{operation.method.upper()} {operation.path}"


def check_answer(
    document: Document,
    operation: Any,
    status: int,
    answer_status: int,
    headers: httpx.Headers,
    body: bytes,
) -> str | None:
    """Why the answer is not the documented refusal `status`; None when it is."""
    if answer_status != status:
        return f"answered {answer_status}: {body[:200]!r}"
    documented = document.responses(operation).get(str(status))
    if documented is None:
        return "not documented"
    for name, header in documented.get("headers", {}).items():
        if header.get("required") and name not in headers:
            return f"no {name} header"
    if operation.method.upper() == "HEAD":
        return None  # the headers of the GET's answer, without its body
    try:
        parsed = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    if status == 422:
        if not (isinstance(detail, list) and detail and set(detail[0]) == {"loc", "msg", "type"}):
            return f"not a validation body: {parsed}"
    elif set(parsed) != {"detail"} or not isinstance(detail, str):
        return f"not {{'detail': str}}: {parsed}"
    return None


# App-level refusals: each turns a valid request of the operation into one the rule refuses --------


# Generated requests until one is refused, never shrunk (each example is a request).
FIRST_REFUSED = settings(
    max_examples=25, database=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck)
)
FIRST_EXAMPLE = settings(FIRST_REFUSED, max_examples=1)


@dataclass
class Keys:
    writer: str
    reader: str


Request = dict[str, Any]
Trigger = Callable[[Request, Keys], Request]


def with_key(request: Request, key: str | None) -> Request:
    headers = {
        name: value for name, value in request["headers"].items() if name.lower() != "authorization"
    }
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return {**request, "headers": headers}


def with_body(request: Request, keys: Keys, content: bytes, content_type: str) -> Request:
    request = with_key(request, keys.writer)
    headers = {
        name: value for name, value in request["headers"].items() if name.lower() != "content-type"
    }
    return {**request, "headers": {**headers, "Content-Type": content_type}, "content": content}


TRIGGERS: dict[int, Trigger] = {
    400: lambda request, keys: {
        **with_key(request, keys.writer),
        "params": [(f"p{index}", "1") for index in range(MAX_QUERY_PARAMETERS + 1)],
    },
    401: lambda request, _keys: with_key(request, None),
    403: lambda request, keys: with_key(request, keys.reader),
    413: lambda request, keys: with_body(
        request, keys, b"[" + b"0," * MAX_BODY_BYTES + b"0]", "application/json"
    ),
    414: lambda request, keys: {
        **with_key(request, keys.writer),
        "params": [("pad", "x" * MAX_URL_BYTES)],
    },
    415: lambda request, keys: with_body(request, keys, b"{}", "text/plain"),
    422: lambda request, keys: with_body(request, keys, b"{", "application/json"),
    431: lambda request, keys: {
        **with_key(request, keys.writer),
        "headers": {
            **with_key(request, keys.writer)["headers"],
            **{f"X-Pad-{index}": "1" for index in range(MAX_HEADERS + 1)},
        },
    },
}


def plain_request(case: schemathesis.Case, root: str, key: str) -> Request:
    """The generated case as httpx arguments."""
    kwargs = case.as_transport_kwargs(base_url=root, headers={"Authorization": f"Bearer {key}"})
    request: Request = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "params": kwargs.get("params") or {},
        "headers": dict(kwargs.get("headers") or {}),
    }
    if kwargs.get("json") is not None:
        request["content"] = json.dumps(kwargs["json"]).encode()
        request["headers"].setdefault("Content-Type", "application/json")
    elif kwargs.get("data") is not None:
        data = kwargs["data"]
        request["content"] = data if isinstance(data, bytes) else str(data).encode()
    return request


def answer_with(
    document: Document,
    operation: Any,
    status: int,
    live: Live,
    keys: Keys,
    send: Callable[[Request], httpx.Response],
    findings: Findings,
) -> None:
    """Find a valid request of the operation that the trigger turns into `status`, as documented.

    Most triggers refuse any request; a read-only key is refused a batch transfer only for an
    `upload`, so requests are generated until one is refused (`find`)."""
    names = {parameter.name for parameter in operation.path_parameters}
    fixed = live.path_parameters(names)
    strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed or None)
    seen: list[str] = []

    def refused(case: schemathesis.Case) -> bool:
        request = TRIGGERS[status](plain_request(case, document.root, keys.writer), keys)
        response = send(request)
        why = check_answer(
            document, operation, status, response.status_code, response.headers, response.content
        )
        if why is None:
            case.validate_response(response, checks=CHECKS)
        else:
            seen.append(why)
        return why is None

    try:
        find(
            strategy,
            refused,
            settings=FIRST_REFUSED,
        )
    except NoSuchExample:
        findings.fail(label_of(operation), status, "; ".join(sorted(set(seen))[:3]))
    findings.checked.add((label_of(operation), status))


def answer_without(
    document: Document,
    operation: Any,
    status: int,
    live: Live,
    keys: Keys,
    send: Callable[[Request], httpx.Response],
    findings: Findings,
) -> None:
    """The trigger of a refusal the operation does not list: whatever it answers, it is documented."""
    names = {parameter.name for parameter in operation.path_parameters}
    fixed = live.path_parameters(names)
    strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters=fixed or None)
    case = find(strategy, lambda _case: True, settings=FIRST_EXAMPLE)
    response = send(TRIGGERS[status](plain_request(case, document.root, keys.writer), keys))
    if str(response.status_code) not in document.responses(operation):
        findings.fail(
            label_of(operation),
            status,
            f"not listed, and its trigger answered {response.status_code}, not listed either",
        )


@pytest.fixture
def app_server(settings: Settings) -> Iterator[RunningServer]:
    limits = {"max_body_bytes": MAX_BODY_BYTES, "max_file_bytes": MAX_BODY_BYTES}
    with serving(settings.model_copy(update=limits)) as running:
        yield running


def read_only_key(database_url: str) -> str:
    return add_key(database_url, "default", "reader", read_only=True)


def documented_refusals(document: Document, operation: Any, statuses: set[int]) -> list[int]:
    return sorted(
        int(status) for status in document.responses(operation) if int(status) in statuses
    )


def load(root: str) -> Document:
    body = httpx.get(f"{root}/openapi.json").json()
    return Document(root, body, schemathesis.openapi.from_dict(body))


@SQLITE
def test_every_documented_refusal_is_given_as_documented_and_no_other(
    app_server: RunningServer, api_key: str, database_url: str
) -> None:
    root = app_server.url.removesuffix("/v1")
    document = load(root)
    keys = Keys(api_key, read_only_key(database_url))
    findings = Findings()
    with app_server.client(api_key) as api, httpx.Client(timeout=30) as client:

        def send(request: Request) -> httpx.Response:
            return client.request(**request)

        for serial, operation in enumerate(document.operations()):
            live = make_live(api, serial)
            documented = documented_refusals(document, operation, set(TRIGGERS))
            for status in documented:
                if status == 422 and "requestBody" not in operation.definition.raw:
                    continue  # FastAPI's own parameter validation (see test_fuzz.py)
                answer_with(document, operation, status, live, keys, send, findings)
            for status in set(TRIGGERS) - set(documented):
                answer_without(document, operation, status, live, keys, send, findings)
    assert not findings.failures, "\n".join(findings.failures)
    # The refusals of every kind were met: a route of each kind exists.
    assert {status for _, status in findings.checked} == set(TRIGGERS)


@SQLITE
def test_the_rate_limit_is_documented_where_it_refuses(settings: Settings) -> None:
    limited = settings.model_copy(update={"rate_limit": "1/h", "rate_limit_burst": 1})
    with serving(limited) as running, httpx.Client(timeout=30) as client:
        root = running.url.removesuffix("/v1")
        document = load(root)
        findings = Findings()
        for serial, operation in enumerate(document.operations()):
            if "429" not in document.responses(operation):
                findings.fail(label_of(operation), 429, "not documented")
                continue
            # Counted per key presented, checked or not: the second request of a new key is refused.
            key = f"ckpt_rate-{serial}"
            url = root + re.sub(r"\{[^}]+\}", "x", operation.path)
            method = operation.method.upper()
            first = client.request(method, url, headers={"Authorization": f"Bearer {key}"})
            assert first.status_code != 429
            second = client.request(method, url, headers={"Authorization": f"Bearer {key}"})
            why = check_answer(
                document, operation, 429, second.status_code, second.headers, second.content
            )
            if why is not None:
                findings.fail(label_of(operation), 429, why)
        assert not findings.failures, "\n".join(findings.failures)


# Refusals of `ckpt serve`'s HTTP protocol: before the app, on raw connections ----------------------


async def raw_answer(
    port: int, head: bytes, *, hold: float = 0
) -> tuple[int, httpx.Headers, bytes]:
    """Send `head` (not necessarily a whole request head) and read the answer until the server
    closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=15 + hold)
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    header_text, _, body = rest.partition(b"\r\n\r\n")
    headers = httpx.Headers(
        [
            tuple(part.strip() for part in line.decode("latin-1").split(":", 1))
            for line in header_text.split(b"\r\n")
            if b":" in line
        ]
    )
    return int(status_line.split()[1]), headers, body


def request_line(operation: Any) -> bytes:
    path = re.sub(r"\{[^}]+\}", "x", operation.path)
    return f"{operation.method.upper()} {path} HTTP/1.1\r\nHost: registry\r\n".encode()


def test_slow_headers_and_the_connection_cap_are_documented_where_they_refuse(
    tmp_path: Path,
) -> None:
    (tmp_path / "slow").mkdir()
    (tmp_path / "capped").mkdir()
    slow, _ = start(tmp_path / "slow", CKPT_HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT)
    capped, _ = start(tmp_path / "capped", CKPT_MAX_CONNECTIONS="1")
    try:
        document = load(f"http://127.0.0.1:{slow.port}")
        operations = document.operations()

        async def run() -> list[str]:
            failures: list[str] = []
            # Headers never finished: 408 once the timeout passes, every operation at once.
            answers = await asyncio.gather(
                *(raw_answer(slow.port, request_line(operation)) for operation in operations)
            )
            for operation, (status, headers, body) in zip(operations, answers, strict=True):
                why = check_answer(document, operation, 408, status, headers, body)
                if why is not None:
                    failures.append(f"{label_of(operation)}: 408: {why}")
            # One connection held open (admitted, sending nothing): every other one gets 503.
            _, held = await asyncio.open_connection("127.0.0.1", capped.port)
            try:
                for operation in operations:
                    answer = await raw_answer(capped.port, request_line(operation) + b"\r\n")
                    why = check_answer(document, operation, 503, *answer)
                    if why is not None:
                        failures.append(f"{label_of(operation)}: 503: {why}")
            finally:
                held.close()
            return failures

        for operation in operations:
            for status in (408, 503):
                if str(status) not in document.responses(operation):
                    pytest.fail(f"{label_of(operation)} does not document {status}")
        failures = asyncio.run(run())
        assert not failures, "\n".join(failures)
    finally:
        slow.stop()
        capped.stop()
