"""Decode rows that share a cached prefix, as the cascade decode kernel reads them (the worker
builds them from the step's block tables, decode_attention_grouped consumes them)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrefixGroups:
    """Decode rows that share a cached prefix (the same leading block ids), for cascade decode.

    Tensors are int32 on the pool's device. Group g is rows[starts[g]:starts[g + 1]] (>= 2 rows);
    its first prefix_lens[g] tokens (a multiple of block_size) are read through the block table
    of its first row. A slot with starts[g + 1] == starts[g] is padding and reads nothing (a CUDA
    graph holds a fixed number of slots; rows may also hold unused padding past starts[-1]).
    """

    rows: torch.Tensor  # [M] batch rows that are in a group, each group's rows contiguous
    starts: torch.Tensor  # [G + 1]
    prefix_lens: torch.Tensor  # [G] shared tokens of each group
    kv_start: torch.Tensor  # [batch] its group's prefix_len per batch row, 0 for a row in no group

    @classmethod
    def from_lists(
        cls,
        groups: list[list[int]],
        prefix_lens: list[int],
        batch: int,
        device: str | torch.device = "cpu",
    ) -> PrefixGroups:
        """groups[g] lists batch rows sharing prefix_lens[g] leading tokens (host lists)."""
        kv_start = [0] * batch
        for members, prefix_len in zip(groups, prefix_lens, strict=True):
            for row in members:
                kv_start[row] = prefix_len
        starts = [0]
        for members in groups:
            starts.append(starts[-1] + len(members))

        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32, device=device)

        return cls(
            rows=ints([row for members in groups for row in members]),
            starts=ints(starts),
            prefix_lens=ints(prefix_lens),
            kv_start=ints(kv_start),
        )
