"""A TCP proxy on 127.0.0.1 that counts the bytes each way and can cut connections, to show what the
SDK does when a connection drops mid-transfer. It forwards bytes and nothing else: the server behind
it is the real one."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class CuttingProxy:
    """Forwards to `upstream` (host, port). A connection that has carried more than `cut_after`
    bytes in the `direction` ("up": client to server, "down": server to client) is closed, for the
    first `cuts` such connections (-1: every one)."""

    upstream: tuple[str, int]
    cut_after: int = 0
    direction: str = "up"
    cuts: int = 0
    sent_up: int = 0
    sent_down: int = 0
    cut_count: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up: bool,
        state: dict[str, int],
        both: list[asyncio.StreamWriter],
    ) -> None:
        key = "up" if up else "down"
        try:
            while data := await reader.read(65536):
                if up:
                    self.sent_up += len(data)
                else:
                    self.sent_down += len(data)
                state[key] += len(data)
                if (
                    self.direction == key
                    and (self.cuts < 0 or self.cut_count < self.cuts)
                    and state[key] > self.cut_after
                    and not state.get("cut")
                ):
                    state["cut"] = 1
                    self.cut_count += 1
                    for w in both:
                        w.transport.abort()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        state = {"up": 0, "down": 0}
        both = [client_w, server_w]
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, True, state, both),
                self._pipe(server_r, client_w, False, state, both),
            )
        finally:
            for w in both:
                w.close()

    @contextlib.contextmanager
    def running(self) -> Iterator[CuttingProxy]:
        with _serving(self._handle) as self.port:
            yield self


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@dataclass
class ForwardProxy:
    """An HTTP proxy on 127.0.0.1, as ``HTTP_PROXY`` names one: a request whose line names a whole
    URL is sent on to that host (one request per connection: it asks the server for
    ``Connection: close``), and ``CONNECT host:port`` opens a tunnel. ``seen`` keeps each request
    line, so a test can tell which requests went through it."""

    seen: list[str] = field(default_factory=list)
    port: int = 0
    # The local ports of its own connections onward, so the far end can tell who came through it.
    onward_ports: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line, *headers = head.decode("latin-1").split("\r\n")
        method, target, version = line.split(" ")
        self.seen.append(f"{method} {target}")
        if method == "CONNECT":
            host, port = target.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self.onward_ports.add(up_writer.get_extra_info("sockname")[1])
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(url.hostname, url.port or 80)
            self.onward_ports.add(up_writer.get_extra_info("sockname")[1])
            kept = [h for h in headers if h and not h.lower().startswith(("connection:", "proxy-"))]
            path = url.path + (f"?{url.query}" if url.query else "")
            up_writer.write(
                f"{method} {path} {version}\r\n".encode("latin-1")
                + "".join(f"{h}\r\n" for h in [*kept, "Connection: close"]).encode("latin-1")
                + b"\r\n"
            )
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    @contextlib.contextmanager
    def running(self) -> Iterator[ForwardProxy]:
        with _serving(self._handle) as self.port:
            yield self


@dataclass
class TLSFront:
    """TLS in front of a plain-http server (as a load balancer ends TLS for the registry, or as
    S3 speaks https): a connection's bytes, decrypted, go on to ``upstream``. ``peer_ports`` keeps
    the client port of every connection it took."""

    upstream: tuple[str, int]
    context: ssl.SSLContext
    port: int = 0
    peer_ports: list[int] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peer_ports.append(writer.get_extra_info("peername")[1])
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    @contextlib.contextmanager
    def running(self) -> Iterator[TLSFront]:
        with _serving(self._handle, self.context) as self.port:
            yield self


@contextlib.contextmanager
def _serving(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    context: ssl.SSLContext | None = None,
) -> Iterator[int]:
    """``handle`` serving connections on 127.0.0.1 from a thread of its own; yields the port.
    Connections still open at the end are ended, so none outlives the loop."""
    ready = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    port: list[int] = []

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await stop.wait()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        await asyncio.sleep(0)

    thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    thread.start()
    assert ready.wait(10), "server did not start"
    try:
        yield port[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()
