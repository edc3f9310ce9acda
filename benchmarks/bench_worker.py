"""The worker's ModelRunner on a Qwen3-0.6B-shaped random model: greedy agreement with
transformers over 64 steps, and decode step time at batch 1/64/256 x 1k contexts next to its
roofline. `python benchmarks/bench_worker.py` (GPU); `... --tiny` (a quick CPU check)."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from stack_models import SHAPES
from worker_agreement import GREEDY, Blocks, agreement, step

from yaie.cli.models.random_model import write_random_model
from yaie.worker_service.loader import load_model
from yaie.worker_service.protocol import NewRequestSpec, Plan, RunEntry
from yaie.worker_service.step.kv_pool import KVPool
from yaie.worker_service.step.runner import ModelRunner

QWEN3_0_6B = SHAPES["qwen3-0.6b"][1]  # the real checkpoint's shape, weights random
TINY = dict(vocab_size=2048, tie_word_embeddings=True)  # write_random_model's own tiny shape


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """Bytes/s of a large device-to-device copy, counting bytes read + written (median of 20)."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(23):
        sync(device)
        start = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * nbytes / statistics.median(times[3:])


def timed_decode(runner, blocks, batch: int, context: int, warmup: int, iters: int, vocab: int):
    """Prefills batch requests, then times production decode steps: lock-step (launch + wait),
    pipelined (launch N+1 before wait N), and the bare graph replay. Mean seq_len ~ context."""
    device = runner.device
    prompt_len = context - warmup - iters // 2 - 1  # the timed steps read ~context tokens
    gen = torch.Generator().manual_seed(batch)
    table = runner.new_table()
    step_id = 0
    chunk = max(1, 16384 // prompt_len)  # requests per prefill step
    owned: list[int] = []
    for first in range(0, batch, chunk):
        ids = range(first, min(batch, first + chunk))
        new = [
            NewRequestSpec(
                i,
                torch.randint(0, vocab, (prompt_len,), generator=gen).tolist(),
                prompt_len,
                0,
                GREEDY,
            )
            for i in ids
        ]
        taken = [blocks.take(prompt_len + warmup + 2 * iters + 40) for _ in ids]
        owned += [b for t in taken for b in t]
        run = [RunEntry(i, prompt_len, t) for i, t in zip(ids, taken, strict=True)]
        step_id += 1
        step(runner, table, step_id, new, run)
    decode = [RunEntry(i, 1, []) for i in range(batch)]
    for _ in range(warmup):
        step_id += 1
        step(runner, table, step_id, run=decode)
    seq_start = table.get(0).num_tokens  # every request has the same length
    walls, device_ms, launches = [], [], []
    for _ in range(iters):
        step_id += 1
        start = time.perf_counter()
        pending = runner.launch(table, Plan(step_id, [], decode, []))
        launched = time.perf_counter()
        out = pending.wait()
        walls.append(time.perf_counter() - start)
        launches.append(launched - start)
        device_ms.append(out.forward_ms + out.sample_ms)
        assert not out.error and min(out.token_ids) >= 0
    sync(device)
    start = time.perf_counter()
    pending = None
    for _ in range(iters):
        step_id += 1
        nxt = runner.launch(table, Plan(step_id, [], decode, []))
        if pending is not None:
            pending.wait()
        pending = nxt
    pending.wait()
    pipelined = (time.perf_counter() - start) / iters
    step_id = host_checks(runner, table, decode, step_id, batch)
    replay = None
    if runner.graphs is not None:
        graph = runner.graphs.graphs[batch]
        times = []
        for _ in range(iters):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        replay = statistics.median(times)
        profile_replay(graph, batch)
    step_id += 1
    step(runner, table, step_id, release=range(batch))
    blocks.give(owned)
    mean_seq = seq_start + (iters - 1) / 2 + 1  # seq_len the lock-step steps read, on average
    return dict(
        wall=statistics.median(walls) * 1e3,
        device=statistics.median(device_ms),
        launch=statistics.median(launches) * 1e3,
        pipelined=pipelined * 1e3,
        replay=replay,
        mean_seq=mean_seq,
    )


def host_checks(runner, table, decode, step_id: int, batch: int) -> int:
    """Does launch() block on the device (launched behind a ~25 ms sleep kernel)? And where the
    host time of 20 lock-step steps goes (cProfile, by own time)."""
    import cProfile
    import io
    import pstats

    if runner.device.type == "cuda":
        torch.cuda.synchronize()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        torch.cuda._sleep(50_000_000)
        end.record()
        start = time.perf_counter()
        pending = runner.launch(table, Plan(step_id + 1, [], decode, []))
        launch = (time.perf_counter() - start) * 1e3
        pending.wait()
        print(
            f"batch {batch}: launch() behind a {begin.elapsed_time(end):.1f} ms sleep kernel "
            f"took {launch:.3f} ms on the host"
        )
        step_id += 1
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        step_id += 1
        runner.launch(table, Plan(step_id, [], decode, [])).wait()
    profiler.disable()
    for order, lines in (("tottime", 25), ("cumulative", 40)):
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats(order).print_stats(lines)
        body = text.getvalue()
        print(f"batch {batch}: host profile of 20 lock-step steps (by {order}):")
        print(body[body.find("ncalls") :].rstrip())
    return step_id


def profile_replay(graph, batch: int) -> None:
    """The kernels of one graph replay, by total device time (where the step's time goes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    total = sum(e.device_time_total for e in events)
    count = sum(e.count for e in events)
    print(f"graph replay batch {batch}: {count} kernels, {total / 1e3:.3f} ms of kernel time")
    for e in sorted(events, key=lambda e: -e.device_time_total)[:14]:
        print(f"  {e.device_time_total / 1e3:8.3f} ms  x{e.count:4d}  {e.key[:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a check)")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--steps", type=int, default=64, help="greedy steps compared")
    parser.add_argument("--iters", type=int, default=50, help="timed decode steps per batch")
    parser.add_argument(
        "--skinny-rows",
        type=int,
        default=None,
        help="rows up to which linear layers take the skinny Triton kernel (0: cuBLAS for all)",
    )
    parser.add_argument(
        "--decode-order",
        choices=("on", "off"),
        default="on",
        help="decode attention over the rows longest first (off: in the batch's order)",
    )
    args = parser.parse_args()
    if args.decode_order == "off":  # an A/B knob, read by decode_attention at each call
        import yaie.kernels.attention as attention

        attention.DECODE_ORDER_MIN_BATCH = 1 << 30
    if args.skinny_rows is not None:  # an A/B knob, read by the dispatch at each call
        import yaie.kernels.linear.triton_skinny as skinny

        skinny.DISPATCH_ROWS = args.skinny_rows
    device = torch.device("cpu" if args.tiny else "cuda")
    shape = TINY if args.tiny else QWEN3_0_6B
    dtype = torch.float32 if args.tiny else torch.bfloat16
    context = 64 if args.tiny else args.context
    batches = [1, 4, 8] if args.tiny else [int(b) for b in args.batches.split(",")]

    copy_bw = copy_bandwidth(device, (64 if args.tiny else 1024) * 2**20)
    print(f"copy bandwidth (read + write): {copy_bw / 1e12:.3f} TB/s")
    model_dir = Path(tempfile.mkdtemp(prefix="bench-worker-")) / "qwen3-0.6b-random"
    start = time.perf_counter()
    write_random_model(model_dir, "Qwen3ForCausalLM", seed=0, dtype=dtype, **shape)
    print(f"wrote {model_dir} in {time.perf_counter() - start:.1f} s")
    model = load_model(str(model_dir), device, dtype, "auto")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    elt = torch.empty((), dtype=dtype).element_size()
    kv_token_bytes = model.num_layers * 2 * model.num_kv_heads * model.head_dim * elt
    block_size = 16
    per_request = -(-(context + args.iters * 2 + 48) // block_size)
    num_blocks = max(batches) * per_request + 8 * -(-(513 + args.steps) // block_size) + 16
    pool = KVPool(
        model.num_layers, model.num_kv_heads, model.head_dim, dtype, device, block_size, num_blocks
    )
    start = time.perf_counter()
    runner = ModelRunner(model, pool, use_cuda_graphs=device.type == "cuda")
    print(
        f"weights {weight_bytes / 1e9:.4f} GB, KV {kv_token_bytes} B/token, pool {num_blocks} "
        f"blocks; runner + graph capture {time.perf_counter() - start:.1f} s"
    )
    blocks = Blocks(block_size, num_blocks)

    rows, tau, total = agreement(runner, blocks, model_dir, device, args.steps, model.vocab_size)
    # The same check on an untied variant: its lm_head (std 2/sqrt(hidden), write_random_model)
    # gives small logits with many near-ties, a harder test than the tied model's.
    untied_dir = model_dir.parent / "untied"
    write_random_model(
        untied_dir,
        "Qwen3ForCausalLM",
        seed=0,
        dtype=dtype,
        **{**shape, "tie_word_embeddings": False},
    )
    untied = load_model(str(untied_dir), device, dtype, "auto")
    untied_pool = KVPool(
        untied.num_layers,
        untied.num_kv_heads,
        untied.head_dim,
        dtype,
        device,
        block_size,
        8 * -(-(513 + 2 * args.steps) // block_size) + 16,
    )
    untied_runner = ModelRunner(untied, untied_pool, device.type == "cuda", max_graph_batch_size=8)
    untied_blocks = Blocks(block_size, untied_pool.num_blocks)
    print("untied variant:")
    rows2, tau2, _ = agreement(
        untied_runner, untied_blocks, untied_dir, device, args.steps, untied.vocab_size
    )
    del untied, untied_pool, untied_runner
    if device.type == "cuda":
        torch.cuda.empty_cache()

    results = []
    for b in batches:
        r = timed_decode(runner, blocks, b, context, 8, args.iters, model.vocab_size)
        read = weight_bytes + b * model.config.hidden_size * elt  # + B embedding rows
        read += b * r["mean_seq"] * kv_token_bytes
        r.update(batch=b, bytes=read, roofline=read / copy_bw * 1e3)
        results.append(r)
        print(f"batch {b}: {r}")

    print(
        f"\nagreement over {total} greedy steps (8 prompts x {args.steps}), reference "
        f"transformers fp32, tie threshold {tau:.4f}:"
    )
    for name, (agreed, ties, bad) in rows.items():
        print(f"  {name:19s} agreed {agreed}/{total}, ties {ties}, true mismatches {bad}")
    print(f"untied variant, tie threshold {tau2:.4f}:")
    for name, (agreed, ties, bad) in rows2.items():
        print(f"  {name:19s} agreed {agreed}/{total}, ties {ties}, true mismatches {bad}")
    print(
        f"\ndecode step, context ~{context}, copy {copy_bw / 1e12:.3f} TB/s, weights "
        f"{weight_bytes / 1e9:.3f} GB"
    )
    print(
        "| batch | bytes read (GB) | roofline ms | graph replay ms | step device ms | launch host "
        "ms | step wall ms (launch+wait) | pipelined ms/step | roofline/replay | roofline/wall | "
        "roofline/pipelined |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        replay = r["replay"] if r["replay"] is not None else float("nan")
        print(
            f"| {r['batch']} | {r['bytes'] / 1e9:.3f} | {r['roofline']:.3f} | {replay:.3f} | "
            f"{r['device']:.3f} | {r['launch']:.3f} | {r['wall']:.3f} | {r['pipelined']:.3f} | "
            f"{r['roofline'] / replay:.0%} | {r['roofline'] / r['wall']:.0%} | "
            f"{r['roofline'] / r['pipelined']:.0%} |"
        )


if __name__ == "__main__":
    main()
