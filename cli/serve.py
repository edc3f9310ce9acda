"""`yaie serve`: the one-command stack, a scheduler in this process and N worker child processes.

Workers listen on free local ports; the scheduler reports SERVING once every one has loaded the
model. Ctrl-C or SIGTERM stops the scheduler, then the workers; a worker that dies takes the
stack down. Children also get SIGTERM from the kernel if this process is killed outright, so
none is ever left behind. --demo PROMPT starts the stack, streams one generation and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys

logger = logging.getLogger("yaie.serve")
_PR_SET_PDEATHSIG = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="yaie serve", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None,
                   help="Hugging Face model directory or cached hub id (default: the built-in "
                        "random-weight model, written on first use)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="scheduler address to listen on")
    p.add_argument("--port", type=int, default=50051, help="scheduler port")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (one per GPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="worker weight dtype (auto | float32 | ...)")
    p.add_argument("--num-blocks", type=int, default=None, help="KV blocks per worker")
    p.add_argument("--max-queue", type=int, default=None, help="see yaie scheduler --help")
    p.add_argument("--demo", metavar="PROMPT", default=None,
                   help="stream one greedy generation of PROMPT once ready, then stop")  # fmt: skip
    p.add_argument("--demo-tokens", type=int, default=48, help="tokens the demo generates")
    p.add_argument("--log-level", default="INFO")
    return p


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends SIGTERM when the parent dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own shutdown still stops the children


def visible_gpus() -> list[str]:
    """CUDA_VISIBLE_DEVICES if set, else the GPUs nvidia-smi lists (none without a driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu for gpu in visible.split(",") if gpu.strip()]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU")]


def start_workers(args: argparse.Namespace, model: str) -> list[tuple[str, subprocess.Popen]]:
    gpus = visible_gpus() if args.workers > 1 and args.device != "cpu" else []
    workers = []
    for index in range(args.workers):
        port = free_port()
        command = [sys.executable, "-m", "yaie.worker_service", "--model", model,
                   "--host", "127.0.0.1", "--port", str(port), "--device", args.device,
                   "--dtype", args.dtype, "--log-level", args.log_level]  # fmt: skip
        if args.num_blocks:
            command += ["--num-blocks", str(args.num_blocks)]
        env = dict(os.environ)
        if gpus:  # one GPU per worker (round robin when there are more workers than GPUs)
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        # A session of its own: Ctrl-C reaches only us, and we stop the workers in order.
        process = subprocess.Popen(command, env=env, start_new_session=True,
                                   preexec_fn=_die_with_parent)  # fmt: skip
        logger.info("worker %d: pid %d on 127.0.0.1:%d", index, process.pid, port)
        workers.append((f"127.0.0.1:{port}", process))
    return workers


def stop_workers(workers: list[tuple[str, subprocess.Popen]], timeout_s: float = 15.0) -> None:
    for _, process in workers:
        if process.poll() is None:
            process.terminate()
    for address, process in workers:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("worker %s did not stop in %.0f s: killing it", address, timeout_s)
            process.kill()
            process.wait()


async def _watch_children(workers: list[tuple[str, subprocess.Popen]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for address, process in workers:
            if process.poll() is not None:
                logger.error("worker %s exited with code %d", address, process.returncode)
                stop.set()
                return
        await asyncio.sleep(0.5)


async def _when_ready(target: str, args: argparse.Namespace, stop: asyncio.Event) -> None:
    """Announces readiness; with --demo, streams the demo generation and then stops the stack."""
    from yaie.cli import generate
    from yaie.scheduler_service.__main__ import wait_for_serving

    await wait_for_serving(target, timeout_s=3600.0)
    if args.demo is None:
        logger.info('SERVING on %s: try  yaie generate --target %s "Hello"', target, target)
        return
    logger.info("SERVING on %s: streaming the demo generation", target)
    demo = [args.demo, "--max-new-tokens", str(args.demo_tokens), "--temperature", "0",
            "--skip-special-tokens"]  # fmt: skip
    request = generate.build_request(generate.build_parser().parse_args(demo))
    try:
        sys.stdout.write(args.demo)  # the prompt, then its continuation as it streams
        await asyncio.to_thread(generate.stream, target, request, sys.stdout)
    finally:
        stop.set()


async def run_stack(args: argparse.Namespace, model: str, workers: list) -> int:
    """The scheduler over the started workers, until a signal, a dead worker or the demo's end."""
    from yaie.scheduler_service import __main__ as scheduler

    argv = [a for w, _ in workers for a in ("--worker", w)]
    argv += ["--host", args.host, "--port", str(args.port), "--model", model]
    argv += ["--log-level", args.log_level]
    if args.max_queue:
        argv += ["--max-queue", str(args.max_queue)]
    stop = asyncio.Event()
    watch = asyncio.create_task(_watch_children(workers, stop))
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    ready = asyncio.create_task(_when_ready(f"{host}:{args.port}", args, stop))
    status = await scheduler.serve(scheduler.build_parser().parse_args(argv), stop)
    watch.cancel()
    if ready.done() and not ready.cancelled() and ready.exception() is not None:
        logger.error("demo failed: %s", ready.exception())
        status = status or 1
    ready.cancel()
    if any(process.poll() not in (None, 0) for _, process in workers):
        status = status or 1
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # fmt: skip
    if args.workers < 1:
        logger.error("--workers must be >= 1")
        return 2
    if args.port == 0:
        args.port = free_port(args.host)
    model = args.model
    if model is None:
        from yaie.cli.builtin_model import ensure_builtin_model

        model = str(ensure_builtin_model())
        logger.warning("no --model: serving the built-in model %s (RANDOM WEIGHTS: its text is "
                       "meaningless; pass --model for a real one)", model)  # fmt: skip
    # Fork the workers first, from the main thread, before gRPC or asyncio start any thread.
    workers = start_workers(args, model)
    try:
        return asyncio.run(run_stack(args, model, workers))
    except KeyboardInterrupt:
        return 130
    finally:
        stop_workers(workers)
