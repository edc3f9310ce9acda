"""The scheduler process's CPU cost per generated token, on the CPU, with no GPU.

Three processes: a FakeWorker (tests/scheduler_service/fake_worker.py, cheap_next_token: a step
costs O(batch)), the real scheduler (`yaie.scheduler_service.__main__.main`: public gRPC server +
Engine) and this one, the load generator (`yaie.cli.bench`). The scheduler's CPU time is read
from /proc/PID/stat around each run. `--profile` adds one run with the scheduler under cProfile
(enabled and dumped by signals, so startup is left out).

    python benchmarks/bench_scheduler_cpu.py --repeats 3 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def run_worker(port: int, vocab_size: int) -> None:
    """Child process: a cheap FakeWorker on port until SIGTERM."""
    sys.path.insert(0, str(HERE.parent / "tests" / "scheduler_service"))
    from fake_worker import FakeWorkerConfig, start_fake_worker

    config = FakeWorkerConfig(
        vocab_size=vocab_size,
        max_context=4096,
        num_blocks=65536,  # the shared-prefix workload's 1,024 requests fit without preemption
        block_size=16,
        cheap_next_token=True,
    )

    async def serve() -> None:
        handle = await start_fake_worker(config, port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await handle.stop()

    asyncio.run(serve())


def run_scheduler(profile_path: str, interval: int | None, argv: list[str]) -> int:
    """Child process: the scheduler; SIGUSR1 starts cProfile, SIGUSR2 stops it and dumps it.
    interval: the scheduler's --stream-interval (1: one frame per token at any load)."""
    import cProfile

    from yaie.scheduler_service.__main__ import main

    if interval is not None:
        argv = [*argv, "--stream-interval", str(interval)]

    profiler = cProfile.Profile()
    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())

    def dump(*_: object) -> None:
        profiler.disable()
        profiler.dump_stats(profile_path)

    signal.signal(signal.SIGUSR2, dump)
    return main(argv)


def write_tokenizer(root: Path, vocab_size: int) -> Path:
    """The built-in BPE tokenizer with every id up to vocab_size given a text (cover_vocab), so
    the detokenizer sees real text for every id the fake worker emits."""
    from stack_models import cover_vocab

    from yaie.cli.models.random_model import write_tokenizer as write

    write(root, model_max_length=4096)
    cover_vocab(root, vocab_size)
    return root


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args])


def one_run(target: str, pids: dict[str, int], config, profile: bool = False) -> dict:
    from yaie.cli import bench

    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    if profile:
        os.kill(pids["scheduler"], signal.SIGUSR1)
    metrics, _ = bench.run_workload(target, config, timeout_s=300)
    if profile:
        os.kill(pids["scheduler"], signal.SIGUSR2)
        time.sleep(1.0)  # the dump runs in the scheduler's signal handler
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    tokens = metrics.total_output_tokens
    return {
        "ok": metrics.completed,
        "failed": metrics.failed,
        "tok_s": metrics.output_throughput,
        "sched_us": 1e6 * cpu["scheduler"] / max(tokens, 1),
        "worker_us": 1e6 * cpu["worker"] / max(tokens, 1),
        "client_us": metrics.client_cpu_us_per_frame * metrics.num_frames / max(tokens, 1),
        "frames_tok": metrics.num_frames / max(tokens, 1),
        "itl_ms": metrics.median_itl_ms,
        "ttft_ms": metrics.median_ttft_ms,
        "tokens": tokens,
    }


def wait_serving(target: str, worker: bool = False) -> None:
    from yaie.scheduler_service.app import wait_for_serving

    asyncio.run(wait_for_serving(target, 60.0, worker=worker))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=200)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile")
    parser.add_argument(
        "--shared", action="store_true", help="the shared-prefix workload (1,024 requests at once)"
    )
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--stream-interval",
        type=int,
        default=None,
        help="the scheduler --stream-interval of this run",
    )
    parser.add_argument("--role", choices=["worker", "scheduler"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-path", default="", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role == "worker":
        run_worker(args.worker_port, args.vocab)
        return 0
    if args.role == "scheduler":
        return run_scheduler(args.profile_path, args.stream_interval, rest)

    from yaie.cli import bench

    tmp = Path(tempfile.mkdtemp(prefix="bench-sched-cpu-"))
    tokenizer = write_tokenizer(tmp / "tokenizer", args.vocab)
    worker_port, sched_port = free_port(), free_port()
    worker_addr, target = f"127.0.0.1:{worker_port}", f"127.0.0.1:{sched_port}"
    profile_path = tmp / "scheduler.prof"
    procs = {
        "worker": start(
            ["--role", "worker", "--worker-port", str(worker_port), "--vocab", str(args.vocab)]
        )
    }
    try:
        wait_serving(worker_addr, worker=True)
        interval = (
            [] if args.stream_interval is None else [f"--stream-interval={args.stream_interval}"]
        )
        procs["scheduler"] = start(
            [
                "--role",
                "scheduler",
                "--profile-path",
                str(profile_path),
                *interval,
                "--worker",
                worker_addr,
                "--port",
                str(sched_port),
                "--model",
                str(tokenizer),
                "--log-level=WARNING",
            ]
        )
        wait_serving(target)
        pids = {name: p.pid for name, p in procs.items()}
        config = bench.BenchConfig(
            "fixed",
            args.requests,
            fixed_input_len=args.input_len,
            fixed_output_len=args.output_len,
            seed=0,
            disable_progress=True,
        )
        if args.shared:  # bench_stack's shared-prefix stage (64 x 16, 2,048 + 128, 256 out)
            config = bench.BenchConfig("shared-prefix", seed=0, disable_progress=True)
        warm = bench.BenchConfig(
            "fixed", 32, fixed_input_len=16, fixed_output_len=16, seed=5, disable_progress=True
        )
        one_run(target, pids, warm)
        rows = []
        for i in range(args.repeats):
            rows.append((f"run {i + 1}", one_run(target, pids, config)))
        if args.profile:
            rows.append(("cProfile", one_run(target, pids, config, profile=True)))
    finally:
        for proc in reversed(procs.values()):
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print_table(rows, args)
    if args.profile and profile_path.exists():
        print(f"\nscheduler cProfile (top {args.top} by cumulative time; run 'cProfile' above):")
        pstats.Stats(str(profile_path)).sort_stats("cumulative").print_stats(args.top)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def print_table(rows: list[tuple[str, dict]], args: argparse.Namespace) -> None:
    print(
        f"\n{args.requests} requests at once, {args.input_len} in / {args.output_len} out, "
        f"vocab {args.vocab}, stream interval {args.stream_interval or 'default'}, "
        f"load average {os.getloadavg()[0]:.2f} (2 cores shared)"
    )
    head = (
        "run",
        "ok",
        "out tok/s",
        "sched CPU us/tok",
        "worker us/tok",
        "client us/tok",
        "frames/tok",
        "median ITL ms",
    )
    print(" | ".join(head))
    for name, r in rows:
        print(
            f"{name} | {r['ok']}/{r['ok'] + r['failed']} | {r['tok_s']:,.0f} | "
            f"{r['sched_us']:.1f} | {r['worker_us']:.1f} | {r['client_us']:.1f} | "
            f"{r['frames_tok']:.3f} | {r['itl_ms']:.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
