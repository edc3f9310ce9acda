"""bench_fp8_kv.py's kernel stage (GPU): the fp8 store / decode / extend / grouped kernels against
the torch reference on fresh random inputs, then decode timings of an fp8 pool next to a bf16
one (CUDA-graph replays, Llama-3.1-8B's attention shape) as bandwidth over the copy ceiling.

Bytes counted: every K and V element the batch's tokens hold (fp8: 1 byte, plus each slot's two
fp32 scales per KV head), q and out are negligible.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import replace
from pathlib import Path

import torch
from triton.testing import do_bench

from yaie.kernels.attention import PrefixGroups, decode_attention, extend_attention, store_kv
from yaie.kernels.attention.reference import quantize_fp8_pool
from yaie.kernels.attention.triton_cascade import decode_attention_grouped_triton
from yaie.kernels.attention.triton_decode import decode_attention_triton
from yaie.kernels.attention.triton_extend import extend_attention_triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.kernels.attention.paged_batch import make_paged_batch, relative_error  # noqa: E402

Q_HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16  # Llama-3.1-8B, one layer
FP8 = torch.float8_e4m3fn


def checks() -> dict:
    """Kernel vs reference on fresh inputs (bf16 q; the fp8 reference computes in fp32)."""
    results = {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(4096, KV_HEADS, HEAD_DIM, device="cuda", generator=gen, dtype=torch.bfloat16)
    k = k * torch.logspace(-3, 2, 4096, device="cuda")[:, None, None].bfloat16()
    slots = torch.randperm(8192, device="cuda", generator=gen)[:4096]
    pools = [torch.zeros(512, BLOCK_SIZE, KV_HEADS, HEAD_DIM, dtype=FP8, device="cuda")]
    pools += [pools[0].clone() for _ in range(3)]
    scales = [torch.zeros(512, KV_HEADS, BLOCK_SIZE, device="cuda") for _ in range(4)]
    store_kv(pools[0], pools[1], k, k, slots, "triton", scales[0], scales[1])
    store_kv(pools[2], pools[3], k, k, slots, "torch", scales[2], scales[3])
    same = (pools[0].view(torch.uint8) == pools[2].view(torch.uint8)).float().mean().item()
    results["store bytes equal to reference"] = same
    results["store scales max rel diff"] = ((scales[0] - scales[2]).abs() / scales[2]).max().item()
    print(
        f"check store: {same:.6f} of bytes equal, scales {results['store scales max rel diff']:.2e}"
    )

    for name, batch_size, context, new in (
        ("decode 64 x 4k", 64, 4096, 1),
        ("decode 8 x 30k", 8, 30000, 1),
        ("extend 4 x (2k + 500)", 4, 2048, 500),
    ):
        batch = make_paged_batch(
            [context - new] * batch_size, [new] * batch_size, BLOCK_SIZE, KV_HEADS, Q_HEADS,
            HEAD_DIM, torch.float32, "cuda", seed=batch_size,
        )  # fmt: skip
        fp8 = replace(batch.to_fp8(), q=batch.q.bfloat16())
        reference = replace(fp8, q=batch.q)  # fp32 q: the specification's arithmetic
        if new == 1:
            ref = decode_attention(*reference.decode_args(), backend="torch", **fp8.scales())
            out = decode_attention_triton(*fp8.decode_args(), **fp8.scales())
        else:
            ref = extend_attention(*reference.extend_args(), backend="torch", **fp8.scales())
            out = extend_attention_triton(*fp8.extend_args(), **fp8.scales())
        exact = decode_attention if new == 1 else extend_attention
        args = batch.decode_args() if new == 1 else batch.extend_args()
        unquantized = exact(*args, backend="torch")
        results[name] = relative_error(out, ref)
        results[f"{name}: fp8 reference vs unquantized"] = relative_error(ref, unquantized)
        print(f"check {name}: kernel vs reference {results[name]:.2e}; quantization error "
              f"{results[f'{name}: fp8 reference vs unquantized']:.2e}")  # fmt: skip
    batch = make_paged_batch([4000] * 16, [1] * 16, BLOCK_SIZE, KV_HEADS, Q_HEADS, HEAD_DIM,
                             torch.float32, "cuda", seed=3)  # fmt: skip
    batch.block_tables[:, :128] = batch.block_tables[0, :128]  # all share 2048 tokens
    fp8 = replace(batch.to_fp8(), q=batch.q.bfloat16())
    groups = PrefixGroups.from_lists([list(range(16))], [2048], 16, "cuda")
    ref = decode_attention(*replace(fp8, q=batch.q).decode_args(), backend="torch", **fp8.scales())
    out = decode_attention_grouped_triton(*fp8.decode_args(), groups, **fp8.scales())
    results["grouped 16 x 4k"] = relative_error(out, ref)
    print(f"check grouped 16 x 4k: {results['grouped 16 x 4k']:.2e}")
    return results


def random_pool(batch: int, context: int, dtype: torch.dtype, seed: int):
    """Decode inputs without per-request tensors: a shuffled pool of batch x context tokens."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    per_row = -(-context // BLOCK_SIZE)
    shape = (batch * per_row, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    tables = torch.randperm(batch * per_row, device="cuda", generator=gen).view(batch, per_row)
    q = torch.randn(batch, Q_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16, generator=gen)
    pools, scales = [], {}
    for name in ("k", "v"):
        values = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=gen)
        if dtype == FP8:
            values, scales[f"{name}_scale"] = quantize_fp8_pool(values)
        pools.append(values)
        del values
    seq_lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    return (q, *pools, tables.int(), seq_lens, HEAD_DIM**-0.5), scales


def graph_ms(args: tuple, scales: dict, **launch) -> float:
    """Median replay of decode_attention_triton captured in a CUDA graph (as the worker runs)."""
    out = torch.empty_like(args[0])
    decode_attention_triton(*args, out=out, **scales, **launch)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention_triton(*args, out=out, **scales, **launch)
    return do_bench(graph.replay, warmup=25, rep=200, return_mode="median")


def split_pass_ms(args: tuple, scales: dict, use_scales: bool) -> float:
    """Median replay of decode's first pass alone (the split kernel, no reduce), at the default
    launch; use_scales False runs an fp8 pool as if it had none (its conversion alone)."""
    from yaie.kernels.attention.triton_common import scale_args
    from yaie.kernels.attention.triton_decode import (
        default_num_splits,
        launch_decode_splits,
        max_context,
        split_partials,
    )

    q, k_cache, v_cache, tables, lens, scale = args
    passed = scale_args(k_cache, scales.get("k_scale"), scales.get("v_scale"))
    if not use_scales:
        passed = (k_cache, k_cache, 0, 0, False)
    splits = default_num_splits(q.shape[0], KV_HEADS, max_context(k_cache, tables), q.device)
    mid_out, mid_lse = split_partials(q, splits)

    def launch() -> None:
        launch_decode_splits(q, k_cache, v_cache, tables, lens, None, mid_out, mid_lse, splits,
                             scale, 32, 4, 2, passed)  # fmt: skip

    launch()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        launch()
    return do_bench(graph.replay, warmup=25, rep=200, return_mode="median")


def kv_bytes(batch: int, context: int, dtype: torch.dtype) -> int:
    per_head = HEAD_DIM * (1 if dtype == FP8 else 2) + (4 if dtype == FP8 else 0)
    return 2 * batch * context * KV_HEADS * per_head


SHAPES = [(1, 131072), (16, 4096), (16, 16384), (64, 4096), (64, 16384), (256, 1024), (256, 4096)]
VARIANTS = [dict(block_n=64), dict(block_n=64, num_warps=8), dict(block_n=128, num_warps=8),
            dict(num_stages=3), dict(block_n=64, num_stages=3)]  # fmt: skip


MATH_MODES = (1, 2)  # triton_common.FP8_DECODE_MATH (see attend_range)


def timings(copy_bw: float) -> list[dict]:
    """Per shape: bf16 and fp8 decode (default launch; fp8 also in each math mode of
    triton_common.FP8_DECODE_MATH), fp8's best of a few tile variants."""
    import yaie.kernels.attention.triton_common as tc

    rows = []
    for batch, context in SHAPES:
        row = {"batch": batch, "context": context}
        for dtype in (torch.bfloat16, FP8):
            args, scales = random_pool(batch, context, dtype, seed=batch + context)
            ms = graph_ms(args, scales)
            key = "fp8" if dtype == FP8 else "bf16"
            row[f"{key}_us"] = ms * 1e3
            row[f"{key}_of_copy"] = kv_bytes(batch, context, dtype) / (ms * 1e-3) / copy_bw
            # The first pass alone; for fp8 also without its scales (what the conversion costs)
            row[f"{key}_pass1_us"] = split_pass_ms(args, scales, True) * 1e3
            if dtype == FP8:
                row["fp8_pass1_noscale_us"] = split_pass_ms(args, scales, False) * 1e3
            if dtype == FP8:  # the same launch in each of the kernels' fp8 math modes
                default, first = tc.FP8_DECODE_MATH, None
                for mode in MATH_MODES:  # each mode's output against mode 1's (the spec's)
                    tc.FP8_DECODE_MATH = mode
                    try:
                        row[f"fp8_math{mode}_us"] = graph_ms(args, scales) * 1e3
                        found = decode_attention_triton(*args, **scales).float()
                    finally:
                        tc.FP8_DECODE_MATH = default
                    first = found if first is None else first
                    row[f"fp8_math{mode}_err"] = relative_error(found, first)
            if dtype == FP8 and batch in (16, 64):
                best = min((graph_ms(args, scales, **v), str(v)) for v in VARIANTS)
                row["fp8_best_us"], row["fp8_best"] = best[0] * 1e3, best[1]
                row["fp8_best_of_copy"] = (
                    kv_bytes(batch, context, dtype) / (best[0] * 1e-3) / copy_bw
                )
            del args, scales
            torch.cuda.empty_cache()
        row["speedup"] = row["bf16_us"] / row["fp8_us"]
        print(f"decode {row}", flush=True)
        rows.append(row)
    return rows


def _extend_ms(args: tuple, scales: dict) -> float:
    run = functools.partial(extend_attention_triton, *args, **scales)
    return do_bench(run, warmup=10, rep=100, return_mode="median")


EXTEND_MATH_MODES = (1, 2, 3)  # triton_common.FP8_EXTEND_MATH (see triton_extend._attend_tile)
EXTEND_SHAPES = [(1, 0, 2048), (4, 2048, 500), (1, 0, 16384)]  # requests, cached, new tokens


def extend_timings() -> list[dict]:
    """Per shape: extend attention (eager, median) over a bf16 pool and an fp8 one in each math
    mode; a prefill's attention FLOPs over the time, against the bf16 matmul rate."""
    import yaie.kernels.attention.triton_common as tc

    rows = []
    for requests, cached, new in EXTEND_SHAPES:
        batch = make_paged_batch([cached] * requests, [new] * requests, BLOCK_SIZE, KV_HEADS,
                                 Q_HEADS, HEAD_DIM, torch.bfloat16, "cuda", seed=new)  # fmt: skip
        fp8 = replace(batch.to_fp8(), q=batch.q)
        # causal: each new query sees its cached prefix and the new tokens before it
        keys = requests * (new * cached + new * (new + 1) / 2)
        flops = 4 * keys * Q_HEADS * HEAD_DIM
        row = {"requests": requests, "cached": cached, "new": new}
        ms = _extend_ms(batch.extend_args(), {})
        row["bf16_us"], row["bf16_tflops"] = ms * 1e3, flops / (ms * 1e-3) / 1e12
        default, first = tc.FP8_EXTEND_MATH, None
        for mode in EXTEND_MATH_MODES:
            tc.FP8_EXTEND_MATH = mode
            try:
                ms = _extend_ms(fp8.extend_args(), fp8.scales())
                found = extend_attention_triton(*fp8.extend_args(), **fp8.scales()).float()
            finally:
                tc.FP8_EXTEND_MATH = default
            row[f"fp8_math{mode}_us"] = ms * 1e3
            first = found if first is None else first
            row[f"fp8_math{mode}_err"] = relative_error(found, first)
        print(f"extend {row}", flush=True)
        rows.append(row)
        del batch, fp8
        torch.cuda.empty_cache()
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| batch x context | bf16 us | of copy | fp8 us | of copy (fp8 bytes) | fp8/bf16 speed "
        "| best fp8 variant | fp8 us, math modes 1 / 2 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        best = (
            f"{r['fp8_best']}: {r['fp8_best_us']:.1f} us ({r['fp8_best_of_copy']:.2f})"
            if "fp8_best" in r
            else ""
        )
        lines.append(
            f"| {r['batch']} x {r['context']} | {r['bf16_us']:.1f} | {r['bf16_of_copy']:.2f} | "
            f"{r['fp8_us']:.1f} | {r['fp8_of_copy']:.2f} | {r['speedup']:.2f}x | {best} | "
            + " / ".join(f"{r[f'fp8_math{m}_us']:.1f}" for m in MATH_MODES)
            + " |"
        )
    return "\n".join(lines)
