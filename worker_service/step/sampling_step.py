"""Sampling half of a step, and the PendingStep that owns its one device-to-host copy.

Sampled ids, log-probabilities and top-n alternatives are packed into one int32 device buffer
(floats bit-cast), copied to pinned host memory without blocking, and unpacked in wait().
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from yaie.kernels.sampling import SamplingBatch, sample
from yaie.worker_service.protocol import StepOutput
from yaie.worker_service.step.batch_builder import ScheduledEntry
from yaie.worker_service.step.grammar import PendingToken, RequestGrammar, StepTokens
from yaie.worker_service.step.request_state import RequestTable, append_output


class StepTimer:
    """Marks the phases of a step: CUDA events on the GPU (read after the step's final sync)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def elapsed_ms(self) -> list[float]:
        """Milliseconds between consecutive marks."""
        pairs = zip(self.marks, self.marks[1:], strict=False)
        if self.cuda:
            return [a.elapsed_time(b) for a, b in pairs]
        return [(b - a) * 1000.0 for a, b in pairs]


@dataclass(slots=True)  # not frozen: one per sampled row per step (see ScheduledEntry)
class _SampledRow:
    plan_index: int
    wants_logprobs: bool
    num_top: int


@dataclass
class PendingStep:
    """A launched step; wait() blocks until its results are on the host."""

    output: StepOutput
    rows: list[_SampledRow] = field(default_factory=list)  # per sampled row, with logprobs only
    host: torch.Tensor | None = None  # packed int32 results (pinned on CUDA)
    num_top: int = 0  # columns of the top-n block in host
    has_logprobs: bool = False
    timer: StepTimer | None = None
    done_event: torch.cuda.Event | None = None
    # Constrained rows: (request id, its grammar, the token it waits for), in plan order.
    grammar_rows: list[tuple[int, RequestGrammar, PendingToken]] = field(default_factory=list)
    plan_indices: list[int] = field(default_factory=list)  # each sampled row's entry in the plan

    @classmethod
    def done(cls, output: StepOutput) -> PendingStep:
        return cls(output)

    def ready(self) -> bool:
        """Whether wait() would return without waiting for the device (also on a device error:
        wait() then raises it, where the caller handles a failed step)."""
        try:
            return self.done_event is None or self.done_event.query()
        except Exception:
            return True

    def wait(self) -> StepOutput:
        if self.done_event is not None:
            self.done_event.synchronize()
        if self.timer is not None:
            self.output.forward_ms, self.output.sample_ms = self.timer.elapsed_ms()[:2]
        if self.host is None:
            return self.output
        n, k = len(self.plan_indices), self.num_top
        values = self.host
        ids, values = values[:n].tolist(), values[n:]
        out = self.output
        if not self.has_logprobs:  # the usual step: tokens only, one assignment a row
            token_ids = out.token_ids
            for index, token in zip(self.plan_indices, ids, strict=True):
                token_ids[index] = token
            self._report_grammars(out)
            return out
        logprobs, values = values[:n].view(torch.float32).tolist(), values[n:]
        top_ids = top_lps = None
        if k:
            top_ids = values[: n * k].view(n, k).tolist()
            top_lps = values[n * k :].view(torch.float32).view(n, k).tolist()
        # logprobs go out in plan order; rows may be in another (runner.py)
        for i in sorted(range(n), key=lambda i: self.rows[i].plan_index):
            row = self.rows[i]
            out.token_ids[row.plan_index] = ids[i]
            if row.wants_logprobs:
                out.logprobs.append(logprobs[i])
                out.top_token_ids.extend(top_ids[i][: row.num_top] if row.num_top else [])
                out.top_logprobs.extend(top_lps[i][: row.num_top] if row.num_top else [])
        self._report_grammars(out)
        return out

    def _report_grammars(self, out: StepOutput) -> None:
        """Advances each constrained row's matcher over its token (unless the next step already
        did) and reports grammars completed and tokens forced."""
        for request_id, grammar, token in self.grammar_rows:
            if grammar.pending is token:
                started = time.perf_counter()
                with torch.inference_mode():  # its bitmask was made in the step's inference mode
                    grammar.catch_up()
                out.grammar_ms += (time.perf_counter() - started) * 1e3
            if token.done:
                out.grammar_done_request_ids.append(request_id)
            if token.jump:
                out.jump_request_ids.append(request_id)
                out.jump_num_tokens.append(len(token.jump))
                out.jump_token_ids.extend(token.jump)


def _penalty_inputs(
    entries: list[ScheduledEntry], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """prompt_tokens / output_tokens [B, L] int64 padded with -1 (rows without penalties empty),
    assembled on the device from each request's device-resident token buffers."""
    penalized = [e.state if e.state.uses_penalties else None for e in entries]
    prompt_len = max(s.num_prompt_tokens if s else 0 for s in penalized)
    prompts = torch.full((len(entries), max(prompt_len, 1)), -1, dtype=torch.int64, device=device)
    output_len = max(s.num_outputs if s else 0 for s in penalized)
    outputs = torch.full((len(entries), max(output_len, 1)), -1, dtype=torch.int64, device=device)
    for b, s in enumerate(penalized):
        if s:
            prompts[b, : s.num_prompt_tokens] = s.prompt_tokens
            if s.num_outputs:
                outputs[b, : s.num_outputs] = s.output_tokens[: s.num_outputs]
    return prompts, outputs


def sample_entries(
    logits: torch.Tensor,
    entries: list[ScheduledEntry],
    sample_rows: torch.Tensor,
    table: RequestTable,
    vocab_size: int,
    output: StepOutput,
    timer: StepTimer,
) -> PendingStep:
    """Samples logits [num_sampled, vocab] (one row per sampling entry, in entry order), stores
    each request's token in table.last_tokens, and starts the copy of the results to the host."""
    sampled = [e for e in entries if e.samples]
    if not sampled:
        timer.mark()
        return PendingStep(output, timer=timer, done_event=_record(timer))
    device = logits.device
    configs = [e.state.sampling for e in sampled]
    positions = [e.start + e.num_tokens for e in sampled]  # the RNG counter of each sample
    batch = SamplingBatch.build(configs, positions, device, vocab_size)
    if batch.any_penalties:
        batch.prompt_tokens, batch.output_tokens = _penalty_inputs(sampled, device)
    result = sample(logits, batch)
    token_ids = result.token_ids
    table.last_tokens[sample_rows] = token_ids
    if batch.any_penalties:
        for i, e in enumerate(sampled):  # slices, not a list index (that would copy and sync)
            if e.state.uses_penalties:
                append_output(e.state, token_ids[i : i + 1])
    num_top, has_logprobs = batch.num_top_logprobs, batch.any_logprobs  # num_top > 0: logprobs
    rows = (
        [
            _SampledRow(e.plan_index, e.state.wants_logprobs, e.state.sampling.top_logprobs)
            for e in sampled
        ]
        if has_logprobs
        else []
    )
    parts = [token_ids.to(torch.int32)]
    if has_logprobs:  # the sampler returns logprobs (and top-n) whenever a request asked
        parts.append(result.logprobs.float().view(torch.int32))
        if num_top:
            parts.append(result.top_token_ids[:, :num_top].to(torch.int32).flatten())
            parts.append(
                result.top_logprobs[:, :num_top].float().contiguous().view(torch.int32).flatten()
            )
    timer.mark()
    packed = torch.cat(parts)
    if device.type == "cuda":
        host = torch.empty(packed.shape, dtype=torch.int32, pin_memory=True)
        host.copy_(packed, non_blocking=True)
    else:
        host = packed
    done_event = _record(timer)
    tokens = StepTokens(host, len(sampled), done_event)
    grammar_rows = [
        (e.state.request_id, e.state.grammar, e.state.grammar.expect(tokens, i))
        for i, e in enumerate(sampled)
        if e.state.grammar is not None
    ]
    plan_indices = [e.plan_index for e in sampled]
    return PendingStep(
        output, rows, host, num_top, has_logprobs, timer, done_event, grammar_rows, plan_indices
    )


def _record(timer: StepTimer) -> torch.cuda.Event | None:
    if not timer.cuda:
        return None
    event = torch.cuda.Event()
    event.record()
    return event
