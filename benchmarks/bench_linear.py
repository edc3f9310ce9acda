"""GPU benchmark of the decoder's linear layers at a decode step's row counts: cuBLAS (F.linear,
and F.linear + silu_and_mul for the gated MLP, the unfused path) against the skinny Triton kernel
(kernels/linear/triton_skinny.py) with its default config and the best of a config sweep.

Each variant is captured in a CUDA graph over enough weight copies to defeat the L2 (as a model's
layers do), so a figure is one call's device time with no launch gaps, median of do_bench. The
weight streams once per call: bytes = N*K*2 (+ x and out); the share is against the copy rate.
Usage: python benchmarks/bench_linear.py [--shapes qwen3-0.6b,llama-3.1-8b] [--sweep]
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from triton.runtime.errors import OutOfResources
from triton.testing import do_bench

from yaie.kernels.elementwise import silu_and_mul
from yaie.kernels.linear.triton_skinny import default_config, skinny_linear_triton

# (name, N, K, gated): the weight is [N, K]; gated = [gate; up], output N / 2
SHAPES = {
    "qwen3-0.6b": [("qkv", 4096, 1024, False), ("o", 1024, 2048, False),
                   ("gate_up", 6144, 1024, True), ("down", 1024, 3072, False)],
    "llama-3.1-8b": [("qkv", 6144, 4096, False), ("o", 4096, 4096, False),
                     ("gate_up", 28672, 4096, True), ("down", 4096, 14336, False)],
}  # fmt: skip
ROWS = (1, 4, 16, 32, 64)
SWEEP_ROWS = (1, 16, 64)
SWEEP = list(itertools.product((16, 32, 64), (128, 256, 512), (4, 8), (3, 4)))


def copy_bandwidth() -> float:
    src = torch.randn(2**28, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def torch_path(x, w, gated):
    out = F.linear(x, w)
    return silu_and_mul(out, "triton") if gated else out


def reference(x, w, gated):
    out = x.float() @ w.float().T
    if not gated:
        return out
    gate, up = out.chunk(2, dim=-1)
    return F.silu(gate) * up


def graph_ms(fn, x, weights) -> float:
    """One call's device time: fn over every weight copy in one CUDA graph, replay median/copies."""
    for w in weights[:2]:
        fn(x, w)  # compile and warm outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in weights:
            fn(x, w)
    ms = do_bench(graph.replay, warmup=5, rep=30, return_mode="median")
    return ms / len(weights)


def rel_err(out, ref) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def bench_shape(model, name, n, k, gated, copy_bw, sweep, table) -> None:
    copies = max(4, -(-(512 * 2**20) // (n * k * 2)))  # >= 512 MiB of weights per replay
    gen = torch.Generator(device="cuda").manual_seed(n + k)
    weights = [
        torch.randn(n, k, device="cuda", dtype=torch.bfloat16, generator=gen) * k**-0.5
        for _ in range(copies)
    ]
    out_n = n // 2 if gated else n
    for m in ROWS:
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        nbytes = n * k * 2 + m * (k + out_n) * 2
        ref = reference(x, weights[0], gated)
        err_torch = rel_err(torch_path(x, weights[0], gated), ref)
        err_skinny = rel_err(skinny_linear_triton(x, weights[0], gated=gated), ref)
        assert err_skinny <= max(2 * err_torch, 1e-2), (name, m, err_skinny, err_torch)
        t_torch = graph_ms(lambda x, w: torch_path(x, w, gated), x, weights)
        t_default = graph_ms(lambda x, w: skinny_linear_triton(x, w, gated=gated), x, weights)
        best, best_cfg = t_default, default_config(out_n, k, gated)
        if sweep and m in SWEEP_ROWS:
            for cfg in SWEEP:
                try:
                    t = graph_ms(
                        lambda x, w, c=cfg: skinny_linear_triton(x, w, gated=gated, config=c),
                        x,
                        weights,
                    )
                except OutOfResources:  # the config's tiles exceed the shared memory
                    continue
                if t < best:
                    best, best_cfg = t, cfg
        row = dict(model=model, name=name, m=m, torch=t_torch, default=t_default, best=best)
        row.update(cfg=best_cfg, err_t=err_torch, err_s=err_skinny, bw=nbytes / copy_bw * 1e3)
        table.append(row)
        print(
            f"{model} {name:8s} M={m:3d} torch {t_torch * 1e3:7.2f} us  default "
            f"{t_default * 1e3:7.2f} us  best {best * 1e3:7.2f} us {best_cfg}  copy-rate "
            f"{row['bw'] * 1e3:6.2f} us  err {err_torch:.1e}/{err_skinny:.1e}",
            flush=True,
        )
    del weights
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shapes", default="qwen3-0.6b,llama-3.1-8b")
    parser.add_argument("--sweep", action="store_true", help="also time every config in SWEEP")
    args = parser.parse_args()
    copy_bw = copy_bandwidth()
    device = torch.cuda.get_device_name()
    print(f"copy bandwidth (read + write) {copy_bw / 1e12:.3f} TB/s on {device}")
    table: list[dict] = []
    for model in args.shapes.split(","):
        for name, n, k, gated in SHAPES[model]:
            bench_shape(model, name, n, k, gated, copy_bw, args.sweep, table)
    print(
        "\n| model | layer | rows | cuBLAS us | skinny default us | best us (config) | at copy "
        "rate us | default / cuBLAS | copy share (default) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in table:
        print(
            f"| {r['model']} | {r['name']} | {r['m']} | {r['torch'] * 1e3:.2f} | "
            f"{r['default'] * 1e3:.2f} | {r['best'] * 1e3:.2f} {r['cfg']} | {r['bw'] * 1e3:.2f} | "
            f"{r['torch'] / r['default']:.2f}x | {r['bw'] / r['default']:.0%} |"
        )  # fmt: skip


if __name__ == "__main__":
    main()
