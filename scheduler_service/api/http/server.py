"""The HTTP API's server: uvicorn, as a task in the scheduler's own event loop (beside grpc.aio),
on a socket bound up front so that a port in use fails the start as the gRPC port does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from yaie.scheduler_service.ops.server_options import HttpTls

# 256 KiB in flight per connection (the kernel doubles it): a token stream needs ~10 KiB/s, a
# whole unstreamed response still moves at ~2.5 MB/s over a 100 ms round trip.
SEND_BUFFER_BYTES = 128 << 10


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the scheduler owns SIGINT/SIGTERM and stops us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """start() binds and serves; stop() lets open responses end (up to grace_s), then closes."""

    def __init__(self, app: FastAPI, host: str, port: int, tls: HttpTls | None = None) -> None:
        self._host, self._port = host, port
        options = {}
        if tls is not None:
            options = {"ssl_certfile": tls.cert, "ssl_keyfile": tls.key}
            if tls.ca is not None:
                options |= {"ssl_ca_certs": tls.ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the scheduler's logging setup stays as it is
            access_log=False,
            timeout_graceful_shutdown=3,
            **options,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task | None = None
        self._socket: socket.socket | None = None

    def bind(self) -> int:
        """Binds the socket (OSError when the port is in use); returns the bound port."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit a fixed send buffer: the kernel's autotuning would take
        # megabytes of SSE chunks from a client that stopped reading, so its request would go
        # on generating long after; with this, a stalled reader stops the response's writes
        # (and so its request, at max_stream_backlog tokens) within ~1,500 chunks.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        return sock.getsockname()[1]

    async def start(self) -> None:
        assert self._socket is not None, "bind() first"
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            await asyncio.gather(self._task, return_exceptions=True)
        if self._socket is not None:
            self._socket.close()
