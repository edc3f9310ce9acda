"""`yaie scheduler --internal-port` with workers that join and leave (real processes, tiny
random Llama, CPU), in order: no worker yet (NOT_SERVING, Generate UNAVAILABLE); a worker
joins (`yaie worker --join`) and requests flow; a second joins and routing uses both; the first
leaves by SIGTERM while 16 streams run, which finish on the other with the exact output; a join
without the internal secret is refused.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc
from yaie.worker.v1 import registry_pb2, registry_pb2_grpc

NUM_STREAMS = 16
NUM_NEW_TOKENS = 40
SECRET = "join-test-secret"


@pytest.fixture(scope="module")
def cluster(model_dirs, tools, tmp_path_factory) -> Iterator[SimpleNamespace]:
    """A scheduler with no --worker (its internal port takes joins), and a way to start
    workers that join it; every process is stopped at the end."""
    secret = tmp_path_factory.mktemp("secret") / "internal-secret"
    secret.write_text(SECRET + "\n")
    port, internal = tools.free_port(), tools.free_port()
    env = {k: v for k, v in os.environ.items() if k != "YAIE_API_KEY"} | {"OMP_NUM_THREADS": "1"}
    command = tools.yaie(
        *("scheduler", "--port", str(port), "--internal-port", str(internal)),
        *("--internal-secret-file", str(secret), "--health-interval", "0.5"),
        *("--log-level", "WARNING"),
    )
    scheduler = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL)
    workers: list[subprocess.Popen] = []

    def start_worker() -> subprocess.Popen:
        worker = subprocess.Popen(
            tools.yaie(
                *("worker", "--model", str(model_dirs["LlamaForCausalLM"]), "--port", "0"),
                *("--device", "cpu", "--num-blocks", "128", "--log-level", "WARNING"),
                *("--join", f"127.0.0.1:{internal}", "--internal-secret-file", str(secret)),
                *("--leave-drain-timeout", "0"),
            ),
            env=env,
            stdin=subprocess.DEVNULL,
        )
        workers.append(worker)
        return worker

    try:
        yield SimpleNamespace(
            target=f"127.0.0.1:{port}",
            internal=f"127.0.0.1:{internal}",
            scheduler=scheduler,
            start_worker=start_worker,
        )
    finally:
        for process in [*workers, scheduler]:
            tools.stop(process)


def _request(name: str, i: int) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=f"{name}{i}",
        token_ids=pb.TokenIds(ids=[(i * 53 + j * 17 + 3) % 700 for j in range(12 + i)]),
        sampling=pb.SamplingParams(temperature=0.8 if i % 4 == 3 else 0.0, seed=i),
        stopping=pb.StoppingCriteria(max_new_tokens=NUM_NEW_TOKENS, ignore_eos=True),
    )


async def _streams(target: str, name: str, during=None) -> list[list[int]]:
    """NUM_STREAMS streams at once; once each has a token, awaits during(); their tokens."""
    started, seen = asyncio.Event(), set()

    async def one(stub, i: int) -> list[int]:
        tokens, reason = [], 0
        async for frame in stub.Generate(_request(name, i)):
            tokens += frame.token_ids
            reason = frame.finish_reason
            seen.add(i)
            if len(seen) == NUM_STREAMS:
                started.set()
        assert reason == pb.FINISH_REASON_LENGTH
        return tokens

    async with grpc.aio.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        runs = asyncio.gather(*(one(stub, i) for i in range(NUM_STREAMS)))
        if during is not None:
            await asyncio.wait_for(started.wait(), 60)
            await during()
        return await asyncio.wait_for(runs, 120)


def _health(target: str, service: str = "") -> int | None:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return None
        return reply.status


def _workers(target: str) -> list[pb.WorkerStats]:
    with grpc.insecure_channel(target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return list(stub.GetServerStats(pb.GetServerStatsRequest(), timeout=5).workers)


def _wait_for(condition, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def baseline(cluster) -> list[list[int]]:
    """The streams' tokens on the first joined worker alone."""
    cluster.first = cluster.start_worker()
    _wait_for(lambda: _health(cluster.target) == health_pb2.HealthCheckResponse.SERVING, 180)
    return asyncio.run(_streams(cluster.target, "base"))


def test_with_no_worker_the_scheduler_answers_unavailable(cluster) -> None:
    """NOT_SERVING (its liveness name SERVING), and Generate fails UNAVAILABLE."""
    _wait_for(lambda: _health(cluster.target) is not None, 60)
    assert _health(cluster.target) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert _health(cluster.target, "yaie.liveness") == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(cluster.target) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            next(iter(stub.Generate(_request("none", 0), timeout=10)))
    assert error.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_joined_worker_serves_and_a_second_shares_the_load(cluster, baseline) -> None:
    """After the first join requests flow (the baseline); after the second, the same streams
    give the same tokens and both workers computed some (each holds cached blocks)."""
    assert len(baseline) == NUM_STREAMS and all(len(t) == NUM_NEW_TOKENS for t in baseline)
    cluster.second = cluster.start_worker()
    _wait_for(lambda: [w.healthy for w in _workers(cluster.target)] == [True, True], 180)
    assert asyncio.run(_streams(cluster.target, "both")) == baseline
    assert all(w.cached_blocks > 0 for w in _workers(cluster.target))


def test_sigterm_of_a_joined_worker_moves_its_streams_exactly(cluster, baseline) -> None:
    """The first worker leaves (SIGTERM: it deregisters, the scheduler moves its requests)
    while 16 streams run: all complete with the baseline's tokens, on the second worker; the
    leaver exits 0 and is out of the set."""
    leaver = cluster.first

    async def terminate() -> None:
        leaver.send_signal(signal.SIGTERM)

    assert asyncio.run(_streams(cluster.target, "leave", terminate)) == baseline
    assert leaver.wait(60) == 0
    assert len(_workers(cluster.target)) == 1


def test_a_join_without_the_secret_is_refused(cluster) -> None:
    with grpc.insecure_channel(cluster.internal) as channel:
        stub = registry_pb2_grpc.RegistryStub(channel)
        request = registry_pb2.JoinRequest(address="127.0.0.1:1")
        for metadata in [(), (("yaie-internal-secret", "not-it"),)]:
            with pytest.raises(grpc.RpcError) as error:
                stub.Join(request, metadata=metadata, timeout=10)
            assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_the_scheduler_stops_cleanly(cluster) -> None:
    cluster.scheduler.send_signal(signal.SIGTERM)
    assert cluster.scheduler.wait(60) == 0
