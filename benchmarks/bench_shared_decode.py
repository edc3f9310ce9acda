"""Where a shared-prefix decode step's time goes (issue 17): the worker's ModelRunner on a
Qwen3-0.6B-shaped random model, G groups x R rows whose block tables share a P-token cached
prefix (as the radix tree hands them out), each row with Q tokens of its own.

Per variant, median over the timed steps: the step's wall time (launch + wait), its forward and
sample time (StepOutput), the host time of find_prefix_groups alone, and the kernels of one step
by device time (torch profiler). Variants: plain (graph replay), plain eager (no graph, no
grouping: separates launch cost from the grouped kernel), grouped (cascade, eager). Then decode
attention alone, plain vs grouped, per layer. The table last.

    python benchmarks/bench_shared_decode.py [--configs 16x16x2048x128,...]
        [--max-graph-batch-size 512]
    python benchmarks/bench_shared_decode.py --tiny   # CPU: checks the script end to end
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from stack_models import SHAPES
from worker_agreement import GREEDY, Blocks, step

from yaie.cli.models.random_model import write_random_model
from yaie.kernels.attention import decode_attention, decode_attention_grouped
from yaie.kernels.attention.prefix_groups import PrefixGroups
from yaie.worker_service.loader import load_model
from yaie.worker_service.protocol import NewRequestSpec, Plan, RunEntry
from yaie.worker_service.step import batch_builder
from yaie.worker_service.step.kv_pool import KVPool
from yaie.worker_service.step.prefix_groups import find_prefix_groups
from yaie.worker_service.step.runner import ModelRunner

TINY = dict(vocab_size=2048, tie_word_embeddings=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill_groups(runner, blocks, groups: int, rows: int, prefix: int, own: int, reserve: int, vocab):
    """Prefills groups x rows requests: a group's first row computes the prefix, the others reuse
    its blocks as a cache hit (num_cached_tokens = prefix). Returns the decode entries."""
    gen = torch.Generator().manual_seed(0)
    table, step_id = runner.new_table(), 0
    bs = runner.pool.block_size
    ids = 0
    for _g in range(groups):
        shared = torch.randint(0, vocab, (prefix,), generator=gen).tolist()
        prefix_blocks = blocks.take(prefix)
        new, run = [], []
        for r in range(rows):
            tokens = shared + torch.randint(0, vocab, (own,), generator=gen).tolist()
            mine = blocks.take(own + reserve)
            cached = 0 if r == 0 else prefix
            new.append(NewRequestSpec(ids, tokens, len(tokens), cached, GREEDY))
            run.append(RunEntry(ids, len(tokens) - cached, prefix_blocks + mine))
            ids += 1
            if r == 0:  # the prefix's K/V must exist before the others read it
                step_id += 1
                step(runner, table, step_id, new, run)
                new, run = [], []
        if run:
            step_id += 1
            step(runner, table, step_id, new, run)
    assert prefix % bs == 0
    return table, [RunEntry(i, 1, []) for i in range(ids)], step_id


def profile_step(runner, table, decode, step_id, label):
    if runner.device.type != "cuda":
        return step_id
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step_id += 1
        runner.launch(table, Plan(step_id, [], decode, [])).wait()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    count = sum(e.count for e in events)
    print(f"{label}: {count} kernels, {total / 1e3:.3f} ms of kernel time")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:10]:
        print(f"  {e.device_time_total / 1e3:8.3f} ms  x{e.count:4d}  {e.key[:90]}")
    return step_id


def host_grouping_ms(runner, table, decode) -> float:
    width = max(len(table.get(e.request_id).block_table) for e in decode)
    tables = table.blocks[[table.get(e.request_id).row for e in decode], :width]
    lens = [table.get(e.request_id).num_tokens for e in decode]
    bs = runner.pool.block_size
    min_blocks = -(-batch_builder.MIN_PREFIX_TOKENS // bs)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        groups = find_prefix_groups(
            tables,
            lens,
            bs,
            min_blocks,
            batch_builder.MIN_SAVED_TOKENS,
            min_group_saved=batch_builder.MIN_GROUP_SAVED_TOKENS,
        )
        times.append((time.perf_counter() - start) * 1e3)
    found = 0 if groups is None else len(groups.prefix_lens)
    print(f"host grouping: {len(decode)} rows -> {found} groups")
    return statistics.median(times)


def attention_alone(runner, table, decode, model, device, iters):
    """Decode attention of one layer on this step's block tables, plain vs grouped (median ms)."""
    pool = runner.pool
    states = [table.get(e.request_id) for e in decode]
    width = max(len(s.block_table) for s in states)
    tables = torch.from_numpy(table.blocks[[s.row for s in states], :width]).to(device)
    lens = torch.tensor([s.num_tokens + 1 for s in states], dtype=torch.int32, device=device)
    q = torch.randn(
        len(states), model.config.num_heads, model.head_dim, device=device, dtype=pool.cache.dtype
    )
    k, v = pool.cache[0, 0], pool.cache[0, 1]
    host = find_prefix_groups(
        table.blocks[[s.row for s in states], :width], lens.tolist(), pool.block_size, 1, 0
    )
    groups = PrefixGroups(
        *[
            torch.tensor(x, dtype=torch.int32, device=device)
            for x in (host.rows, host.starts, host.prefix_lens, host.kv_start)
        ]
    )
    scale = model.head_dim**-0.5
    plain = decode_attention(q, k, v, tables, lens, scale)
    grouped = decode_attention_grouped(q, k, v, tables, lens, scale, groups)
    err = (plain.float() - grouped.float()).abs().max().item()
    res = {}
    for name, fn in (
        ("plain", lambda: decode_attention(q, k, v, tables, lens, scale)),
        ("grouped", lambda: decode_attention_grouped(q, k, v, tables, lens, scale, groups)),
    ):
        times = []
        for _ in range(iters):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
        res[name] = statistics.median(times[3:])
    return res, err


VARIANTS = (  # label, cascade, graphs, the cost model's thresholds in force
    ("plain graph", False, True, True),
    ("plain eager", False, False, True),
    ("grouped eager", True, False, False),
    ("grouped graph", True, True, False),
    ("default (cost model)", True, True, True),
)


def one_config(runner, blocks, model, cfg, iters, profile: bool) -> list[str]:
    """Fills cfg = (groups, rows, prefix, own), times every variant (interleaved step by step, so
    that all see the same contexts as they grow), releases; returns table rows."""
    groups, rows, prefix, own = cfg
    reserve = (len(VARIANTS) + 1) * (iters + 3) + 8
    table, decode, step_id = fill_groups(
        runner, blocks, groups, rows, prefix, own, reserve, model.vocab_size
    )
    owned = [b for e in decode for b in table.get(e.request_id).block_table]
    names = ("MIN_PREFIX_TOKENS", "MIN_SAVED_TOKENS", "MIN_GROUP_SAVED_TOKENS")
    thresholds = [getattr(batch_builder, n) for n in names]
    graphs = runner.graphs
    times: dict[str, list[tuple[float, float, float]]] = {v[0]: [] for v in VARIANTS}
    for i in range(iters + 3):  # the first 3 rounds warm every variant up
        for label, cascade, use_graphs, cost_model in VARIANTS:
            runner.cascade, runner.graphs = cascade, graphs if use_graphs else None
            if not cost_model:  # group whatever shares a block: the raw grouped path
                for name, value in zip(names, (1, 0, 0), strict=True):
                    setattr(batch_builder, name, value)
            step_id += 1
            start = time.perf_counter()
            out = runner.launch(table, Plan(step_id, [], decode, [])).wait()
            wall = (time.perf_counter() - start) * 1e3
            assert not out.error and min(out.token_ids) >= 0
            if i >= 3:
                times[label].append((wall, out.forward_ms, out.sample_ms))
            if profile and i == iters + 2:
                step_id = profile_step(runner, table, decode, step_id, f"{cfg} {label}")
            for name, value in zip(names, thresholds, strict=True):
                setattr(batch_builder, name, value)
    runner.cascade, runner.graphs = True, graphs
    med = statistics.median
    result = []
    for label, samples in times.items():
        wall, fwd, smp = (med(column) for column in zip(*samples, strict=True))
        result.append(
            f"| {groups}x{rows}, prefix {prefix}, own {own} | {label} | {wall:.2f} | "
            f"{fwd:.2f} | {smp:.2f} |"
        )
    if profile:
        print(f"host find_prefix_groups: {host_grouping_ms(runner, table, decode):.3f} ms")
        att, err = attention_alone(runner, table, decode, model, runner.device, iters)
        print(
            f"attention alone, one layer: plain {att['plain']:.3f} ms, grouped "
            f"{att['grouped']:.3f} ms; max |plain - grouped| {err:.2e}"
        )
    step_id += 1
    step(runner, table, step_id, release=[e.request_id for e in decode])
    runner.close_table(table)
    blocks.give(sorted(set(owned)))
    return result


def build_runner(shape: dict, device, dtype, configs, reserve: int, args):
    """A Qwen3-shaped random model and a cascade ModelRunner whose pool holds every config
    (groups x rows x prefix x own, each row reserve more tokens); returns (model, runner,
    Blocks over the pool)."""
    model_dir = Path(tempfile.mkdtemp(prefix="bench-shared-")) / "model"
    write_random_model(model_dir, "Qwen3ForCausalLM", seed=0, dtype=dtype, **shape)
    model = load_model(str(model_dir), device, dtype, "auto")
    bs = 16
    per_row = -(-(max(c[3] for c in configs) + reserve) // bs)
    num_blocks = max(g * (pr // bs + r * per_row) for g, r, pr, _ in configs) + 64
    pool = KVPool(
        model.num_layers, model.num_kv_heads, model.head_dim, dtype, device, bs, num_blocks
    )
    runner = ModelRunner(
        model,
        pool,
        use_cuda_graphs=device.type == "cuda",
        max_graph_batch_size=args.max_graph_batch_size,
        cascade=True,
    )
    return model, runner, Blocks(bs, num_blocks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tiny", action="store_true")
    p.add_argument(
        "--configs",
        default="16x16x2048x128,4x4x2048x128,8x8x1024x128,8x8x2048x128,32x2x2048x128,"
        "8x2x1024x128,16x4x4096x256,64x4x2048x128",
        help="groups x rows x prefix x own, comma separated",
    )
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--max-graph-batch-size", type=int, default=256, help="as `yaie worker`'s")
    args = p.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    shape = TINY if args.tiny else SHAPES["qwen3-0.6b"][1]
    configs = [tuple(int(x) for x in c.split("x")) for c in args.configs.split(",")]
    if args.tiny:
        configs, args.iters = [(2, 3, 64, 8)], 4
    start = time.perf_counter()
    model, runner, blocks = build_runner(
        shape, device, dtype, configs, (len(VARIANTS) + 1) * (args.iters + 3) + 8, args
    )
    print(f"runner + graph capture (plain and grouped): {time.perf_counter() - start:.1f} s")
    rows = []
    for i, cfg in enumerate(configs):
        rows += one_config(runner, blocks, model, cfg, args.iters, profile=i == 0)
    print("| groups x rows, tokens | variant | step wall ms | forward ms | sample ms |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
