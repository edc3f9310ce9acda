"""What one step tells a worker (StepPlan) and what the worker answers (StepOutcome), and what
its Describe reports: plain dataclasses. worker_client.py alone turns them into protobuf.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from yaie.kernels.sampling.config import SamplingConfig


@dataclass(frozen=True)
class WorkerDescription:
    """What Describe reported."""

    address: str
    model: str
    architecture: str
    dtype: str
    device: str
    vocab_size: int
    max_context: int
    block_size: int
    num_blocks: int
    random_weights: bool
    attention_backend: str
    kv_cache_dtype: str
    max_plan_bytes: int  # the worker's receive limit (0: not reported)


@dataclass
class NewRequestSpec:
    """A request the worker has not seen on this stream: its known tokens (prompt and output so
    far), how many of them are the prompt, the cached prefix it starts from, and its sampling."""

    token_ids: list[int]
    num_prompt_tokens: int
    num_cached_tokens: int
    sampling: SamplingConfig


# Upper bounds of a plan's wire size (what its protobuf encoding can take at most): a token id
# or block id is a varint of at most 5 bytes (a new request: each token, and at worst a block
# id per token for its first blocks), a logit-bias entry at most 16, and a run entry's own ids
# and counts (request id, tokens, new blocks, a release) at most 32.
DEFAULT_MAX_PLAN_BYTES = 64 << 20  # a worker that reports no limit: its floor
PLAN_ENTRY_BYTES = 32
PLAN_SLACK_BYTES = 1 << 20  # step id, block ids appended to running requests, field tags


def new_request_bytes(token_ids: list[int], sampling: SamplingConfig) -> int:
    """At most how many bytes a NewRequest of token_ids and sampling takes in a plan."""
    grammar = len(sampling.grammar.encode("utf-8")) + len(sampling.grammar_kind)
    return 10 * len(token_ids) + 16 * len(sampling.logit_bias) + grammar + 128


@dataclass
class PlanEntry:
    """One run entry, for building a plan by hand (StepPlan.of): compute num_tokens of a
    request, appending new_block_ids to its table."""

    request_id: int  # the request's id on this step stream
    num_tokens: int
    new_block_ids: list[int]
    new_request: NewRequestSpec | None = None  # set the first time the worker sees the request
    top_logprobs: int | None = None  # None: no logprobs asked; else the top-n to read back


@dataclass
class StepPlan:
    """One step of one worker, as columns over its run entries in run order (the result answers
    in this order; the wire's packed arrays are these lists as they are), and the requests whose
    worker state goes once the earlier plans ran (finished, aborted or preempted)."""

    step_id: int
    request_ids: list[int] = field(default_factory=list)  # per entry: its id on this stream
    num_tokens: list[int] = field(default_factory=list)  # per entry: tokens to compute
    num_new_blocks: list[int] = field(default_factory=list)  # per entry: blocks appended
    new_block_ids: list[int] = field(default_factory=list)  # the appended blocks, concatenated
    # (request id, spec) of the entries whose request the worker sees the first time, in order.
    new_requests: list[tuple[int, NewRequestSpec]] = field(default_factory=list)
    # entry index -> the top-n to read back, for the entries that asked for logprobs only.
    top_logprobs: dict[int, int] = field(default_factory=dict)
    release_ids: list[int] = field(default_factory=list)

    @classmethod
    def of(
        cls, step_id: int, entries: list[PlanEntry], release_ids: Iterable[int] = ()
    ) -> StepPlan:
        """The plan of entries (a plan built entry by entry, as tests do)."""
        plan = cls(step_id, release_ids=list(release_ids))
        for i, entry in enumerate(entries):
            plan.request_ids.append(entry.request_id)
            plan.num_tokens.append(entry.num_tokens)
            plan.num_new_blocks.append(len(entry.new_block_ids))
            plan.new_block_ids += entry.new_block_ids
            if entry.new_request is not None:
                plan.new_requests.append((entry.request_id, entry.new_request))
            if entry.top_logprobs is not None:
                plan.top_logprobs[i] = entry.top_logprobs
        return plan

    @property
    def num_entries(self) -> int:
        return len(self.request_ids)


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token's log-probability and its top alternatives (log-softmax, raw logits)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class StepOutcome:
    """A step's result, per entry of its plan."""

    step_id: int
    token_ids: list[int]  # per entry, -1 where nothing was sampled
    logprobs: list[TokenLogprobs | None]  # per entry
    error: str = ""  # the whole step failed
    request_errors: dict[int, str] = field(default_factory=dict)  # request id -> why it failed
    forward_ms: float = 0.0
    sample_ms: float = 0.0
    # Structured output, by request id: grammars this step's token completed (the request is
    # finished), and the tokens a grammar forced after this step's token (jump-forward).
    grammar_done: frozenset[int] = frozenset()
    jumps: dict[int, list[int]] = field(default_factory=dict)
    grammar_ms: float = 0.0
    launch_ms: float = 0.0  # the worker's host time launching the step
