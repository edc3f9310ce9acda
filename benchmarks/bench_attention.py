"""GPU benchmark of the Triton paged-attention kernels against the device's own ceilings.

One run: (1) copy bandwidth and bf16 matmul rate, (2) a bf16 check against the reference on fresh
inputs, (3) decode, (4) grouped (cascade) decode, (5) extend and (6) store_kv timings with a few
variants; table printed last.
Usage: python benchmarks/bench_attention.py [decode,ragged,grouped,extend]  (the sections to run,
all but ragged by default; writes $OUT/bench_attention.json when OUT is set)
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

from yaie.kernels.attention import PrefixGroups, decode_attention, extend_attention
from yaie.kernels.attention.triton_cascade import _prefix_kernel, decode_attention_grouped_triton
from yaie.kernels.attention.triton_decode import _decode_split_kernel, decode_attention_triton
from yaie.kernels.attention.triton_extend import _extend_kernel, extend_attention_triton
from yaie.kernels.attention.triton_store import store_kv_triton

# The random paged inputs are the attention tests' fixture: import it as the tests do.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.kernels.attention.paged_batch import (  # noqa: E402
    PagedBatch,
    make_paged_batch,
    relative_error,
)

Q_HEADS, KV_HEADS, HEAD_DIM = 16, 8, 128  # Qwen3-0.6B
ROWS: list[dict] = []


def median_ms(fn) -> float:
    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def report(section: str, variant: str, ms: float, **metrics: float) -> None:
    row = {"section": section, "variant": variant, "ms": ms, **metrics}
    ROWS.append(row)
    extra = "  ".join(f"{k}={v:.3g}" for k, v in metrics.items())
    print(f"{section:8s} {variant:40s} {ms * 1e3:9.1f} us  {extra}", flush=True)


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: bytes read + written per second."""
    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src))
    report("ceiling", "copy 1 GiB", ms, TBps=2 * src.numel() * 4 / (ms * 1e-3) / 1e12)
    return 2 * src.numel() * 4 / (ms * 1e-3)


def matmul_rate() -> float:
    """8192^3 bf16 torch.matmul on random data: FLOP/s."""
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: torch.matmul(a, b))
    report("ceiling", "matmul 8192^3 bf16", ms, TFLOPs=2 * 8192**3 / (ms * 1e-3) / 1e12)
    return 2 * 8192**3 / (ms * 1e-3)


def decode_batches(
    block_size: int, count: int, seed: int, batch: int = 256, context: int = 1024
) -> list[PagedBatch]:
    """`count` input sets of `batch` requests x `context` tokens (1.07 GB of KV at 256 x 1024)."""
    return [
        make_paged_batch(
            [context - 1] * batch,
            [1] * batch,
            block_size,
            KV_HEADS,
            Q_HEADS,
            HEAD_DIM,
            torch.bfloat16,
            "cuda",
            seed=seed + i,
        )
        for i in range(count)
    ]


def cycle_calls(batches: list[PagedBatch], call):
    """A thunk that runs `call` on the next input set each time (rotation defeats the L2)."""
    it = itertools.cycle(batches)
    return lambda: call(next(it))


def check(name: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    err = relative_error(out, ref)
    print(f"check    {name:40s} rel err {err:.2e}", flush=True)
    assert err <= 1e-2, f"{name}: relative error {err} > 1e-2"


def graph_replay_ms(batch: PagedBatch, **kwargs) -> float:
    """Default decode captured in a CUDA graph, as the worker runs it (no launch gaps)."""
    out = torch.empty_like(batch.q)
    decode_attention_triton(*batch.decode_args(), out=out, **kwargs)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_attention_triton(*batch.decode_args(), out=out, **kwargs)
    return median_ms(graph.replay)


def bench_decode(copy_bw: float) -> None:
    kv_bytes = 256 * 1024 * KV_HEADS * HEAD_DIM * 2 * 2  # K and V, bf16
    variants = [dict(), dict(block_n=64), dict(num_splits=2), dict(num_warps=8)]
    for block_size in (16, 1, 64, 256):
        batches = decode_batches(block_size, 3, seed=block_size)
        ref = decode_attention(*batches[0].upcast().decode_args(), backend="torch")
        check(f"decode bs={block_size}", decode_attention_triton(*batches[0].decode_args()), ref)
        for kwargs in variants if block_size == 16 else [dict()]:
            fn = cycle_calls(
                batches, lambda b, kw=kwargs: decode_attention_triton(*b.decode_args(), **kw)
            )
            ms = median_ms(fn)
            name = " ".join([f"bs={block_size}", *(f"{k}={v}" for k, v in kwargs.items())])
            bw = kv_bytes / (ms * 1e-3)
            report("decode", name, ms, TBps=bw / 1e12, of_copy=bw / copy_bw)
        if block_size == 16:
            ms = graph_replay_ms(batches[0])
            bw = kv_bytes / (ms * 1e-3)
            report("decode", "bs=16 cuda-graph replay", ms, TBps=bw / 1e12, of_copy=bw / copy_bw)
        del batches, ref
        torch.cuda.empty_cache()


def bench_decode_long(copy_bw: float) -> None:
    """16 requests x 8192 tokens: too few (request, kv head) programs without split-K."""
    batches = decode_batches(16, 2, seed=7, batch=16, context=8192)
    kv_bytes = 16 * 8192 * KV_HEADS * HEAD_DIM * 2 * 2
    ref = decode_attention(*batches[0].upcast().decode_args(), backend="torch")
    check("decode 16x8k", decode_attention_triton(*batches[0].decode_args()), ref)
    for kwargs in (dict(), dict(num_splits=1), dict(num_splits=8), dict(num_splits=16)):
        fn = cycle_calls(
            batches, lambda b, kw=kwargs: decode_attention_triton(*b.decode_args(), **kw)
        )
        ms = median_ms(fn)
        name = " ".join(["16x8k", *(f"{k}={v}" for k, v in kwargs.items())])
        bw = kv_bytes / (ms * 1e-3)
        report("decode", name, ms, TBps=bw / 1e12, of_copy=bw / copy_bw)


def bench_ragged_decode(copy_bw: float) -> None:
    """Decode over ragged batches (contexts U[100, 2,048], the random workload's spread, and a
    uniform one for contrast) in CUDA graphs: the rows in their order, and longest first with
    the ordered chunking (the batch builder's decode_order)."""
    rng = random.Random(14)
    cases = [(b, "ragged") for b in (16, 64, 138, 256, 512)] + [(138, "uniform"), (256, "uniform")]
    for rows, kind in cases:
        if kind == "ragged":
            contexts = [rng.randint(100, 2048) for _ in range(rows)]
        else:
            contexts = [1074] * rows
        batch = make_paged_batch(
            [c - 1 for c in contexts], [1] * rows, 16, KV_HEADS, Q_HEADS, HEAD_DIM,
            torch.bfloat16, "cuda", seed=rows,
        )  # fmt: skip
        order = torch.argsort(batch.seq_lens, descending=True, stable=True).int()
        if rows == 138:
            ref = decode_attention(*batch.upcast().decode_args(), backend="torch")
            out = decode_attention_triton(*batch.decode_args(), order=order)
            check(f"decode {rows} {kind} longest first", out, ref)
            del ref
        kv_bytes = sum(contexts) * KV_HEADS * HEAD_DIM * 2 * 2
        for name, kwargs in (("rows in order", {}), ("longest first", {"order": order})):
            ms = graph_replay_ms(batch, **kwargs)
            bw = kv_bytes / (ms * 1e-3)
            report("ragged", f"{rows} {kind} {name}", ms, TBps=bw / 1e12, of_copy=bw / copy_bw)
        del batch
        torch.cuda.empty_cache()


def shared_prefix_batch(seed: int, groups: int = 16, rows: int = 16, prefix: int = 2048):
    """groups x rows requests of prefix + 256 tokens; a group's rows hold its first row's prefix
    blocks (the radix cache's sharing). Returns (batch, PrefixGroups)."""
    batch = decode_batches(16, 1, seed, batch=groups * rows, context=prefix + 256)[0]
    tables = batch.block_tables
    members = [list(range(g * rows, (g + 1) * rows)) for g in range(groups)]
    for group in members:
        tables[group, : prefix // 16] = tables[group[0], : prefix // 16]
    return batch, PrefixGroups.from_lists(members, [prefix] * groups, groups * rows, "cuda")


def bench_grouped_decode(copy_bw: float, groups: int = 16) -> None:
    """The shared-prefix workload's decode: groups x 16 rows x 2,304 tokens, a group sharing
    2,048 (16 groups: 256 running, the default; 32: 512 running)."""
    rows = groups * 16
    sets = [shared_prefix_batch(seed=50 + i, groups=groups) for i in range(2)]
    token_bytes = KV_HEADS * HEAD_DIM * 2 * 2  # K and V, bf16
    plain_bytes = rows * 2304 * token_bytes  # every row reads its whole context
    grouped_bytes = (groups * 2048 + rows * 256) * token_bytes  # each prefix once, own per row
    gb = f"plain {plain_bytes / 1e9:.2f} GB, grouped {grouped_bytes / 1e9:.2f} GB"
    print(f"grouped  {groups}x16 KV bytes each must read: {gb}", flush=True)
    batch, prefix_groups = sets[0]
    ref = decode_attention(*batch.upcast().decode_args(), backend="torch")
    for merge in (False, True):
        out = decode_attention_grouped_triton(
            *batch.decode_args(), prefix_groups, num_splits=1, merge=merge
        )
        check(f"grouped decode {groups}x16 merge={merge}", out, ref)
    del ref
    fn = cycle_calls(sets, lambda s: decode_attention_triton(*s[0].decode_args()))
    ms = median_ms(fn)
    name = f"{groups}x16 plain decode (same shared tables)"
    report("grouped", name, ms, TBps=plain_bytes / (ms * 1e-3) / 1e12)
    variants = [dict(), dict(merge=False), dict(num_prefix_splits=2), dict(num_prefix_splits=4)]
    variants += [dict(prefix_block_n=128), dict(block_n=64), dict(num_warps=2), dict(block_m=32)]
    for kwargs in variants:
        fn = cycle_calls(
            sets,
            lambda s, kw=kwargs: decode_attention_grouped_triton(*s[0].decode_args(), s[1], **kw),
        )
        ms = median_ms(fn)
        parts = [f"{k}={v}" for k, v in kwargs.items()] or ["default"]
        name = " ".join([f"{groups}x16", *parts])
        bw = grouped_bytes / (ms * 1e-3)
        report("grouped", name, ms, TBps=bw / 1e12, of_copy=bw / copy_bw)


def bench_extend(matmul: float) -> None:
    rng = random.Random(0)
    batches = []
    for i in range(2):
        prefix = [rng.randint(0, 4096) for _ in range(16)]
        batches.append(
            make_paged_batch(
                prefix,
                [1024] * 16,
                16,
                KV_HEADS,
                Q_HEADS,
                HEAD_DIM,
                torch.bfloat16,
                "cuda",
                seed=100 + i,
            )
        )
    # Causal FLOPs: QK^T and PV, 2 each per (query, key, head, dim) the query attends to.
    flops = []
    for b in batches:
        attended = sum(p * 1024 + 1024 * 1025 // 2 for p in (b.seq_lens - 1024).tolist())
        flops.append(4 * HEAD_DIM * Q_HEADS * attended)
    ref = extend_attention(*batches[0].upcast().extend_args(), backend="torch")
    check("extend bs=16", extend_attention_triton(*batches[0].extend_args()), ref)
    del ref
    variants = [
        dict(),
        dict(block_n=64),
        dict(block_n=32, num_warps=4, num_stages=3),
        dict(block_m=128, block_n=64, num_warps=4, num_stages=3),
        dict(block_m=64, block_n=32, num_warps=4),
    ]
    for kwargs in variants:
        fn = cycle_calls(
            batches, lambda b, kw=kwargs: extend_attention_triton(*b.extend_args(), **kw)
        )
        ms = median_ms(fn)
        rate = sum(flops) / len(flops) / (ms * 1e-3)
        name = " ".join(f"{k}={v}" for k, v in kwargs.items()) or "default"
        report("extend", name, ms, TFLOPs=rate / 1e12, of_matmul=rate / matmul)


def bench_store(copy_bw: float) -> None:
    num_tokens, num_slots = 16384, 4096 * 64
    k_cache = torch.randn(4096, 64, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    sets = []
    for _ in range(3):
        k = torch.randn(num_tokens, KV_HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        slots = torch.randperm(num_slots, device="cuda")[:num_tokens]
        sets.append((k, torch.randn_like(k), slots))
    moved = 2 * 2 * k.numel() * 2  # K and V, each read once and written once, bf16
    for tokens_per_program in (1, 4, 8):
        fn = cycle_calls(
            sets,
            lambda s, t=tokens_per_program: store_kv_triton(
                k_cache, v_cache, *s, tokens_per_program=t
            ),
        )
        ms = median_ms(fn)
        bw = moved / (ms * 1e-3)
        report(
            "store",
            f"16k tokens tpp={tokens_per_program}",
            ms,
            TBps=bw / 1e12,
            of_copy=bw / copy_bw,
        )


def print_compile_report(kernel) -> None:
    """Registers, spills and shared memory of each compiled variant (a diagnostic only)."""
    try:  # triton internals: they move between versions, and the benchmark must not die here
        for device_cache in kernel.device_caches.values():
            for compiled in device_cache[0].values():
                md = compiled.metadata
                tiles = {k: v for k, v in compiled.src.constants.items() if isinstance(v, int)}
                print(
                    f"compiled {kernel.__name__} warps={md.num_warps} stages={md.num_stages} "
                    f"regs={compiled.n_regs} spills={compiled.n_spills} shared={md.shared} {tiles}"
                )
    except (AttributeError, KeyError, TypeError, IndexError) as error:
        print(f"compile report unavailable: {error!r}")


def main() -> None:
    torch.manual_seed(0)
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    # The matmul rate drifts (790 cold, ~685 once the card is warm): the highest counts, as the
    # strictest yardstick for extend.
    matmul = matmul_rate()
    copy_bw = copy_bandwidth()
    matmul = max(matmul, matmul_rate())
    sections = sys.argv[1].split(",") if len(sys.argv) > 1 else ["decode", "grouped", "extend"]
    if "decode" in sections:
        bench_decode(copy_bw)
        bench_decode_long(copy_bw)
    if "ragged" in sections:
        bench_ragged_decode(copy_bw)
    if "grouped" in sections:
        bench_grouped_decode(copy_bw)
        bench_grouped_decode(copy_bw, groups=32)
    if "extend" in sections:
        matmul = max(matmul, matmul_rate())
        bench_extend(matmul)
        bench_store(copy_bw)
    print_compile_report(_decode_split_kernel)
    print_compile_report(_extend_kernel)
    print_compile_report(_prefix_kernel)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench_attention.json"), "w") as f:
            json.dump(ROWS, f, indent=1)
    print("\nsection  variant (each group's default, then its fastest)   time  metrics")
    best: dict[str, dict] = {}
    for row in ROWS:  # per group: its default variant, then its fastest
        section, first = row["section"], row["variant"].split()[0]
        per_shape = {"ceiling": row["variant"], "decode": f"decode {first}", "grouped": first}
        group = per_shape.get(section, section)
        defaults = ("default", "bs=16", "16x8k", f"bs={first[3:]}")
        if row["variant"] in defaults or row["variant"].endswith(" default"):
            best[group + " default"] = row
        if group + " best" not in best or row["ms"] < best[group + " best"]["ms"]:
            best[group + " best"] = row
    for row in {id(row): row for row in best.values()}.values():
        metrics = {k: v for k, v in row.items() if k not in ("section", "variant", "ms")}
        extra = "  ".join(f"{k}={v:.3g}" for k, v in metrics.items())
        print(f"{row['section']:8s} {row['variant']:40s} {row['ms'] * 1e3:9.1f} us  {extra}")


if __name__ == "__main__":
    main()
