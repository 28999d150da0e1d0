"""A checkpoint file's bytes on the wire: the standard library's ``http.client``, on a thread.

The SDK's other requests go through httpx. File bytes do not: httpx receives a body in 64 KiB
pieces, each parsed in Python on the event loop, which held the SDK's downloads to ~0.3 of
curl's rate (benchmarks/sdk_transfer.py). Here a response body is read into a 1 MiB buffer in C
(``readinto``), hashed and written on the same thread, and a file goes up with ``sendfile``; with
one thread per file, the network, hashing and the disk overlap across files, and all of them let
go of the GIL.

Every request still goes through :class:`Attempts`, so it is retried, and fails, exactly as the
SDK's other requests do. Connections are kept alive and reused within one transfer. A proxy from
the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, as httpx reads them)
is used as httpx uses it: ``https`` through a ``CONNECT`` tunnel, ``http`` forwarded.
"""

from __future__ import annotations

import base64
import http.client
import select
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

import anyio
import httpx

from ._base import APIRequest, Attempts, BaseClient
from .errors import CkptError

__all__ = ["CHUNK_BYTES", "FileBody", "Stop", "Stopped", "Wire", "in_thread", "read_into"]

T = TypeVar("T")

#: Bytes read, hashed and written at a time; the memory one file's transfer holds.
CHUNK_BYTES = 1024 * 1024
#: Bytes handed to ``sendfile`` at a time, between which progress is told and a stop is seen.
SEND_BYTES = 8 * CHUNK_BYTES
#: The most of an error answer's body kept (its JSON detail is far smaller).
ERROR_BODY_BYTES = 64 * 1024


class Stopped(Exception):
    """The transfer was called off: another file of it failed, or its caller was cancelled."""


class Stop:
    """Calls off every request of one transfer: set once, seen between chunks, and it shuts the
    sockets in use, so a thread blocked in a receive wakes at once instead of at its timeout."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._sockets: set[socket.socket] = set()

    def set(self) -> None:
        with self._lock:
            self._event.set()
            for sock in self._sockets:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Stopped

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (a retry's delay), or raise :class:`Stopped` when set meanwhile."""
        if self._event.wait(seconds):
            raise Stopped

    @contextmanager
    def watching(self, sock: socket.socket) -> Iterator[None]:
        with self._lock:
            self.check()
            self._sockets.add(sock)
        try:
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)


async def in_thread(call: Callable[[], T], stop: Stop) -> T:
    """``call()`` on a worker thread. When the awaiting task is cancelled (a sibling failed),
    ``stop`` is set and the thread is waited for, so nothing is left writing a file after the
    transfer has returned: a next run may continue that file."""
    guard = threading.Lock()
    started = False
    ended = threading.Event()

    def run() -> T:
        nonlocal started
        with guard:
            if stop.is_set():
                raise Stopped
            started = True
        try:
            return call()
        finally:
            ended.set()

    try:
        return await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        stop.set()
        with guard:
            running = started
        if running:
            with anyio.CancelScope(shield=True):
                while not ended.is_set():
                    await anyio.sleep(0.01)
        raise


@dataclass(frozen=True, slots=True)
class FileBody:
    """``length`` bytes of ``source`` from ``start``, as a request's body; ``sent`` is told the
    file's offset reached as they go."""

    source: Path
    start: int
    length: int
    sent: Callable[[int], None]


def read_into(response: httpx.Response, buffer: memoryview) -> int:
    """The next bytes of a streamed response from :meth:`Wire.send` into ``buffer``: full but
    at the body's end, 0 after it. A body cut short raises ``httpx.TransportError``."""
    body = response.stream
    if not isinstance(body, _Body):
        raise TypeError("read_into reads the responses Wire.send streams")
    return body.readinto(buffer)


class _Body(httpx.SyncByteStream):
    """A response body as http.client receives it; the connection goes back to the pool when the
    body was read to its end and the server keeps the connection open."""

    def __init__(
        self,
        raw: http.client.HTTPResponse,
        release: Callable[[bool], None],
        stop: Stop,
        request: httpx.Request,
    ) -> None:
        self.raw = raw
        self._release = release
        self._stop = stop
        self._request = request
        self._closed = False

    def readinto(self, buffer: memoryview) -> int:
        """Fill ``buffer`` (less only at the body's end); 0 once it has ended. A body cut short
        raises ``httpx.TransportError``, as every failure Attempts knows."""
        self._stop.check()
        try:
            got = self.raw.readinto(buffer)
            if not got and buffer and self.raw.length:
                # http.client's readinto ends quietly where the connection did; short of the
                # length the server declared, that is a body cut short.
                raise http.client.IncompleteRead(b"", self.raw.length)
        except (OSError, http.client.HTTPException) as exc:
            self._stop.check()  # a socket this transfer's stop shut: not an error of its own
            raise _transport_error(exc, self._request) from exc
        return got

    def __iter__(self) -> Iterator[bytes]:
        buffer = memoryview(bytearray(CHUNK_BYTES))
        while got := self.readinto(buffer):
            yield bytes(buffer[:got])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        reusable = self.raw.isclosed() and not self.raw.will_close
        self.raw.close()
        self._release(reusable)


class Wire:
    """The connections of one transfer, and the requests sent over them (from any thread)."""

    def __init__(self, client: BaseClient, stop: Stop) -> None:
        self._client = client
        self.stop = stop  # calls off this transfer's requests
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._ssl: ssl.SSLContext | None = None
        # Hosts reached through a forwarding proxy (plain http): the request line names the whole
        # URL, with the proxy's credentials beside it.
        self._forwarded: dict[tuple[str, str, int], dict[str, str]] = {}

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def send(self, request: APIRequest[T], body: FileBody | None = None) -> T:
        """``request`` (with ``body`` as its body, when given), retried as the SDK's requests
        are. With ``request.stream`` the response reaching ``parse`` has a :class:`_Body`
        stream (``response.stream``) to ``readinto``; the caller closes the response."""

        def exchange(http_request: httpx.Request) -> httpx.Response:
            self.stop.check()
            response = self._exchange(http_request, body)
            if not request.stream:
                try:
                    response.read()
                finally:
                    response.close()
            return response

        return Attempts(self._client, request).run(None, exchange, self.stop.wait)

    # One exchange -------------------------------------------------------------------------------

    def _exchange(self, request: httpx.Request, body: FileBody | None) -> httpx.Response:
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        connection = self._connection(key)
        forwarded = self._forwarded.get(key)
        try:
            with self.stop.watching(_socket_of(connection)):
                connection.putrequest(
                    request.method,
                    str(url) if forwarded is not None else url.raw_path.decode("ascii"),
                    skip_host=True,
                    skip_accept_encoding=True,
                )
                for name, value in request.headers.raw:
                    connection.putheader(name.decode("latin-1"), value.decode("latin-1"))
                for proxy_header, proxy_value in (forwarded or {}).items():
                    connection.putheader(proxy_header, proxy_value)
                connection.endheaders()
                try:
                    if body is not None:
                        self._send_body(connection, body)
                    elif request.content:
                        connection.send(request.content)
                except OSError:
                    # The server may have answered early (a 413, a 401) and closed: that answer
                    # says more than the broken pipe does, when it can be read.
                    raw = _early_answer(connection)
                    if raw is None:
                        raise
                else:
                    raw = connection.getresponse()
        except Stopped:
            connection.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            self.stop.check()  # a socket this transfer's stop shut: not an error of its own
            raise _transport_error(exc, request) from exc
        except BaseException:
            connection.close()
            raise

        def release(reusable: bool) -> None:
            if reusable:
                with self._lock:
                    self._idle.setdefault(key, []).append(connection)
            else:
                connection.close()

        return httpx.Response(
            raw.status,
            headers=raw.getheaders(),
            stream=_Body(raw, release, self.stop, request),
            request=request,
        )

    def _send_body(self, connection: http.client.HTTPConnection, body: FileBody) -> None:
        sock = _socket_of(connection)
        sent = 0
        with open(body.source, "rb", buffering=0) as file:
            if isinstance(sock, ssl.SSLSocket):  # TLS cannot use sendfile: chunks from a buffer
                buffer = memoryview(bytearray(CHUNK_BYTES))
                file.seek(body.start)
                while sent < body.length:
                    self.stop.check()
                    got = file.readinto(buffer[: min(CHUNK_BYTES, body.length - sent)])
                    if not got:
                        raise _Shrank(body.source)
                    sock.sendall(buffer[:got])
                    sent += got
                    body.sent(body.start + sent)
            else:
                while sent < body.length:
                    self.stop.check()
                    moved = sock.sendfile(
                        file, body.start + sent, min(SEND_BYTES, body.length - sent)
                    )
                    if not moved:
                        raise _Shrank(body.source)
                    sent += moved
                    body.sent(body.start + sent)

    # Connections --------------------------------------------------------------------------------

    def _connection(self, key: tuple[str, str, int]) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                idle = self._idle.get(key)
                connection = idle.pop() if idle else None
            if connection is None:
                return self._connect(key)
            if _still_open(connection):
                return connection
            connection.close()  # the server closed it while it was idle

    def _connect(self, key: tuple[str, str, int]) -> http.client.HTTPConnection:
        scheme, host, port = key
        if scheme not in ("http", "https"):
            raise CkptError(f"cannot move file bytes over {scheme!r}: only http and https")
        timeout = self._client.timeout
        proxy = _proxy_for(scheme, host)
        connect_host, connect_port = host, port
        credentials: dict[str, str] = {}
        if proxy is not None:
            connect_host, connect_port, credentials = proxy
        connection: http.client.HTTPConnection
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            connection = http.client.HTTPSConnection(
                connect_host, connect_port, timeout=timeout.connect, context=self._ssl
            )
            if proxy is not None:
                connection.set_tunnel(host, port, headers=credentials)
        else:
            connection = http.client.HTTPConnection(
                connect_host, connect_port, timeout=timeout.connect
            )
            if proxy is not None:
                self._forwarded[key] = credentials
        request = httpx.Request("GET", f"{scheme}://{host}:{port}/")
        try:
            connection.connect()
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc), request=request) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        sock = _socket_of(connection)
        sock.settimeout(timeout.read)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection


def _proxy_for(scheme: str, host: str) -> tuple[str, int, dict[str, str]] | None:
    """The proxy the environment names for ``scheme://host``, as (host, port, the
    ``Proxy-Authorization`` header when it has credentials); None to go direct."""
    proxies = getproxies()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or proxy_bypass(host):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise CkptError(
            f"the proxy {url!r} (from the environment) is not an http:// proxy, the only kind "
            "checkpoint file bytes can go through; set NO_PROXY for this host to go direct"
        )
    credentials = {}
    if parts.username is not None:
        user_pass = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        credentials["Proxy-Authorization"] = "Basic " + base64.b64encode(user_pass.encode()).decode(
            "ascii"
        )
    return parts.hostname, parts.port or 80, credentials


class _Shrank(CkptError):
    def __init__(self, source: Path) -> None:
        super().__init__(f"{source} shrank while it was being uploaded")


def _socket_of(connection: http.client.HTTPConnection) -> socket.socket:
    sock = connection.sock
    if sock is None:  # pragma: no cover - every connection here is connected first
        raise RuntimeError("the connection is not open")
    return sock


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection is usable when nothing can be read from it: readable means
    the server closed it (or sent something unasked), and a request on it would fail."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _early_answer(connection: http.client.HTTPConnection) -> http.client.HTTPResponse | None:
    try:
        return connection.getresponse()
    except (OSError, http.client.HTTPException):
        return None


def _transport_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """http.client's failure as the httpx error :class:`Attempts` knows (its retries, its
    APIConnectionError/APITimeoutError)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return httpx.ReadTimeout(message, request=request)
    if isinstance(exc, http.client.HTTPException):
        return httpx.RemoteProtocolError(message, request=request)
    return httpx.ReadError(message, request=request)
