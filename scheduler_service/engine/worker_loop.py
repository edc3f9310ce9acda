"""The step loop of one worker: the policy forms the next runs, the step stream sends them as a
plan, and each result updates the requests (tokens, stops, events, retirement).

Overlap and block lifetimes (shared/DESIGN.md, "Known hazards"). With overlap on, plans N+1 to
N+plans_ahead are sent before result N is read, so when result N shows that a request finished
(or it is aborted or preempted), those plans may already run it and write K/V into its blocks.
Such a request *retires*: (1) it is scheduled no more, and its id goes into release_request_ids
of the next plan sent (the worker drops its state after the earlier plans ran); (2) tokens that
plans in flight sampled for it are dropped (kept when it was only preempted: they are valid
output); (3) its blocks go back to the KV cache manager (full ones into the tree) only when no
plan in flight runs it, i.e. once the result of the last plan that ran it has been read. Only
then can a block be handed to another request or matched from the tree, so no write in flight
lands in another request's block and every cached block holds K/V already written.

Of each Sequence the loop alone writes `status` (its place here: waiting, running, retiring).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from yaie.kernels.cache import KVCacheManager
from yaie.scheduler_service.config import SchedulerConfig
from yaie.scheduler_service.engine.policy import BatchPolicy
from yaie.scheduler_service.engine.request import FinishReason
from yaie.scheduler_service.engine.runs import Runs
from yaie.scheduler_service.engine.sequence import Sequence, SequenceStatus
from yaie.scheduler_service.engine.step_stream import InFlight, StepStream
from yaie.scheduler_service.ops.step_trace import StepTrace
from yaie.scheduler_service.workers import health_monitor
from yaie.scheduler_service.workers.step_plan import (
    StepOutcome,
    TokenLogprobs,
    WorkerDescription,
)
from yaie.scheduler_service.workers.worker_client import (
    WorkerClient,
    WorkerHungError,
    WorkerStreamError,
)

logger = logging.getLogger(__name__)


class WorkerLoop:
    """Requests routed to one worker (waiting, running, retiring), its KV pool's policy, its step
    stream, and the task that drives them."""

    def __init__(
        self,
        client: WorkerClient,
        info: WorkerDescription,
        config: SchedulerConfig,
        on_finished: Callable[[Sequence], None],
        on_orphaned: Callable[[list[Sequence]], None],
        on_rejoined: Callable[[WorkerLoop], None] = lambda loop: None,
    ) -> None:
        self.client = client
        self.config = config
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.retiring: list[Sequence] = []
        self.healthy = True  # connected: Described and its step stream open
        self.num_preemptions = 0
        self.num_losses = 0  # times the worker was lost
        self.lost_at: float | None = None  # loop time of the loss while not back (else None)
        self.leaving = False  # being taken out of the worker set: routed nothing new
        self._on_finished = on_finished  # the client saw the last event
        self._on_orphaned = on_orphaned  # unfinished requests of a lost worker, to re-route
        self._on_rejoined = on_rejoined  # the worker is back (the engine routes parked requests)
        self._lost: str | None = None  # set by the health check: end the session
        self._hung = False  # lost by a deadline: it may resume and run its old stream's plans
        self._aborts: list[Sequence] = []
        self._wake = asyncio.Event()
        self._trace = StepTrace.from_env()
        self.info = info
        self.kv = KVCacheManager(info.num_blocks, info.block_size)
        self.policy = BatchPolicy(config, self.kv, self._preempt, info.max_plan_bytes)
        self.stream = StepStream(client)

    def _reset_pool(self, info: WorkerDescription) -> None:
        """A fresh allocator and tree for the worker's pool, and a fresh step stream."""
        self.info = info
        self.kv = KVCacheManager(info.num_blocks, info.block_size)
        self.policy = self.policy.successor(self.kv, info.max_plan_bytes)
        self.stream = StepStream(self.client)

    def load_tokens(self) -> int:
        """Tokens queued and running here that the worker has yet to compute (routing load)."""
        queued = sum(s.route_cost for s in self.waiting)
        return queued + sum(max(1, len(s.token_ids) - s.num_scheduled) for s in self.running)

    def add(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.policy.queue(seq, self.waiting)
        self._wake.set()

    def wake(self) -> None:
        """Schedule again (a held-back request's client took its tokens)."""
        self._wake.set()

    def request_abort(self, seq: Sequence) -> None:
        """Finish seq with seq.abort_requested at the next step."""
        self._aborts.append(seq)
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: steps while connected; a lost worker is requeued and rejoined."""
        try:
            while True:
                if not self.healthy:
                    await self._rejoin()
                try:
                    await self._steps()
                except WorkerStreamError as exc:
                    logger.error("worker %s lost: %s", self.info.address, exc)
                    self._hung = isinstance(exc, WorkerHungError) or self._lost is not None
                    self._lose(str(exc), fail=False)
                except Exception as exc:  # a bug here must not leave clients waiting forever
                    logger.exception("step loop of worker %s crashed", self.info.address)
                    self._lose(f"scheduler error: {exc!r}", fail=True)
        finally:
            if self._trace is not None:  # its file, and its hook on the garbage collector
                self._trace.close()
                self._trace = None

    async def _steps(self) -> None:
        """With overlap, plans_ahead plans stay in flight; WorkerStreamError: it was lost."""
        depth = self.config.plans_ahead
        while True:
            if self._lost is not None:
                raise WorkerHungError(self._lost)
            self._apply_aborts()
            for seq in [s for s in self.retiring if s.in_flight == 0]:
                self._finalize(seq)
            start = time.perf_counter()
            gc_start = self._trace.gc_s if self._trace is not None else 0.0
            pending = sum(len(s.block_ids) for s in self.retiring)
            runs = self.policy.schedule(self.running, self.waiting, pending)
            if runs or self.stream.has_releases:
                await self._send(runs, start, gc_start)
            in_flight = self.stream.num_in_flight
            if in_flight and (in_flight > depth or not runs):
                await self._receive()
            elif not in_flight and not runs:
                await self._wake.wait()
                self._wake.clear()

    async def watch_health(self) -> None:
        """Health checks while connected (workers/health_monitor.py): a failed one loses it."""
        await health_monitor.watch(
            self.client, self.config, lambda: self.healthy and self._lost is None, self.mark_lost
        )

    def mark_lost(self, reason: str) -> None:
        """End the current session: the step loop fails with WorkerHungError(reason)."""
        if self.healthy and self._lost is None:
            self._lost = reason
            self.client.abandon_stream()  # a read or write in progress fails now
            self._wake.set()

    async def _rejoin(self) -> None:
        """Once the worker is back (workers/health_monitor.py), a fresh pool and step stream."""
        info = await health_monitor.wait_until_back(self.client, self.config, self.info, self._hung)
        self._reset_pool(info)
        self.client.open_stream()
        self._lost = None
        self.healthy = True
        self.lost_at = None
        logger.info("worker %s rejoined (%d blocks)", info.address, info.num_blocks)
        self._on_rejoined(self)

    async def _send(self, runs: Runs, start: float, gc_start: float) -> None:
        """start: when this step's scheduling began, gc_start: the trace's GC seconds then."""
        scheduled = time.perf_counter()
        waiting, running = SequenceStatus.WAITING, SequenceStatus.RUNNING
        for seq in runs.seqs:
            if seq.status is waiting:  # admitted by this step's schedule()
                seq.status = running
        flight = await self.stream.send(runs)
        if self._trace is not None:
            # a run is prefill unless it is one token at or past the prompt's end (a decode)
            columns = (runs.seqs, runs.num_tokens, flight.ends)
            prefill = sum(
                n
                for s, n, end in zip(*columns, strict=True)
                if n > 1 or end - 1 < s.num_prompt_tokens
            )
            flight.trace = self._trace.plan_fields(
                flight.plan,
                prefill,
                len(self.running),
                len(self.waiting),
                start,
                scheduled,
                gc_start,
            )

    async def _receive(self) -> None:
        flight, outcome = await self.stream.receive(self.config.step_timeout_s)
        arrived = time.perf_counter()
        if outcome.error:
            for seq in flight.seqs:
                self._fail(seq, f"worker step failed: {outcome.error}")
        else:
            self._take_results(flight, outcome)
        if flight.trace is not None and self._trace is not None:
            self._trace.record(
                **flight.trace,
                t_result=arrived,
                forward_ms=outcome.forward_ms,
                sample_ms=outcome.sample_ms,
                grammar_ms=outcome.grammar_ms,
                launch_ms=outcome.launch_ms,
                process_ms=(time.perf_counter() - arrived) * 1e3,
            )

    def _take_results(self, flight: InFlight, outcome: StepOutcome) -> None:
        """Each entry's sampled token to its request (stops applied, events out). One tight
        pass: this runs for every row of every step; rare cases (request errors, logprobs,
        grammar jumps, prefill chunks) leave the plain decode path."""
        loaded = len(self.running) >= self.config.stream_interval_min_batch
        interval = self.config.stream_interval if loaded else 1  # see SchedulerConfig
        request_ids = flight.plan.request_ids
        errors = outcome.request_errors
        if errors:
            self._warn_unknown_errors(flight, outcome)
        # grammar jumps or finishes, or an entry that asked for logprobs: _take_tokens' path
        special = bool(outcome.jumps or outcome.grammar_done or flight.plan.top_logprobs)
        vocab_size, max_context = self.info.vocab_size, self.info.max_context
        running = SequenceStatus.RUNNING
        columns = (flight.seqs, flight.plan.num_tokens, flight.samples, outcome.token_ids)
        for i, (seq, n, samples, token) in enumerate(zip(*columns, strict=True)):
            if errors and request_ids[i] in errors:
                self.stream.note_dropped(seq)
                self._fail(seq, f"worker error: {errors[request_ids[i]]}")
                continue
            if samples != (token >= 0) or not -1 <= token < vocab_size:
                self._fail(
                    seq,
                    f"worker returned token id {token} (vocabulary "
                    f"{vocab_size}) where sampled={samples}",
                )
                continue
            if n > 1 and seq.status is running:
                self.policy.cache_prompt(seq, flight.ends[i])
            if not samples or seq.finish_reason is not None:
                continue  # a finished request drops tokens in flight
            if special:
                tokens, lps = self._take_tokens(seq, token, outcome, i, request_ids[i])
            else:
                seq.append_token(token, max_context)
                tokens, lps = [token], []
            seq.emit_at_interval(tokens, lps, interval)
            if seq.finish_reason is not None:
                self._on_finished(seq)
                self._retire(seq)

    def _take_tokens(
        self, seq: Sequence, token: int, outcome: StepOutcome, index: int, worker_id: int
    ) -> tuple[list[int], list[TokenLogprobs]]:
        """Appends an entry's sampled token to seq, then the tokens its grammar forced after it
        (jump-forward: output the worker computes as the next chunk) and the grammar's finish;
        returns the tokens and logprobs to emit (a forced token's logprob is 0: it was certain)."""
        seq.append_token(token, self.info.max_context)
        tokens = [token]
        logprobs = outcome.logprobs[index]
        lps = [logprobs] if logprobs is not None else []
        forced = outcome.jumps.get(worker_id, [])
        if forced:
            # A decode of seq already in flight computes `token` but samples nothing now.
            self.stream.cancel_next_sample(seq)
        for forced_token in forced:
            if seq.is_finished:
                break
            seq.append_token(forced_token, self.info.max_context)
            tokens.append(forced_token)
            if logprobs is not None:
                lps.append(TokenLogprobs(forced_token, 0.0, []))
        complete = len(tokens) == 1 + len(forced)
        if worker_id in outcome.grammar_done and complete and seq.matched_stop_token is None:
            seq.finish_reason = FinishReason.STOP  # the output is complete (even at the length)
        return tokens, lps

    def _warn_unknown_errors(self, flight: InFlight, outcome: StepOutcome) -> None:
        """Errors for ids the step did not run (rare: the set of its ids is built only then)."""
        expected = set(flight.plan.request_ids)
        for request_id in outcome.request_errors.keys() - expected:
            logger.warning(
                "worker %s: error for request %d, not in step %d: ignored",
                self.info.address,
                request_id,
                flight.plan.step_id,
            )

    def _apply_aborts(self) -> None:
        aborts, self._aborts = self._aborts, []
        for seq in aborts:
            if seq.is_finished or seq.abort_requested is None:
                continue
            seq.finish(seq.abort_requested, seq.abort_error)
            self._on_finished(seq)
            if seq.status is SequenceStatus.WAITING:
                self.waiting.remove(seq)
                seq.status = SequenceStatus.FINISHED
            elif seq.status is SequenceStatus.RUNNING:
                self._retire(seq)
            # RETIRING (being preempted): _finalize now finishes it instead of requeueing it

    def _fail(self, seq: Sequence, message: str) -> None:
        if seq.is_finished:
            return
        seq.finish(FinishReason.ABORT, message)
        self._on_finished(seq)
        self._retire(seq)

    def _retire(self, seq: Sequence) -> None:
        """Stop scheduling seq; release its worker state next plan, its blocks when safe."""
        if seq.status is SequenceStatus.RETIRING:
            return
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        self._start_retiring(seq)

    def _start_retiring(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.RETIRING
        self.retiring.append(seq)
        self.stream.release(seq)

    def _preempt(self, seq: Sequence) -> None:
        """The policy took seq out of running: recompute it later (blocks freed now if none of
        its plans is in flight, which lets the policy allocate at once)."""
        self.num_preemptions += 1
        seq.events.release()  # tokens held by the stream interval go out now, not on resume
        self._start_retiring(seq)
        if seq.in_flight == 0:
            self._finalize(seq)

    def _finalize(self, seq: Sequence) -> None:
        """No plan in flight runs seq: its computed blocks go into the tree (the rest freed);
        a preempted request goes back to the front of the queue."""
        self.retiring.remove(seq)
        self.policy.release(seq, cache=seq.error is None)  # a failed request's K/V: not shared
        if seq.is_finished:
            seq.status = SequenceStatus.FINISHED
            return
        seq.reset_incarnation()
        seq.status = SequenceStatus.WAITING
        self.policy.queue(seq, self.waiting, first=True)

    def take_waiting(self) -> list[Sequence]:
        """The requests queued here and not admitted (no blocks, nothing sent), taken out."""
        seqs = list(self.waiting)
        self.waiting.clear()
        return seqs

    def evict(self) -> list[Sequence]:
        """The worker leaves the set (its tasks cancelled first): its unfinished requests,
        with their output so far, for the engine to route elsewhere."""
        self.healthy = False
        self.client.abandon_stream()
        return self._take_all("", fail=False)

    def _lose(self, message: str, fail: bool) -> None:
        """The worker is gone (its pool too): unfinished requests go back to the engine with the
        tokens received so far (or fail, after a scheduler bug); the allocator starts afresh."""
        self.healthy = False
        self.num_losses += 1
        self.lost_at = asyncio.get_running_loop().time()
        self._lost = None
        self.client.abandon_stream()
        orphans = self._take_all(message, fail)
        self._reset_pool(self.info)
        self._on_orphaned(orphans)

    def _take_all(self, message: str, fail: bool) -> list[Sequence]:
        """Every request here out of its queues: the unfinished ones, reset to be re-routed
        (failed instead when fail: after a scheduler bug)."""
        seqs = sorted(self.running + self.retiring + list(self.waiting), key=lambda s: s.arrival)
        self.running.clear()
        self.retiring.clear()
        self.waiting.clear()
        self._aborts.clear()  # the engine acts on abort_requested of what it gets back
        orphans = []
        for seq in seqs:
            if fail and not seq.is_finished:
                seq.finish(FinishReason.ABORT, f"worker {self.info.address} failed: {message}")
                self._on_finished(seq)
            if seq.is_finished:  # retiring ones: their last event is out already
                seq.status = SequenceStatus.FINISHED
            else:  # to another worker; if admitted before, it goes first there (resumed)
                seq.events.release()  # held tokens go out while it waits to be re-routed
                seq.reset_incarnation()
                seq.status = SequenceStatus.WAITING
                orphans.append(seq)
        return orphans
