"""Fixtures of the public API tests: a scripted engine and the service served over it.

The scripted engine stands in for scheduler_service.engine.Engine: each request "generates" a
fixed token list, one token per event, honouring stop token ids, min/max_new_tokens and abort.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import SimpleNamespace

import grpc
import pytest

from yaie.scheduler_service.api.server import GenerationServicer, create_server, set_health
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.engine.errors import ResourceExhaustedError
from yaie.scheduler_service.engine.request import (
    FinishReason,
    GenerationRequest,
    OutputEvent,
    TokenLogprobs,
)
from yaie.v1 import generation_pb2_grpc

Script = Callable[[GenerationRequest], list[int]]


class ScriptedEngine:
    """Engine double: request r yields script(r) one token per event, then waits for abort."""

    def __init__(self, script: Script, vocab_size: int, max_context: int = 256) -> None:
        self.script = script
        self.model_info = SimpleNamespace(
            model="scripted",
            architecture="LlamaForCausalLM",
            dtype="float32",
            vocab_size=vocab_size,
            max_context=max_context,
            block_size=16,
            random_weights=True,
            num_workers=1,
            kv_cache_dtype="fp8_e4m3",
        )
        self.ready = True
        self.pool_tokens = 10_000
        self.submitted: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self._live: set[str] = set()
        self._abort_flags: dict[str, asyncio.Event] = {}

    def check_admissible(self, request: GenerationRequest) -> None:
        if len(request.prompt_ids) + request.max_new_tokens > self.pool_tokens:
            raise ResourceExhaustedError("could never fit in the KV pool")

    def submit(self, request: GenerationRequest) -> AsyncIterator[OutputEvent]:
        self.submitted.append(request)
        return self._events(request)

    async def _events(self, request: GenerationRequest) -> AsyncIterator[OutputEvent]:
        rid, flag = request.request_id, asyncio.Event()
        self._live.add(rid)
        self._abort_flags[rid] = flag
        try:
            for count, token in enumerate(self.script(request), start=1):
                if flag.is_set():
                    break
                finish = None
                if count >= request.min_new_tokens and token in request.stop_token_ids:
                    finish = FinishReason.STOP
                elif count >= request.max_new_tokens:
                    finish = FinishReason.LENGTH
                yield self._event(request, token, count, finish)
                if finish is not None:
                    return
                await asyncio.sleep(0.001)
            await flag.wait()  # a script that ran out "generates" until aborted
            yield OutputEvent(rid, [], [], len(request.prompt_ids), 0, 0, FinishReason.ABORT)
        finally:
            self._live.discard(rid)

    def _event(self, request: GenerationRequest, token: int, count: int, finish) -> OutputEvent:
        logprobs = []
        if request.sampling.return_logprobs:
            top = [(token, -0.25), (token + 1, -1.5), (token + 2, -2.5)]
            logprobs = [TokenLogprobs(token, -0.25, top[: request.sampling.top_logprobs])]
        stop_token = token if finish is FinishReason.STOP else None
        return OutputEvent(
            request.request_id,
            [token],
            logprobs,
            len(request.prompt_ids),
            0,
            count,
            finish,
            matched_stop_token=stop_token,
        )

    def abort(self, request_id: str, tenant: str = "") -> bool:
        self.aborted.append(request_id)
        if request_id not in self._live:
            return False
        self._abort_flags[request_id].set()
        return True

    def finish(self, request_id: str, tenant: str = "", *, index: int = 0) -> None:
        self.finished.append(request_id)
        self._abort_flags[request_id].set()

    def tenant_load(self, tenant: str) -> tuple[int, int]:
        return len(self._live), 0

    def stats(self) -> SimpleNamespace:
        worker = SimpleNamespace(
            address="127.0.0.1:1",
            healthy=True,
            total_blocks=64,
            free_blocks=60,
            used_blocks=3,
            cached_blocks=1,
            cache_hit_rate=0.5,
        )
        done = len(self.submitted) - len(self._live)
        return SimpleNamespace(
            waiting=0,
            running=len(self._live),
            workers=[worker],
            num_preemptions=0,
            completed_requests=done,
            priorities=[SimpleNamespace(priority=0, waiting=0, running=len(self._live))]
            if self._live
            else [],
        )


class ServedEngine(SimpleNamespace):
    engine: ScriptedEngine
    stub: generation_pb2_grpc.GenerationStub
    channel: grpc.Channel
    address: str


@pytest.fixture
def served(tokenizer: Tokenizer) -> Iterator[ServedEngine]:
    """The Generation service over a ScriptedEngine, on 127.0.0.1 in a background event loop.

    The default script repeats the prompt's tokens (64 in all); tests replace engine.script.
    """
    engine = ScriptedEngine(lambda request: (list(request.prompt_ids) * 64)[:64], vocab_size=768)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server, health = create_server(GenerationServicer(engine, tokenizer))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await set_health(health, True)
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    address = f"127.0.0.1:{port}"
    channel = grpc.insecure_channel(address)
    try:
        yield ServedEngine(
            engine=engine,
            stub=generation_pb2_grpc.GenerationStub(channel),
            channel=channel,
            address=address,
        )
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
