"""Workers join and leave a running engine (engine/worker_set.py), on fake workers: an engine
with none answers UNAVAILABLE; added ones take requests and routing uses both; a worker removed
mid-stream hands its requests to the other with the exact output; a DNS name whose answer
changes adds and removes workers; the Registry refuses a join without the secret."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from fake_worker import FakeWorkerConfig, collect, reference_output, start_fake_worker

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.errors import UnavailableError
from yaie.scheduler_service.engine.request import FinishReason, GenerationRequest, SamplingConfig
from yaie.scheduler_service.engine.worker_set import JOINED
from yaie.scheduler_service.ops.channel_security import SECRET_METADATA_KEY, WorkerChannelSecurity
from yaie.scheduler_service.workers.dns_discovery import DnsWatcher
from yaie.scheduler_service.workers.registry import RegistryServicer, start_registry
from yaie.worker.v1 import registry_pb2, registry_pb2_grpc

VOCAB = FakeWorkerConfig().vocab_size
FAST = SchedulerConfig(health_check_interval_s=0.05, no_worker_timeout_s=5.0, connect_timeout_s=1.0)
SLOW_STEPS = FakeWorkerConfig(step_delay_s=0.005)


def _request(i: int, max_new: int = 24) -> GenerationRequest:
    prompt = [(i * 37 + j * 11) % VOCAB for j in range(5 + i % 7)]
    return GenerationRequest(f"r{i}", prompt, SamplingConfig(seed=300 + i), max_new)


async def _exact(engine: Engine, reqs: list[GenerationRequest]) -> None:
    """Every request completes (LENGTH) with the fake model's exact output."""
    results = await asyncio.gather(*(collect(engine.submit(r)) for r in reqs))
    for req, (tokens, events) in zip(reqs, results, strict=True):
        assert events[-1].finish_reason is FinishReason.LENGTH, events[-1].error
        expected = reference_output(req.prompt_ids, req.sampling.seed, req.max_new_tokens, VOCAB)
        assert tokens == expected


async def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_joins_and_a_leave_mid_stream_keep_every_output_exact() -> None:
    """No worker: UNAVAILABLE. One added: requests flow. A second: both run requests. The first
    removed (no drain) while 16 streams run: all finish on the other, exact."""

    async def main() -> None:
        a = await start_fake_worker(SLOW_STEPS)
        b = await start_fake_worker(SLOW_STEPS)
        engine = Engine([], FAST)
        await engine.start()
        try:
            assert engine.ready and not engine.serving
            with pytest.raises(UnavailableError):
                engine.submit(_request(0))
            assert await engine.add_worker(a.address, JOINED)
            assert not await engine.add_worker(a.address, JOINED)  # idempotent
            assert engine.serving and engine.model_info.num_workers == 1
            await _exact(engine, [_request(0)])
            assert await engine.add_worker(b.address, JOINED)
            await _exact(engine, [_request(i) for i in range(1, 9)])
            assert a.worker.num_new_requests > 1 and b.worker.num_new_requests > 0
            reqs = [_request(i) for i in range(10, 26)]
            done = asyncio.ensure_future(_exact(engine, reqs))
            steps = a.worker.num_steps
            await _until(lambda: _running(engine, a.address) and a.worker.num_steps > steps + 3)
            outcome = await engine.remove_worker(a.address, 0.0)
            assert outcome.known and outcome.num_moved > 0
            await done
            assert [w.address for w in engine.stats().workers] == [b.address]
            assert b.worker.num_resumed > 0 and b.worker.violations == []
            assert not (await engine.remove_worker(a.address)).known
        finally:
            await engine.stop()
            await a.stop()
            await b.stop()

    asyncio.run(main())


def _running(engine: Engine, address: str) -> bool:
    return any(loop.running for loop in engine._loops if loop.info.address == address)


def test_a_drained_leave_lets_running_requests_finish_there() -> None:
    """remove_worker with a drain: routed nothing new, its running requests finish on it."""

    async def main() -> None:
        a = await start_fake_worker(SLOW_STEPS)
        b = await start_fake_worker(SLOW_STEPS)
        engine = Engine([a.address, b.address], FAST)
        await engine.start()
        try:
            reqs = [_request(i, max_new=12) for i in range(8)]
            done = asyncio.ensure_future(_exact(engine, reqs))
            await _until(lambda: all(loop.running for loop in engine._loops))
            outcome = await engine.remove_worker(a.address, 30.0)
            assert outcome.known and outcome.num_moved == 0 and outcome.num_finished > 0
            await done
        finally:
            await engine.stop()
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_a_worker_of_another_model_is_refused() -> None:
    async def main() -> None:
        a = await start_fake_worker()
        other = await start_fake_worker(FakeWorkerConfig(vocab_size=VOCAB + 1))
        engine = Engine([a.address], FAST)
        await engine.start()
        try:
            with pytest.raises(ValueError, match="vocabulary"):
                await engine.add_worker(other.address, JOINED)
            assert engine.model_info.num_workers == 1
        finally:
            await engine.stop()
            await a.stop()
            await other.stop()

    asyncio.run(main())


def test_a_dns_answer_that_changes_adds_and_removes_workers() -> None:
    """Two fake workers on one port at 127.0.0.2 and 127.0.0.3; the test resolver's answer
    goes from one to both to the other; a failed resolution changes nothing."""
    answer: list[str] | OSError = []

    async def resolver(name: str) -> list[str]:
        assert name == "workers.test"
        if isinstance(answer, OSError):
            raise answer
        return list(answer)

    async def main() -> None:
        nonlocal answer
        first = await start_fake_worker(host="127.0.0.2")
        port = int(first.address.rsplit(":", 1)[1])
        second = await start_fake_worker(port=port, host="127.0.0.3")
        engine = Engine([], FAST)
        await engine.start()
        watcher = DnsWatcher(f"workers.test:{port}", engine, 0.05, 0.0, resolver)
        task = asyncio.create_task(watcher.run())

        def addresses() -> list[str]:
            return sorted(w.address for w in engine.stats().workers)

        try:
            answer = ["127.0.0.2"]
            await _until(lambda: addresses() == [first.address])
            await _exact(engine, [_request(0)])
            answer = ["127.0.0.3", "127.0.0.2"]
            await _until(lambda: addresses() == [first.address, second.address])
            answer = OSError("no answer")
            await asyncio.sleep(0.3)
            assert addresses() == [first.address, second.address]
            answer = ["127.0.0.3"]
            await _until(lambda: addresses() == [second.address])
            await _exact(engine, [_request(i) for i in range(1, 5)])
            assert second.worker.num_new_requests == 4
        finally:
            task.cancel()
            await engine.stop()
            await first.stop()
            await second.stop()

    asyncio.run(main())


def test_registry_refuses_a_join_without_the_secret_and_accepts_it_with() -> None:
    """UNAUTHENTICATED without (or with a wrong) secret, INVALID_ARGUMENT for no port, OK and
    then already_known with it, FAILED_PRECONDITION for another model, UNAVAILABLE for an
    address nothing listens on; Leave takes the worker out."""

    async def main() -> None:
        worker = await start_fake_worker()
        engine = Engine([], FAST)
        await engine.start()
        security = WorkerChannelSecurity(secret=b"s3cret")
        server, port = start_registry(
            RegistryServicer(engine, JOINED), "127.0.0.1", 0, security, False
        )
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = registry_pb2_grpc.RegistryStub(channel)
                join = registry_pb2.JoinRequest(address=worker.address)
                for metadata in [(), ((SECRET_METADATA_KEY, "wrong"),)]:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await stub.Join(join, metadata=metadata)
                    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
                assert len(engine.workers) == 0
                good = ((SECRET_METADATA_KEY, "s3cret"),)
                with pytest.raises(grpc.aio.AioRpcError) as bad:
                    await stub.Join(registry_pb2.JoinRequest(address="no-port"), metadata=good)
                assert bad.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                reply = await stub.Join(join, metadata=good)
                assert not reply.already_known and reply.num_workers == 1
                assert (await stub.Join(join, metadata=good)).already_known
                other = await start_fake_worker(FakeWorkerConfig(vocab_size=VOCAB + 1))
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    request = registry_pb2.JoinRequest(address=other.address)
                    await stub.Join(request, metadata=good)
                await other.stop()
                assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
                with pytest.raises(grpc.aio.AioRpcError) as gone:  # nothing listens there
                    request = registry_pb2.JoinRequest(address=other.address)
                    await stub.Join(request, metadata=good)
                assert gone.value.code() is grpc.StatusCode.UNAVAILABLE
                left = await stub.Leave(
                    registry_pb2.LeaveRequest(address=worker.address), metadata=good
                )
                assert left.known and len(engine.workers) == 0
        finally:
            await server.stop(None)
            await engine.stop()
            await worker.stop()

    asyncio.run(main())


def test_a_non_loopback_internal_port_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="insecure-internal"):
        start_registry(RegistryServicer(None, JOINED), "0.0.0.0", 0, WorkerChannelSecurity(), False)


def test_a_joined_worker_lost_too_long_is_forgotten_a_static_one_is_waited_for() -> None:
    async def main() -> None:
        static = await start_fake_worker()
        joined = await start_fake_worker()
        engine = Engine([static.address], FAST)
        engine.workers.forget_after_s = 0.3
        await engine.start()
        try:
            await engine.add_worker(joined.address, JOINED)
            await static.stop()
            await joined.stop()
            await _until(lambda: len(engine.workers) == 1)
            assert [loop.info.address for loop in engine._loops] == [static.address]
            assert not engine.serving
        finally:
            await engine.stop()

    asyncio.run(main())


def test_the_internal_port_over_mtls_takes_only_workers_with_a_certificate() -> None:
    """With a worker certificate and CA, the port serves TLS and requires a client certificate
    chaining to the CA (no secret needed, a non-loopback host allowed)."""
    pytest.importorskip("cryptography")
    from tests.pki import make_pki

    pki = make_pki()
    security = WorkerChannelSecurity(ca=pki.ca, cert=pki.server_cert, key=pki.server_key)

    async def main() -> None:
        worker = await start_fake_worker()
        engine = Engine([], FAST)
        await engine.start()
        servicer = RegistryServicer(engine, JOINED)
        server, port = start_registry(servicer, "0.0.0.0", 0, security, False)
        await server.start()
        join = registry_pb2.JoinRequest(address=worker.address)
        try:
            anonymous = grpc.ssl_channel_credentials(pki.ca)
            async with grpc.aio.secure_channel(f"localhost:{port}", anonymous) as channel:
                with pytest.raises(grpc.aio.AioRpcError):
                    await registry_pb2_grpc.RegistryStub(channel).Join(join, timeout=5)
            assert len(engine.workers) == 0
            mutual = grpc.ssl_channel_credentials(pki.ca, pki.client_key, pki.client_cert)
            async with grpc.aio.secure_channel(f"localhost:{port}", mutual) as channel:
                reply = await registry_pb2_grpc.RegistryStub(channel).Join(join, timeout=5)
            assert reply.num_workers == 1
        finally:
            await server.stop(None)
            await engine.stop()
            await worker.stop()

    asyncio.run(main())
