"""Prefill and mixed steps eagerly vs through the piecewise CUDA graphs (worker_service/step/
prefill_graphs.py), on a random model of a real shape: the forward's GPU time (CUDA events) and
the host's time to launch it, medians; the logits of both paths compared on each batch.

`python benchmarks/bench_prefill_graphs.py --shape qwen3-0.6b` (GPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from stack_models import write_model

from yaie.worker_service.forward_batch import ForwardBatch
from yaie.worker_service.loader import load_model
from yaie.worker_service.step.kv_pool import KVPool
from yaie.worker_service.step.prefill_graphs import DEFAULT_MAX_TOKENS, PrefillGraphs

BLOCK = 16


def make_batch(prefill: list[int], decodes: int, context: int, device) -> ForwardBatch:
    """decodes one-token rows over context tokens each (first), then prefills of the given
    lengths from position 0; every request on blocks of its own."""
    lengths = [1] * decodes + prefill
    cached = [context] * decodes + [0] * len(prefill)
    tables, ids, positions, slots, next_block = [], [], [], [], 0
    for n, c in zip(lengths, cached, strict=True):
        blocks = list(range(next_block, next_block + -(-(n + c) // BLOCK)))
        next_block += len(blocks)
        tables.append(blocks)
        for p in range(c, c + n):
            positions.append(p)
            slots.append(blocks[p // BLOCK] * BLOCK + p % BLOCK)
            ids.append((p * 7 + len(tables)) % 500 + 1)
    width = max(len(t) for t in tables)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    singles = decodes if prefill and decodes else 0

    def tensor(values, dtype=torch.int64):
        return torch.tensor(values, dtype=dtype, device=device)

    return ForwardBatch(
        tensor(ids),
        tensor(positions),
        tensor(slots),
        tensor([t + [0] * (width - len(t)) for t in tables], torch.int32),
        tensor([n + c for n, c in zip(lengths, cached, strict=True)], torch.int32),
        tensor(starts, torch.int32),
        max(lengths[singles:]),
        not prefill,
        tensor([e - 1 for e in starts[1:]]),
        num_single=singles,
        extend_query_start=tensor([s - starts[singles] for s in starts[singles:]], torch.int32)
        if singles
        else None,
    )


def timed(fn, reps: int) -> tuple[float, float, torch.Tensor]:
    """(median GPU ms, median host ms to return, last result)."""
    gpu, host = [], []
    for _ in range(reps):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        t0 = time.perf_counter()
        start.record()
        out = fn()
        end.record()
        host.append((time.perf_counter() - t0) * 1e3)
        torch.cuda.synchronize()
        gpu.append(start.elapsed_time(end))
    return statistics.median(gpu), statistics.median(host), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="qwen3-0.6b")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    device = torch.device("cuda")
    path = write_model(args.shape, Path(tempfile.mkdtemp()), "cuda")
    model = load_model(str(path), device, torch.bfloat16, "triton")
    pool = KVPool(model.num_layers, model.num_kv_heads, model.head_dim, torch.bfloat16, device,
                  BLOCK, 16384)  # fmt: skip
    before = torch.cuda.memory_allocated()
    graphs = PrefillGraphs(model, pool, args.max_tokens)
    started = time.perf_counter()
    graphs.capture()
    capture_s = time.perf_counter() - started
    extra = (torch.cuda.memory_reserved() - before) / 2**20
    print(f"capture: {len(graphs.sizes)} buckets in {capture_s:.1f} s; memory reserved since "
          f"the pool +{extra:.0f} MiB")  # fmt: skip
    cases = [
        ("prefill 128", [128], 0),
        ("prefill 512", [512], 0),
        ("prefill 2048", [2048], 0),
        ("prefill 4 x 1024", [1024] * 4, 0),
        ("prefill 3 x 1100", [1100] * 3, 0),
        ("mixed 1 decode + 128", [128], 1),
        ("mixed 64 decodes + 512", [512], 64),
        ("mixed 200 decodes + 2048", [2048], 200),
        ("decode 320 rows", [], 320),
    ]
    rows = []
    with torch.inference_mode():
        for name, prefill, decodes in cases:
            batch = make_batch(prefill, decodes, 512, device)
            if not graphs.can_run(batch):
                continue
            eager = timed(lambda b=batch: model(b, pool.cache, pool.scales), args.reps)
            graph = timed(lambda b=batch: graphs.run(b), args.reps)
            diff = (eager[2] - graph[2]).abs().max().item()
            same = (eager[2].argmax(-1) == graph[2].argmax(-1)).float().mean().item()
            rows.append((name, batch.input_ids.shape[0], *eager[:2], *graph[:2], diff, same))
    print("\n| step | tokens | eager GPU ms | eager host ms | graphs GPU ms | graphs host ms "
          "| speedup | max logit diff | argmax agree |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, t, eg, eh, gg, gh, diff, same in rows:
        print(f"| {name} | {t} | {eg:.2f} | {eh:.2f} | {gg:.2f} | {gh:.2f} | {eg / gg:.2f}x "
              f"| {diff:.3f} | {same:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
