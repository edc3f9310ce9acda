"""The scheduler's side of one worker's Step stream: the policy's runs in, StepPlans out (the
worker client encodes them), each result matched with its plan.

It alone writes a Sequence's stream fields (what the worker has been told of this incarnation:
worker_request_id, sent, num_scheduled, num_blocks_sent, pending, in_flight, worker_dropped).
A fresh stream after a worker rejoins starts its step and request ids afresh.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass

from yaie.scheduler_service.engine.runs import Runs
from yaie.scheduler_service.engine.sequence import Sequence
from yaie.scheduler_service.workers.step_plan import (
    NewRequestSpec,
    StepOutcome,
    StepPlan,
)
from yaie.scheduler_service.workers.worker_client import WorkerClient, WorkerStreamError


@dataclass
class InFlight:
    """A plan sent whose result has not been read."""

    plan: StepPlan  # (its num_tokens: per entry, the tokens run)
    seqs: list[Sequence]  # per entry: its request
    samples: list[bool]  # per entry: whether it samples a token
    ends: list[int]  # per entry: its request's num_scheduled after it
    trace: dict | None = None  # the step's timeline fields (ops/step_trace.py), when tracing


class StepStream:
    """Step and request ids, the plans in flight and the ids to release with the next plan."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self._step_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._in_flight: deque[InFlight] = deque()
        self._release_ids: list[int] = []

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def has_releases(self) -> bool:
        """Whether the next plan would release worker state (worth sending with no run)."""
        return bool(self._release_ids)

    def release(self, seq: Sequence) -> None:
        """seq's worker state goes with the next plan (the worker drops it after the earlier
        plans ran); nothing to release if the worker never had it or dropped it itself."""
        if seq.sent and not seq.worker_dropped:
            self._release_ids.append(seq.worker_request_id)

    def note_dropped(self, seq: Sequence) -> None:
        """The worker reported an error for seq and dropped its state."""
        seq.worker_dropped = True

    async def send(self, runs: Runs) -> InFlight:
        """The StepPlan of runs (and of the releases due), sent; raises WorkerStreamError."""
        flight = self._plan(runs)
        self._in_flight.append(flight)
        await self.client.send(flight.plan)
        return flight

    async def receive(self, timeout: float) -> tuple[InFlight, StepOutcome]:
        """The oldest plan in flight and its result (WorkerHungError after timeout s); its
        requests' tokens in flight are no longer pending."""
        flight = self._in_flight.popleft()
        outcome = await self.client.receive(flight.plan, timeout)
        if outcome.step_id != flight.plan.step_id:
            raise WorkerStreamError(
                f"result of step {outcome.step_id}, expected {flight.plan.step_id}"
            )
        for seq, samples in zip(flight.seqs, flight.samples, strict=True):
            seq.in_flight -= 1
            seq.pending -= samples
        return flight, outcome

    def cancel_next_sample(self, seq: Sequence) -> None:
        """The worker found a jump-forward after seq's last token: the decode of seq in flight
        (if any) computes that token but samples nothing (the forced tokens come first)."""
        for flight in self._in_flight:
            for j, other in enumerate(flight.seqs):
                if other is seq and flight.samples[j]:
                    flight.samples[j] = False
                    seq.pending -= 1
                    return

    def _plan(self, runs: Runs) -> InFlight:
        """A run samples when it reaches the last token the worker knows; only the blocks the
        worker has not been sent go with it. One pass, straight into the plan's columns (this
        runs for every row of every step)."""
        plan = StepPlan(next(self._step_ids), num_tokens=runs.num_tokens)
        request_ids, num_new_blocks = plan.request_ids, plan.num_new_blocks
        new_block_ids = plan.new_block_ids
        samples: list[bool] = []
        ends: list[int] = []
        for i, (seq, n) in enumerate(zip(runs.seqs, runs.num_tokens, strict=True)):
            if not seq.sent:  # (assigns its worker_request_id and first num_scheduled)
                spec = self._new_request(seq)
                plan.new_requests.append((seq.worker_request_id, spec))
            sampling = seq.request.sampling
            if sampling.return_logprobs or sampling.top_logprobs > 0:
                plan.top_logprobs[i] = sampling.top_logprobs
            blocks, num_sent = seq.block_ids, seq.num_blocks_sent
            if len(blocks) > num_sent:
                new_block_ids += blocks[num_sent:]
                seq.num_blocks_sent = len(blocks)
            num_new_blocks.append(len(blocks) - num_sent)
            request_ids.append(seq.worker_request_id)
            end = seq.num_scheduled + n
            sample = end == len(seq.token_ids) + seq.pending
            samples.append(sample)
            ends.append(end)
            seq.num_scheduled = end
            seq.pending += sample
            seq.in_flight += 1
        plan.release_ids, self._release_ids = self._release_ids, []
        return InFlight(plan, runs.seqs, samples, ends)

    def _new_request(self, seq: Sequence) -> NewRequestSpec:
        """The worker learns of seq (just admitted): its K/V starts after its cached prefix."""
        assert seq.match is not None
        seq.sent = True
        seq.worker_request_id = next(self._request_ids)
        seq.num_scheduled = seq.match.num_tokens
        return NewRequestSpec(
            list(seq.token_ids), seq.num_prompt_tokens, seq.num_scheduled, seq.request.sampling
        )
