"""The scheduler's security, metrics and logging options: their flags, and what they build
(the API key interceptor, the public port's TLS, the workers' channel security, Metrics).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass

import grpc

from yaie.scheduler_service.ops.auth import API_KEY_ENV, ApiKeyInterceptor, load_api_key
from yaie.scheduler_service.ops.channel_security import WorkerChannelSecurity, server_credentials
from yaie.scheduler_service.ops.metrics import Metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    public = parser.add_argument_group("public API security")
    public.add_argument("--api-key-file", default=None,
                        help=f"file holding the API key clients must send (default: "
                             f"${API_KEY_ENV}; neither: no key needed)")  # fmt: skip
    public.add_argument("--tls-cert", default=None, help="PEM certificate (enables TLS)")
    public.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    public.add_argument("--tls-ca", default=None,
                        help="PEM CA that client certificates must chain to (mTLS)")  # fmt: skip
    internal = parser.add_argument_group("worker channel security")
    internal.add_argument("--internal-secret-file", default=None,
                          help="file holding the secret the workers check")  # fmt: skip
    internal.add_argument("--worker-tls-ca", default=None,
                          help="PEM CA of the workers' certificates (enables TLS)")  # fmt: skip
    internal.add_argument("--worker-tls-cert", default=None, help="client certificate (mTLS)")
    internal.add_argument("--worker-tls-key", default=None, help="client key (mTLS)")
    observe = parser.add_argument_group("metrics and logs")
    observe.add_argument("--metrics-port", type=int, default=None,
                         help="serve Prometheus metrics at /metrics (default: off)")  # fmt: skip
    observe.add_argument("--metrics-host", default="127.0.0.1", help="metrics address")
    observe.add_argument("--log-format", default="text", choices=["text", "json"])


_FORWARDED = ("api_key_file", "tls_cert", "tls_key", "tls_ca", "internal_secret_file",
              "worker_tls_ca", "worker_tls_cert", "worker_tls_key", "metrics_port",
              "metrics_host", "log_format")  # fmt: skip


def forward(args: argparse.Namespace) -> list[str]:
    """The flags that were given, again, for a scheduler command line built from args."""
    argv: list[str] = []
    for dest in _FORWARDED:
        value = getattr(args, dest, None)
        if value is not None:
            argv += [f"--{dest.replace('_', '-')}", str(value)]
    return argv


@dataclass(frozen=True)
class ServerOptions:
    """What the flags resolve to; from_args raises ValueError on a bad combination or file."""

    api_key: bytes | None
    credentials: grpc.ServerCredentials | None
    workers: WorkerChannelSecurity
    metrics_port: int | None
    metrics_host: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ServerOptions:
        get = getattr  # serve() may get a Namespace from an older parser: defaults then
        return cls(
            api_key=load_api_key(get(args, "api_key_file", None)),
            credentials=server_credentials(
                get(args, "tls_cert", None), get(args, "tls_key", None), get(args, "tls_ca", None)
            ),
            workers=WorkerChannelSecurity.from_files(
                get(args, "internal_secret_file", None),
                get(args, "worker_tls_ca", None),
                get(args, "worker_tls_cert", None),
                get(args, "worker_tls_key", None),
            ),
            metrics_port=get(args, "metrics_port", None),
            metrics_host=get(args, "metrics_host", "127.0.0.1"),
        )

    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [ApiKeyInterceptor(self.api_key)] if self.api_key is not None else []

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
