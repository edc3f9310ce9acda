"""Turns the validated run entries of a plan into a ForwardBatch with one host-to-device copy.

Prefill tokens come from the host; a decode's token is its request's last sampled token, read
from RequestTable.last_tokens on the device (never seen by the host).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from yaie.kernels.attention import PrefixGroups
from yaie.kernels.host_copy import to_device
from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.step.prefix_groups import HostPrefixGroups, find_prefix_groups
from yaie.worker_service.step.request_state import RequestState, RequestTable

# Grouped (cascade) decode attention only where it pays: a shared prefix of at least
# MIN_PREFIX_TOKENS; groups that save at least MIN_GROUP_SAVED_TOKENS token reads per layer each
# ((rows - 1) x prefix), and MIN_SAVED_TOKENS in all. From the H200 (benchmarks/NOTES.md,
# "grouped decode in CUDA graphs" and session 6 call 3; groups x rows x shared tokens): the win
# follows the reads saved per group, not in all. Groups saving >= 12k each won (16 x 16 x 2,048,
# 30k a group: 41% faster; 16 x 4 x 4,096, 12k: 35%; 8 x 8 x 2,048, 14k: 14%); groups saving
# <= 7k lost however many there were (4 x 4 x 2,048, 6k: 19% slower; 8 x 8 x 1,024, 7k: 6%;
# 64 x 4 x 2,048, 6k: 6%; 32 x 2 x 2,048, 2k: 6%). The floor in all covers the two kernels a
# layer the grouped path adds.
MIN_PREFIX_TOKENS = 256
MIN_GROUP_SAVED_TOKENS = 10240
MIN_SAVED_TOKENS = 20480


@dataclass(slots=True)
class ScheduledEntry:
    """A run entry that passed validation. Runs tokens [start, start + num_tokens). Treated as
    immutable (dataclasses.replace makes a changed copy), but not frozen: one is built per row
    per step, and a frozen dataclass's __init__ costs ~4.5x as much (0.36 vs 0.08 ms for 256
    rows on the CPU, on the worker's host path between a plan and its launch)."""

    plan_index: int
    state: RequestState
    start: int
    num_tokens: int
    samples: bool  # reaches the end of the known tokens, so a token is sampled
    is_decode: bool  # runs the last sampled token (device-resident)


def longest_first(lens: np.ndarray) -> np.ndarray:
    """A decode batch's rows by length, longest first (ForwardBatch.decode_order)."""
    return np.argsort(-lens, kind="stable").astype(np.int32)


def _aligned_on_device(
    parts: list[np.ndarray | torch.Tensor], device: torch.device
) -> list[torch.Tensor]:
    """int32 and int64 parts in one host->device copy, each starting 16-byte aligned: Triton
    specializes pointer arguments on their alignment, so pieces at arbitrary offsets would
    compile new attention kernel variants for some steps (a stall of ~1 s each while serving).
    The int64 parts (what torch indexes with) arrive as int64: no conversion launch per part.
    The host side packs with numpy (a torch op on the host costs several numpy ones)."""
    arrays = [p.numpy() if isinstance(p, torch.Tensor) else p for p in parts]
    sizes = [a.nbytes for a in arrays]
    starts = [0]
    for n in sizes:
        starts.append(starts[-1] + -(-n // 16) * 16)
    # pinned from the start on CUDA: to_device then copies it as it is (no second host copy)
    packed = torch.empty(starts[-1], dtype=torch.uint8, pin_memory=device.type == "cuda")
    host = packed.numpy()
    for array, start, n in zip(arrays, starts[:-1], sizes, strict=True):
        host[start : start + n] = array.reshape(-1).view(np.uint8)
    packed = to_device(packed, device)
    return [
        packed[start : start + n].view(_TORCH_DTYPES[a.dtype])
        for a, start, n in zip(arrays, starts[:-1], sizes, strict=True)
    ]


_TORCH_DTYPES = {np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64}


def _decode_batch(
    entries: list[ScheduledEntry], table: RequestTable, block_size: int, max_prefix_groups: int
) -> tuple[ForwardBatch, torch.Tensor]:
    """build_forward_batch for a batch of decodes only (the usual step), on numpy: each row runs
    its request's last sampled token at position start and samples. (A torch op on the host
    costs several numpy ones: at 256 rows this path takes a fraction of the general one.)"""
    batch = len(entries)
    rows = np.fromiter((e.state.row for e in entries), np.int64, batch)
    starts = np.fromiter((e.start for e in entries), np.int64, batch)
    max_blocks = max(len(e.state.block_table) for e in entries)
    tables = table.blocks[rows, :max_blocks]  # [batch, max_blocks], 0-padded
    blocks = tables[np.arange(batch), starts // block_size].astype(np.int64)
    slots = blocks * block_size + starts % block_size
    parts = [
        starts,  # positions
        slots,
        rows,  # of last_tokens: the input tokens, and where the sampled ones go
        np.arange(batch, dtype=np.int64),  # logits rows
        (starts + 1).astype(np.int32),  # seq_lens
        np.arange(batch + 1, dtype=np.int32),  # query_start
        tables.ravel(),
    ]
    groups = None
    if max_prefix_groups:
        groups = _prefix_groups(tables, starts + 1, block_size, max_prefix_groups)
    if groups is None:  # plain decode attention: its rows longest first
        parts.append(longest_first(starts))
    else:
        parts += [
            np.asarray(g, dtype=np.int32)
            for g in (groups.rows, groups.starts, groups.prefix_lens, groups.kv_start)
        ]
    pieces = _aligned_on_device(parts, table.last_tokens.device)
    positions, slots_d, rows_d, logits_indices, seq_lens, query_start, tables_d = pieces[:7]
    fb = ForwardBatch(
        input_ids=table.last_tokens.index_select(0, rows_d),
        positions=positions,
        slots=slots_d,
        block_tables=tables_d.view(batch, max_blocks),
        seq_lens=seq_lens,
        query_start=query_start,
        max_query_len=1,
        is_decode=True,
        logits_indices=logits_indices,
        prefix_groups=None if groups is None else PrefixGroups(*pieces[7:11]),
        decode_order=pieces[7] if groups is None else None,
    )
    return fb, rows_d


def _prefix_groups(
    tables: np.ndarray, seq_lens, block_size: int, max_groups: int
) -> HostPrefixGroups | None:
    """The decode rows' prefix groups worth the grouped kernel (the thresholds above)."""
    return find_prefix_groups(
        tables,
        seq_lens,
        block_size,
        -(-MIN_PREFIX_TOKENS // block_size),
        MIN_SAVED_TOKENS,
        max_groups,
        MIN_GROUP_SAVED_TOKENS,
    )


def build_forward_batch(
    entries: list[ScheduledEntry],
    table: RequestTable,
    block_size: int,
    max_prefix_groups: int = 0,
    single_by_decode: bool = False,
) -> tuple[ForwardBatch, torch.Tensor]:
    """Packs every index tensor into one int32 host buffer, copies it once, splits on device.

    Also returns sample_rows [num_sampled] int64: the last_tokens rows of the sampling entries.
    Entries that run one token should come first (ModelRunner orders them so): in a mixed batch
    the leading ones take decode attention (ForwardBatch.num_single). A batch whose decode rows
    (all rows, or a mixed batch's leading one-token rows) share cached prefix blocks gets
    ForwardBatch.prefix_groups over those rows (at most max_prefix_groups groups; 0: never).
    single_by_decode (deterministic mode): only decodes of a generated token (is_decode) take
    decode attention, so that a prompt token whose run is one token long (the rest of its
    prompt cached, or the last of a chunking) takes extend attention as in any other chunking;
    the ModelRunner then puts the decodes first.
    """
    if all(e.is_decode for e in entries):
        return _decode_batch(entries, table, block_size, max_prefix_groups)
    last_tokens = table.last_tokens
    device = last_tokens.device
    num_new = [e.num_tokens for e in entries]
    batch, num_tokens = len(entries), sum(num_new)
    max_blocks = max(len(e.state.block_table) for e in entries)
    host_ids: list[int] = []
    decode_index: list[int] = []  # rows of input_ids that take a device-resident token
    decode_rows: list[int] = []  # ... from these rows of last_tokens
    logits_indices: list[int] = []
    query_start = [0]
    for e in entries:
        if e.is_decode:
            decode_index.append(len(host_ids))
            decode_rows.append(e.state.row)
            host_ids.append(0)
        else:
            host_ids.extend(e.state.token_ids[e.start : e.start + e.num_tokens])
        query_start.append(query_start[-1] + e.num_tokens)
        if e.samples:
            logits_indices.append(query_start[-1] - 1)
    rows = np.fromiter((e.state.row for e in entries), np.int64, batch)
    host_tables = table.blocks[rows, :max_blocks]  # [batch, max_blocks], 0-padded
    tables = torch.from_numpy(host_tables)
    new_counts = torch.tensor(num_new, dtype=torch.int64)
    query_starts = torch.tensor(query_start, dtype=torch.int64)  # [batch + 1]
    owner = torch.repeat_interleave(torch.arange(batch), new_counts)  # [num_tokens]
    starts = torch.tensor([e.start for e in entries], dtype=torch.int64)
    positions = torch.arange(num_tokens, dtype=torch.int64) - query_starts[owner] + starts[owner]
    slots = tables[owner, positions // block_size] * block_size + positions % block_size
    seq_lens = starts + new_counts
    # int64 where torch indexes or the model reads (ids, positions, slots, rows), int32 for the
    # attention kernels' lengths and tables
    parts = [
        torch.tensor(host_ids, dtype=torch.int64),
        positions,
        slots.long(),
        seq_lens.int(),
        query_starts.int(),
        torch.tensor(logits_indices, dtype=torch.int64),
        torch.tensor(decode_index, dtype=torch.int64),
        torch.tensor(decode_rows, dtype=torch.int64),
        torch.tensor([e.state.row for e in entries if e.samples], dtype=torch.int64),
        tables.flatten(),
    ]
    single = [e.is_decode for e in entries] if single_by_decode else [n == 1 for n in num_new]
    is_decode = all(single)
    num_single = 0
    if not is_decode:
        while single[num_single]:
            num_single += 1
        if num_single:
            parts.append((query_starts[num_single:] - num_single).int())
    groups = None
    grouped_rows = batch if is_decode else num_single  # a mixed step's decode rows group too
    if max_prefix_groups and grouped_rows >= 2:
        lens = [e.start + 1 for e in entries[:grouped_rows]]
        groups = _prefix_groups(host_tables[:grouped_rows], lens, block_size, max_prefix_groups)
    first_group_part = len(parts)
    if groups is not None:
        parts += [
            torch.tensor(g, dtype=torch.int32)
            for g in (groups.rows, groups.starts, groups.prefix_lens, groups.kv_start)
        ]
    elif is_decode:  # plain decode attention: its rows longest first
        parts.append(longest_first(np.fromiter((e.start for e in entries), np.int64, batch)))
    pieces = _aligned_on_device(parts, device)
    input_ids, positions_d, slots_d, seq_lens_d, query_start_d, logits_d = pieces[:6]
    decode_index_d, decode_rows_d, sample_rows, tables_d = pieces[6:10]
    if decode_index:
        input_ids[decode_index_d] = last_tokens[decode_rows_d]
    batch = ForwardBatch(
        input_ids=input_ids,
        positions=positions_d,
        slots=slots_d,
        block_tables=tables_d.view(batch, max_blocks),
        seq_lens=seq_lens_d,
        query_start=query_start_d,
        max_query_len=max(num_new),
        is_decode=is_decode,
        logits_indices=logits_d,
        num_single=num_single,
        extend_query_start=pieces[10] if num_single else None,
        prefix_groups=None
        if groups is None
        else PrefixGroups(*pieces[first_group_part : first_group_part + 4]),
        decode_order=pieces[first_group_part] if is_decode and groups is None else None,
    )
    return batch, sample_rows
