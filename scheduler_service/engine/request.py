"""Requests and their output events inside the scheduler (plain dataclasses, no protobuf).

The API layer (api/server.py) turns a validated GenerateRequest into a GenerationRequest for the
engine, and the engine's OutputEvents back into GenerateResponse frames.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from yaie.kernels.sampling.config import SamplingConfig
from yaie.scheduler_service.workers.step_plan import TokenLogprobs


class FinishReason(enum.Enum):
    STOP = "stop"  # EOS, a stop token id, or a stop string (found by the API layer)
    LENGTH = "length"  # max_new_tokens or the model's context
    ABORT = "abort"  # Abort RPC, client cancel, deadline, or the server gave up


@dataclass(frozen=True)
class GenerationRequest:
    """What the engine needs to run one request: token ids in, token ids out."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingConfig
    max_new_tokens: int
    min_new_tokens: int = 0
    # Token ids that finish the request once min_new_tokens are out (EOS unless ignore_eos,
    # plus the request's stop_token_ids). The finishing token is part of the output.
    stop_token_ids: frozenset[int] = frozenset()
    # Prefix-cache namespace: requests with different namespaces never share cached blocks.
    namespace: str = ""
    # Scheduling priority (higher runs first; see policy.py); validated by the API layer.
    priority: int = 0


@dataclass
class OutputEvent:
    """Tokens the engine produced for a request since the last event; the last has finish_reason."""

    request_id: str
    token_ids: list[int]
    logprobs: list[TokenLogprobs]
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int  # running total, token_ids included
    finish_reason: FinishReason | None = None
    matched_stop_token: int | None = None
    error: str | None = None  # set when the server gave up on the request (ABORT)
