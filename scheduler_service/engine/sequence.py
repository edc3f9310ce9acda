"""A request's state inside the engine: its tokens, KV progress, blocks and output stream."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from yaie.kernels.cache import PrefixMatch
from yaie.scheduler_service.engine.request import (
    FinishReason,
    GenerationRequest,
    OutputEvent,
    TokenLogprobs,
)


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # in a worker's queue, holds no block
    RUNNING = "running"  # on the worker: holds blocks, scheduled each step
    RETIRING = "retiring"  # finished or preempted; blocks wait for its in-flight plans
    FINISHED = "finished"


@dataclass(eq=False, slots=True)
class Sequence:
    """One GenerationRequest as the engine sees it; each field has one writer, named below.

    Positions: [0, num_scheduled) have their K/V in its blocks (the cached prefix, then what the
    plans already sent write); of the known tokens (token_ids: prompt + outputs received so
    far), [num_scheduled, len) are still to be computed; `pending` more tokens were sampled by
    plans in flight whose results have not come back (overlap scheduling), so the worker knows
    len(token_ids) + pending tokens.

    An incarnation is its stay on one worker, from admission to preemption or the worker's
    loss; reset_incarnation() then returns the per-incarnation fields to their defaults.
    """

    request: GenerationRequest
    arrival: int  # a global admission counter: FIFO order
    # Its own (append_token, finish, emit):
    token_ids: list[int] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    matched_stop_token: int | None = None
    error: str | None = None  # why the server gave up on it (an ABORT)
    emitted: int = 0  # output tokens already sent in events
    # At least its undelivered tokens (exact at its last emit; the reader only lowers them):
    # the policy checks the backlog exactly only when this reaches the bound.
    backlog_bound: int = 0
    events: Outbox = field(default_factory=lambda: Outbox())
    # The engine's (engine.py): its completion, where it is, and how its client ended it.
    index: int = 0  # which completion of its request (GenerationRequest.n) it is
    # Completion 0 of its request, for the others (None for completion 0 and n = 1): they wait
    # for it to put the prompt's blocks in the tree, then hit them (see BatchPolicy._admit).
    leader: Sequence | None = None
    worker_address: str = ""  # the worker whose loop holds it ("": parked)
    parked_at: float | None = None  # loop time it started waiting for a worker (none healthy)
    abort_requested: FinishReason | None = None  # set by abort()/finish(); acted on next step
    abort_error: str | None = None  # the error its final event carries, with abort_requested
    unavailable: bool = False  # ended because no worker was left: the client gets UNAVAILABLE
    # The router's (router.py):
    route_cost: int = 0  # prompt tokens its worker must compute (the router's load estimate)
    # Its worker loop's (worker_loop.py):
    status: SequenceStatus = SequenceStatus.WAITING
    # The batch policy's (policy.py): left unscheduled because its client is max_stream_backlog
    # tokens behind; the engine wakes its worker loop when the client takes them.
    held_back: bool = False
    # The batch policy's (policy.py), for its whole life:
    admitted_once: bool = False  # waiting again after that: resumed (goes first)
    num_cached_tokens: int = 0  # cache hit of the first admission (usage.cached_tokens)
    queued_at_step: int = 0  # the policy's step count when (re)queued: see BatchPolicy.wait_steps
    hit_estimate: tuple[tuple, int] = ((), 0)  # (tree state, cached prefix length) for ordering
    # ... and per incarnation:
    block_ids: list[int] = field(default_factory=list)
    match: PrefixMatch | None = None  # its cached prefix, locked in the tree
    # The step stream's (step_stream.py), per incarnation: what the worker knows of it.
    sent: bool = False  # NewRequest sent
    worker_request_id: int = 0  # its id on the step stream (fresh each incarnation)
    num_scheduled: int = 0
    num_blocks_sent: int = 0  # how many of block_ids the worker knows
    pending: int = 0
    in_flight: int = 0  # plans in flight that run it
    worker_dropped: bool = False  # the worker reported an error for it and dropped its state
    # Set at construction (len(request.prompt_ids)), a field since every step reads it per row.
    num_prompt_tokens: int = field(init=False, default=0)
    # Set at construction: where its frames fall under the stream interval (emit_at_interval);
    # one value for the n completions of a request (consecutive arrivals).
    stream_phase: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.request.prompt_ids)
        self.num_prompt_tokens = len(self.request.prompt_ids)
        self.stream_phase = self.arrival - self.index

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def priority(self) -> int:
        return self.request.priority

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_remaining(self) -> int:
        """Tokens the worker knows but has not computed: the next run's maximum."""
        return len(self.token_ids) + self.pending - self.num_scheduled

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None

    def append_token(self, token: int, max_context: int) -> None:
        """Record a sampled token and apply the token-level stop conditions: a stop token after
        min_new_tokens (STOP, the token kept), max_new_tokens or a full context (LENGTH)."""
        tokens = self.token_ids
        tokens.append(token)
        req = self.request
        num_output = len(tokens) - self.num_prompt_tokens
        if token in req.stop_token_ids and num_output > req.min_new_tokens:
            self.finish_reason = FinishReason.STOP
            self.matched_stop_token = token
        elif num_output >= req.max_new_tokens or len(tokens) >= max_context:
            self.finish_reason = FinishReason.LENGTH

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        """End it with reason (error: why the server gave up) and push its final event."""
        self.finish_reason = reason
        self.error = error
        self.emit([], [])

    def reset_incarnation(self) -> None:
        """Forget the worker-side state when it leaves its worker (its blocks already released,
        or gone with the worker's pool)."""
        self.num_scheduled = 0
        self.pending = 0
        self.block_ids = []
        self.num_blocks_sent = 0
        self.match = None
        self.sent = False
        self.in_flight = 0
        self.worker_dropped = False

    def emit_at_interval(
        self, new_tokens: list[int], logprobs: list[TokenLogprobs], interval: int
    ) -> None:
        """emit() under a stream interval: the first token at once (TTFT), then the reader
        wakes at the output positions p with (p + stream_phase) % interval == 0 (or once
        interval tokens wait). Requests admitted together thus wake on different steps, so
        their frames (the frontend's per-frame work) spread over the steps instead of all
        landing on every interval-th one and stalling it."""
        wake = interval == 1 or not self.emitted
        if not wake:
            n = len(new_tokens)
            wake = (self.emitted + n + self.stream_phase) % interval < n
        self.emit(new_tokens, logprobs, 1 if wake else interval)

    def emit(
        self, new_tokens: list[int], logprobs: list[TokenLogprobs], min_tokens: int = 1
    ) -> None:
        """Push an OutputEvent with new_tokens (and the finish state, if finished); min_tokens:
        the stream interval, see Outbox.put."""
        self.emitted += len(new_tokens)
        if self.finish_reason is None and new_tokens:
            undelivered = self.events.extend(
                self.index, new_tokens, logprobs, self.emitted, min_tokens
            )
            if undelivered:  # merged into the undelivered event: no event object per token
                self.backlog_bound = undelivered
                return
        event = OutputEvent(
            request_id=self.request_id,
            token_ids=new_tokens,
            logprobs=logprobs,
            num_prompt_tokens=self.num_prompt_tokens,
            num_cached_tokens=self.num_cached_tokens,
            num_output_tokens=self.emitted,
            finish_reason=self.finish_reason,
            matched_stop_token=self.matched_stop_token,
            error=self.error,
            index=self.index,
        )
        self.backlog_bound = self.events.put(event, min_tokens)


class Outbox:
    """A request's undelivered output, coalesced into one pending event per completion (the n
    sequences of a request with n > 1 share one outbox, and its reader sees them all).

    Why not a queue of events: a client that reads slowly would make the scheduler hold one
    event object per token for it, without bound over a long generation. Merging undelivered
    events into one delta keeps exactly the tokens (and logprobs) not yet delivered, so the
    buffer is bounded by that request's own output (max_new_tokens), never by the step rate,
    and a slow consumer costs nothing to the other requests (no bounded queue to block on).
    """

    def __init__(self) -> None:
        self._pending: dict[int, OutputEvent] = {}  # completion index -> its undelivered delta
        # Whether the reader is to wake, and the future it waits on (one reader): a plain
        # future, not an asyncio.Event, since this runs for every row of every step.
        self._ready = False
        self._waiter: asyncio.Future[None] | None = None

    def put(self, event: OutputEvent, min_tokens: int = 1) -> int:
        """Adds event to its completion's pending delta. The reader is woken once the delta holds
        min_tokens tokens (the stream interval: fewer, larger frames under load) or the
        completion finished; until then the tokens wait for the next put or release().
        Returns the completion's undelivered tokens now."""
        pending = self._pending.get(event.index)
        if pending is not None:  # merge: the newest event's counters and finish state win
            pending.token_ids += event.token_ids  # the outbox owns the pending event's lists
            pending.logprobs += event.logprobs
            event.token_ids, event.logprobs = pending.token_ids, pending.logprobs
        self._pending[event.index] = event
        if min_tokens <= max(1, len(event.token_ids)) or event.finish_reason is not None:
            self._wake()
        return len(event.token_ids)

    def extend(
        self,
        index: int,
        tokens: list[int],
        logprobs: list[TokenLogprobs],
        num_output_tokens: int,
        min_tokens: int = 1,
    ) -> int:
        """put() of an unfinished event of completion index that only adds tokens (at least
        one), merged in place into its undelivered delta: its tokens now; 0 (nothing done) when
        it has none pending."""
        pending = self._pending.get(index)
        if pending is None:
            return 0
        pending.token_ids += tokens
        pending.logprobs += logprobs
        pending.num_output_tokens = num_output_tokens
        undelivered = len(pending.token_ids)  # (>= 1: tokens is not empty)
        if min_tokens <= undelivered and not self._ready:
            self._wake()
        return undelivered

    @property
    def ready(self) -> bool:
        """Whether the reader is woken (or would not wait) for what is pending."""
        return self._ready

    def num_undelivered(self, index: int = 0) -> int:
        """Tokens of completion index put and not yet taken by the reader (its backlog)."""
        pending = self._pending.get(index)
        return 0 if pending is None else len(pending.token_ids)

    def release(self) -> None:
        """Wake the reader for whatever is pending (tokens held by the stream interval)."""
        if self._pending:
            self._wake()

    def _wake(self) -> None:
        self._ready = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> list[OutputEvent]:
        """Every event put since the last get(), as one per completion, by index (waits)."""
        if not self._ready:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        events = [self._pending[index] for index in sorted(self._pending)]
        self._pending = {}
        self._ready = False
        assert events
        return events
