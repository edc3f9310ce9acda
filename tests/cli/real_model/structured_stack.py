"""A public server over the real built-in model on an in-process CPU worker, in a background event
loop, for the structured-output tests: generate() sends one GenerateRequest and collects it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from yaie.cli.in_process import InProcessWorkerClient
from yaie.scheduler_service.api.server import GenerationServicer, create_server, set_health
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc


@dataclass
class Result:
    token_ids: list[int]
    text: str
    finish_reason: int
    logprobs: list


@dataclass
class Stack:
    address: str
    engine: Engine
    servicer: object  # the WorkerServicer (its runner holds the request tables)
    loop: asyncio.AbstractEventLoop

    def stub(self, channel: grpc.Channel) -> generation_pb2_grpc.GenerationStub:
        return generation_pb2_grpc.GenerationStub(channel)

    def generate(self, request: pb.GenerateRequest, timeout: float = 120.0) -> Result:
        with grpc.insecure_channel(self.address) as channel:
            frames = list(self.stub(channel).Generate(request, timeout=timeout))
        tokens = [t for f in frames for t in f.token_ids]
        logprobs = [lp for f in frames for lp in f.logprobs]
        text = "".join(f.text for f in frames)
        return Result(tokens, text, frames[-1].finish_reason, logprobs)

    def call(self, coroutine, timeout: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def structured_stack(
    model_dir: Path, servicer, config: SchedulerConfig | None = None
) -> Iterator[Stack]:
    """The engine (overlap on) over servicer, and the public API on a free 127.0.0.1 port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    tokenizer = Tokenizer(model_dir)

    async def start():
        engine = Engine(
            ["in-process"],
            config or SchedulerConfig(),
            client_factory=lambda address: InProcessWorkerClient(servicer, address),
        )
        await engine.start()
        server, health = create_server(GenerationServicer(engine, tokenizer))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await set_health(health, True)
        return engine, server, port

    engine, server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield Stack(f"127.0.0.1:{port}", engine, servicer, loop)
    finally:

        async def stop() -> None:
            await server.stop(0)
            await engine.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def load_servicer(model_dir: Path, num_blocks: int = 256, block_size: int = 16):
    """A WorkerServicer with the model loaded on the CPU."""
    from yaie.worker_service.app import build_runner
    from yaie.worker_service.config import WorkerConfig
    from yaie.worker_service.server import WorkerServicer

    config = WorkerConfig(
        str(model_dir), port=0, device="cpu", block_size=block_size, num_blocks=num_blocks
    )
    servicer = WorkerServicer()
    servicer.load(*build_runner(config))
    return servicer
