"""Per-request state of one Step stream: tokens, counters, block table, sampling config, and the
device-resident last sampled token that feeds each decode (so plan N+1 needs no result N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from yaie.kernels.host_copy import to_device
from yaie.kernels.sampling import SamplingConfig
from yaie.worker_service.protocol import NewRequestSpec, RunEntry

if TYPE_CHECKING:
    from yaie.worker_service.step.grammar import RequestGrammar


@dataclass
class RequestState:
    """One live request. Tokens [0, num_computed) have their K/V in the pool."""

    request_id: int
    row: int  # row of this request in RequestTable.last_tokens
    token_ids: list[int]  # tokens the scheduler sent: prompt + output before a preemption
    num_prompt_tokens: int
    num_computed: int
    block_table: list[int]
    sampling: SamplingConfig
    num_sampled: int = 0  # tokens sampled here; their values live on the device only
    # For the penalties (None when the request uses none), on the device: the prompt
    # [num_prompt_tokens] int64, uploaded once, and the output tokens so far (earlier output +
    # sampled here) [capacity] int64, first num_outputs valid.
    prompt_tokens: torch.Tensor | None = None
    output_tokens: torch.Tensor | None = None
    grammar: RequestGrammar | None = None  # its matcher, when a grammar constrains it

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids) + self.num_sampled

    @property
    def num_outputs(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def uses_penalties(self) -> bool:
        return self.sampling.uses_penalties

    @property
    def wants_logprobs(self) -> bool:
        return self.sampling.wants_logprobs


def check_new_request(
    spec: NewRequestSpec, block_size: int, max_context: int, vocab_size: int
) -> None:
    """Raises ValueError when a NewRequest is inconsistent."""
    num_tokens = len(spec.token_ids)
    bad_ids = [t for t in spec.token_ids if not 0 <= t < vocab_size]
    bad_ids += [t for t in spec.sampling.logit_bias if not 0 <= t < vocab_size]
    if bad_ids:
        raise ValueError(f"token ids {bad_ids[:4]} outside the vocabulary [0, {vocab_size})")
    if num_tokens == 0:
        raise ValueError("a new request needs at least one token")
    if num_tokens > max_context:
        raise ValueError(f"{num_tokens} tokens exceed the model's max context {max_context}")
    if not 0 < spec.num_prompt_tokens <= num_tokens:
        raise ValueError(f"num_prompt_tokens {spec.num_prompt_tokens} not in [1, {num_tokens}]")
    if spec.num_cached_tokens % block_size or spec.num_cached_tokens > num_tokens:
        raise ValueError(
            f"num_cached_tokens {spec.num_cached_tokens} must be a multiple of block_size "
            f"{block_size} and at most the {num_tokens} tokens"
        )


def check_run_entry(
    state: RequestState, entry: RunEntry, block_size: int, num_blocks: int, max_context: int
) -> bool:
    """Raises ValueError when the entry cannot run; returns whether it samples a token."""
    n = entry.num_tokens
    bad_blocks = [b for b in entry.new_block_ids if not 0 <= b < num_blocks]
    if bad_blocks:
        raise ValueError(f"block ids {bad_blocks[:4]} outside [0, {num_blocks})")
    if n == 0:
        raise ValueError("run_num_tokens must be positive")
    end = state.num_computed + n
    if state.num_computed < len(state.token_ids):  # prefilling known tokens
        if end > len(state.token_ids):
            raise ValueError(
                f"runs past the known tokens: {state.num_computed} computed + {n} > "
                f"{len(state.token_ids)}"
            )
    elif n != 1:
        raise ValueError(f"a decode runs 1 token (its last sampled one), got {n}")
    if end > max_context:
        raise ValueError(f"sequence of {end} tokens exceeds the max context {max_context}")
    num_table_blocks = len(state.block_table) + len(entry.new_block_ids)
    if num_table_blocks > -(-max_context // block_size) + 1:  # a slack block is allowed
        raise ValueError(
            f"block table of {num_table_blocks} blocks exceeds what max context {max_context} "
            f"needs at block size {block_size}"
        )
    capacity = num_table_blocks * block_size
    if capacity < end:
        raise ValueError(f"block table holds {capacity} tokens, the step writes up to {end}")
    return end >= len(state.token_ids)


class RequestTable:
    """The live requests of one Step stream, last_tokens [capacity] int64 on the device, and
    blocks [capacity, width] int32 on the host: row r is the block table of the request in row r,
    0-padded (kept as blocks arrive, so a step gathers its rows instead of rebuilding them)."""

    def __init__(self, device: torch.device, capacity: int = 64) -> None:
        self.device = device
        self.last_tokens = torch.zeros(capacity, dtype=torch.int64, device=device)
        self.blocks = np.zeros((capacity, 16), dtype=np.int32)
        self._requests: dict[int, RequestState] = {}
        self._free_rows = list(range(capacity - 1, -1, -1))

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._requests

    def __len__(self) -> int:
        return len(self._requests)

    def states(self) -> list[RequestState]:
        return list(self._requests.values())

    def get(self, request_id: int) -> RequestState | None:
        return self._requests.get(request_id)

    def add(
        self, spec: NewRequestSpec, block_size: int, max_context: int, vocab_size: int
    ) -> RequestState:
        """Checks the spec and admits the request (ValueError when it is inconsistent)."""
        assert spec.request_id not in self._requests
        check_new_request(spec, block_size, max_context, vocab_size)
        # A fully cached prompt still runs its last token (K/V rewritten, same values).
        num_computed = min(spec.num_cached_tokens, len(spec.token_ids) - 1)
        state = RequestState(
            spec.request_id,
            self._take_row(),
            list(spec.token_ids),
            spec.num_prompt_tokens,
            num_computed,
            [],
            spec.sampling,
        )
        if state.uses_penalties:
            earlier = spec.token_ids[spec.num_prompt_tokens :]
            buffer = torch.full((max(16, 2 * len(earlier)),), -1, dtype=torch.int64)
            buffer[: len(earlier)] = torch.tensor(earlier, dtype=torch.int64)
            prompt = torch.tensor(spec.token_ids[: spec.num_prompt_tokens], dtype=torch.int64)
            state.prompt_tokens = to_device(prompt, self.device)
            state.output_tokens = to_device(buffer, self.device)
        self._requests[spec.request_id] = state
        return state

    def append_blocks(self, state: RequestState, block_ids: list[int]) -> None:
        """Appends block_ids to state's block table (the list and its row of blocks)."""
        start, end = len(state.block_table), len(state.block_table) + len(block_ids)
        if end > self.blocks.shape[1]:
            grown = np.zeros((self.blocks.shape[0], max(end, 2 * self.blocks.shape[1])), np.int32)
            grown[:, : self.blocks.shape[1]] = self.blocks
            self.blocks = grown
        self.blocks[state.row, start:end] = block_ids
        state.block_table.extend(block_ids)

    def release(self, request_id: int) -> None:
        """Drops the request's state; unknown ids are ignored (release is idempotent)."""
        state = self._requests.pop(request_id, None)
        if state is not None:
            self.blocks[state.row, : len(state.block_table)] = 0
            self._free_rows.append(state.row)

    def clear(self) -> None:
        for request_id in list(self._requests):
            self.release(request_id)

    def _take_row(self) -> int:
        if not self._free_rows:
            capacity = self.last_tokens.shape[0]
            grown = torch.zeros(2 * capacity, dtype=torch.int64, device=self.device)
            grown[:capacity] = self.last_tokens
            self.last_tokens = grown
            self.blocks = np.concatenate([self.blocks, np.zeros_like(self.blocks)])
            self._free_rows = list(range(2 * capacity - 1, capacity - 1, -1))
        return self._free_rows.pop()


def append_output(state: RequestState, token_id: torch.Tensor) -> None:
    """Appends token_id ([1] on the device) to state.output_tokens, growing the buffer if needed.

    Call before num_sampled is incremented: the token lands at index num_outputs.
    """
    assert state.output_tokens is not None
    index = state.num_outputs
    if index >= state.output_tokens.shape[0]:
        grown = torch.full((2 * index,), -1, dtype=torch.int64, device=state.output_tokens.device)
        grown[:index] = state.output_tokens
        state.output_tokens = grown
    state.output_tokens[index : index + 1] = token_id


def append_known(state: RequestState, sampled: list[int], forced: list[int]) -> None:
    """Moves a constrained request's host-known tokens into token_ids: the ones it sampled here
    (all num_sampled of them, already in output_tokens), then the tokens its grammar forced,
    which the next run computes as a prefill chunk."""
    assert len(sampled) == state.num_sampled, "sampled tokens not all read back"
    state.token_ids.extend(sampled)
    state.num_sampled = 0
    for token in forced:
        if state.output_tokens is not None:
            device = state.output_tokens.device
            append_output(state, torch.tensor([token], dtype=torch.int64, device=device))
        state.token_ids.append(token)
