"""The worker's host time to launch one decode step (issues 17, 20): the step trace's launch_ms,
split into its parts, over G groups x R rows of a P-token shared prefix + O own tokens each
(G x 1 rows: no sharing). Each part is the median over the timed steps of the host time spent
in: the plan's validation and table updates (ModelRunner._schedule), build_forward_batch (with
the prefix grouping), the forward call (graph replay on CUDA: copies into the static buffers and
the launch; on the CPU the whole forward runs here), sample_entries (of it SamplingBatch.build),
and all of launch(). The step is waited for before the next one, so nothing overlaps.

    python benchmarks/bench_worker_host.py --configs 16x16x2048x128,256x1x1024x128   # GPU
    python benchmarks/bench_worker_host.py --tiny    # CPU, tiny model (forward included)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_shared_decode import build_runner, fill_groups
from stack_models import SHAPES

import yaie.worker_service.step.runner as runner_module
import yaie.worker_service.step.sampling_step as sampling_module
from yaie.worker_service.protocol import Plan

TINY = dict(vocab_size=512, tie_word_embeddings=True)  # on write_random_model's tiny config
DEFAULT_CONFIGS = "16x16x2048x128,16x16x2048x256,128x1x1024x256,256x1x1024x128"
PARTS = ("schedule", "build", "forward call", "sample", "sampling batch", "launch")


class Timed:
    """Wraps obj.name so that each call's host time is appended to times[label]."""

    def __init__(self, times: dict[str, list[float]]) -> None:
        self.times, self.undo = times, []

    def wrap(self, obj, name: str, label: str) -> None:
        inner = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.times[label].append((time.perf_counter() - start) * 1e3)

        setattr(obj, name, timed)
        self.undo.append((obj, name, inner))

    def restore(self) -> None:
        for obj, name, inner in reversed(self.undo):
            setattr(obj, name, inner)


def one_config(runner, blocks, cfg, vocab: int, iters: int) -> dict[str, float]:
    groups, rows, prefix, own = cfg
    reserve = iters + 8
    table, decode, step_id = fill_groups(runner, blocks, groups, rows, prefix, own, reserve, vocab)
    times: dict[str, list[float]] = {p: [] for p in PARTS}
    timed = Timed(times)
    timed.wrap(runner, "_schedule", "schedule")
    timed.wrap(runner_module, "build_forward_batch", "build")
    timed.wrap(runner_module, "sample_entries", "sample")
    timed.wrap(sampling_module.SamplingBatch, "build", "sampling batch")
    forward = runner.graphs if runner.graphs is not None else runner.model
    timed.wrap(forward, "run" if runner.graphs is not None else "forward", "forward call")
    try:
        for _ in range(iters + 3):
            step_id += 1
            start = time.perf_counter()
            pending = runner.launch(table, Plan(step_id, [], decode, []))
            times["launch"].append((time.perf_counter() - start) * 1e3)
            out = pending.wait()
            assert not out.error and not out.request_errors
    finally:
        timed.restore()
    owned = {b for e in decode for b in table.get(e.request_id).block_table}
    step_id += 1
    runner.launch(table, Plan(step_id, [], [], [e.request_id for e in decode])).wait()
    runner.close_table(table)
    blocks.give(sorted(owned))
    return {p: statistics.median(v[3:]) if v else 0.0 for p, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    p.add_argument(
        "--configs",
        default=None,
        help=f"groups x rows x prefix x own, comma separated (default {DEFAULT_CONFIGS}; "
        "--tiny: 4x4x256x32,32x1x256x32)",
    )
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--max-graph-batch-size", type=int, default=512)
    args = p.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    shape = TINY if args.tiny else SHAPES["qwen3-0.6b"][1]
    default = "4x4x256x32,32x1x256x32" if args.tiny else DEFAULT_CONFIGS
    configs = [tuple(int(x) for x in c.split("x")) for c in (args.configs or default).split(",")]
    if args.tiny:
        torch.set_num_threads(1)
    model, runner, blocks = build_runner(shape, device, dtype, configs, args.iters + 8, args)
    print(f"device {device}; host ms per decode step, median of {args.iters}")
    print("| groups x rows, prefix, own | " + " | ".join(PARTS) + " |")
    print("| --- " * (len(PARTS) + 1) + "|")
    for cfg in configs:
        res = one_config(runner, blocks, cfg, model.vocab_size, args.iters)
        label = f"{cfg[0]}x{cfg[1]}, {cfg[2]}, {cfg[3]}"
        print(f"| {label} | " + " | ".join(f"{res[p]:.3f}" for p in PARTS) + " |", flush=True)


if __name__ == "__main__":
    main()
