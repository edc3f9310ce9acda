"""The engine: requests in, OutputEvents out, over one WorkerLoop per GPU worker.

The API layer (server.py) codes against Engine's public methods below; everything about
batching lives in policy.py (what runs next) and worker_loop.py (the step loop per worker).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.errors import ResourceExhaustedError, UnavailableError
from yaie.scheduler_service.request import FinishReason, GenerationRequest, OutputEvent
from yaie.scheduler_service.sequence import Sequence, SequenceStatus
from yaie.scheduler_service.worker_client import WorkerClient, WorkerStreamError
from yaie.scheduler_service.worker_loop import WorkerLoop

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerModelInfo:
    """What the workers serve (from Describe; every worker must agree)."""

    model: str
    architecture: str
    dtype: str
    vocab_size: int
    max_context: int
    block_size: int
    random_weights: bool
    num_workers: int


@dataclass(frozen=True)
class WorkerStats:
    address: str
    healthy: bool
    total_blocks: int
    free_blocks: int
    used_blocks: int  # held by live requests (private blocks and locked cached ones)
    cached_blocks: int  # in the radix tree and evictable
    cache_hit_rate: float  # cached prompt tokens / prompt tokens, over admissions


@dataclass(frozen=True)
class EngineStats:
    waiting: int  # queued, over all workers
    running: int  # admitted and not yet done with their blocks (finishing ones included)
    num_preemptions: int  # since start
    completed_requests: int  # requests whose last event is out (aborted ones included)
    workers: list[WorkerStats]


class Engine:
    """Continuous batching over every worker's KV pool (one radix tree per pool).

    Contract for the API layer:
    - `await start()` connects and Describes every worker (protocol version checked; failure:
      UnavailableError), sizes a KV cache manager per worker, starts the step loops; `ready` is
      then True while some worker is healthy. `await stop()`
      cancels the loops, closes the streams and finishes live requests with ABORT.
    - `check_admissible(req)` raises ValueError (prompt empty, token id outside the vocabulary,
      prompt + max_new_tokens beyond max_context), ResourceExhaustedError (queue full, or the
      request could never fit in a KV pool) or UnavailableError (no healthy worker).
    - `submit(req)` checks admissibility (and that request_id is not live: ValueError) and
      returns an async iterator of OutputEvents; the last one has finish_reason set. Closing the
      iterator early aborts the request.
    - `abort(request_id)` -> whether a live request had that id; idempotent. The request ends
      with ABORT at the next step. `finish(request_id)` ends it with STOP (a stop string found
      by the API layer); tokens still in flight are dropped.
    - `stats()` -> EngineStats; `model_info` -> WorkerModelInfo.
    Token-level stopping happens here: stop_token_ids after min_new_tokens (STOP, the token
    kept, matched_stop_token set), max_new_tokens or a full context (LENGTH).
    """

    def __init__(self, worker_addresses: list[str], config: SchedulerConfig) -> None:
        if not worker_addresses:
            raise ValueError("at least one worker address is needed")
        self.worker_addresses = list(worker_addresses)
        self.config = config
        self._started = False
        self._loops: list[WorkerLoop] = []
        self._tasks: list[asyncio.Task] = []
        self._live: dict[str, Sequence] = {}
        self._arrivals = itertools.count()
        self._completed = 0
        self._model_info: WorkerModelInfo | None = None

    @property
    def ready(self) -> bool:
        """Started (every worker described, its stream open) and some worker still healthy."""
        return self._started and any(loop.healthy for loop in self._loops)

    @property
    def model_info(self) -> WorkerModelInfo:
        if self._model_info is None:
            raise UnavailableError("the engine has not described its workers yet")
        return self._model_info

    async def start(self) -> None:
        clients = [WorkerClient(address) for address in self.worker_addresses]
        try:
            infos = await asyncio.gather(
                *(c.describe(self.config.connect_timeout_s) for c in clients)
            )
        except WorkerStreamError as exc:
            await asyncio.gather(*(c.close() for c in clients))
            raise UnavailableError(str(exc)) from exc
        first = infos[0]
        for info in infos[1:]:
            same = (info.model, info.vocab_size, info.max_context)
            if same != (first.model, first.vocab_size, first.max_context):
                await asyncio.gather(*(c.close() for c in clients))
                raise ValueError(f"workers serve different models: {first} vs {info}")
        self._model_info = WorkerModelInfo(
            model=first.model,
            architecture=first.architecture,
            dtype=first.dtype,
            vocab_size=first.vocab_size,
            max_context=first.max_context,
            block_size=first.block_size,
            random_weights=first.random_weights,
            num_workers=len(infos),
        )
        for client, info in zip(clients, infos, strict=True):
            client.open_stream()
            loop = WorkerLoop(client, info, self.config, self._on_finished, self._on_orphaned)
            self._loops.append(loop)
            self._tasks.append(asyncio.create_task(loop.run(), name=f"worker {info.address}"))
            logger.info(
                "worker %s: %s (%s), %d blocks of %d tokens",
                info.address,
                info.model,
                info.device,
                info.num_blocks,
                info.block_size,
            )
        self._started = True

    async def stop(self) -> None:
        self._started = False
        pending = set(self._tasks)
        while pending:  # cancel again should a library call swallow the cancellation
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        await asyncio.gather(*(loop.client.close() for loop in self._loops))
        for seq in list(self._live.values()):
            seq.finish_reason = FinishReason.ABORT
            seq.error = "the server is shutting down"
            seq.emit([], [])
            self._on_finished(seq)

    def check_admissible(self, req: GenerationRequest) -> None:
        loops = self._healthy_loops()
        info = self.model_info
        if not req.prompt_ids:
            raise ValueError("the prompt has no tokens")
        if req.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {req.max_new_tokens}")
        bad = [t for t in req.prompt_ids if not 0 <= t < info.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {info.vocab_size})")
        total = len(req.prompt_ids) + req.max_new_tokens
        if total > info.max_context:
            raise ValueError(
                f"prompt ({len(req.prompt_ids)} tokens) + max_new_tokens ({req.max_new_tokens}) "
                f"exceeds the model's context of {info.max_context} tokens"
            )
        # Every token's K/V (the last one's too: overlap may compute it) must fit in some pool.
        if not any(_num_blocks(total, lp.kv.block_size) <= lp.kv.num_blocks for lp in loops):
            raise ResourceExhaustedError(f"{total} tokens need more KV blocks than a worker holds")
        if sum(len(lp.waiting) for lp in self._loops) >= self.config.max_queue_size:
            raise ResourceExhaustedError(f"the queue is full ({self.config.max_queue_size})")

    def submit(self, req: GenerationRequest) -> AsyncIterator[OutputEvent]:
        self.check_admissible(req)
        if req.request_id in self._live:
            raise ValueError(f"request_id {req.request_id!r} is already live")
        seq = Sequence(req, next(self._arrivals))
        self._live[req.request_id] = seq
        self._add(seq)
        return self._events(seq)

    async def _events(self, seq: Sequence) -> AsyncIterator[OutputEvent]:
        try:
            while True:
                event = await seq.events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not seq.is_finished:
                self.abort(seq.request_id)

    def abort(self, request_id: str) -> bool:
        return self._request_end(request_id, FinishReason.ABORT)

    def finish(self, request_id: str) -> None:
        self._request_end(request_id, FinishReason.STOP)

    def _request_end(self, request_id: str, reason: FinishReason) -> bool:
        seq = self._live.get(request_id)
        if seq is None:
            return False
        if seq.abort_requested is None:
            seq.abort_requested = reason
            self._loops[seq.worker_index].request_abort(seq)
        return True

    def stats(self) -> EngineStats:
        workers = []
        for loop in self._loops:
            s = loop.kv.stats()
            workers.append(
                WorkerStats(
                    address=loop.info.address,
                    healthy=loop.healthy,
                    total_blocks=s.total_blocks,
                    free_blocks=s.free_blocks,
                    used_blocks=s.used_blocks,
                    cached_blocks=s.cached_blocks,
                    cache_hit_rate=loop.policy.counters.hit_rate,
                )
            )
        return EngineStats(
            waiting=sum(len(lp.waiting) for lp in self._loops),
            running=sum(len(lp.running) + len(lp.retiring) for lp in self._loops),
            num_preemptions=sum(lp.num_preemptions for lp in self._loops),
            completed_requests=self._completed,
            workers=workers,
        )

    def _healthy_loops(self) -> list[WorkerLoop]:
        loops = [lp for lp in self._loops if lp.healthy]
        if not self._started or not loops:
            raise UnavailableError("no healthy worker")
        return loops

    def _route(self, seq: Sequence) -> WorkerLoop:
        """The healthy worker caching the longest prefix of the prompt (hits under 32 tokens do
        not count); then the least loaded."""
        loops = self._healthy_loops()
        if len(loops) == 1:
            return loops[0]

        def score(loop: WorkerLoop) -> tuple[int, int]:
            hit = 0
            if self.config.enable_prefix_cache:
                hit = loop.kv.match_prefix(seq.token_ids[:-1], seq.request.namespace).num_tokens
            return hit if hit >= 32 else 0, -(len(loop.waiting) + len(loop.running))

        return max(loops, key=score)

    def _add(self, seq: Sequence) -> None:
        loop = self._route(seq)
        seq.worker_index = self._loops.index(loop)
        loop.add(seq)

    def _on_finished(self, seq: Sequence) -> None:
        """seq's last event is out: its request_id may be used again."""
        if self._live.get(seq.request_id) is seq:
            del self._live[seq.request_id]
            self._completed += 1

    def _on_orphaned(self, seqs: list[Sequence]) -> None:
        """Waiting requests of a failed worker: to another worker, or they fail."""
        for seq in seqs:
            try:
                if seq.abort_requested is not None:
                    raise UnavailableError("aborted")
                self._add(seq)
            except UnavailableError as exc:
                seq.finish_reason = seq.abort_requested or FinishReason.ABORT
                seq.error = None if seq.abort_requested else str(exc)
                seq.status = SequenceStatus.FINISHED
                seq.emit([], [])
                self._on_finished(seq)


def _num_blocks(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)
