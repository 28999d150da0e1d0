"""The browser dashboard: its static files (shipped in `ckpt_registry/dashboard/`) served at `/`.

The page talks to the same JSON API as the SDK, with the key the user pastes sent as a bearer
header; these routes need no key and serve nothing but the package's own files.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Final

from fastapi import APIRouter, HTTPException
from starlette.responses import Response

from .bodies import JSONBodyRoute

# Bodiless routes, but every router takes the body rule, so one added here later gets it too.
router = APIRouter(include_in_schema=False, route_class=JSONBodyRoute)

ROOT: Final = files("ckpt_registry") / "dashboard"
MEDIA_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
# Scripts only from this server (no inline script, no eval), data only from its API, no framing:
# a key pasted into the page cannot be read by another site's script or clickjacked out of it.
# Styles allow inline: the chart library sizes its elements through the style attribute.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    # The files change with the package: a browser revalidates instead of keeping an old app.js.
    "Cache-Control": "no-cache",
}


def _file(path: str) -> tuple[bytes, str]:
    """The bytes and media type of a dashboard file; 404 for anything else (`..` included)."""
    node: Traversable = ROOT
    for segment in path.split("/"):
        if segment in ("", ".", "..") or segment.startswith("."):
            raise HTTPException(404, "Not Found")
        node = node / segment
    suffix = "." + path.rsplit(".", 1)[-1] if "." in path else ""
    if suffix not in MEDIA_TYPES or not node.is_file():
        raise HTTPException(404, "Not Found")
    return node.read_bytes(), MEDIA_TYPES[suffix]


def _answer(path: str) -> Response:
    body, media_type = _file(path)
    return Response(body, media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/")
async def index() -> Response:
    return _answer("index.html")


@router.get("/dashboard/{path:path}")
async def asset(path: str) -> Response:
    return _answer(path)
