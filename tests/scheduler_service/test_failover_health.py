"""The scheduler process's health follows its workers (in-process serve() over a fake worker):
NOT_SERVING once no worker is left, Generate UNAVAILABLE after --no-worker-timeout, SERVING
again when a worker is back on the same port; stopping it returns 0."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import grpc
from fake_worker import FakeWorkerConfig, start_fake_worker
from grpc_health.v1 import health_pb2, health_pb2_grpc

from yaie.cli.models.random_model import write_tokenizer
from yaie.scheduler_service.__main__ import build_parser
from yaie.scheduler_service.app import serve, wait_for_serving
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _health(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)).status


async def _until_health(channel: grpc.aio.Channel, serving: bool, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while (await _health(channel) == SERVING) != serving:
        assert time.monotonic() < deadline, f"health never became serving={serving}"
        await asyncio.sleep(0.05)


def test_health_follows_the_workers_and_requests_fail_unavailable_without_one(
    tmp_path: Path,
) -> None:
    write_tokenizer(tmp_path)
    worker = FakeWorkerConfig(vocab_size=700)

    async def main() -> None:
        handle = await start_fake_worker(worker)
        worker_port = int(handle.address.rsplit(":", 1)[1])
        port = _free_port()
        args = build_parser().parse_args(
            [
                "--worker",
                handle.address,
                "--port",
                str(port),
                "--model",
                str(tmp_path),
                "--health-interval",
                "0.05",
                "--no-worker-timeout",
                "0.5",
                "--drain-timeout",
                "1",
                "--log-level",
                "WARNING",
            ]
        )
        stop = asyncio.Event()
        scheduler = asyncio.create_task(serve(args, stop))
        target = f"127.0.0.1:{port}"
        try:
            await wait_for_serving(target, 30)
            async with grpc.aio.insecure_channel(target) as channel:
                await handle.stop()
                await _until_health(channel, serving=False)
                stub = generation_pb2_grpc.GenerationStub(channel)
                request = pb.GenerateRequest(
                    token_ids=pb.TokenIds(ids=[1, 2, 3]),
                    stopping=pb.StoppingCriteria(max_new_tokens=4, ignore_eos=True),
                )
                start = time.monotonic()
                try:
                    await stub.Generate(request).read()
                    raise AssertionError("Generate succeeded with no worker")
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - start >= 0.5
                handle = await start_fake_worker(worker, port=worker_port)
                await _until_health(channel, serving=True)
                frames = [frame async for frame in stub.Generate(request)]
                assert sum(len(f.token_ids) for f in frames) == 4
            stop.set()
            assert await asyncio.wait_for(scheduler, 30) == 0
        finally:
            stop.set()
            await asyncio.wait_for(scheduler, 30)
            await handle.stop()

    asyncio.run(main())
