"""A step plan and its result as plain dataclasses: what the runner sees of the step protocol.

server.py converts yaie.worker.v1 messages to and from these at the process edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NewRequestSpec:
    """A request sent for the first time (or again after a preemption)."""

    request_id: int
    token_ids: list[int]
    num_prompt_tokens: int
    num_cached_tokens: int
    sampling: dict[str, Any]  # SamplingConfig keyword arguments, checked when the request is added


@dataclass(frozen=True)
class RunEntry:
    """Run num_tokens tokens of one request after appending new_block_ids to its block table."""

    request_id: int
    num_tokens: int
    new_block_ids: list[int]


@dataclass(frozen=True)
class Plan:
    step_id: int
    new_requests: list[NewRequestSpec]
    run: list[RunEntry]
    release_request_ids: list[int]


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
