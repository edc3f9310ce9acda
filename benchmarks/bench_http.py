"""What the OpenAI-compatible HTTP API costs against gRPC: one stack (a worker, and a scheduler
serving both APIs), the nano-vllm `random` workload through gRPC and then through HTTP (a fresh
scheduler before each run: no prefix-cache hits from the other side), output tok/s and TTFT side
by side. `python benchmarks/bench_http.py` (GPU, Qwen3-0.6B shape, random weights), `--tiny`
(tiny model on the CPU: checks the script end to end).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import stack_launch
from bench_stack import NANO_VLLM, TINY, WARMUP
from stack_models import SHAPES, write_model

from yaie.cli import bench
from yaie.cli.bench.metrics import BenchMetrics, format_table

BACKENDS = ("yaie", "openai")  # gRPC, then HTTP, in each round
ROWS = (
    ("output tok/s", "output_throughput", "{:.0f}"),
    ("request/s", "request_throughput", "{:.2f}"),
    ("mean TTFT (ms)", "mean_ttft_ms", "{:.1f}"),
    ("median TTFT (ms)", "median_ttft_ms", "{:.1f}"),
    ("p99 TTFT (ms)", "p99_ttft_ms", "{:.1f}"),
    ("mean TPOT (ms)", "mean_tpot_ms", "{:.2f}"),
    ("mean ITL (ms)", "mean_itl_ms", "{:.2f}"),
    ("client CPU/frame (us)", "client_cpu_us_per_frame", "{:.1f}"),
    ("failed", "failed", "{}"),
)


def run_one(
    stack: stack_launch.Stack, backend: str, config: bench.BenchConfig, deadline: float
) -> BenchMetrics:
    """A fresh scheduler with both APIs on, the warm-up, then config through backend."""
    http_port = stack_launch.free_port()
    stack.start_scheduler(f"scheduler_{backend}", ["--http-port", str(http_port)])
    target = stack.target if backend == "yaie" else f"http://127.0.0.1:{http_port}"
    warmup = replace(WARMUP if config is NANO_VLLM else TINY["warmup"], backend=backend)
    bench.run_workload(target, warmup, timeout_s=max(deadline - time.monotonic(), 10))
    start = time.perf_counter()
    timeout = max(deadline - time.monotonic() - 5, 10)
    metrics, _ = bench.run_workload(target, replace(config, backend=backend), timeout_s=timeout)
    title = f"random via {backend} ({time.perf_counter() - start:.0f} s)"
    print(format_table(metrics, title), flush=True)
    return metrics


def side_by_side(runs: dict[str, list[dict]]) -> str:
    """Medians over rounds per backend, and HTTP / gRPC."""

    def median(backend: str, key: str) -> float:
        values = sorted(run[key] for run in runs[backend] if run[key] is not None)
        return values[len(values) // 2] if values else float("nan")

    lines = [f"{'':<24}{'gRPC':>12}{'HTTP':>12}{'HTTP/gRPC':>12}"]
    for label, key, fmt in ROWS:
        grpc_value, http_value = median("yaie", key), median("openai", key)
        ratio = http_value / grpc_value if grpc_value else float("nan")
        lines.append(
            f"{label:<24}{fmt.format(grpc_value):>12}{fmt.format(http_value):>12}{ratio:>12.3f}"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="qwen3-0.6b", choices=[s for s in SHAPES if s != "tiny"])
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU, tiny workload")
    p.add_argument("--budget-s", type=float, default=500.0, help="rounds that do not fit skip")
    p.add_argument("--rounds", type=int, default=1, help="gRPC-then-HTTP pairs (medians)")
    p.add_argument("--random-prompts", type=int, default=None, help="override the random size")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or None)
    p.add_argument("--worker-args", default="", help='worker flags: --worker-args="--flag ..."')
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shape, device = ("tiny", "cpu") if args.tiny else (args.shape, "cuda")
    config = TINY["random"] if args.tiny else NANO_VLLM
    if args.random_prompts:
        config = replace(config, num_prompts=args.random_prompts)
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_http_"))
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    model = write_model(shape, Path(tempfile.mkdtemp(prefix="bench_model_")), device)
    worker_args = (["--num-blocks", "512"] if args.tiny else []) + args.worker_args.split()
    stack = stack_launch.Stack(model, device, out, worker_args)
    runs: dict[str, list[dict]] = {backend: [] for backend in BACKENDS}
    round_s = 0.0
    try:
        print(f"worker ready in {stack.start_worker(min(400.0, args.budget_s)):.1f} s", flush=True)
        for index in range(args.rounds):
            if index and deadline - time.monotonic() < 1.2 * round_s:
                print(f"[skip] rounds {index + 1}..: a round takes ~{round_s:.0f} s")
                break
            start = time.monotonic()
            for backend in BACKENDS:
                runs[backend].append(run_one(stack, backend, config, deadline).to_dict())
            round_s = time.monotonic() - start
            (out / "bench_http.json").write_text(json.dumps(runs, indent=1) + "\n")
    finally:
        stack.stop()
    print(
        f"\nshape {shape} on {device}, random workload ({config.num_prompts} requests), "
        f"{len(runs['openai'])} round(s); results in {out}"
    )
    print(side_by_side(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
