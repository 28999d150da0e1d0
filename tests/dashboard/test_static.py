"""The dashboard's files as `ckpt serve` answers them: from the package, with security headers, and
nothing outside the dashboard folder."""

from __future__ import annotations

import re

import httpx

from ..conftest import RunningServer
from .conftest import origin


def test_the_page_and_its_files_come_with_security_headers(site: RunningServer) -> None:
    with httpx.Client(base_url=origin(site)) as client:
        page = client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert "set-cookie" not in page.headers
        # No inline script, no asset from elsewhere: everything the page loads is ours.
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text)
        for asset in re.findall(r'(?:src|href)="(/dashboard/[^"]+)"', page.text):
            answer = client.get(asset)
            assert answer.status_code == 200, asset
            assert answer.headers["x-content-type-options"] == "nosniff"
        assert client.get("/dashboard/app.js").headers["content-type"].startswith("text/javascript")
        vendor = client.get("/dashboard/vendor/uplot-1.6.32/LICENSE.txt")
        assert vendor.status_code == 404  # only the listed kinds of file are served
        for path in ("/dashboard/../server/app.py", "/dashboard/%2e%2e/__init__.py", "/dashboard/"):
            assert client.get(path).status_code == 404, path
        # The API is where it was.
        assert client.get("/v1/health").status_code == 200
        assert client.get("/v1/preview/models").status_code == 401
