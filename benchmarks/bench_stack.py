"""The whole stack on a GPU (issue 5): a random-weight model of a real shape served by a worker
and a scheduler process, driven over gRPC by yaie bench's functions; transformers' continuous
batching on a subset of the same workload; copy bandwidth, matmul rate and decode rooflines; one
table with each bar of the issue. `python benchmarks/bench_stack.py --shape qwen3-0.6b` (GPU),
`... --tiny` (tiny model on the CPU, tiny workloads: checks the script end to end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import stack_launch
import stack_parallel
import stack_variants
import torch
from stack_models import SHAPES, write_model
from stack_report import bar_rows, table

from yaie.cli import bench
from yaie.cli.bench import datasets as ds
from yaie.cli.bench.metrics import format_table

QUIET = dict(disable_progress=True)
NANO_VLLM = bench.BenchConfig("random", 256, 1024, 1024, ds.NANO_VLLM_RANGE_RATIO, seed=0, **QUIET)
SGLANG_8B = bench.BenchConfig("random", 500, 4096, 2048, 0.0, seed=0, **QUIET)
SHARED = bench.BenchConfig("shared-prefix", seed=0, **QUIET)  # 64 x 16, 2048 + 128, 256
# 64 conversations x 8 turns: system 1024, question 128, answer 128 (prompts 1152 -> 2944)
MULTITURN = bench.BenchConfig("multi-turn", seed=0, **QUIET)
LIGHT = bench.BenchConfig(
    "fixed", 30, fixed_input_len=128, fixed_output_len=256, request_rate=1.0, seed=0, **QUIET
)
WARMUP = bench.BenchConfig("random", 64, 1024, 16, 0.05, seed=99, **QUIET)
TINY = dict(
    random=bench.BenchConfig("random", 16, 64, 32, 0.25, seed=0, **QUIET),
    shared=replace(
        SHARED,
        gsp_num_groups=4,
        gsp_prompts_per_group=4,
        gsp_system_prompt_len=64,
        gsp_question_len=16,
        gsp_output_len=16,
    ),
    light=replace(LIGHT, num_prompts=4, fixed_input_len=32, fixed_output_len=16, request_rate=4.0),
    multiturn=replace(
        MULTITURN,
        mt_num_conversations=4,
        mt_turns=4,
        mt_system_prompt_len=64,
        mt_question_len=16,
        mt_output_len=16,
    ),
    warmup=replace(WARMUP, num_prompts=4, random_input_len=32),
)


def _median_s(fn, n: int) -> float:
    """Median seconds of fn on the GPU (CUDA events), the first 3 runs left out as warm-up."""
    times = []
    for _ in range(n):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times[3:])[len(times[3:]) // 2]


def ceilings(device: str) -> tuple[float, float]:
    """(copy bytes/s counting read + write, of 1 GiB; bf16 matmul FLOP/s, 8192^3), medians."""
    if device != "cuda":
        return 20e9, 0.5e12  # nominal CPU figures: --tiny only checks the plumbing
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    copy = 2 * src.numel() / _median_s(lambda: dst.copy_(src), 23)
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    matmul = 2 * 8192**3 / _median_s(lambda: torch.matmul(a, b), 13)
    return copy, matmul


class Runner:
    """Runs stages against a deadline and keeps every result (printed, and JSON under out)."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out, self.deadline, self.results = out, time.monotonic() + budget_s, {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def workload(self, name: str, target: str, config: bench.BenchConfig, need_s: float) -> None:
        if self.left() < need_s:
            print(f"[skip] {name}: {self.left():.0f} s left, needs ~{need_s:.0f}")
            return
        start = time.perf_counter()
        metrics, _ = bench.run_workload(target, config, timeout_s=max(self.left() - 5, 10))
        print(format_table(metrics, f"{name} ({time.perf_counter() - start:.0f} s)"), flush=True)
        self.results[name] = metrics.to_dict()
        self.save()

    def save(self) -> None:
        (self.out / "bench_stack.json").write_text(json.dumps(self.results, indent=1) + "\n")


def run_hf(model: Path, config: bench.BenchConfig, vocab: int, n: int, device: str, left: float):
    """transformers' continuous batching on the first n requests of the workload, in a child
    process (it frees the GPU when done and can be killed at the deadline)."""
    requests = bench.make_requests(config, vocab)[:n]
    job = {
        "model": str(model),
        "device": device,
        "limit_s": left - 15,
        "requests": [[r.prompt_ids, r.output_len] for r in requests],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    command = [sys.executable, str(Path(__file__).with_name("stack_hf.py")), f.name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=left)
    except subprocess.TimeoutExpired:
        return {"error": f"killed at the deadline after {left:.0f} s"}
    finally:
        os.unlink(f.name)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode or not lines:
        return {"error": f"exit {done.returncode}: {done.stderr[-2000:]}"}
    return json.loads(lines[-1])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="qwen3-0.6b", choices=[s for s in SHAPES if s != "tiny"])
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU, tiny workloads")
    p.add_argument("--budget-s", type=float, default=500.0, help="stages that do not fit skip")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or None)
    p.add_argument(
        "--skip",
        default="",
        help="comma list of: random,light,shared,multiturn,hf (a stage's runs with and without "
        "the prefix cache), nocache (every run on the --no-prefix-cache scheduler)",
    )
    p.add_argument("--hf-prompts", type=int, default=64, help="transformers runs this subset")
    p.add_argument("--random-prompts", type=int, default=None, help="override the random size")
    p.add_argument("--worker-args", default="", help='worker flags: --worker-args="--flag ..."')
    p.add_argument(
        "--variants",
        default="",
        help="the random workload again per scheduler flag set, each traced: "
        '"name=--flag v ...;name2=..."',
    )
    p.add_argument(
        "--shared-variants",
        default="",
        help="the shared-prefix workload again per scheduler flag set (after nocache), traced",
    )
    p.add_argument(
        "--parallel-sampling",
        action="store_true",
        help="also: n = 8 completions of 64 prompts vs the 512 as single requests "
        "(benchmarks/stack_parallel.py)",
    )
    p.add_argument(
        "--diagnose",
        action="store_true",
        help="also run the random workload with one frame per request, and again "
        "with the scheduler under cProfile (top functions printed)",
    )
    p.add_argument(
        "--profile",
        choices=["random", "shared"],
        default=None,
        help="run this workload last on a fresh scheduler under cProfile (top functions "
        "printed, the step trace kept); --diagnose implies random",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shape_name = "tiny" if args.tiny else args.shape
    device = "cpu" if args.tiny else "cuda"
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_stack_"))
    out.mkdir(parents=True, exist_ok=True)
    runner = Runner(out, args.budget_s)
    scale = 0.0 if args.tiny else 1.0  # the seconds each stage needs (to skip what cannot fit)
    random_cfg = SGLANG_8B if shape_name == "llama-3.1-8b" else NANO_VLLM
    cfg = dict(random=random_cfg, shared=SHARED, light=LIGHT, multiturn=MULTITURN, warmup=WARMUP)
    if args.tiny:
        cfg = TINY
    if args.random_prompts:
        cfg["random"] = replace(cfg["random"], num_prompts=args.random_prompts)
    ceil = ceilings(device)
    torch.cuda.empty_cache()  # the worker sizes its KV pool from the free memory
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f"device {name}: copy {ceil[0] / 1e12:.2f} TB/s (read + write), "
        f"bf16 matmul {ceil[1] / 1e12:.0f} TFLOP/s",
        flush=True,
    )
    model = write_model(shape_name, Path(tempfile.mkdtemp(prefix="bench_model_")), device)
    worker_args = ["--num-blocks", "512"] if args.tiny else []
    stack = stack_launch.Stack(model, device, out, worker_args + args.worker_args.split())
    try:
        print(f"worker ready in {stack.start_worker(min(400.0, runner.left())):.1f} s", flush=True)
        default_trace = stack_variants.start_traced(stack, "default", [], out)
        info = asyncio.run(bench.model_info(stack.target))
        kv_tokens = kv_capacity(stack.target) * info.block_size
        print(
            f"serving {info.architecture} {info.dtype}, vocab {info.vocab_size}, "
            f"KV pool {kv_tokens} tokens",
            flush=True,
        )
        runner.workload("warmup", stack.target, cfg["warmup"], 0)
        stages = [("random", 60), ("light", 40), ("shared", 80), ("multiturn", 60)]
        for name, need in stages:
            # the cache's workloads start on a fresh scheduler (an empty tree), as nocache does:
            # after random's requests the same stage measured 10-25% apart from call to call
            trace = None
            fits = name not in skip and runner.left() > need * scale
            if name in ("shared", "multiturn") and fits:
                trace = stack_variants.start_traced(stack, name, [], out)
            if name not in skip:
                runner.workload(name, stack.target, cfg[name], need * scale)
            if name == "random":
                stack_variants.report("default", default_trace, runner.results)
            elif trace is not None:
                stack_variants.report(name, trace, runner.results)
            if name == "random" and args.diagnose:
                # another seed: the same prompts again would be prefix-cache hits
                single = replace(cfg[name], single_frame=True, seed=cfg[name].seed + 1)
                runner.workload("random_single_frame", stack.target, single, need * scale)
        if args.variants:
            stack_variants.run(stack, runner, cfg["random"], args.variants, out, 60 * scale)
        if args.parallel_sampling:
            parallel = stack_parallel.PARALLEL_TINY if args.tiny else stack_parallel.PARALLEL
            stack_parallel.run(stack, runner, parallel, out, 60 * scale)
        # the cache's workloads again on a fresh --no-prefix-cache scheduler
        nocache = [(n, need) for n, need in (("shared", 100), ("multiturn", 60)) if n not in skip]
        if "nocache" not in skip and nocache and runner.left() > (nocache[0][1] + 20) * scale:
            stack.start_scheduler("scheduler_nocache", ["--no-prefix-cache"])
            for name, need in nocache:
                runner.workload(f"{name}_nocache", stack.target, cfg[name], need * scale)
        if args.shared_variants:
            spec = args.shared_variants
            stack_variants.run(stack, runner, cfg["shared"], spec, out, 80 * scale, "shared")
        profiled = args.profile or ("random" if args.diagnose else None)
        if profiled and runner.left() > 90 * scale:
            profile = out / "scheduler.prof"
            stack_variants.start_traced(stack, "profiled", [], out, profile=profile)
            runner.workload(f"{profiled}_profiled", stack.target, cfg[profiled], 60 * scale)
            stack.stop_scheduler()
            stack_variants.report("profiled", out / "trace_profiled.jsonl", runner.results)
            print_profile(profile, f"{profiled}_profiled")
    finally:
        stack.stop()
    if "hf" not in skip and runner.left() > 60 * scale:
        n = min(args.hf_prompts, cfg["random"].num_prompts)
        hf = run_hf(model, cfg["random"], info.vocab_size, n, device, runner.left() - 5)
        runner.results["hf"] = hf
        print(f"transformers continuous batching, {n} prompts: {hf}", flush=True)
    runner.results["ceilings"] = {"copy_bytes_s": ceil[0], "matmul_flop_s": ceil[1]}
    rows = bar_rows(runner.results, shape_name, cfg, info, ceil, kv_tokens)
    runner.results["table"] = rows
    runner.save()
    print(f"\nshape {shape_name} on {device}; results in {out}")
    print(table(rows))
    return 0


def print_profile(path: Path, stage: str, top: int = 30) -> None:
    import pstats

    if path.exists():
        print(f"\nscheduler profile (cProfile, during {stage}), top {top} by own time:")
        stats = pstats.Stats(str(path), stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)


def kv_capacity(target: str) -> int:
    import grpc

    from yaie.v1 import generation_pb2 as pb
    from yaie.v1 import generation_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stats = generation_pb2_grpc.GenerationStub(channel).GetServerStats(
            pb.GetServerStatsRequest()
        )
    return sum(worker.total_blocks for worker in stats.workers)


if __name__ == "__main__":
    sys.exit(main())
