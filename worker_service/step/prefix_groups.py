"""Which decode rows of a step share a cached prefix: the input of shared-prefix (cascade)
decode attention (kernels/attention: decode_attention_grouped).

The scheduler's radix tree hands requests with a common cached prefix the same physical blocks,
so rows whose block tables start with the same block ids read the same K/V. Grouping them lets
the attention read that prefix once per group instead of once per row.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HostPrefixGroups:
    """Groups of batch rows (host lists, each group's rows contiguous in rows)."""

    rows: list[int]  # batch rows in a group, group by group
    starts: list[int]  # [G + 1]: group g is rows[starts[g]:starts[g + 1]]
    prefix_lens: list[int]  # [G] shared tokens, whole blocks
    kv_start: list[int]  # [B] per batch row: its group's prefix_len, 0 if in no group


def find_prefix_groups(
    tables: np.ndarray,
    seq_lens: list[int],
    block_size: int,
    min_blocks: int,
    min_saved: int,
    max_groups: int | None = None,
    min_group_saved: int = 0,
) -> HostPrefixGroups | None:
    """tables [B, W] int32 (row b: batch row b's block table, 0-padded), seq_lens [B].

    Rows are grouped by their first block; a row joins its group's first row when they share at
    least min_blocks leading blocks, and the group's prefix is what all its rows share, capped so
    every row still reads at least its current token's block alone (prefix < seq_len). At most
    max_groups groups (those saving most; a CUDA graph holds a fixed number of slots). A group
    saving fewer than min_group_saved token reads ((rows - 1) * prefix) is left to plain decode;
    None when the groups kept would save fewer than min_saved in all."""
    batch, width = tables.shape
    if batch < 2 or width == 0:
        return None
    # most whole blocks a row may share: those before the block of its last (current) token
    limit = (np.asarray(seq_lens, dtype=np.int64) - 1) // block_size
    _, leaders, inverse, counts = np.unique(
        tables[:, 0], return_index=True, return_inverse=True, return_counts=True
    )
    shared = np.flatnonzero(counts >= 2)
    if not len(shared):  # no two rows share a first block
        return None
    # whole arrays, no loop over rows: each row's leading blocks equal to its group's first row
    differs = tables != tables[leaders[inverse]]
    same = np.where(differs.any(axis=1), differs.argmax(axis=1), width)
    common = np.minimum(same, limit)
    joins = common >= min_blocks
    by_group = np.argsort(inverse, kind="stable")  # rows group by group, in row order
    ends = np.cumsum(counts)
    found: list[tuple[int, int, list[int]]] = []  # (saved token reads, prefix, rows)
    for g in shared:
        members = by_group[ends[g] - counts[g] : ends[g]]
        members = members[joins[members]]
        if len(members) < 2:
            continue
        prefix = int(common[members].min()) * block_size
        saved = (len(members) - 1) * prefix
        if saved >= min_group_saved:
            found.append((saved, prefix, members.tolist()))
    if max_groups is not None and len(found) > max_groups:
        found = sorted(found, key=lambda f: -f[0])[:max_groups]
    if sum(f[0] for f in found) < min_saved or not found:
        return None
    rows: list[int] = []
    starts, prefix_lens = [0], []
    kv_start = [0] * batch
    for _, prefix, members in found:
        rows += members
        starts.append(len(rows))
        prefix_lens.append(prefix)
        for b in members:
            kv_start[b] = prefix
    return HostPrefixGroups(rows, starts, prefix_lens, kv_start)
