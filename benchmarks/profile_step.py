"""Where a worker step's time goes, on a random model of a real shape (GPU): the ModelRunner's
steps of a light load (batch-1 decode pipelined two deep, a 128-token prefill on an idle worker,
the same prefill beside one decode) timed on the host, traced with torch.profiler (CUDA runtime
calls by total host time, GPU busy share of the window, the longest GPU idle gaps), and run once
under torch.cuda.set_sync_debug_mode to name every call that makes the host wait for the GPU.

`python benchmarks/profile_step.py --shape qwen3-0.6b [--trace-dir DIR]` (chrome traces, gzip).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from stack_models import write_model
from torch.profiler import ProfilerActivity, profile
from worker_agreement import GREEDY, Blocks, step

from yaie.cli.models.random_model import write_random_model
from yaie.worker_service.loader import load_model
from yaie.worker_service.protocol import NewRequestSpec, Plan, RunEntry
from yaie.worker_service.step.kv_pool import KVPool
from yaie.worker_service.step.mixed_graphs import DEFAULT_MAX_TOKENS as MIXED_MAX_TOKENS
from yaie.worker_service.step.runner import ModelRunner

BLOCK = 16


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Light:
    """One long-lived decoding request (request 0) and short prefills beside it."""

    def __init__(self, runner: ModelRunner, blocks: Blocks, vocab: int, context: int) -> None:
        self.runner, self.blocks, self.vocab = runner, blocks, vocab
        self.table = runner.new_table()
        self.step_id, self.next_id = 0, 1
        self.gen = torch.Generator().manual_seed(0)
        self.context = context

    def plan(self, new=(), run=(), release=()) -> Plan:
        self.step_id += 1
        return Plan(self.step_id, list(new), list(run), list(release))

    def prompt(self, n: int) -> list[int]:
        return torch.randint(0, self.vocab, (n,), generator=self.gen).tolist()

    def start_decoder(self) -> None:
        taken = self.blocks.take(self.context + 1024)
        spec = NewRequestSpec(0, self.prompt(self.context), self.context, 0, GREEDY)
        self.step_id += 1
        step(self.runner, self.table, self.step_id, [spec], [RunEntry(0, self.context, taken)])

    def decode_plan(self) -> Plan:
        return self.plan(run=[RunEntry(0, 1, [])])

    def prefill_plan(self, n: int, with_decode: bool) -> tuple[Plan, int, list[int]]:
        rid, self.next_id = self.next_id, self.next_id + 1
        taken = self.blocks.take(n + 1)
        run = [RunEntry(0, 1, [])] if with_decode else []
        run.append(RunEntry(rid, n, taken))
        return self.plan([NewRequestSpec(rid, self.prompt(n), n, 0, GREEDY)], run), rid, taken

    def finish(self, rid: int, taken: list[int]) -> None:
        self.step_id += 1
        step(self.runner, self.table, self.step_id, release=[rid])
        self.blocks.give(taken)


def decode_steps(light: Light, steps: int) -> list[float]:
    """steps pipelined decodes (plan N+1 launched before result N is read): host ms of each
    launch()."""
    launches, pending = [], None
    for _ in range(steps):
        start = time.perf_counter()
        nxt = light.runner.launch(light.table, light.decode_plan())
        launches.append((time.perf_counter() - start) * 1e3)
        if pending is not None:
            pending.wait()
        pending = nxt
    pending.wait()
    return launches


def prefill_steps(light: Light, steps: int, n: int, with_decode: bool) -> list[tuple]:
    """steps prefills of n tokens on a quiet GPU, each launched and waited alone: per step the
    host ms of launch() and of wait(), and the step's forward/sample ms (CUDA events)."""
    times = []
    for _ in range(steps):
        sync()
        plan, rid, taken = light.prefill_plan(n, with_decode)
        start = time.perf_counter()
        pending = light.runner.launch(light.table, plan)
        launched = time.perf_counter()
        out = pending.wait()
        done = time.perf_counter()
        assert not out.error and not out.request_errors, out
        times.append(
            ((launched - start) * 1e3, (done - launched) * 1e3, out.forward_ms, out.sample_ms)
        )
        light.finish(rid, taken)
    return times


def sync_points(run) -> list[str]:
    """The calls under run() that synchronize with the GPU, each with the last frames of its
    Python stack (torch.cuda.set_sync_debug_mode warns on each)."""
    found: dict[str, int] = {}
    original = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-2] if "warnings" not in f.filename]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in frames[-5:][::-1])
        key = f"{str(message).splitlines()[0][:60]} at {where}"
        found[key] = found.get(key, 0) + 1

    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = original
    return [f"{count} x {key}" for key, count in found.items()]


def report(prof, label: str, wall_ms: float, trace_dir: Path | None) -> None:
    """CUDA runtime calls by host time, the GPU's busy share, its longest idle gaps."""
    events = prof.events()
    api = {}
    kernels = []
    for e in events:
        name = e.name
        if e.device_type == torch.autograd.DeviceType.CPU and name.startswith(("cuda", "cu")):
            total, count, longest = api.get(name, (0.0, 0, 0.0))
            dur = e.time_range.elapsed_us()
            api[name] = (total + dur, count + 1, max(longest, dur))
        elif e.device_type == torch.autograd.DeviceType.CUDA:
            kernels.append((e.time_range.start, e.time_range.end))
    print(f"\n{label}: wall {wall_ms:.2f} ms")
    print("  CUDA API call                       count   host ms   longest us")
    for name, (total, count, longest) in sorted(api.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"  {name[:34]:34s} {count:6d} {total / 1e3:9.3f} {longest:10.1f}")
    ops = [
        e
        for e in prof.key_averages()
        if e.device_type == torch.autograd.DeviceType.CPU and not e.key.startswith(("cu", "cuda"))
    ]
    print(
        "  top host ops by self time: "
        + ", ".join(
            f"{e.key} {e.count}x {e.self_cpu_time_total / 1e3:.2f}ms"
            for e in sorted(ops, key=lambda e: -e.self_cpu_time_total)[:10]
        )
    )
    if kernels:
        kernels.sort()
        busy, gaps, end = 0.0, [], kernels[0][0]
        first = kernels[0][0]
        for s, e in kernels:
            if s > end:
                gaps.append((s - end, end - first))
            busy += max(0.0, e - max(s, end))
            end = max(end, e)
        span = end - first
        print(
            f"  GPU: {len(kernels)} device ops, busy {busy / 1e3:.3f} of {span / 1e3:.3f} ms "
            f"({busy / max(span, 1e-9):.0%}); longest idle gaps (us at ms into the window): "
            + ", ".join(f"{g:.0f}@{t / 1e3:.2f}" for g, t in sorted(gaps, reverse=True)[:6])
        )
    if trace_dir is not None:
        raw = trace_dir / f"{label}.json"
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as src, gzip.open(f"{raw}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()


def graph_launch_costs(runner: ModelRunner) -> None:
    """Host time of replay() of the batch-1 decode graph: on an idle GPU, behind a sleep
    kernel, right behind a replay of itself, and right behind a replay of a second capture of the
    same forward (does a graph wait for its own previous launch?)."""
    graphs = runner.graphs
    assert graphs is not None
    first = graphs.graphs[1]
    second = torch.cuda.CUDAGraph()
    with torch.inference_mode():
        with torch.cuda.graph(second, pool=first.pool()):
            graphs.model.forward(graphs._static_batch(1), graphs.kv_cache, graphs.kv_scales)
    cases = {
        "idle GPU": lambda: None,
        "behind a 2 ms sleep": lambda: torch.cuda._sleep(2_000_000),
        "behind itself": first.replay,
        "behind the second capture": second.replay,
    }
    for name, before in cases.items():
        times = []
        for _ in range(30):
            sync()
            before()
            start = time.perf_counter()
            first.replay()
            times.append((time.perf_counter() - start) * 1e3)
        sync()
        print(f"  batch-1 decode graph replay(), {name}: {statistics.median(times):.3f} ms host")


def host_profile(run, label: str) -> None:
    """cProfile of run(), by cumulative time."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    body = text.getvalue()
    print(f"\n{label}: host profile by cumulative time")
    print(body[body.find("ncalls") :].rstrip())


def timings(light: Light, prefill: int) -> None:
    """Pipelined batch-1 decode; prefills alone and beside the decode, each on a quiet GPU."""
    launches = decode_steps(light, 200)
    sync()
    start = time.perf_counter()
    decode_steps(light, 200)
    sync()
    period = (time.perf_counter() - start) / 200 * 1e3
    print(
        f"  batch-1 decode, pipelined: {period:.3f} ms a step, launch() host median "
        f"{statistics.median(launches):.3f} ms (p90 {sorted(launches)[180]:.3f})"
    )
    for with_decode in (False, True):
        times = prefill_steps(light, 20, prefill, with_decode)
        cols = [statistics.median(t[i] for t in times) for i in range(4)]
        print(
            f"  prefill {prefill}{' + 1 decode' if with_decode else ''}: launch() "
            f"{cols[0]:.3f} ms, wait() {cols[1]:.3f} ms, forward {cols[2]:.3f} ms, sample "
            f"{cols[3]:.3f} ms (events), launch+wait {cols[0] + cols[1]:.3f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="qwen3-0.6b")
    parser.add_argument("--context", type=int, default=1024, help="the decoding request's prompt")
    parser.add_argument("--prefill", type=int, default=128)
    parser.add_argument("--trace-dir", type=Path, default=None)
    parser.add_argument(
        "--compare", action="store_true", help="also time a runner without whole-step graphs"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (a check)")
    args = parser.parse_args()
    if args.trace_dir is not None:
        args.trace_dir.mkdir(parents=True, exist_ok=True)
    cuda = not args.tiny
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    root = Path(tempfile.mkdtemp(prefix="profile-step-"))
    if cuda:
        model_dir = write_model(args.shape, root, "cuda")
    else:
        model_dir = write_random_model(root / "tiny", "Qwen3ForCausalLM", seed=0, dtype=dtype)
        args.context, args.prefill = 64, 16
    model = load_model(str(model_dir), device, dtype, "auto")
    num_blocks = 2048

    def make_light(mixed_tokens: int) -> Light:
        pool = KVPool(
            model.num_layers, model.num_kv_heads, model.head_dim, dtype, device, BLOCK, num_blocks
        )
        start = time.perf_counter()
        reserved = torch.cuda.memory_reserved() if cuda else 0
        runner = ModelRunner(
            model, pool, cuda, max_graph_batch_size=256, max_mixed_graph_tokens=mixed_tokens
        )
        grown = (torch.cuda.memory_reserved() - reserved) / 2**20 if cuda else 0.0
        print(f"runner + graph capture {time.perf_counter() - start:.1f} s, +{grown:.0f} MiB")
        light = Light(runner, Blocks(BLOCK, num_blocks - 1), model.vocab_size, args.context)
        light.start_decoder()
        decode_steps(light, 50)  # warm
        prefill_steps(light, 3, args.prefill, False)
        prefill_steps(light, 3, args.prefill, True)
        return light

    variants = {"whole-step graphs": MIXED_MAX_TOKENS}
    if args.compare:
        variants["piecewise only"] = 0
    for label, mixed_tokens in reversed(variants.items()):
        light = make_light(mixed_tokens)
        print(f"{label}:")
        timings(light, args.prefill)
    runner = light.runner
    print("\nsynchronizing calls (set_sync_debug_mode):" if cuda else "")
    scenarios = {
        "decode": lambda: decode_steps(light, 4),
        "prefill": lambda: prefill_steps(light, 2, args.prefill, False),
        "mixed": lambda: prefill_steps(light, 2, args.prefill, True),
    }
    for name, run in scenarios.items() if cuda else ():
        found = sync_points(run)
        print(f"  {name}: {len(found)} distinct")
        for line in found:
            print(f"    {line}")

    if cuda:
        print("\ngraph launch host cost:")
        graph_launch_costs(runner)
    for name in ("prefill", "mixed"):
        host_profile(scenarios[name], name)
    for name, run in scenarios.items():
        sync()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            run()
            sync()
            wall = (time.perf_counter() - start) * 1e3
        report(prof, name, wall, args.trace_dir)


if __name__ == "__main__":
    main()
