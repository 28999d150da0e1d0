"""The one rule for JSON request bodies, on every route that takes one: what is refused before the
schema sees it, with which status and message (docs/api.md, "Request bodies").

- A body must be sent as `Content-Type: application/json` (or another `application/*+json`), with
  no charset or `charset=utf-8`: anything else, a missing content type included, is 415.
- It must be UTF-8 JSON (RFC 8259 section 8.1): a byte order mark, UTF-16 or UTF-32, invalid UTF-8,
  bad syntax, nesting too deep for the parser or an integer too long to read is 422 at `["body"]`,
  type `json_invalid`, with a fixed message that never repeats the body.

FastAPI's own handling answered some of these 400 "There was an error parsing the body" (a status
the API does not document), accepted BOM-prefixed and UTF-16 bodies silently and told a body sent
without a content type that it was not "a valid dictionary".
"""

from __future__ import annotations

import codecs
import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from .auth import caller_for_authorization
from .refusals import Refusal

UNSUPPORTED_MEDIA_TYPE = "Send the body as JSON with Content-Type: application/json (UTF-8)"
NOT_UTF8 = "The body is not valid UTF-8: JSON bodies are UTF-8, without a byte order mark"
HAS_BOM = "The body starts with a byte order mark: send UTF-8 JSON without one"
NOT_JSON = "The body is not valid JSON"
TOO_DEEP = "The body is not valid JSON: it nests too deeply"
NUMBER_TOO_LONG = "The body is not valid JSON: it holds a number too long to read"

_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


class BodyUnreadable(Exception):
    """A JSON route's body that cannot be read: 415 (`media_type`) or 422 at `["body"]`."""

    def __init__(self, msg: str, *, media_type: bool = False) -> None:
        super().__init__(msg)
        self.msg = msg
        self.media_type = media_type


def json_content_type(content_type: str | None) -> bool:
    """True for `application/json` or `application/*+json`, without a charset or with UTF-8."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    if subtype != "json" and not subtype.endswith("+json"):
        return False
    charset = message.get_param("charset")
    return charset is None or (isinstance(charset, str) and charset.lower() in ("utf-8", "utf8"))


def parse_json_body(body: bytes, content_type: str | None) -> Any:
    """The JSON value of a request body; `BodyUnreadable` when the rule above refuses it."""
    if not json_content_type(content_type):
        raise BodyUnreadable(UNSUPPORTED_MEDIA_TYPE, media_type=True)
    if body.startswith(_BOMS):
        raise BodyUnreadable(HAS_BOM)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyUnreadable(NOT_UTF8) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise BodyUnreadable(TOO_DEEP) from None
    except json.JSONDecodeError:
        raise BodyUnreadable(NOT_JSON) from None
    except ValueError:  # int() refuses more than sys.get_int_max_str_digits() digits
        raise BodyUnreadable(NUMBER_TOO_LONG) from None


def reads_json_body(route: APIRoute, _method: str = "") -> bool:
    """True when the rule above applies to the route's body (a `JSONBodyRoute` with a JSON body)."""
    return isinstance(route, JSONBodyRoute) and route.body_field is not None


REFUSALS = (
    Refusal(
        415,
        "a JSON body sent without `Content-Type: application/json` (or `application/*+json`), "
        "or with a charset other than UTF-8",
        reads_json_body,
    ),
    Refusal(
        422,
        "a JSON body that cannot be read (not UTF-8, a byte order mark, bad syntax, nested too "
        'deeply): `loc: ["body"]`, type `json_invalid`',
        reads_json_body,
        validation=True,
    ),
)


class JSONBodyRoute(APIRoute):
    """A route that applies the rule to its JSON body before FastAPI reads it.

    The parsed value is left where Starlette caches `request.json()`, which FastAPI then reads: the
    body is parsed once, by this rule, and FastAPI's own failure paths are never reached.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not reads_json_body(self):  # no JSON body (a streamed or an empty one)
            return handler

        async def read_json_first(request: Request) -> Response:
            body = await request.body()
            if body:
                try:
                    parsed = parse_json_body(body, request.headers.get("content-type"))
                except BodyUnreadable:
                    # The key is judged before the input, as everywhere: without one, 401.
                    authorization = request.headers.get("authorization")
                    await caller_for_authorization(authorization, request.app.state.storage)
                    raise
                # Starlette's cache of `request.json()`: FastAPI reads it instead of parsing again.
                request._json = parsed
            return await handler(request)

        return read_json_first
