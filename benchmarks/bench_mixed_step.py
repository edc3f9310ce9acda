"""A mixed step of a shared-prefix workload (issue 17): G groups x R decode rows over a P-token
cached prefix (O tokens of their own each) plus one request prefilling N new tokens, as every
admission under load is. Times the step with the decode rows' prefix groups (cascade) against
the same step with plain decode attention for them, and the decode-only step beside both.

Each timed mixed step admits a fresh request (its own blocks, two sets used in turn) and
releases the previous one; the decode rows grow by one token per step in every variant alike
(variants interleave step by step). Median host wall (launch + wait), forward_ms and launch_ms.

    python benchmarks/bench_mixed_step.py [--configs 16x16x2048x128,32x16x2048x128] [--new 128]
    python benchmarks/bench_mixed_step.py --tiny   # CPU: checks the script end to end
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_shared_decode import TINY, build_runner, fill_groups
from stack_models import SHAPES
from worker_agreement import GREEDY, step

from yaie.worker_service.protocol import NewRequestSpec, Plan, RunEntry
from yaie.worker_service.step import batch_builder

VARIANTS = ("decode only", "mixed, grouped", "mixed, plain")


def one_config(runner, blocks, cfg, new_tokens: int, iters: int, vocab: int) -> list[str]:
    groups, rows, prefix, own = cfg
    reserve = len(VARIANTS) * (iters + 3) + 8
    table, decode, step_id = fill_groups(runner, blocks, groups, rows, prefix, own, reserve, vocab)
    owned = [b for e in decode for b in table.get(e.request_id).block_table]
    block_sets = [blocks.take(new_tokens), blocks.take(new_tokens)]
    gen = torch.Generator().manual_seed(1)
    next_id, live = len(decode), None
    times: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    found: list = []  # what find_prefix_groups returned for the step (the groups it ran with)
    real = batch_builder.find_prefix_groups
    batch_builder.find_prefix_groups = lambda *a: found.append(real(*a)) or found[-1]
    num_groups = {}
    for i in range(iters + 3):  # the first 3 rounds warm every variant up
        for label in VARIANTS:
            runner.cascade = label != "mixed, plain"
            new, run = [], list(decode)
            if label != "decode only":
                prompt = torch.randint(0, vocab, (new_tokens,), generator=gen).tolist()
                new = [NewRequestSpec(next_id, prompt, new_tokens, 0, GREEDY)]
                run.append(RunEntry(next_id, new_tokens, block_sets[next_id % 2]))
            release = [live] if live is not None else []
            step_id += 1
            start = time.perf_counter()
            out = runner.launch(table, Plan(step_id, new, run, release)).wait()
            wall = (time.perf_counter() - start) * 1e3
            assert not out.error and not out.request_errors, (out.error, out.request_errors)
            num_groups[label] = len(found[-1].prefix_lens) if found and found[-1] else 0
            found.clear()
            live = next_id if new else None
            next_id += bool(new)
            if i >= 3:
                times[label].append((wall, out.forward_ms, out.launch_ms))
    runner.cascade = True
    batch_builder.find_prefix_groups = real
    step_id += 1
    done = [e.request_id for e in decode] + ([live] if live is not None else [])
    step(runner, table, step_id, release=done)
    runner.close_table(table)
    blocks.give(sorted(set(owned)))
    for ids in block_sets:
        blocks.give(ids)
    med = statistics.median
    result = []
    for label, samples in times.items():
        wall, fwd, launch = (med(column) for column in zip(*samples, strict=True))
        result.append(
            f"| {groups}x{rows}, {prefix} + {own}, new {new_tokens} | {label} "
            f"({num_groups[label]} groups) | {wall:.2f} | {fwd:.2f} | {launch:.2f} |"
        )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--configs", default="16x16x2048x128,32x16x2048x128")
    p.add_argument("--new", type=int, default=128, help="prompt tokens of the admitted request")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--max-graph-batch-size", type=int, default=512, help="as `yaie worker`'s")
    args = p.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    shape = TINY if args.tiny else SHAPES["qwen3-0.6b"][1]
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    if args.tiny:
        configs, args.iters, args.new = [(2, 3, 64, 8)], 3, 16
    reserve = len(VARIANTS) * (args.iters + 3) + 8 + 2 * args.new
    model, runner, blocks = build_runner(shape, device, dtype, configs, reserve, args)
    rows = []
    for cfg in configs:
        rows += one_config(runner, blocks, cfg, args.new, args.iters, model.vocab_size)
    print("| groups x rows, prefix + own | step | wall ms | forward ms | launch ms |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
