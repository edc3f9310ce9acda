"""Decode-step time of our model alone (no worker, no sampling) for a real shape, eager and in a
CUDA graph, with the CUDA kernel breakdown: `python benchmarks/bench_model.py [--batch 256]`."""

from __future__ import annotations

import argparse
import time

import torch
from stack_models import SHAPES

from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.models import build_model

ARCHITECTURE, SHAPE = SHAPES["qwen3-0.6b"]  # the real checkpoint's shape, weights random
QWEN3_0_6B = {"architectures": [ARCHITECTURE], **SHAPE}


def decode_batch(batch: int, context: int, block_size: int) -> ForwardBatch:
    tables = torch.arange(batch * context // block_size, dtype=torch.int32, device="cuda")
    tables = tables.view(batch, -1)
    last = torch.full((batch,), context - 1, device="cuda")
    return ForwardBatch(
        input_ids=torch.randint(0, 1000, (batch,), device="cuda"),
        positions=last,
        slots=tables[:, -1].long() * block_size + block_size - 1,
        block_tables=tables,
        seq_lens=torch.full((batch,), context, dtype=torch.int32, device="cuda"),
        query_start=torch.arange(batch + 1, dtype=torch.int32, device="cuda"),
        max_query_len=1,
        is_decode=True,
        logits_indices=torch.arange(batch, device="cuda"),
    )


def timed_ms(fn, iters: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3 / iters


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--block-size", type=int, default=16)
    args = parser.parse_args()
    model = build_model(QWEN3_0_6B, torch.bfloat16, torch.device("cuda"))
    for param in model.parameters():
        param.normal_(0, 0.02)
    shape = (
        model.num_layers,
        2,
        args.batch * args.context // args.block_size,
        args.block_size,
        model.num_kv_heads,
        model.head_dim,
    )
    kv_cache = torch.zeros(shape, dtype=torch.bfloat16, device="cuda")
    batch = decode_batch(args.batch, args.context, args.block_size)
    with torch.inference_mode():
        print(f"decode eager: {timed_ms(lambda: model(batch, kv_cache)):.3f} ms")
        model(batch, kv_cache)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(batch, kv_cache)
        print(f"decode graph: {timed_ms(graph.replay):.3f} ms")
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            graph.replay()
            torch.cuda.synchronize()
    print(
        prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=60)
    )


if __name__ == "__main__":
    main()
