"""The scheduler's and the client's CPU cost of the OpenAI HTTP API against gRPC, on the CPU:
bench_scheduler_cpu.py's FakeWorker (a step costs ~nothing), one scheduler serving both APIs, and
gRPC / HTTP runs interleaved (the machine is shared: medians of the pairs). `--py-spy DIR` adds
one HTTP run with py-spy recording the scheduler and this client (collapsed stacks in DIR).

    python benchmarks/bench_http_cpu.py --repeats 3 --py-spy /tmp/spy
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bench_scheduler_cpu import free_port, one_run, start, wait_serving, write_tokenizer

from yaie.cli import bench

BACKENDS = ("yaie", "openai")
KEYS = ("tok_s", "sched_us", "client_us", "frames_tok", "ttft_ms")


def spy(pid: int, path: Path) -> subprocess.Popen:
    """py-spy recording pid until it is interrupted (SIGINT writes its stacks)."""
    # A venv's py-spy sits beside its python, which may not be on PATH.
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    command = [exe, "record", "--pid", str(pid), "--output", str(path), "--rate", "100"]
    command += ["--format", "raw"]  # collapsed stacks: one line per stack, then its count
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def spied_run(target: str, pids: dict[str, int], config: bench.BenchConfig, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    spies = [spy(pids["scheduler"], out / "scheduler.txt"), spy(os.getpid(), out / "client.txt")]
    try:
        return one_run(target, pids, config)
    finally:
        for proc in spies:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--input-len", type=int, default=1000)
    p.add_argument("--output-len", type=int, default=300)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stream-interval", type=int, default=None)
    p.add_argument("--py-spy", default="", help="DIR: one more HTTP run under py-spy")
    p.add_argument("--cprofile", choices=BACKENDS, help="one more run, the scheduler profiled")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-http-cpu-"))
    tokenizer = write_tokenizer(tmp / "tokenizer", args.vocab)
    worker_port, grpc_port, http_port = free_port(), free_port(), free_port()
    worker_addr = f"127.0.0.1:{worker_port}"
    targets = {"yaie": f"127.0.0.1:{grpc_port}", "openai": f"http://127.0.0.1:{http_port}"}
    worker = ["--role", "worker", "--worker-port", str(worker_port), "--vocab", str(args.vocab)]
    procs = {"worker": start(worker)}
    try:
        wait_serving(worker_addr, worker=True)
        interval = (
            [] if args.stream_interval is None else ["--stream-interval", f"{args.stream_interval}"]
        )
        profile = tmp / "scheduler.prof"
        scheduler = ["--role", "scheduler", "--profile-path", str(profile), *interval]
        scheduler += ["--worker", worker_addr, "--port", str(grpc_port), "--http-port"]
        scheduler += [str(http_port), "--model", str(tokenizer), "--log-level=WARNING"]
        procs["scheduler"] = start(scheduler)
        wait_serving(targets["yaie"])
        pids = {name: proc.pid for name, proc in procs.items()}
        config = bench.BenchConfig(
            "fixed",
            args.requests,
            fixed_input_len=args.input_len,
            fixed_output_len=args.output_len,
            disable_progress=True,
        )
        for backend in BACKENDS:  # warm-up: connections, code paths, caches
            warm = replace(config, num_prompts=32, fixed_output_len=16, backend=backend, seed=99)
            one_run(targets[backend], pids, warm)
        rows: list[tuple[str, dict]] = []
        for i in range(args.repeats):
            for backend in BACKENDS:  # a new seed per run: no prefix-cache hits between runs
                run = replace(config, backend=backend, seed=2 * i + (backend == "openai"))
                rows.append((backend, one_run(targets[backend], pids, run)))
        if args.py_spy:
            run = replace(config, backend="openai", seed=1000)
            rows.append(
                ("openai+py-spy", spied_run(targets["openai"], pids, run, Path(args.py_spy)))
            )
        if args.cprofile:
            run = replace(config, backend=args.cprofile, seed=1001)
            rows.append(("cProfile", one_run(targets[args.cprofile], pids, run, profile=True)))
    finally:
        for proc in reversed(procs.values()):
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            proc.wait(timeout=20)
    report(rows, args)
    if args.cprofile and profile.exists():
        pstats.Stats(str(profile)).sort_stats("tottime").print_stats(30)
    return 0


def report(rows: list[tuple[str, dict]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.requests} requests at once, {args.input_len} in / {args.output_len} out, "
        f"load average {os.getloadavg()[0]:.2f} (2 cores shared)"
    )
    head = "run | ok | out tok/s | sched us/tok | sched ms/req | client ms/req | client us/frame"
    print(head + " | frames/tok | median TTFT ms")
    for name, r in rows:
        per_frame = r["client_us"] / max(r["frames_tok"], 1e-9)
        requests = max(r["ok"] + r["failed"], 1)
        per_request = r["sched_us"] * r["tokens"] / 1e3 / requests
        client_request = r["client_us"] * r["tokens"] / 1e3 / requests
        print(
            f"{name} | {r['ok']}/{r['ok'] + r['failed']} | {r['tok_s']:,.0f} | "
            f"{r['sched_us']:.1f} | {per_request:.2f} | {client_request:.2f} | {per_frame:.1f} | "
            f"{r['frames_tok']:.3f} | {r['ttft_ms']:.0f}"
        )
    for backend in BACKENDS:
        runs = [r for name, r in rows if name == backend]
        if not runs:
            continue
        medians = {key: sorted(r[key] for r in runs)[len(runs) // 2] for key in KEYS}
        spread = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in ("sched_us",)}
        print(
            f"median {backend}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in medians.items())
            + f" (sched_us range {spread['sched_us'][0]:.1f}-{spread['sched_us'][1]:.1f})"
        )


if __name__ == "__main__":
    sys.exit(main())
