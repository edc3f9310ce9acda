"""A real public server (Engine over FakeWorkers, the built-in tokenizer) with the security and
metrics options of issue 6, on 127.0.0.1 in a background event loop: for the auth, TLS, salt,
metrics and fuzz tests (`import served_stack`, like fake_worker). public_stub: a plain one in the
test's own event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import grpc
from fake_worker import FakeWorkerConfig, FakeWorkerHandle, start_fake_worker

from tests.pki import Pki, make_pki  # noqa: F401 (re-exported for the api tests)
from yaie.scheduler_service.api.server import GenerationServicer, create_server, set_health
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.ops.logs import observe_generate
from yaie.scheduler_service.ops.metrics import Metrics
from yaie.v1 import generation_pb2_grpc


@asynccontextmanager
async def public_stub(
    engine: Engine, tokenizer: Tokenizer
) -> AsyncIterator[generation_pb2_grpc.GenerationStub]:
    """A plain public server over a started engine on a free 127.0.0.1 port, and a stub to it;
    the channel and the server are closed at exit."""
    server, health = create_server(GenerationServicer(engine, tokenizer))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await set_health(health, True)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield generation_pb2_grpc.GenerationStub(channel)
    finally:
        await server.stop(None)


@dataclass
class ServedStack:
    address: str
    engine: Engine
    workers: list[FakeWorkerHandle]
    loop: asyncio.AbstractEventLoop
    metrics: Metrics | None

    def call(self, coroutine, timeout: float = 30.0):
        """Runs a coroutine on the server's loop (e.g. reading engine state safely)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextmanager
def served_stack(
    tokenizer: Tokenizer,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    credentials: grpc.ServerCredentials | None = None,
    with_metrics: bool = False,
    worker: FakeWorkerConfig | None = None,
    config: SchedulerConfig | None = None,
) -> Iterator[ServedStack]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    worker_config = worker or FakeWorkerConfig(vocab_size=768, max_context=256, num_blocks=128)

    async def start():
        handle = await start_fake_worker(worker_config)
        engine = Engine([handle.address], config or SchedulerConfig())
        await engine.start()
        metrics = None
        if with_metrics:
            metrics = Metrics()
            metrics.watch_engine(engine.stats, loop)
        servicer = GenerationServicer(engine, tokenizer)
        server, health = create_server(servicer, interceptors, observe_generate(metrics))
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        await set_health(health, True)
        return server, engine, handle, metrics, port

    server, engine, handle, metrics, port = asyncio.run_coroutine_threadsafe(start(), loop).result(
        30
    )
    stack = ServedStack(f"127.0.0.1:{port}", engine, [handle], loop, metrics)
    try:
        yield stack
    finally:

        async def stop() -> None:
            await server.stop(0)
            await engine.stop()
            await handle.stop()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        if metrics is not None:
            metrics.stop()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
