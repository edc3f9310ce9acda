"""The scheduler's internal port: yaie.worker.v1.Registry (workers join and leave), behind the
internal secret (and mTLS when the scheduler has a worker certificate). Thin: each RPC decodes,
calls the engine's add_worker / remove_worker, encodes.
"""

from __future__ import annotations

import hmac
import logging
from typing import Protocol

import grpc

from yaie.scheduler_service.ops.channel_security import (
    SECRET_METADATA_KEY,
    WorkerChannelSecurity,
)
from yaie.scheduler_service.workers.worker_client import WorkerProtocolError, WorkerStreamError
from yaie.worker.v1 import registry_pb2, registry_pb2_grpc

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class WorkerSetOwner(Protocol):
    """What the registry needs of the engine."""

    async def add_worker(self, address: str, origin: str) -> bool: ...

    async def remove_worker(self, address: str, drain_s: float = 0.0): ...

    def num_workers(self) -> int: ...


def check_address(address: str) -> str:
    """HOST:PORT with a port in 1..65535 (ValueError otherwise)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the address must be HOST:PORT, got {address!r}")
    return address


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    """Joins add workers to the engine's set with origin (what the set does with a lost one)."""

    def __init__(self, engine: WorkerSetOwner, origin: str) -> None:
        self._engine = engine
        self._origin = origin

    async def Join(self, request, context) -> registry_pb2.JoinResponse:
        try:
            address = check_address(request.address)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            added = await self._engine.add_worker(address, self._origin)
        except (ValueError, WorkerProtocolError) as exc:  # another model or protocol
            logger.error("join of %s refused: %s", address, exc)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except WorkerStreamError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return registry_pb2.JoinResponse(
            already_known=not added, num_workers=self._engine.num_workers()
        )

    async def Leave(self, request, context) -> registry_pb2.LeaveResponse:
        drain_s = request.drain_timeout_s
        if not drain_s >= 0:  # NaN too
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "drain_timeout_s must be >= 0")
        outcome = await self._engine.remove_worker(request.address, drain_s)
        return registry_pb2.LeaveResponse(
            known=outcome.known, num_finished=outcome.num_finished, num_moved=outcome.num_moved
        )


async def _refuse(request, context) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the internal secret is missing or wrong")


class SecretInterceptor(grpc.aio.ServerInterceptor):
    """Every call needs `yaie-internal-secret: <secret>` (constant-time compare); a call
    without it is answered before its handler (and the engine) is reached."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def _allowed(self, metadata) -> bool:
        values = [v for k, v in metadata or () if k == SECRET_METADATA_KEY]
        if len(values) != 1:
            return False
        given = values[0] if isinstance(values[0], bytes) else values[0].encode("utf-8")
        return hmac.compare_digest(given, self._secret)

    async def intercept_service(self, continuation, details):
        if self._allowed(details.invocation_metadata):
            return await continuation(details)
        return grpc.unary_unary_rpc_method_handler(_refuse)  # Registry's RPCs are all unary


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def start_registry(
    servicer: RegistryServicer,
    host: str,
    port: int,
    security: WorkerChannelSecurity,
    insecure: bool,
) -> tuple[grpc.aio.Server, int]:
    """The internal server of servicer on host:port (not started) and its bound port (0: it
    could not bind). ValueError when
    host is not loopback and neither a secret nor mTLS guards it (unless insecure)."""
    mtls = security.cert is not None and security.key is not None and security.ca is not None
    if not is_loopback(host) and security.secret is None and not mtls and not insecure:
        raise ValueError(
            f"--internal-host {host} with no --internal-secret-file or worker mTLS would let "
            "anyone who reaches it add a worker (and read every prompt): give a secret, or "
            "--insecure-internal to accept that"
        )
    interceptors = [SecretInterceptor(security.secret)] if security.secret is not None else []
    server = grpc.aio.server(interceptors=interceptors)
    registry_pb2_grpc.add_RegistryServicer_to_server(servicer, server)
    address = f"{host}:{port}"
    if mtls:  # the scheduler's worker certificate serves, joining workers' certificates verified
        credentials = grpc.ssl_server_credentials(
            [(security.key, security.cert)], root_certificates=security.ca, require_client_auth=True
        )
        bound = server.add_secure_port(address, credentials)
    else:
        bound = server.add_insecure_port(address)
    return server, bound
