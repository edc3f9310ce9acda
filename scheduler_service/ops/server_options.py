"""What the scheduler's security, metrics and HTTP flags resolve to (flags.server_options), and
what that builds: the API key table and interceptor, the public port's TLS, Metrics.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from yaie.scheduler_service.ops.auth import ApiKeyInterceptor, KeyTable
from yaie.scheduler_service.ops.channel_security import WorkerChannelSecurity
from yaie.scheduler_service.ops.metrics import Metrics


@dataclass(frozen=True)
class HttpTls:
    """The HTTP API's TLS files (the gRPC port's): certificate, key, and a CA for mTLS."""

    cert: str
    key: str
    ca: str | None = None


@dataclass(frozen=True)
class ServerOptions:
    """The resolved options (files read); built by flags.server_options."""

    keys: KeyTable  # the API keys of both APIs (an open table: no key needed)
    credentials: grpc.ServerCredentials | None
    workers: WorkerChannelSecurity
    metrics_port: int | None
    metrics_host: str
    # The OpenAI-compatible HTTP API (None: off), on http_host; TLS as the gRPC port has it.
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    http_tls: HttpTls | None = None

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [ApiKeyInterceptor(self.keys)] if self.keys.required else []

    def add_port(self, server: grpc.aio.Server, address: str) -> int:
        if self.credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.credentials)

    def start_metrics(self, engine) -> Metrics | None:
        """Metrics with the engine's gauges, served on metrics_port; None when off."""
        if self.metrics_port is None:
            return None
        metrics = Metrics()
        metrics.watch_engine(engine.stats, asyncio.get_running_loop())
        metrics.serve(self.metrics_port, self.metrics_host)
        return metrics
