"""`yaie worker --join SCHEDULER_HOST:INTERNAL_PORT`: once SERVING, the worker registers its
address with the scheduler's yaie.worker.v1.Registry (retrying with backoff while the scheduler
is unreachable, and joining again every few seconds so that a restarted scheduler finds it); on
SIGTERM it leaves (the scheduler drains it) before it stops serving.

The channel is authenticated like the Step stream, the other way round: the worker's
--internal-secret-file travels as call metadata, and with --tls-cert/--tls-key/--tls-client-ca
the worker dials over mTLS (its certificate as the client's, the scheduler's verified by the
CA that the worker checks the scheduler's client certificate against).
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from yaie.worker.v1 import registry_pb2, registry_pb2_grpc
from yaie.worker_service.auth import SECRET_METADATA_KEY

log = logging.getLogger(__name__)

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")
JOIN_TIMEOUT_S = 60.0  # the scheduler Describes the worker before it answers
_FIRST_RETRY_S = 0.5
_MAX_RETRY_S = 10.0
# Errors a retry cannot mend by itself (still retried, slowly: the scheduler may be replaced)
_REFUSALS = (
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNIMPLEMENTED,
)


def advertised_address(host: str, port: int, advertise_host: str | None) -> str:
    """HOST:PORT the scheduler should dial: advertise_host, else the bound host unless it is a
    wildcard (then this machine's name resolved: a pod's IP in Kubernetes)."""
    if advertise_host is None:
        advertise_host = host
        if host in WILDCARD_HOSTS:
            advertise_host = socket.gethostbyname(socket.gethostname())
    if ":" in advertise_host and not advertise_host.startswith("["):
        advertise_host = f"[{advertise_host}]"  # an IPv6 literal
    return f"{advertise_host}:{port}"


@dataclass(frozen=True)
class JoinChannel:
    """How the worker reaches the scheduler's internal port."""

    target: str
    secret: bytes | None = None
    root_ca: bytes | None = None  # TLS: the CA of the scheduler's certificate
    cert: bytes | None = None  # mTLS: the worker's certificate and key
    key: bytes | None = None

    @classmethod
    def from_files(
        cls,
        target: str,
        secret: bytes | None,
        ca: str | None,
        cert: str | None,
        key: str | None,
    ) -> JoinChannel:
        def read(path: str | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"--join must be SCHEDULER_HOST:INTERNAL_PORT, got {target!r}")
        try:
            return cls(target, secret, read(ca), read(cert), read(key))
        except OSError as exc:
            raise ValueError(f"cannot read a TLS file for --join: {exc}") from exc

    def open(self) -> grpc.Channel:
        if self.root_ca is None:
            return grpc.insecure_channel(self.target)
        credentials = grpc.ssl_channel_credentials(self.root_ca, self.key, self.cert)
        return grpc.secure_channel(self.target, credentials)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.secret is None:
            return ()
        return ((SECRET_METADATA_KEY, self.secret.decode("ascii")),)


class Joiner:
    """The worker's registration, on a thread of its own (the worker serves meanwhile)."""

    def __init__(self, channel: JoinChannel, address: str, rejoin_interval_s: float = 5.0) -> None:
        self.address = address
        self._channel_spec = channel
        self._channel = channel.open()
        self._stub = registry_pb2_grpc.RegistryStub(self._channel)
        self._rejoin_interval_s = rejoin_interval_s
        self._stopping = threading.Event()
        self._call: grpc.Future | None = None
        self._lock = threading.Lock()
        self.joined = threading.Event()  # set after the first successful join
        self._thread = threading.Thread(target=self._run, name="join", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        delay, known = _FIRST_RETRY_S, False
        while not self._stopping.is_set():
            try:
                reply = self._join_once()
            except grpc.FutureCancelledError:  # leave() cancelled it
                return
            except grpc.RpcError as exc:
                if self._stopping.is_set():
                    return
                code = exc.code()
                level = logging.ERROR if code in _REFUSALS else logging.WARNING
                target = self._channel_spec.target
                log.log(level, "join %s: %s: %s", target, code.name, exc.details())
                delay = _MAX_RETRY_S if code in _REFUSALS else min(2 * delay, _MAX_RETRY_S)
                known = False
                self._stopping.wait(delay)
                continue
            if not known or not reply.already_known:
                log.info(
                    "joined the scheduler at %s as %s (%d worker(s) there)",
                    self._channel_spec.target,
                    self.address,
                    reply.num_workers,
                )
            known, delay = True, _FIRST_RETRY_S
            self.joined.set()
            self._stopping.wait(self._rejoin_interval_s)

    def _join_once(self) -> registry_pb2.JoinResponse:
        with self._lock:
            if self._stopping.is_set():
                raise grpc.FutureCancelledError()
            self._call = self._stub.Join.future(
                registry_pb2.JoinRequest(address=self.address),
                timeout=JOIN_TIMEOUT_S,
                metadata=self._channel_spec.metadata(),
            )
        return self._call.result()

    def leave(self, drain_timeout_s: float) -> None:
        """Stops joining, then asks the scheduler to drain and drop this worker (waits for its
        answer: the requests running here may run on for up to drain_timeout_s)."""
        with self._lock:
            self._stopping.set()
            if self._call is not None:
                self._call.cancel()
        self._thread.join(timeout=5.0)
        if not self.joined.is_set():
            self._channel.close()
            return
        try:
            reply = self._stub.Leave(
                registry_pb2.LeaveRequest(address=self.address, drain_timeout_s=drain_timeout_s),
                timeout=drain_timeout_s + 30.0,
                metadata=self._channel_spec.metadata(),
            )
            log.info(
                "left the scheduler: %d request(s) finished here while draining, %d moved",
                reply.num_finished,
                reply.num_moved,
            )
        except grpc.RpcError as exc:  # its requests then move by failover when we stop
            log.warning("leaving the scheduler failed: %s: %s", exc.code().name, exc.details())
        finally:
            self._channel.close()
