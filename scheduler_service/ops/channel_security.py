"""TLS for the public server, and the scheduler's side of the internal channel (TLS / mTLS
credentials and the shared-secret metadata that workers check before running any plan).

`configure_workers` is called once per process (by app.serve) before the engine opens its
channels; `open_worker_channel` is what WorkerClient uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

# Call metadata carrying the shared secret on the internal channel (worker_service/auth.py).
SECRET_METADATA_KEY = "yaie-internal-secret"


def read_file(path: str | None, what: str) -> bytes | None:
    """The bytes of path (None for None); ValueError naming what the file was for."""
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc}") from exc


def load_secret(path: str | None) -> bytes | None:
    """The internal channel's shared secret (the file's text, whitespace stripped)."""
    data = read_file(path, "internal secret")
    if data is None:
        return None
    secret = data.strip()
    # It travels as ASCII call metadata.
    if not secret or not all(0x21 <= byte < 0x7F for byte in secret):
        raise ValueError(f"the internal secret in {path} must be non-empty printable ASCII")
    return secret


def server_credentials(
    cert: str | None, key: str | None, client_ca: str | None
) -> grpc.ServerCredentials | None:
    """TLS server credentials (mTLS when client_ca is given); None when cert and key are unset."""
    if cert is None and key is None:
        if client_ca is not None:
            raise ValueError("a client CA needs --tls-cert and --tls-key too")
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    pair = (read_file(key, "TLS key"), read_file(cert, "TLS certificate"))
    ca = read_file(client_ca, "client CA")
    return grpc.ssl_server_credentials(
        [pair], root_certificates=ca, require_client_auth=ca is not None
    )


@dataclass(frozen=True)
class WorkerChannelSecurity:
    """How the scheduler reaches its workers: TLS (ca), mTLS (cert + key) and the secret."""

    secret: bytes | None = None
    ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None

    @classmethod
    def from_files(
        cls, secret: str | None, ca: str | None, cert: str | None, key: str | None
    ) -> WorkerChannelSecurity:
        if (cert is None) != (key is None):
            raise ValueError("mTLS to workers needs both --worker-tls-cert and --worker-tls-key")
        if cert is not None and ca is None:
            raise ValueError("--worker-tls-cert needs --worker-tls-ca")
        return cls(
            load_secret(secret),
            read_file(ca, "worker CA"),
            read_file(cert, "worker client certificate"),
            read_file(key, "worker client key"),
        )

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.ca is None:
            return None
        return grpc.ssl_channel_credentials(self.ca, self.key, self.cert)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.secret is None:
            return ()
        return ((SECRET_METADATA_KEY, self.secret.decode("utf-8", "surrogateescape")),)


def _with_metadata(
    details: grpc.aio.ClientCallDetails, extra: tuple[tuple[str, str], ...]
) -> grpc.aio.ClientCallDetails:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *extra)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files an interceptor under its first matching kind only: one class per kind.
class _UnarySecret(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds the secret to Describe's metadata."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(_with_metadata(details, self._metadata), request)


class _StreamSecret(grpc.aio.StreamStreamClientInterceptor):
    """Adds the secret to the Step stream's metadata."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(_with_metadata(details, self._metadata), request_iterator)


_workers = WorkerChannelSecurity()


def configure_workers(security: WorkerChannelSecurity) -> None:
    """Sets how this process's WorkerClients connect (call before the engine starts)."""
    global _workers
    _workers = security


def worker_security() -> WorkerChannelSecurity:
    return _workers


def open_worker_channel(
    address: str, options: Sequence[tuple[str, object]] = (), with_secret: bool = True
) -> grpc.aio.Channel:
    """A grpc.aio channel to a worker with this process's worker security."""
    security = _workers
    metadata = security.metadata() if with_secret else ()
    interceptors = [_UnarySecret(metadata), _StreamSecret(metadata)] if metadata else None
    credentials = security.credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(
        address, credentials, options=list(options), interceptors=interceptors
    )
