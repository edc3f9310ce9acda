"""The worker's side of the internal channel: a shared secret checked on the call's metadata
before any message is read, and TLS / mTLS server credentials. grpc.health.v1 stays open
(probes carry no secret). Off loopback, a worker needs a secret or mTLS unless told it is safe.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

import grpc

# The call metadata the scheduler sends (scheduler_service/channel_security.py, same name).
SECRET_METADATA_KEY = "yaie-internal-secret"
OPEN_PREFIXES = ("/grpc.health.v1.Health/",)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {what} file {path}: {exc}") from exc


def _refuse(request_iterator: object, context: grpc.ServicerContext) -> None:
    context.abort(grpc.StatusCode.UNAUTHENTICATED, "the internal secret is missing or wrong")


# Refusals of every kind of call go through a stream-request handler: unlike a unary one, it
# receives no message before it runs, so a refused call's body is never read into memory (a
# unary handler would take the whole message, up to the receive limit, before refusing it).
_REFUSING = grpc.stream_unary_rpc_method_handler(_refuse)


class InternalSecretInterceptor(grpc.ServerInterceptor):
    """Every call but health needs `yaie-internal-secret: <secret>` (constant-time compare)."""

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise ValueError("the internal secret is empty")
        self._secret = secret

    def _allowed(self, metadata: tuple | None) -> bool:
        values = [v for k, v in metadata or () if k == SECRET_METADATA_KEY]
        if len(values) != 1:
            return False
        given = values[0] if isinstance(values[0], bytes) else values[0].encode("utf-8")
        return hmac.compare_digest(given, self._secret)

    def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        if self._allowed(details.invocation_metadata):
            return handler
        return _REFUSING


@dataclass(frozen=True)
class WorkerSecurity:
    """The worker's --internal-secret-file and --tls-cert/--tls-key/--tls-client-ca."""

    secret: bytes | None = None
    credentials: grpc.ServerCredentials | None = None
    client_auth: bool = False  # mTLS: callers must present a certificate of the client CA

    @classmethod
    def from_files(
        cls, secret: str | None, cert: str | None, key: str | None, client_ca: str | None
    ) -> WorkerSecurity:
        loaded = _read(secret, "internal secret")
        if loaded is not None:
            loaded = loaded.strip()
            if not loaded or not all(0x21 <= byte < 0x7F for byte in loaded):
                raise ValueError(f"the internal secret in {secret} must be printable ASCII")
        if (cert is None) != (key is None):
            raise ValueError("TLS needs both --tls-cert and --tls-key")
        if client_ca is not None and cert is None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key too")
        credentials = None
        if cert is not None:
            ca = _read(client_ca, "client CA")
            pair = (_read(key, "TLS key"), _read(cert, "TLS certificate"))
            credentials = grpc.ssl_server_credentials(
                [pair], root_certificates=ca, require_client_auth=ca is not None
            )
        return cls(loaded, credentials, client_ca is not None)

    @property
    def authenticates_callers(self) -> bool:
        """Whether a caller must prove who it is (the secret, or a client certificate)."""
        return self.secret is not None or self.client_auth

    def check_exposure(self, host: str, insecure: bool) -> None:
        """Fails closed: off loopback, anyone who reaches the port could run plans (and read
        every prompt) unless callers are authenticated; ValueError unless insecure says the
        operator means it."""
        if is_loopback(host) or self.authenticates_callers or insecure:
            return
        raise ValueError(
            f"refusing to listen on {host} without --internal-secret-file or mTLS "
            "(--tls-client-ca): anyone who reaches this port could run plans; pass "
            "--insecure-internal if the network is trusted"
        )

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [InternalSecretInterceptor(self.secret)] if self.secret is not None else []

    def add_port(self, server: grpc.Server, address: str) -> int:
        if self.credentials is None:
            return server.add_insecure_port(address)
        return server.add_secure_port(address, self.credentials)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")
