"""Requests and their output events inside the scheduler (plain dataclasses, no protobuf).

The API layer (api/server.py) turns a validated GenerateRequest into a GenerationRequest for the
engine, and the engine's OutputEvents back into GenerateResponse frames.
"""

from __future__ import annotations

import dataclasses
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
    # Who asked (ops/tenants.py; "" on a server without keys): request ids are unique per
    # tenant, and abort / finish find a request by (tenant, request_id).
    tenant: str = ""
    # Completions of the prompt (1..MAX_COMPLETIONS): completion i samples with
    # completion_seed(sampling.seed, i); its events carry index i.
    n: int = 1
    # Scheduling priority (higher runs first; see policy.py); validated by the API layer.
    priority: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.tenant, self.request_id)

    def completion(self, index: int) -> GenerationRequest:
        """The single request that completion index of this one runs as (n = 1, its seed)."""
        seed = completion_seed(self.sampling.seed, index)
        sampling = dataclasses.replace(self.sampling, seed=seed)
        return dataclasses.replace(self, sampling=sampling, n=1)


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
    index: int = 0  # which completion of the request (GenerationRequest.n) the event is of


MAX_COMPLETIONS = 64  # GenerationRequest.n at most
_MASK64 = (1 << 64) - 1


def completion_seed(seed: int, index: int) -> int:
    """The sampling seed of completion index (0-based) of a request with seed: completion 0 uses
    seed itself (so n = 1 is a plain request), completion i > 0 the i-th output of SplitMix64
    seeded with seed. A single request with this seed reproduces that completion exactly."""
    if index == 0:
        return seed
    z = (seed + index * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)
