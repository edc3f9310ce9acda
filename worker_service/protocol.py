"""The step protocol (yaie.worker.v1) as plain dataclasses: a step plan and its result.
wire.py converts them to and from protobuf at the process edge; the rest of the worker sees
only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yaie.kernels.sampling import SamplingConfig


@dataclass(frozen=True)
class NewRequestSpec:
    """A request sent for the first time (or again after a preemption)."""

    request_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    num_cached_tokens: int
    sampling: SamplingConfig


@dataclass(slots=True)  # not frozen: one per row per step, and a frozen __init__ costs ~4.5x
class RunEntry:
    """Run num_tokens tokens of one request after appending new_block_ids to its block table."""

    request_id: int
    num_tokens: int
    new_block_ids: list[int]


@dataclass(frozen=True)
class Plan:
    """One step: releases apply first, then new requests are admitted, then run entries run."""

    step_id: int
    new_requests: list[NewRequestSpec]
    run: list[RunEntry]
    release_request_ids: list[int]
    # New requests the edge could not decode (request id -> why): each fails alone, like a
    # NewRequest the runner rejects, and a live request of that id is dropped with it.
    rejected_requests: dict[int, str] = field(default_factory=dict)


@dataclass
class StepOutput:
    """The result of one plan; token_ids has one entry per run entry, in plan order."""

    step_id: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_token_ids: list[int] = field(default_factory=list)
    top_logprobs: list[float] = field(default_factory=list)
    forward_ms: float = 0.0
    sample_ms: float = 0.0
    error: str = ""
    request_errors: dict[int, str] = field(default_factory=dict)
    # Structured output: requests whose grammar this step completed, and per request whose
    # grammar forced tokens after this step's token, how many and which (concatenated).
    grammar_done_request_ids: list[int] = field(default_factory=list)
    jump_request_ids: list[int] = field(default_factory=list)
    jump_num_tokens: list[int] = field(default_factory=list)
    jump_token_ids: list[int] = field(default_factory=list)
    grammar_ms: float = 0.0
    launch_ms: float = 0.0  # host time from taking the plan to the step queued on the device
