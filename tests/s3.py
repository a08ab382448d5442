"""A real S3 endpoint for the tests: the moto server, in its own process on a loopback port.

The fixtures here are imported by ``tests/conftest.py``:

- ``moto_endpoint`` (session): starts ``python -m moto.server`` on a free port of 127.0.0.1,
  waits until it answers HTTP, yields its URL and stops it at the end of the session;
- ``s3_storage_options``: the fsspec/s3fs options reaching it (fake credentials);
- ``s3_bucket``: a fresh, uniquely named bucket per test, removed afterwards;
- ``index_url``: the index of an S3 store, on the parametrised backend (a SQLite file on this
  machine, or PostgreSQL);
- ``s3_store``: a factory of stores on ``s3://<bucket>/cache`` sharing that index;
- ``slow_s3_storage_options``: options reaching the same server through a proxy that holds
  each upload for a random while (the latency of a remote bucket, which opens the windows
  between a request and the next).
"""

from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from xpersist_sql import CacheStore

S3_HINT = "S3 tests need moto[server] and s3fs: pip install -e '.[test]'"
START_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def start_moto_server() -> tuple[subprocess.Popen[bytes], str]:
    """Start the moto server on a free loopback port; return the process and its URL."""
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    last_error = ""
    for _ in range(3):  # the free port may be taken between the probe and the bind
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        # The server logs every request: into a file, never into a pipe nobody reads (a full
        # pipe would block the server in the middle of a request).
        with tempfile.TemporaryFile() as log:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers(url):
                return proc, url
            time.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        last_error = f"exit code {proc.returncode}"
    raise RuntimeError(f"the moto server did not start: {last_error}")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server running in its own process for the whole session."""
    pytest.importorskip("moto.server", reason=S3_HINT)
    pytest.importorskip("s3fs", reason=S3_HINT)
    proc, url = start_moto_server()
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def s3_storage_options(moto_endpoint: str) -> dict[str, Any]:
    """fsspec storage options (s3fs) reaching the moto server."""
    return {
        "endpoint_url": moto_endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
    }


@pytest.fixture
def s3_bucket(s3_storage_options: dict[str, Any]) -> Iterator[str]:
    """A new empty bucket for one test, deleted with its objects afterwards."""
    import s3fs

    fs = s3fs.S3FileSystem(**s3_storage_options)
    name = f"xpersist-{uuid.uuid4().hex[:16]}"
    fs.call_s3("create_bucket", Bucket=name)  # us-east-1 takes no LocationConstraint
    fs.invalidate_cache()
    try:
        yield name
    finally:
        fs.invalidate_cache()
        if fs.exists(name):
            fs.rm(name, recursive=True)


@pytest.fixture
def index_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The index of the S3 store: a SQLite file on this machine, or PostgreSQL."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def s3_store(
    s3_bucket: str, s3_storage_options: dict[str, Any], index_url: str
) -> Iterator[Callable[..., CacheStore]]:
    """Factory of stores on ``s3://<bucket>/cache`` sharing one index."""
    created: list[CacheStore] = []

    def make(**kwargs: Any) -> CacheStore:
        store = CacheStore(
            f"s3://{s3_bucket}/cache",
            database_url=index_url,
            storage_options=s3_storage_options,
            **kwargs,
        )
        created.append(store)
        return store

    yield make
    for store in created:
        store.close()


class _SlowProxy(BaseHTTPRequestHandler):
    """Forward a request to the moto server; an upload (``PUT``) first waits 0 to 0.6 s."""

    protocol_version = "HTTP/1.1"
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "PUT":
            time.sleep(random.uniform(0.0, 0.6))
        connection = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            # the Host header is kept: moto answers for any host, and nothing is re-signed
            connection.request(self.command, self.path, body=body, headers=dict(self.headers))
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # a HEAD answers with the object's length, and no body
        length = response.getheader("Content-Length") if self.command == "HEAD" else None
        self.send_header("Content-Length", length or str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def slow_s3_storage_options(moto_endpoint: str) -> Iterator[dict[str, Any]]:
    """fsspec options reaching the moto server through a proxy that delays every upload."""
    host, port = moto_endpoint.removeprefix("http://").split(":")
    handler = type("_Proxy", (_SlowProxy,), {"upstream": (host, int(port))})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {
            "endpoint_url": f"http://127.0.0.1:{server.server_address[1]}",
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"region_name": "us-east-1"},
        }
    finally:
        server.shutdown()
        server.server_close()
