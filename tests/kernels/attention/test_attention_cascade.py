"""Cascade (shared-prefix) decode equals plain decode: interpreter (fp32, fp16), torch, CUDA (bf16).

Interpreter cases run in a child pytest with TRITON_INTERPRET=1, for the reason given in
test_attention_triton.py's docstring; the parent never imports a kernel module without CUDA.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
import torch

from tests.kernels.attention.paged_batch import relative_error
from tests.kernels.triton_modes import gpu_only, interpreter_only
from yaie.kernels.attention import PrefixGroups, decode_attention, decode_attention_grouped

EXPECTED_CHILD_TESTS = 13


@dataclass
class GroupedBatch:
    args: tuple  # decode_attention's (q, k_cache, v_cache, block_tables, seq_lens, scale)
    groups: PrefixGroups


def make_grouped_batch(
    group_sizes: list[int],
    num_lone: int,
    block_size: int,
    heads: tuple[int, int, int],
    dtype: torch.dtype,
    prefix_blocks: tuple[int, int],
    own_tokens: tuple[int, int],
    seed: int,
    device: str = "cpu",
) -> GroupedBatch:
    """Groups whose rows share their leading blocks (same ids), plus rows in no group, shuffled.

    heads = (kv_heads, gqa, head_dim). A group shares prefix_blocks (a range; the first group
    the least) whole blocks, then each row has own_tokens (a range) more. Lone rows hold up to
    the longest prefix. Pool slots no row uses are NaN, so reading past a row's tokens poisons.
    """
    kv_heads, gqa, head_dim = heads
    rng = random.Random(seed)
    prefix_lens = [rng.randint(*prefix_blocks) * block_size for _ in group_sizes]
    prefix_lens[0] = prefix_blocks[0] * block_size
    rows = []  # (group or -1, seq_len) in batch order
    for g, size in enumerate(group_sizes):
        rows += [(g, prefix_lens[g] + rng.randint(*own_tokens)) for _ in range(size)]
    rows += [(-1, rng.randint(1, prefix_blocks[1] * block_size)) for _ in range(num_lone)]
    rng.shuffle(rows)
    # Block ids: each group's prefix blocks once, then each row's own blocks, shuffled.
    num_own = [
        -(-s // block_size) - (prefix_lens[g] // block_size if g >= 0 else 0) for g, s in rows
    ]
    num_blocks = 1 + sum(p // block_size for p in prefix_lens) + sum(num_own)
    ids = (
        torch.randperm(num_blocks - 1, generator=torch.Generator().manual_seed(seed)) + 1
    ).tolist()
    prefix_ids = [[ids.pop() for _ in range(p // block_size)] for p in prefix_lens]
    tables = torch.zeros(len(rows), max(-(-s // block_size) for _, s in rows), dtype=torch.int32)
    for b, (g, _) in enumerate(rows):  # table padding stays 0: the NaN block
        table = (prefix_ids[g] if g >= 0 else []) + [ids.pop() for _ in range(num_own[b])]
        tables[b, : len(table)] = torch.tensor(table, dtype=torch.int32)
    seq_lens = torch.tensor([s for _, s in rows], dtype=torch.int32, device=device)
    tables = tables.to(device)
    pos = torch.arange(tables.shape[1] * block_size, device=device)
    slots = tables[:, pos // block_size].long() * block_size + pos % block_size  # [batch, ctx]
    used = torch.zeros(num_blocks * block_size, dtype=torch.bool, device=device)
    used[slots[pos[None, :] < seq_lens[:, None].long()]] = True
    gen = torch.Generator(device).manual_seed(seed)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    caches = [torch.randn(shape, generator=gen, device=device) for _ in range(2)]
    for cache in caches:
        cache.view(-1, kv_heads, head_dim)[~used] = float("nan")
    q = torch.randn(len(rows), kv_heads * gqa, head_dim, generator=gen, device=device)
    members = [[b for b, row in enumerate(rows) if row[0] == g] for g in range(len(group_sizes))]
    args = (q.to(dtype), caches[0].to(dtype), caches[1].to(dtype), tables, seq_lens, head_dim**-0.5)
    groups = PrefixGroups.from_lists(members, prefix_lens, len(rows), device)
    return GroupedBatch(args, groups)


def _run_grouped_triton(batch: GroupedBatch, **kwargs) -> torch.Tensor:
    from yaie.kernels.attention.triton_cascade import decode_attention_grouped_triton

    out = torch.full_like(batch.args[0], float("nan"))  # poison: every element must be written
    return decode_attention_grouped_triton(*batch.args, batch.groups, out=out, **kwargs)


def test_cascade_kernels_match_reference_under_triton_interpreter(interpreter_child) -> None:
    """The interpreter cases of this file all pass in a child with TRITON_INTERPRET=1."""
    interpreter_child(__file__, EXPECTED_CHILD_TESTS, select="interpreter")


def test_torch_backend_equals_plain_decode_reference_exactly() -> None:
    batch = make_grouped_batch([2, 20, 5], 3, 16, (2, 2, 64), torch.float32, (1, 6), (1, 40), 3)
    expected = decode_attention(*batch.args, backend="torch")
    out = decode_attention_grouped(*batch.args, batch.groups, backend="torch")
    assert torch.equal(out, expected)


def test_prefix_groups_from_lists_lays_out_rows_starts_and_kv_start() -> None:
    groups = PrefixGroups.from_lists([[4, 1], [0, 2, 5]], [32, 16], batch=7)
    assert groups.rows.tolist() == [4, 1, 0, 2, 5]
    assert groups.starts.tolist() == [0, 2, 5]
    assert groups.prefix_lens.tolist() == [32, 16]
    assert groups.kv_start.tolist() == [16, 32, 16, 0, 32, 16, 0]
    assert groups.rows.dtype == torch.int32


# (group_sizes, lone, block_size, gqa, head_dim, dtype, kwargs): groups of 2..20 rows, chunks of
# rows smaller than a group (block_m // gqa rows), split and unsplit prefixes and suffixes.
INTERP_CASES = [
    ([2, 20, 5], 3, 16, 1, 64, torch.float32, dict(block_m=16, num_splits=2, num_prefix_splits=2)),
    ([3, 7], 2, 1, 2, 16, torch.float16, dict(block_m=8, block_n=16, prefix_block_n=16)),
    ([12, 2], 1, 16, 4, 64, torch.float16, dict(num_prefix_splits=3)),
    ([2, 2, 9], 0, 1, 4, 16, torch.float32, dict(block_m=16, num_splits=3, prefix_block_n=16)),
    ([4], 2, 16, 2, 16, torch.float32, dict(block_m=4, num_splits=1, num_prefix_splits=1)),
    # one split of the own tokens: the split kernel merges the prefix partials (no reduce), or
    # leaves them to the reduce when told not to
    ([2, 20, 5], 3, 16, 1, 64, torch.float32, dict(block_m=16, num_splits=1, num_prefix_splits=3)),
    ([3, 7], 2, 1, 2, 16, torch.float16, dict(block_n=16, num_splits=1, merge=True)),
    ([12, 2], 4, 16, 4, 64, torch.float16, dict(num_splits=1, num_prefix_splits=1)),
    ([2, 2, 9], 1, 1, 4, 16, torch.float32, dict(num_splits=1, merge=False)),
]


@interpreter_only
@pytest.mark.parametrize(
    ("sizes", "lone", "block_size", "gqa", "head_dim", "dtype", "kw"), INTERP_CASES
)
def test_interpreter_grouped_decode_matches_reference(
    sizes, lone, block_size, gqa, head_dim, dtype, kw
):
    prefix_blocks = (1, 80 // block_size if block_size > 1 else 60)
    heads = (2, gqa, head_dim)
    batch = make_grouped_batch(sizes, lone, block_size, heads, dtype, prefix_blocks, (1, 20), gqa)
    out = _run_grouped_triton(batch, **kw)
    tol = 1e-4 if dtype == torch.float32 else 2e-3  # measured: 2e-7 and 2.4e-4
    assert relative_error(out, decode_attention(*batch.args, backend="torch")) < tol


@interpreter_only
def test_interpreter_prefix_is_read_only_through_each_groups_first_row():
    """Other members' prefix table entries pointed at the NaN block: the output is unchanged."""
    batch = make_grouped_batch([3, 6], 2, 16, (2, 2, 64), torch.float32, (1, 4), (1, 20), seed=7)
    expected = decode_attention(*batch.args, backend="torch")
    tables = batch.args[3].clone()
    starts, rows = batch.groups.starts.tolist(), batch.groups.rows.tolist()
    for g, prefix_len in enumerate(batch.groups.prefix_lens.tolist()):
        for row in rows[starts[g] + 1 : starts[g + 1]]:
            tables[row, : prefix_len // 16] = 0
    args = (*batch.args[:3], tables, *batch.args[4:])
    out = _run_grouped_triton(replace(batch, args=args), block_m=4, num_prefix_splits=2)
    assert relative_error(out, expected) < 1e-4


@interpreter_only
def test_interpreter_no_groups_equals_plain_decode():
    """Zero groups: every row takes the plain split-K path (no prefix slots)."""
    batch = make_grouped_batch([2], 3, 16, (2, 2, 16), torch.float32, (1, 3), (1, 20), seed=5)
    empty = PrefixGroups.from_lists([], [], batch.args[0].shape[0])
    out = _run_grouped_triton(replace(batch, groups=empty), num_splits=2)
    assert relative_error(out, decode_attention(*batch.args, backend="torch")) < 1e-5


@interpreter_only
def test_interpreter_grouped_decode_with_padding_slots_equals_unpadded():
    """A CUDA graph holds a fixed number of group slots and a batch-long rows buffer: padding
    slots (starts repeated, prefix 0) and unused rows past starts[-1] change nothing."""
    batch = make_grouped_batch([3, 2], 2, 16, (2, 2, 16), torch.float32, (1, 4), (1, 20), seed=9)
    groups, size = batch.groups, batch.args[0].shape[0]
    extra = 3
    padded = PrefixGroups(
        rows=torch.cat([groups.rows, torch.zeros(size - groups.rows.shape[0], dtype=torch.int32)]),
        starts=torch.cat([groups.starts, groups.starts[-1:].repeat(extra)]),
        prefix_lens=torch.cat([groups.prefix_lens, torch.zeros(extra, dtype=torch.int32)]),
        kv_start=groups.kv_start,
    )
    expected = _run_grouped_triton(batch, num_prefix_splits=2)
    out = _run_grouped_triton(replace(batch, groups=padded), num_prefix_splits=2)
    assert torch.equal(out, expected)
    assert relative_error(out, decode_attention(*batch.args, backend="torch")) < 1e-5


@interpreter_only
def test_interpreter_grouped_launcher_rejects_bad_groups_with_value_error():
    from yaie.kernels.attention.triton_cascade import decode_attention_grouped_triton

    batch = make_grouped_batch([2, 3], 1, 16, (2, 2, 16), torch.float32, (1, 3), (1, 20), seed=6)
    groups = batch.groups
    bad = [
        ("groups.rows must be torch.int32", replace(groups, rows=groups.rows.long())),
        (r"groups.starts must be \[3\]", replace(groups, starts=groups.starts[:2])),
        (r"groups.kv_start must be \[6\]", replace(groups, kv_start=groups.kv_start[:5])),
    ]
    for message, wrong in bad:
        with pytest.raises(ValueError, match=message):
            decode_attention_grouped_triton(*batch.args, wrong)
    with pytest.raises(ValueError, match="merge takes one split"):
        decode_attention_grouped_triton(*batch.args, groups, num_splits=2, merge=True)


# (group_sizes, lone, block_size, heads, prefix_blocks, own_tokens): the shared-prefix workload's
# decode (256 rows = 16 groups x 16 sharing 2,048 tokens + 256 own, Qwen3-0.6B heads 16/8/128),
# then uneven groups with rows in no group, block size 1, GQA 4, head_dim 64.
GPU_CASES = [
    ([16] * 16, 0, 16, (8, 2, 128), (128, 128), (256, 256)),
    ([2, 20, 5, 9, 40], 7, 1, (2, 4, 64), (100, 1500), (1, 300)),
]


@gpu_only
@pytest.mark.parametrize(("sizes", "lone", "block_size", "heads", "prefix", "own"), GPU_CASES)
def test_gpu_grouped_decode_bf16_matches_fp32_reference(
    sizes, lone, block_size, heads, prefix, own
):
    batch = make_grouped_batch(
        sizes, lone, block_size, heads, torch.bfloat16, prefix, own, 0, "cuda"
    )
    out = torch.full_like(batch.args[0], float("nan"))
    decode_attention_grouped(*batch.args, batch.groups, backend="auto", out=out)
    fp32_args = tuple(a.float() for a in batch.args[:3])
    ref = decode_attention(*fp32_args, *batch.args[3:], backend="torch")
    assert relative_error(out, ref) <= 1e-2


@gpu_only
@pytest.mark.parametrize("merge", [False, True])
def test_gpu_grouped_decode_one_split_with_and_without_the_merge(merge):
    """The shared-prefix workload's step with the own tokens in one split: the split kernel
    folding the prefix partials in (no reduce) equals the reduce's answer."""
    batch = make_grouped_batch(
        [16] * 8 + [3], 5, 16, (8, 2, 128), torch.bfloat16, (64, 128), (1, 300), 1, "cuda"
    )
    out = _run_grouped_triton(batch, num_splits=1, merge=merge)
    fp32_args = tuple(a.float() for a in batch.args[:3])
    ref = decode_attention(*fp32_args, *batch.args[3:], backend="torch")
    assert relative_error(out, ref) <= 1e-2
