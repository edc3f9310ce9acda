"""The engine: requests in, OutputEvents out, over one WorkerLoop per GPU worker.

The API layer (api/server.py) codes against Engine's public methods below; everything about
batching lives in policy.py (what runs next), worker_loop.py (the step loop per worker) and
step_stream.py (the plans it sends); router.py picks each request's worker; stats.py is
what stats() and model_info report.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.completions import Completions
from yaie.scheduler_service.engine.errors import ResourceExhaustedError, UnavailableError
from yaie.scheduler_service.engine.request import (
    MAX_COMPLETIONS,
    FinishReason,
    GenerationRequest,
    OutputEvent,
)
from yaie.scheduler_service.engine.router import Router
from yaie.scheduler_service.engine.sequence import Sequence, SequenceStatus
from yaie.scheduler_service.engine.stats import (
    EngineStats,
    WorkerModelInfo,
    engine_stats,
    num_waiting,
)
from yaie.scheduler_service.engine.worker_loop import WorkerLoop
from yaie.scheduler_service.engine.worker_set import STATIC, LeaveOutcome, WorkerSet
from yaie.scheduler_service.workers.worker_client import WorkerClient, WorkerStreamError

logger = logging.getLogger(__name__)


class Engine:
    """Continuous batching over every worker's KV pool (one radix tree per pool).

    Contract for the API layer:
    - `await start()` connects and Describes every worker given at construction (protocol
      version checked; failure: UnavailableError), sizes a KV cache manager per worker, starts
      the step loops and health checks; `ready` is then True (requests are taken) until
      drain() or stop(); `serving` is True while, in addition, some worker is healthy (the
      health service reports it). With no worker given, it starts with none: requests answer
      UnavailableError until a first worker is added.
    - `await add_worker(address, origin)` / `await remove_worker(address, drain_s)` change the
      worker set while it runs (engine/worker_set.py: joins over the internal port and DNS use
      them); `workers.described` is set once the first worker's model is known.
      `await drain()` refuses new requests, lets live ones run for config.drain_timeout_s,
      then ends the rest with ABORT. `await stop()` cancels the loops, closes the streams and
      finishes live requests with ABORT.
    - A lost worker's unfinished requests are re-routed with their output so far (re-prefilled
      elsewhere; no token repeated or lost). With no healthy worker, requests wait up to
      config.no_worker_timeout_s for one; past that their iterator raises UnavailableError.
    - `check_admissible(req)` raises ValueError (prompt empty, token id outside the vocabulary,
      prompt + max_new_tokens beyond max_context, n outside [1, MAX_COMPLETIONS]),
      ResourceExhaustedError (queue full, or the request could never fit in a KV pool) or
      UnavailableError (not started, or draining).
    - `submit(req)` checks admissibility (and that req.key is not live: ValueError) and
      returns an async iterator of OutputEvents (undelivered ones coalesced: a slow reader gets
      fewer, larger events; under load one event per config.stream_interval tokens, the
      first token alone). With req.n > 1 the events of its n completions interleave, each
      with its index (completions.py); each completion's last event has finish_reason set,
      and the iterator ends after the last of them. Closing the iterator early aborts the
      request (all its completions).
    - `abort(request_id, tenant)` -> whether a live request of tenant had that id; idempotent.
      The request (every completion) ends with ABORT at the next step.
      `finish(request_id, tenant, index)` ends completion index with STOP (a stop string found
      by the API layer); tokens still in flight are dropped. Request ids are scoped to their
      tenant: no call sees another tenant's.
    - `tenant_load(tenant)` -> (live, waiting) sequences of tenant, for its limits: a request
      with n > 1 counts as n, as in the server-wide queue limit.
    - `stats()` -> EngineStats; `model_info` -> WorkerModelInfo.
    Token-level stopping happens here: stop_token_ids after min_new_tokens (STOP, the token
    kept, matched_stop_token set), max_new_tokens or a full context (LENGTH).
    """

    def __init__(
        self,
        worker_addresses: list[str],
        config: SchedulerConfig,
        client_factory: Callable[[str], WorkerClient] = WorkerClient,
    ) -> None:
        self.worker_addresses = list(worker_addresses)
        self.config = config
        self._started = False
        # client_factory: address -> client, a gRPC WorkerClient or another with its
        # interface (in-process)
        self.workers = WorkerSet(
            config, client_factory, self._on_finished, self._on_orphaned, self._on_rejoined
        )
        self._tasks: list[asyncio.Task] = []
        self._live: dict[tuple[str, str], Completions] = {}  # by (tenant, request_id)
        self._arrivals = itertools.count()
        self._completed = 0
        self._model_info: WorkerModelInfo | None = None
        self._router = Router(config.enable_prefix_cache)
        self._parked: deque[Sequence] = deque()  # no healthy worker: waiting for one
        self._draining = False

    @property
    def ready(self) -> bool:
        """Started (every worker described once) and taking requests (not draining)."""
        return self._started and not self._draining

    @property
    def serving(self) -> bool:
        """Ready, and some worker is healthy now (and not leaving)."""
        return self.ready and bool(self.workers.routable())

    @property
    def _loops(self) -> list[WorkerLoop]:
        return list(self.workers)

    @property
    def model_info(self) -> WorkerModelInfo:
        first = self.workers.first
        if first is None:
            raise UnavailableError("no worker has joined yet")
        if self._model_info is None:
            self._model_info = WorkerModelInfo(
                model=first.model,
                architecture=first.architecture,
                dtype=first.dtype,
                vocab_size=first.vocab_size,
                max_context=first.max_context,
                block_size=first.block_size,
                random_weights=first.random_weights,
                num_workers=0,
                kv_cache_dtype=first.kv_cache_dtype,
            )
        return replace(self._model_info, num_workers=len(self.workers))

    async def start(self) -> None:
        try:
            for address in self.worker_addresses:  # in order: stats list them so
                await self.add_worker(address, STATIC)
        except (WorkerStreamError, ValueError) as exc:
            await self.workers.stop()
            if isinstance(exc, ValueError):
                raise ValueError(f"workers serve different models: {exc}") from exc
            raise UnavailableError(str(exc)) from exc
        self._tasks.append(asyncio.create_task(self._expire_parked(), name="parked requests"))
        self._tasks.append(asyncio.create_task(self.workers.forget_lost(), name="lost workers"))
        self._started = True

    async def add_worker(self, address: str, origin: str) -> bool:
        """Adds the worker at address (engine/worker_set.py's add: False when known already)."""
        return await self.workers.add(address, origin)

    def num_workers(self) -> int:
        return len(self.workers)

    async def remove_worker(self, address: str, drain_s: float = 0.0) -> LeaveOutcome:
        """Takes the worker at address out; its requests run there for up to drain_s (capped
        at config.drain_timeout_s), the rest move to the other workers."""
        return await self.workers.remove(address, min(drain_s, self.config.drain_timeout_s))

    async def drain(self) -> int:
        """Refuse new requests; wait up to config.drain_timeout_s for the live ones, then end
        the rest with ABORT (their final events go out). Returns how many were cancelled."""
        self._draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout_s
        while self._live and loop.time() < deadline:
            await asyncio.sleep(0.05)
        cancelled = list(self._live)
        for key in cancelled:  # (every completion of each)
            error = "the server is shutting down: the drain timeout passed"
            self._request_end(key, FinishReason.ABORT, error)
        deadline = loop.time() + 2.0  # the step loops act on aborts at their next step
        while self._live and loop.time() < deadline:
            await asyncio.sleep(0.02)
        return len(cancelled)

    async def stop(self) -> None:
        self._started = False
        pending = set(self._tasks)
        while pending:  # cancel again should a library call swallow the cancellation
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
        await self.workers.stop()
        self._parked.clear()
        for group in list(self._live.values()):
            for seq in group.seqs:
                if not seq.is_finished:
                    seq.finish(FinishReason.ABORT, "the server is shutting down")
                self._on_finished(seq)

    def check_admissible(self, req: GenerationRequest) -> None:
        if not self._started or self._draining:
            raise UnavailableError("the server is not taking requests (starting or draining)")
        info = self.model_info
        if not req.prompt_ids:
            raise ValueError("the prompt has no tokens")
        if req.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {req.max_new_tokens}")
        if not 1 <= req.n <= MAX_COMPLETIONS:
            raise ValueError(f"n must be in [1, {MAX_COMPLETIONS}], got {req.n}")
        ids = req.prompt_ids
        if not (min(ids) >= 0 and max(ids) < info.vocab_size):  # C loops: this is the event loop
            bad = next(t for t in ids if not 0 <= t < info.vocab_size)
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {info.vocab_size})")
        total = len(req.prompt_ids) + req.max_new_tokens
        if total > info.max_context:
            raise ValueError(
                f"prompt ({len(req.prompt_ids)} tokens) + max_new_tokens ({req.max_new_tokens}) "
                f"exceeds the model's context of {info.max_context} tokens"
            )
        # Every token's K/V (the last one's too: overlap may compute it) must fit in some pool
        # (of a healthy worker; of any while none is, since the request may wait for one).
        loops = self.workers.routable() or self._loops
        fits = (_num_blocks(total, lp.kv.block_size) <= lp.kv.num_blocks for lp in loops)
        if loops and not any(fits):
            raise ResourceExhaustedError(f"{total} tokens need more KV blocks than a worker holds")
        if self._num_waiting() + req.n > self.config.max_queue_size:
            raise ResourceExhaustedError(f"the queue is full ({self.config.max_queue_size})")

    def submit(self, req: GenerationRequest) -> AsyncIterator[OutputEvent]:
        self.check_admissible(req)
        if req.key in self._live:
            raise ValueError(f"request_id {req.request_id!r} is already live")
        group = Completions(req, self._arrivals)
        self._live[req.key] = group
        for seq in group.seqs:  # completion 0 first: the others follow it to its worker
            self._add(seq)
        return self._events(group)

    def _wake_held_back(self, seqs: list[Sequence]) -> None:
        """Wakes the worker loops of seqs left unscheduled while their client was behind."""
        for seq in seqs:
            if seq.held_back and seq.worker_address:
                loop = self.workers.get(seq.worker_address)
                if loop is not None:
                    loop.wake()

    async def _events(self, group: Completions) -> AsyncIterator[OutputEvent]:
        done: set[int] = set()  # completions whose last event is out
        try:
            while len(done) < len(group.seqs):
                events = await group.outbox.get()
                self._wake_held_back(group.seqs)  # their client read: backpressure released
                for event in events:
                    if event.finish_reason is not None:
                        if group.seqs[event.index].unavailable:
                            raise UnavailableError(event.error or "no worker is available")
                        done.add(event.index)
                    yield event
        finally:
            if not group.is_finished:
                self.abort(group.request_id, group.tenant)
            # The client's stream is over (its last event, a stop string, a cancel): the id is
            # free for a new request at once, though the worker loop may drop the old one later.
            if self._live.get(group.key) is group:
                del self._live[group.key]
                self._completed += 1

    def abort(self, request_id: str, tenant: str = "") -> bool:
        return self._request_end((tenant, request_id), FinishReason.ABORT)

    def finish(self, request_id: str, tenant: str = "", *, index: int = 0) -> None:
        self._request_end((tenant, request_id), FinishReason.STOP, index=index)

    def tenant_load(self, tenant: str) -> tuple[int, int]:
        """(live, waiting) sequences of tenant: all it has unfinished, and those not yet in a
        batch (a request with n completions counts n times)."""
        seqs = [
            seq
            for key, group in self._live.items()
            if key[0] == tenant
            for seq in group.seqs
            if not seq.is_finished
        ]
        waiting = sum(1 for seq in seqs if seq.status is SequenceStatus.WAITING)
        return len(seqs), waiting

    def _request_end(
        self,
        key: tuple[str, str],
        reason: FinishReason,
        error: str | None = None,
        index: int | None = None,
    ) -> bool:
        """Ends completion index (None: every one) of the live request key (tenant,
        request_id) with reason (its final event carrying error) at its worker's next step, or
        now when it is parked; the first end asked for wins."""
        group = self._live.get(key)
        if group is None:
            return False
        for seq in group.chosen(index):
            if seq.is_finished or seq.abort_requested is not None:
                continue
            seq.abort_requested = reason
            seq.abort_error = error
            if seq in self._parked:
                self._parked.remove(seq)
                self._end(seq, reason, error)
            else:
                loop = self.workers.get(seq.worker_address)
                assert loop is not None, f"{key} is on no worker and not parked"
                loop.request_abort(seq)
        return True

    def stats(self) -> EngineStats:
        return engine_stats(self._loops, self._parked, self._completed)

    def _num_waiting(self) -> int:
        return num_waiting(self._loops, self._parked)

    def _add(self, seq: Sequence) -> None:
        """To the best healthy worker whose pool can hold it (router.py), or parked until one
        is back (an orphan may fit only the lost worker's pool)."""
        total = seq.num_prompt_tokens + seq.request.max_new_tokens
        loops = [
            lp
            for lp in self.workers.routable()
            if _num_blocks(total, lp.kv.block_size) <= lp.kv.num_blocks
        ]
        if not loops:
            if seq.parked_at is None:
                seq.parked_at = asyncio.get_running_loop().time()
            seq.worker_address = ""
            self._parked.append(seq)
            return
        leader = seq.leader
        prefer = None  # completion 0's worker, for the others: the prompt's blocks are there
        if leader is not None and not leader.is_finished and leader.worker_address:
            prefer = self.workers.get(leader.worker_address)
        loop = self._router.pick(seq, loops, prefer)
        seq.parked_at = None
        seq.worker_address = loop.info.address
        loop.add(seq)

    def _end(self, seq: Sequence, reason: FinishReason, error: str | None) -> None:
        """Finish a request that is on no worker (parked, or just orphaned)."""
        seq.finish(reason, error)
        self._on_finished(seq)

    def _on_finished(self, seq: Sequence) -> None:
        """seq's last event is out: once its request's every completion's is, its request_id
        may be used again."""
        group = self._live.get(seq.request.key)
        if group is not None and group.holds(seq) and group.is_finished:
            del self._live[seq.request.key]
            self._completed += 1

    def _on_orphaned(self, seqs: list[Sequence]) -> None:
        """Unfinished requests of a lost worker, with their output so far: to another worker
        (re-prefilled there from prompt + output), parked while none is healthy."""
        for seq in seqs:
            if seq.abort_requested is not None:
                self._end(seq, seq.abort_requested, seq.abort_error)
            else:
                self._add(seq)

    def _on_rejoined(self, loop: WorkerLoop) -> None:
        parked, self._parked = list(self._parked), deque()
        for seq in parked:
            self._add(seq)

    async def _expire_parked(self) -> None:
        """Parked requests fail with UNAVAILABLE after config.no_worker_timeout_s."""
        timeout = self.config.no_worker_timeout_s
        clock = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(0.1, max(timeout / 4, 0.01)))
            now = clock.time()
            expired = [s for s in self._parked if now - (s.parked_at or now) >= timeout]
            for seq in expired:
                self._parked.remove(seq)
                seq.unavailable = True
                self._end(seq, FinishReason.ABORT, f"no worker became available in {timeout} s")


def _num_blocks(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)
