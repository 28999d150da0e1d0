"""The threads and connections that move a checkpoint's file bytes (client/wire.py), seen from
outside: a failure stops every other file before the call returns, no connection outlives the
transfer, and the server's answer to a refused body is the error the caller sees."""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from ckpt_registry.client import APIStatusError, Client, FileIntegrityError
from ckpt_registry.client._base import APIRequest
from ckpt_registry.client.wire import FileBody, Stop, Wire

from .proxy import ForwardProxy, TLSFront

MIB = 1024 * 1024


def on_disk(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_a_failed_file_stops_the_others_and_nothing_writes_after_the_call_returns(
    client: Client, model_id: str, blob_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    sizes = {"a-bad.bin": MIB, "b.bin": 32 * MIB, "c.bin": 32 * MIB, "d.bin": 32 * MIB}
    for name, size in sizes.items():
        (folder / name).write_bytes(os.urandom(size))
    client.checkpoints.save(model_id, step=1, path=folder)
    bad = (folder / "a-bad.bin").read_bytes()
    [blob] = [
        p for p in Path(blob_url, "sha256").rglob("*") if p.is_file() and p.stat().st_size == MIB
    ]
    blob.chmod(stat.S_IRUSR | stat.S_IWUSR)
    blob.write_bytes(bad[:-1] + bytes([bad[-1] ^ 0xFF]))

    out = tmp_path / "out"
    with pytest.raises(FileIntegrityError):
        client.checkpoints.download(model_id, out, step=1, parallel=4)
    left = on_disk(out)
    time.sleep(0.5)
    assert on_disk(out) == left  # no thread still writing a partial, or renaming one into place
    assert "a-bad.bin" not in left and "a-bad.bin.partial" not in left
    # The others were stopped, not let run to their end: 1 MiB failed while 96 MiB were to come.
    assert not {"b.bin", "c.bin", "d.bin"} <= left.keys()


def test_no_connection_outlives_an_upload_or_a_download(
    server_url: str, api_key: str, model_id: str, tmp_path: Path
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for index in range(6):
        (folder / f"part-{index}.bin").write_bytes(os.urandom(MIB + index))
    port = int(server_url.rsplit(":", 1)[1].split("/")[0])

    def to_server() -> list[object]:
        return [
            c
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        ]

    before = len(to_server())
    with Client(api_key=api_key, base_url=server_url) as client:
        client.checkpoints.save(model_id, step=1, path=folder, parallel=3)
        assert len(to_server()) == before
        client.checkpoints.download(model_id, tmp_path / "out", step=1, parallel=3)
        assert len(to_server()) == before
    assert on_disk(tmp_path / "out") == on_disk(folder)


@contextmanager
def refusing_server() -> Iterator[str]:
    """Not ours: a stand-in for a blob store or proxy in front of the registry (nginx, S3) that
    answers a body it will not take as soon as it has the headers, reads a little of the body and
    closes. Our server reads a refused body to its end instead."""
    listener = socket.create_server(("127.0.0.1", 0))
    body = b'{"detail": "the file is over the size limit"}'

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            conn.recv(MIB)
        # closed with the body unread: the client's next send fails (reset, broken pipe)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    finally:
        listener.close()
        thread.join(10)


def test_a_body_refused_early_gives_the_answer_not_a_broken_pipe(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 * MIB))
    with refusing_server() as url:
        client = Client(api_key="k", base_url=url, max_retries=0)
        wire = Wire(client, Stop())
        try:
            with pytest.raises(APIStatusError) as refused:
                wire.send(
                    APIRequest(
                        "PUT",
                        "preview/files/big.bin",
                        lambda r: r,
                        idempotent=True,
                        headers={"Content-Length": str(64 * MIB)},
                    ),
                    FileBody(big, 0, 64 * MIB, lambda _: None),
                )
        finally:
            wire.close()
            client.close()
    assert refused.value.status_code == 413
    assert "over the size limit" in str(refused.value)


def test_file_bytes_go_through_the_proxy_the_environment_names(
    server_url: str, api_key: str, model_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.bin").write_bytes(os.urandom(3 * MIB))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    proxy = ForwardProxy()
    with proxy.running():
        monkeypatch.setenv("http_proxy", proxy.url)
        with Client(api_key=api_key, base_url=server_url) as client:
            client.checkpoints.save(model_id, step=1, path=folder)
            client.checkpoints.download(model_id, tmp_path / "out", step=1)
    assert (tmp_path / "out" / "model.bin").read_bytes() == (folder / "model.bin").read_bytes()
    file_requests = [line.split(" ")[0] for line in proxy.seen if "/files/model.bin" in line]
    assert file_requests == ["PUT", "GET"], proxy.seen


@pytest.fixture
def tls_front(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TLSFront]:
    """The server behind TLS with a certificate made for this test, which the SDK is told to
    trust the way a user would (``SSL_CERT_FILE``)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    host, port = server_url.removeprefix("http://").removesuffix("/v1").split(":")
    front = TLSFront((host, int(port)), context)
    with front.running():
        yield front


def test_file_bytes_over_https_and_through_a_connect_tunnel(
    tls_front: TLSFront, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"https://127.0.0.1:{tls_front.port}/v1"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "model.bin").write_bytes(os.urandom(5 * MIB + 3))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with Client(api_key=api_key, base_url=url) as client:
        model = client.models.create(project="tls", name="m", base_model="b")
        client.checkpoints.save(model.id, step=1, path=folder)
        client.checkpoints.download(model.id, tmp_path / "direct", step=1)

    direct = len(tls_front.peer_ports)
    proxy = ForwardProxy()
    with proxy.running():
        monkeypatch.setenv("https_proxy", proxy.url)
        with Client(api_key=api_key, base_url=url) as client:
            client.checkpoints.save(model.id, step=2, path=folder)
            client.checkpoints.download(model.id, tmp_path / "tunnelled", step=2)
    assert proxy.seen and all(line.startswith("CONNECT 127.0.0.1:") for line in proxy.seen)
    # Every connection the TLS end took in the second part came through the tunnel, the file
    # bytes' own connections too.
    assert set(tls_front.peer_ports[direct:]) <= proxy.onward_ports
    for out in ("direct", "tunnelled"):
        assert on_disk(tmp_path / out) == on_disk(folder)
        assert (tmp_path / out / "model.bin").read_bytes() == (folder / "model.bin").read_bytes()
