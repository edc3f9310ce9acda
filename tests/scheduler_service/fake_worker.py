"""A real grpc.aio Worker server with no model, for scheduler tests.

It keeps a "KV pool" of token ids (one per slot), writes each computed token's id at its slot
through the plan's block table, and samples the next token as a hash of the token ids READ BACK
from the pool: a wrong block table, a bad prefix hit or a block reused too early changes the
output. Plans are validated strictly; every problem is recorded in `violations`.

For tests: start_fake_worker(FakeWorkerConfig(...)) -> handle (address, worker, stop());
reference_output(...) is what the engine must produce; engine_on_fake_workers(config, *workers)
runs an Engine over fresh fake workers; collect(events) gathers a request's stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.request import OutputEvent
from yaie.worker.v1 import worker_pb2, worker_pb2_grpc

_MOD = (1 << 61) - 1


def next_token(
    tokens: Sequence[int], seed: int, vocab_size: int, eos_token_id: int = -1, eos_period: int = 0
) -> int:
    """The fake model: a hash of every token and the seed (so position matters too)."""
    h = (seed * 2_654_435_761 + 12_345) % _MOD
    for t in tokens:
        h = (h * 1_000_003 + t + 7) % _MOD
    if eos_token_id >= 0 and eos_period and h % eos_period == 0:
        return eos_token_id
    return (h // 8191) % vocab_size


def reference_output(
    prompt: Sequence[int],
    seed: int,
    max_new_tokens: int,
    vocab_size: int,
    stop_token_ids: frozenset[int] = frozenset(),
    min_new_tokens: int = 0,
    eos_token_id: int = -1,
    eos_period: int = 0,
) -> list[int]:
    """What the engine must output for a request on a FakeWorker (computed with no server)."""
    tokens, out = list(prompt), []
    while len(out) < max_new_tokens:
        token = next_token(tokens, seed, vocab_size, eos_token_id, eos_period)
        tokens.append(token)
        out.append(token)
        if token in stop_token_ids and len(out) > min_new_tokens:
            break
    return out


@dataclass
class FakeWorkerConfig:
    vocab_size: int = 101
    max_context: int = 512
    num_blocks: int = 256
    block_size: int = 4
    kv_cache_dtype: str = "float32"  # what Describe reports (the fake has no pool)
    eos_token_id: int = -1
    eos_period: int = 0  # with eos_token_id: about one sampled token in eos_period is EOS
    step_delay_s: float = 0.0
    fail_at_step: int = 0  # > 0: the stream breaks (UNAVAILABLE) when this step arrives
    max_failures: int = 0  # > 0: fail_at_step breaks only this many streams
    hang_at_step: int = 0  # > 0: this step never answers (a hung worker; health stays SERVING)
    # Fault injection in the step with step_id fault_step (every stream): "token_out_of_vocab"
    # (the first sampled entry gets vocab_size), "unknown_request_error" (a RequestError for an
    # id not in the plan), "short_result" (one token id fewer than run entries).
    fault: str = ""
    fault_step: int = 0
    protocol_version: int = worker_pb2.PROTOCOL_VERSION_CURRENT
    # Benchmarks only (benchmarks/bench_scheduler_cpu.py): the next token hashes the request's
    # last few KNOWN tokens instead of the whole context read back from the pool, so a step
    # costs O(batch), not O(batch x context). Block tables are still checked and written.
    cheap_next_token: bool = False


@dataclass
class _Request:
    tokens: list[int]  # known: prompt, earlier output, and every token sampled here
    computed: int
    seed: int
    top_logprobs: int
    return_logprobs: bool
    blocks: list[int] = field(default_factory=list)
    checked_prefix: bool = False


class FakeWorker(worker_pb2_grpc.WorkerServicer):
    def __init__(self, config: FakeWorkerConfig) -> None:
        self.config = config
        self.pool = [-1] * (config.num_blocks * config.block_size)
        self.violations: list[str] = []
        self.num_steps = 0
        self.num_new_requests = 0
        self.num_resumed = 0  # NewRequests carrying earlier output (re-sent after a preemption)
        self.max_batch = 0
        self.num_failures = 0
        self.hung = asyncio.Event()  # set once a step hangs

    async def Describe(self, request, context) -> worker_pb2.WorkerInfo:
        c = self.config
        return worker_pb2.WorkerInfo(
            protocol_version=c.protocol_version,
            model="fake",
            architecture="FakeForCausalLM",
            dtype="float32",
            device="cpu",
            vocab_size=c.vocab_size,
            max_context=c.max_context,
            block_size=c.block_size,
            num_blocks=c.num_blocks,
            random_weights=True,
            attention_backend="none",
            kv_cache_dtype=self.config.kv_cache_dtype,
        )

    async def Step(self, request_iterator, context) -> AsyncIterator[worker_pb2.StepResult]:
        stream = _Stream(self)
        async for plan in request_iterator:
            c = self.config
            if c.fail_at_step and plan.step_id >= c.fail_at_step:
                if not c.max_failures or self.num_failures < c.max_failures:
                    self.num_failures += 1
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "fake worker failure")
            if c.hang_at_step and plan.step_id == c.hang_at_step:
                self.hung.set()
                await asyncio.Event().wait()  # until the stream is cancelled
            if c.step_delay_s:
                await asyncio.sleep(c.step_delay_s)
            self.num_steps += 1
            self.max_batch = max(self.max_batch, len(plan.run_request_ids))
            result = stream.step(plan)
            if c.fault and plan.step_id == c.fault_step:
                _inject(c, result)
            yield result

    def violation(self, message: str) -> str:
        self.violations.append(message)
        return message


def _inject(config: FakeWorkerConfig, result: worker_pb2.StepResult) -> None:
    if config.fault == "token_out_of_vocab":
        sampled = [i for i, t in enumerate(result.token_ids) if t >= 0]
        if sampled:
            result.token_ids[sampled[0]] = config.vocab_size
    elif config.fault == "unknown_request_error":
        result.request_errors.add(request_id=987_654, message="injected: no such request")
    elif config.fault == "short_result":
        del result.token_ids[-1]
    else:
        raise ValueError(f"unknown fault {config.fault!r}")


class _Stream:
    """Request state of one Step stream (dropped when the stream closes)."""

    def __init__(self, worker: FakeWorker) -> None:
        self.worker = worker
        self.config = worker.config
        self.requests: dict[int, _Request] = {}
        self.owners: dict[int, set[int]] = {}  # block -> live requests holding it
        self.last_step = 0

    def step(self, plan: worker_pb2.StepPlan) -> worker_pb2.StepResult:
        result = worker_pb2.StepResult(step_id=plan.step_id)
        n = len(plan.run_request_ids)
        if plan.step_id <= self.last_step:
            result.error = self.worker.violation(f"step {plan.step_id} after {self.last_step}")
            return result
        if len(plan.run_num_tokens) != n or len(plan.run_num_new_blocks) != n:
            result.error = self.worker.violation("run arrays of different lengths")
            return result
        if sum(plan.run_num_new_blocks) != len(plan.new_block_ids):
            result.error = self.worker.violation("new_block_ids do not add up")
            return result
        self.last_step = plan.step_id
        for rid in plan.release_request_ids:
            if rid in self.requests:
                self._drop(rid)
            else:
                self.worker.violation(f"release of unknown request {rid}")
        errors: dict[int, str] = {}
        for new in plan.new_requests:
            if new.request_id in self.requests:
                errors[new.request_id] = self.worker.violation(f"{new.request_id} sent twice")
                continue
            self.worker.num_new_requests += 1
            bs = self.config.block_size
            if new.num_cached_tokens % bs or new.num_cached_tokens >= len(new.token_ids):
                errors[new.request_id] = self.worker.violation("bad num_cached_tokens")
                continue
            if not 0 < new.num_prompt_tokens <= len(new.token_ids):
                errors[new.request_id] = self.worker.violation("bad num_prompt_tokens")
                continue
            self.worker.num_resumed += new.num_prompt_tokens < len(new.token_ids)
            s = new.sampling
            self.requests[new.request_id] = _Request(
                list(new.token_ids),
                new.num_cached_tokens,
                s.seed,
                s.top_logprobs,
                s.return_logprobs,
            )
        block_pos = 0
        for i, rid in enumerate(plan.run_request_ids):
            num_new = plan.run_num_new_blocks[i]
            blocks = list(plan.new_block_ids[block_pos : block_pos + num_new])
            block_pos += num_new
            token = -1
            if rid not in errors:
                try:
                    token = self._run(rid, blocks, plan.run_num_tokens[i], result)
                except ValueError as exc:
                    errors[rid] = self.worker.violation(f"step {plan.step_id}, {rid}: {exc}")
            result.token_ids.append(token if rid not in errors else -1)
        for rid, message in errors.items():
            result.request_errors.add(request_id=rid, message=message)
            if rid in self.requests:
                self._drop(rid)
        return result

    def _run(self, rid: int, blocks: list[int], num_tokens: int, result) -> int:
        req = self.requests.get(rid)
        if req is None:
            raise ValueError("unknown request")
        bs, pool = self.config.block_size, self.worker.pool
        for block in blocks:
            if not 0 <= block < self.config.num_blocks:
                raise ValueError(f"block {block} out of range")
            self.owners.setdefault(block, set()).add(rid)
        req.blocks += blocks
        if not req.checked_prefix:  # the cached prefix must really hold these tokens
            req.checked_prefix = True
            for p in range(req.computed):
                if p // bs >= len(req.blocks):
                    raise ValueError("cached prefix beyond the block table")
                if pool[req.blocks[p // bs] * bs + p % bs] != req.tokens[p]:
                    raise ValueError(f"cached position {p} does not hold its token")
        if num_tokens < 1 or req.computed + num_tokens > len(req.tokens):
            raise ValueError(f"runs {num_tokens} at {req.computed} of {len(req.tokens)} known")
        if req.computed + num_tokens > self.config.max_context:
            raise ValueError("runs past max_context")
        for p in range(req.computed, req.computed + num_tokens):
            if p // bs >= len(req.blocks):
                raise ValueError(f"no block for position {p}")
            block = req.blocks[p // bs]
            if self.owners[block] != {rid}:
                raise ValueError(f"writes block {block} that {self.owners[block]} hold")
            pool[block * bs + p % bs] = req.tokens[p]
        req.computed += num_tokens
        if req.computed < len(req.tokens):
            return -1
        c = self.config
        if c.cheap_next_token:
            read_back = req.tokens[-4:]
        else:
            read_back = [pool[req.blocks[p // bs] * bs + p % bs] for p in range(req.computed)]
        token = next_token(read_back, req.seed, c.vocab_size, c.eos_token_id, c.eos_period)
        req.tokens.append(token)
        if req.return_logprobs or req.top_logprobs:
            result.logprobs.append(-0.1 * (token % 10 + 1))
            for k in range(req.top_logprobs):
                result.top_token_ids.append((token + k) % c.vocab_size)
                result.top_logprobs.append(-0.1 * (token % 10 + 1) - 0.5 * k)
        return token

    def _drop(self, rid: int) -> None:
        for block in self.requests.pop(rid).blocks:
            self.owners[block].discard(rid)


@dataclass
class FakeWorkerHandle:
    server: grpc.aio.Server
    worker: FakeWorker
    address: str

    async def stop(self) -> None:
        await self.server.stop(grace=None)


async def start_fake_worker(
    config: FakeWorkerConfig | None = None, port: int = 0, host: str = "127.0.0.1"
) -> FakeWorkerHandle:
    """A FakeWorker (and grpc.health.v1, SERVING) on host (a loopback address) at port (0: a
    free one); stop it with handle.stop()."""
    worker = FakeWorker(config or FakeWorkerConfig())
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(worker, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return FakeWorkerHandle(server, worker, f"{host}:{port}")


@asynccontextmanager
async def engine_on_fake_workers(
    config: SchedulerConfig | None = None, *worker_configs: FakeWorkerConfig
) -> AsyncIterator[tuple[Engine, list[FakeWorkerHandle]]]:
    """An Engine over in-process FakeWorkers on free 127.0.0.1 ports, all stopped at exit."""
    handles = [await start_fake_worker(c) for c in worker_configs or (FakeWorkerConfig(),)]
    engine = Engine([h.address for h in handles], config or SchedulerConfig())
    try:
        await engine.start()
        yield engine, handles
    finally:
        await engine.stop()
        for handle in handles:
            await handle.stop()


async def collect(events: AsyncIterator[OutputEvent]) -> tuple[list[int], list[OutputEvent]]:
    """All tokens of a request's stream, and its events (the last one has finish_reason)."""
    tokens: list[int] = []
    seen: list[OutputEvent] = []
    async for event in events:
        tokens += event.token_ids
        seen.append(event)
    return tokens, seen
