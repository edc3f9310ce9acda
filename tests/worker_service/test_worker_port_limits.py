"""The worker's port reads nothing of a call without the internal secret (large unauthenticated
Describe and Step messages leave its memory as it was), its receive limit is the plan cap of
its pool, and off loopback it refuses to start without a secret or mTLS unless told to."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from yaie.worker.v1 import worker_pb2
from yaie.worker_service.__main__ import main
from yaie.worker_service.app import build_runner
from yaie.worker_service.auth import SECRET_METADATA_KEY, WorkerSecurity
from yaie.worker_service.config import WorkerConfig
from yaie.worker_service.plan_limit import (
    PLAN_BASE_BYTES,
    max_plan_bytes,
    pool_tokens_bound,
)

SECRET = "port-limits-0123456789"
NUM_BLOCKS, BLOCK_SIZE = 16, 4
_SERVE = """
import sys
from yaie.worker_service.app import start_worker
from yaie.worker_service.auth import WorkerSecurity
from yaie.worker_service.config import WorkerConfig
config = WorkerConfig(model=sys.argv[1], port=0, device="cpu", block_size=4, num_blocks=16)
worker = start_worker(config, WorkerSecurity(secret=sys.argv[2].encode()))
print(worker.port, flush=True)
sys.stdin.read()  # until the test closes our stdin
worker.stop(None)
"""  # the pool of NUM_BLOCKS x BLOCK_SIZE


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def worker_process(tiny_model_dir):
    """(pid, address) of a worker in a process of its own, so that its memory can be read."""
    model = str(tiny_model_dir("LlamaForCausalLM"))
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVE, model, SECRET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(process.stdout.readline())
        yield process.pid, f"127.0.0.1:{port}"
    finally:
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 1 << 30)])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_unauthenticated_large_messages_are_refused_unread(worker_process) -> None:
    pid, address = worker_process
    body = b"\x0a" + b"x" * (80 << 20)  # 80 MiB: over the receive limit of the old worker
    with _channel(address) as channel:
        describe = channel.unary_unary("/yaie.worker.v1.Worker/Describe")
        step = channel.stream_stream("/yaie.worker.v1.Worker/Step")
        before = _rss_mib(pid)
        start = time.monotonic()
        for call in [lambda: describe(body, timeout=60)] * 3 + [
            lambda: list(step(iter([body]), timeout=60))
        ]:
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        grown = _rss_mib(pid) - before
    # Four 80 MiB messages read whole would have grown it by about 320 MiB.
    assert grown < 40, f"the worker's RSS grew {grown:.0f} MiB"
    assert time.monotonic() - start < 60


def test_the_receive_limit_is_the_pools_plan_cap(worker_process) -> None:
    _, address = worker_process
    cap = max_plan_bytes(NUM_BLOCKS * BLOCK_SIZE)
    assert PLAN_BASE_BYTES < cap < PLAN_BASE_BYTES + (1 << 20)
    metadata = ((SECRET_METADATA_KEY, SECRET),)
    with _channel(address) as channel:
        describe = channel.unary_unary(
            "/yaie.worker.v1.Worker/Describe",
            response_deserializer=worker_pb2.WorkerInfo.FromString,
        )
        with pytest.raises(grpc.RpcError) as error:  # authenticated, but past the cap
            describe(b"\x0a" + b"x" * cap, metadata=metadata, timeout=60)
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = describe(b"", metadata=metadata, timeout=30)
        assert info.num_blocks == NUM_BLOCKS
        assert info.max_plan_bytes == cap  # the scheduler keeps its plans under it


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8_e4m3"])
def test_the_pool_bound_covers_the_pool_a_memory_budget_gives(tiny_model_dir, kv_cache_dtype):
    model = str(tiny_model_dir("LlamaForCausalLM"))
    exact = WorkerConfig(model=model, device="cpu", block_size=4, num_blocks=10)
    assert pool_tokens_bound(exact) == 40
    budget = WorkerConfig(
        model=model,
        device="cpu",
        block_size=4,
        cpu_memory_bytes=1 << 20,
        kv_cache_dtype=kv_cache_dtype,
    )

    runner, _ = build_runner(budget)
    num_tokens = runner.pool.num_blocks * 4
    assert num_tokens <= pool_tokens_bound(budget) <= num_tokens + 2 * 4


@pytest.mark.parametrize(
    ("extra", "refused"),
    [
        ((), True),
        (("--tls-cert", "c.pem", "--tls-key", "k.pem"), True),  # TLS alone proves no caller
        (("--insecure-internal",), False),
    ],
    ids=["bare", "tls-without-client-ca", "insecure-internal"],
)
def test_a_worker_off_loopback_fails_closed(extra, refused, monkeypatch, capfd) -> None:
    # main() sets the root logger up on this test's captured stderr: give the old one back.
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    started: list[WorkerConfig] = []
    monkeypatch.setattr(
        "yaie.worker_service.__main__._serve", lambda config, *rest: started.append(config) or 0
    )
    monkeypatch.setattr("yaie.worker_service.__main__.model_argument", lambda model, rev: model)
    monkeypatch.setattr(WorkerSecurity, "from_files", classmethod(_security_of))
    status = main(["--model", "m", "--host", "0.0.0.0", "--port", "0", *extra])
    if refused:
        assert status == 2 and not started
        assert "--insecure-internal" in capfd.readouterr().err
    else:
        assert status == 0 and started


def _security_of(cls, secret, cert, key, client_ca) -> WorkerSecurity:
    """from_files without reading files: TLS credentials stand in as an object."""
    return WorkerSecurity(
        secret.encode() if secret else None,
        object() if cert else None,  # type: ignore[arg-type]
        client_ca is not None,
    )


def test_a_secret_or_mtls_lets_a_worker_listen_off_loopback() -> None:
    WorkerSecurity(secret=b"s").check_exposure("0.0.0.0", insecure=False)
    WorkerSecurity(client_auth=True).check_exposure("10.0.0.5", insecure=False)
    WorkerSecurity().check_exposure("127.0.0.1", insecure=False)
    with pytest.raises(ValueError, match="insecure-internal"):
        WorkerSecurity().check_exposure("10.0.0.5", insecure=False)
