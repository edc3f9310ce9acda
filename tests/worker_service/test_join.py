"""The worker's side of joining (worker_service/join.py) against a recording Registry: it keeps
retrying while the scheduler is unreachable, joins once it listens (with the secret), joins
again periodically, leaves with its drain time; over mTLS too; the advertised address."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from tests import processes
from yaie.worker.v1 import registry_pb2, registry_pb2_grpc
from yaie.worker_service.auth import SECRET_METADATA_KEY
from yaie.worker_service.join import JoinChannel, Joiner, advertised_address


class RecordingRegistry(registry_pb2_grpc.RegistryServicer):
    def __init__(self) -> None:
        self.joins: list[tuple[str, str | None]] = []  # (address, secret sent)
        self.leaves: list[tuple[str, float]] = []
        self.changed = threading.Event()

    @staticmethod
    def _secret(context) -> str | None:
        return dict(context.invocation_metadata()).get(SECRET_METADATA_KEY)

    def Join(self, request, context):
        self.joins.append((request.address, self._secret(context)))
        self.changed.set()
        return registry_pb2.JoinResponse(already_known=len(self.joins) > 1, num_workers=1)

    def Leave(self, request, context):
        self.leaves.append((request.address, request.drain_timeout_s))
        return registry_pb2.LeaveResponse(known=True, num_moved=2)


def _serve(registry: RecordingRegistry, port: int, credentials=None) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    registry_pb2_grpc.add_RegistryServicer_to_server(registry, server)
    address = f"127.0.0.1:{port}"
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    server.start()
    return server


def _wait(condition, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_joins_once_the_scheduler_listens_rejoins_and_leaves() -> None:
    port = processes.free_port()
    registry = RecordingRegistry()
    channel = JoinChannel.from_files(f"127.0.0.1:{port}", b"s3cret", None, None, None)
    joiner = Joiner(channel, "10.1.2.3:50061", rejoin_interval_s=0.2)
    joiner.start()
    time.sleep(0.8)  # nothing listens yet: the joiner retries with backoff
    assert not joiner.joined.is_set()
    server = _serve(registry, port)
    try:
        _wait(joiner.joined.is_set)
        _wait(lambda: len(registry.joins) >= 2)  # joined again: a restarted scheduler finds it
        assert set(registry.joins) == {("10.1.2.3:50061", "s3cret")}
        joiner.leave(7.5)
        assert registry.leaves == [("10.1.2.3:50061", 7.5)]
        joins = len(registry.joins)
        time.sleep(0.5)
        assert len(registry.joins) == joins  # no join after the leave
    finally:
        server.stop(None)


def test_joins_over_mtls(tmp_path) -> None:
    pytest.importorskip("cryptography")
    from tests.pki import make_pki

    pki = make_pki()
    files = {}
    for name in ("ca", "client_cert", "client_key"):
        files[name] = tmp_path / name
        files[name].write_bytes(getattr(pki, name))
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)], root_certificates=pki.ca, require_client_auth=True
    )
    port = processes.free_port()
    registry = RecordingRegistry()
    server = _serve(registry, port, credentials)
    try:
        channel = JoinChannel.from_files(
            f"localhost:{port}",
            None,
            str(files["ca"]),
            str(files["client_cert"]),
            str(files["client_key"]),
        )
        joiner = Joiner(channel, "127.0.0.1:50061")
        joiner.start()
        _wait(joiner.joined.is_set)
        joiner.leave(0.0)
        assert registry.joins[0] == ("127.0.0.1:50061", None)
        assert registry.leaves == [("127.0.0.1:50061", 0.0)]
    finally:
        server.stop(None)


def test_a_join_target_needs_host_and_port() -> None:
    with pytest.raises(ValueError, match="SCHEDULER_HOST:INTERNAL_PORT"):
        JoinChannel.from_files("scheduler", None, None, None, None)


def test_the_advertised_address() -> None:
    assert advertised_address("127.0.0.1", 5000, None) == "127.0.0.1:5000"
    assert advertised_address("0.0.0.0", 5000, "10.0.0.9") == "10.0.0.9:5000"
    assert advertised_address("0.0.0.0", 5000, "fd00::1") == "[fd00::1]:5000"
    host = advertised_address("0.0.0.0", 5000, None).rsplit(":", 1)[0]
    assert host not in ("0.0.0.0", "")
