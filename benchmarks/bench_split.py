"""What the gRPC split costs (issue 5): the nano-vllm workload through (a) the split stack (`yaie
worker` + `yaie scheduler` processes) and (b) `yaie in-process` (the same worker driven in the
scheduler's process), alternating a/b/a/b on one random-weight model, one stack on the device at a
time. Prints each run's output tok/s, the medians and cost = 1 - split / in-process; then, as a
diagnostic of the GIL's share (outside the medians), one in-process run with a shorter GIL switch.
`python benchmarks/bench_split.py --shape qwen3-0.6b` (GPU), `... --tiny` (CPU: the plumbing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_stack
import stack_launch
import stack_models

from yaie.cli import bench

MODES = ("split", "in-process")
DIAGNOSTIC = "in-process@{}ms"  # in-process with --switch-interval-ms {}


class InProcessStack(stack_launch.Stack):
    """`yaie in-process`: the public API, the scheduler and the worker in one process."""

    def start(self, timeout_s: float) -> None:
        port = stack_launch.free_port()
        self.target = f"127.0.0.1:{port}"
        self.scheduler = self._spawn(
            "in_process",
            [
                "in-process",
                "--model",
                str(self.model),
                "--device",
                self.device,
                "--port",
                str(port),
                "--log-level",
                "WARNING",
                *self.worker_args,
            ],
        )
        self._wait(self.target, self.scheduler, timeout_s)


def start_stack(
    mode: str, model: Path, device: str, logs: Path, worker_args: list[str], timeout_s: float
) -> stack_launch.Stack:
    """The stack of mode, SERVING (a failed start stops what it had started)."""
    if mode == "split":
        stack = stack_launch.Stack(model, device, logs, worker_args)
    else:
        interval = mode.partition("@")[2].removesuffix("ms")  # the diagnostic's
        extra = ["--switch-interval-ms", interval] if interval else []
        stack = InProcessStack(model, device, logs, [*worker_args, *extra])
    try:
        if mode == "split":
            stack.start_worker(timeout_s)
            stack.start_scheduler("scheduler", [])
        else:
            stack.start(timeout_s)
    except BaseException:
        stack.stop()
        raise
    return stack


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(mode: str, stack: stack_launch.Stack, cfg: dict, timeout_s: float) -> dict:
    """The warm-up workload, then the measured one with each process's CPU seconds around it."""
    bench.run_workload(stack.target, cfg["warmup"], timeout_s=timeout_s)
    if mode == "split":
        pids = {"scheduler": stack.scheduler.pid, "worker": stack.worker.pid}
    else:
        pids = {"process": stack.scheduler.pid}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    metrics, _ = bench.run_workload(stack.target, cfg["random"], timeout_s=timeout_s)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    tokens = max(metrics.total_output_tokens, 1)
    return {
        "mode": mode,
        "output_tok_s": metrics.output_throughput,
        "completed": metrics.completed,
        "failed": metrics.failed,
        "duration_s": metrics.duration_s,
        "median_tpot_ms": metrics.median_tpot_ms,
        "median_ttft_ms": metrics.median_ttft_ms,
        "cpu_us_per_token": {name: 1e6 * s / tokens for name, s in cpu.items()},
        "cpu_share_of_wall": {name: s / metrics.duration_s for name, s in cpu.items()},
    }


def summary(runs: list[dict]) -> dict:
    medians = {}
    for mode in MODES:
        rates = [r["output_tok_s"] for r in runs if r["mode"] == mode]
        medians[mode] = statistics.median(rates) if rates else None
    split, whole = medians["split"], medians["in-process"]
    cost = 1 - split / whole if split and whole else None
    return {"median_output_tok_s": medians, "split_cost": cost}


def table(runs: list[dict], result: dict) -> str:
    lines = [
        f"{'run':<4}{'stack':<18}{'start s':>8}{'output tok/s':>14}{'done':>6}"
        f"{'TPOT ms':>9}{'TTFT ms':>9}  CPU us/token (share of wall)"
    ]
    for i, r in enumerate(runs, 1):
        cpu = ", ".join(
            f"{name} {us:.0f} ({r['cpu_share_of_wall'][name]:.2f})"
            for name, us in r["cpu_us_per_token"].items()
        )
        lines.append(
            f"{i:<4}{r['mode']:<18}{r['start_s']:>8.1f}{r['output_tok_s']:>14,.0f}"
            f"{r['completed']:>6}{r['median_tpot_ms'] or 0:>9.1f}"
            f"{r['median_ttft_ms'] or 0:>9.0f}  {cpu}"
        )
    for mode, rate in result["median_output_tok_s"].items():
        lines.append(f"median {mode}: " + (f"{rate:,.0f} output tok/s" if rate else "not run"))
    cost = result["split_cost"]
    verdict = "-" if cost is None else ("PASS" if cost <= 0.05 else "FAIL")
    shown = "-" if cost is None else f"{100 * cost:+.1f}%"
    lines.append(f"split's cost = 1 - split / in-process = {shown} (bar <= 5%: {verdict})")
    whole = result["median_output_tok_s"]["in-process"]
    for r in runs:
        if "@" in r["mode"] and whole:
            lines.append(
                f"diagnostic {r['mode']} (GIL switch interval, not in the medians): "
                f"{r['output_tok_s'] / whole:.2f}x the in-process median"
            )
    return "\n".join(lines)


def device_name(device: str) -> str:
    """Without touching CUDA here: this process must leave the GPU's memory to the stacks."""
    if device != "cuda":
        return "cpu"
    query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    try:
        return subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "cuda (nvidia-smi not found)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes = [s for s in stack_models.SHAPES if s != "tiny"]
    p.add_argument("--shape", default="qwen3-0.6b", choices=shapes)
    p.add_argument("--tiny", action="store_true", help="tiny model on the CPU, tiny workload")
    p.add_argument("--runs", type=int, default=2, help="runs of each stack (alternating)")
    p.add_argument(
        "--switch-diagnostic-ms",
        type=float,
        default=0.5,
        help="GIL switch interval of the diagnostic run (0: none)",
    )
    p.add_argument("--budget-s", type=float, default=380.0, help="runs that do not fit skip")
    p.add_argument("--out-dir", default=os.environ.get("OUT") or None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    shape, device = ("tiny", "cpu") if args.tiny else (args.shape, "cuda")
    cfg = dict(random=bench_stack.NANO_VLLM, warmup=bench_stack.WARMUP)
    if args.tiny:
        cfg = {name: bench_stack.TINY[name] for name in ("random", "warmup")}
    worker_args = ["--num-blocks", "512"] if args.tiny else []
    out = Path(args.out_dir or tempfile.mkdtemp(prefix="bench_split_"))
    out.mkdir(parents=True, exist_ok=True)
    model = stack_models.write_model(shape, Path(tempfile.mkdtemp(prefix="bench_model_")), device)
    runs: list[dict] = []
    result = {"shape": shape, "device": device_name(device), "runs": runs, **summary(runs)}
    modes = list(MODES * args.runs)
    if args.switch_diagnostic_ms > 0:
        modes.append(DIAGNOSTIC.format(args.switch_diagnostic_ms))
    for mode in modes:
        need = 1.2 * max((r["start_s"] + r["total_s"] for r in runs), default=0.0)
        left = deadline - time.monotonic()
        if left < need:
            print(f"[skip] a {mode} run: {left:.0f} s left, the last ones took ~{need:.0f}")
            continue
        start = time.perf_counter()
        stack = start_stack(mode, model, device, out, worker_args, min(400.0, left))
        started = time.perf_counter()
        try:
            run = measure(mode, stack, cfg, max(10.0, deadline - time.monotonic()))
        finally:
            stack.stop()
        run.update(start_s=started - start, total_s=time.perf_counter() - started)
        runs.append(run)
        print(
            f"run {len(runs)} ({mode}): {run['output_tok_s']:,.0f} output tok/s, "
            f"{run['completed']} done",
            flush=True,
        )
        result.update(summary(runs))
        (out / "bench_split.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nshape {shape} on {result['device']}; results in {out}")
    print(table(runs, result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
