"""`yaie serve`: the one-command stack, a scheduler in this process and N worker child processes.

Workers listen on free local ports (remote ones join with --worker HOST:PORT); the scheduler
reports SERVING once every one has loaded the model. Ctrl-C or SIGTERM drains the scheduler, then
stops the workers. A worker that dies before the stack is SERVING takes it down; later, it is
restarted on its port and rejoins (its requests finish on the other workers meanwhile).
Children also get SIGTERM from the kernel if this process is killed outright, so none is ever
left behind. --demo [QUESTION] starts the stack, streams one greedy answer and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable

from yaie.cli import arguments, stop_signals, worker_child
from yaie.cli.models.builtin_model import MODEL_NAME
from yaie.cli.models.model_choice import ModelUnavailable, served_model
from yaie.scheduler_service.ops import flags
from yaie.scheduler_service.ops.logs import setup_logging
from yaie.worker_service.python_child import module_command

logger = logging.getLogger("yaie.serve")
_PR_SET_PDEATHSIG = 1
DEMO_QUESTION = "What is the capital of France?"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yaie serve",
        description=__doc__.splitlines()[0],
        formatter_class=arguments.DefaultsFormatter,
    )
    p.add_argument(
        "--revision", default=None, help="branch, tag or commit of a hub --model (default: main)"
    )
    p.add_argument("--workers", type=int, default=1, help="local worker processes (one per GPU)")
    p.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (GPUs) per worker")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--dtype", default="auto", help="worker weight dtype (auto | float32 | ...)")
    p.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp8_e4m3"],
        help="worker KV pool dtype: auto (the model's), or fp8_e4m3 (about twice the tokens)",
    )
    p.add_argument(
        "--num-blocks",
        type=int,
        default=None,
        help="KV blocks per worker (default: as many as its memory budget holds)",
    )
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="workers in batch-invariant mode: a request's logits (so its seeded tokens) do not "
        "depend on the rest of the batch, its chunking or prefix-cache hits (slower)",
    )
    p.add_argument(
        "--demo",
        metavar="QUESTION",
        nargs="?",
        const=DEMO_QUESTION,
        default=None,
        help="once ready, stream the greedy answer to QUESTION (a chat message; "
        f"plain text for a model without a chat template), then stop "
        f"(QUESTION left out: {DEMO_QUESTION!r})",
    )
    p.add_argument("--demo-tokens", type=int, default=48, help="most tokens the demo generates")
    remote = "a remote worker to use as well (repeatable)"
    flags.add_worker_arguments(p, required=False, help=remote)
    # The scheduler's own flags, as `yaie scheduler` takes them. Without --internal-secret-file,
    # one is made for this run (in memory, inherited by the workers: worker_child.py).
    model_help = (
        "Hugging Face model directory or hub id (downloaded unless cached) "
        f"(default: the built-in {MODEL_NAME}, fetched and converted on first use)"
    )
    demo_quiet = (
        " (default: INFO; WARNING with --demo, so that log lines do not break into the answer)"
    )
    flags.add_scheduler_arguments(p, model_help, log_level=(None, demo_quiet))
    return p


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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


def start_workers(
    args: argparse.Namespace, model: str, workers: list[tuple[str, subprocess.Popen]]
) -> None:
    """Appends each started worker to workers, so a failure part-way still stops the others."""
    gpus = visible_gpus() if _gpus_used(args) else []
    for index in range(args.workers):
        port = free_port()
        process = spawn_worker(args, model, port, _gpu_set(gpus, index, args.tp))
        logger.info("worker %d: pid %d on 127.0.0.1:%d", index, process.pid, port)
        workers.append((f"127.0.0.1:{port}", process))


def _gpus_used(args: argparse.Namespace) -> bool:
    """Whether each local worker gets a GPU of its own."""
    return args.workers > 1 and args.device != "cpu"


def _gpu_set(gpus: list[str], index: int, tp: int) -> str | None:
    """CUDA_VISIBLE_DEVICES of worker index: tp GPUs of its own (round robin past the last)."""
    if not gpus:
        return None
    return ",".join(gpus[(index * tp + rank) % len(gpus)] for rank in range(tp))


def spawn_worker(
    args: argparse.Namespace, model: str, port: int, gpu: str | None
) -> subprocess.Popen:
    """One worker child process on 127.0.0.1:port (on GPU gpu alone, when given), in a session
    of its own (Ctrl-C reaches only us, and we stop the workers in order), that the kernel stops
    when we die. The child sets that parent-death signal itself before exec'ing the worker: a
    preexec_fn is unsafe once this process runs threads (torch's import starts some)."""
    command = module_command(
        "yaie.worker_service",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--kv-cache-dtype",
        args.kv_cache_dtype,
        "--log-level",
        args.log_level,
        "--log-format",
        args.log_format,  # one format for the whole stack's stderr
    )
    if args.num_blocks:
        command += ["--num-blocks", str(args.num_blocks)]
    if args.deterministic:
        command.append("--deterministic")
    if args.tp > 1:  # the child is rank 0 of a group: it starts and stops the other ranks
        command += ["--tp", str(args.tp)]
    if args.internal_secret_file:  # the worker refuses plans without it
        command += ["--internal-secret-file", args.internal_secret_file]
    # Only what a worker reads (not $YAIE_API_KEY); one GPU per worker (round robin).
    env = worker_child.worker_environment(os.environ, gpu)
    trampoline = [sys.executable, "-c", _EXEC_WITH_PDEATHSIG, str(os.getpid())]
    return subprocess.Popen(
        trampoline + command[1:],
        env=env,
        start_new_session=True,
        pass_fds=worker_child.inherited_fds(args.internal_secret_file),  # a /dev/fd/N secret
    )


# Run as `python -c CODE PARENT_PID ARGS...`: ask for SIGTERM when the parent dies (Linux), exit
# if the parent is already gone (it died before the request took effect), then exec ARGS.
_EXEC_WITH_PDEATHSIG = f"""
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM)
except (OSError, AttributeError):
    pass  # not Linux: the parent's own shutdown still stops its children
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


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


async def _watch_children(
    workers: list[tuple[str, subprocess.Popen]],
    stop: asyncio.Event,
    serving: asyncio.Event,
    restart: Callable[[str], subprocess.Popen],
) -> None:
    """Before the stack is SERVING, a dead worker stops it (a bad model or flag); afterwards it
    is restarted on its port (after a delay that doubles while it keeps dying) and rejoins."""
    delays: dict[str, float] = {}
    while not stop.is_set():
        for index, (address, process) in enumerate(workers):
            if process.poll() is None:
                continue
            logger.error("worker %s exited with code %d", address, process.returncode)
            if not serving.is_set():
                stop.set()
                return
            delay = delays.get(address, 1.0)
            delays[address] = min(2 * delay, 60.0)
            await asyncio.sleep(delay)
            if stop.is_set():
                return
            workers[index] = (address, restart(address))
            logger.warning("worker %s restarted: pid %d", address, workers[index][1].pid)
        await asyncio.sleep(0.5)


async def _when_ready(
    target: str,
    args: argparse.Namespace,
    stop: asyncio.Event,
    serving: asyncio.Event,
    scheduler_serving: asyncio.Event,
) -> None:
    """Announces readiness (the scheduler in this process says SERVING: no probe over the
    public port, so public mTLS needs no client certificate here); with --demo, streams the
    demo generation and then stops the stack."""
    await scheduler_serving.wait()
    serving.set()
    if args.demo is None:
        logger.info('SERVING on %s: try  yaie generate --target %s "Hello"', target, target)
        return
    logger.info("SERVING on %s: streaming the demo generation", target)
    try:
        # The question, then its answer as it streams: stdout holds nothing else.
        sys.stdout.write(f"{args.demo}\n")
        sys.stdout.flush()
        await asyncio.to_thread(_stream_demo, target, args)
    finally:
        stop.set()


def _stream_demo(target: str, args: argparse.Namespace) -> None:
    """The demo's greedy answer: to a chat message, or to plain text when the model has no
    chat template (the server refuses messages then, before generating anything)."""
    import grpc

    from yaie.cli import generate

    demo = [
        args.demo,
        "--chat",
        "--max-new-tokens",
        str(args.demo_tokens),
        "--temperature",
        "0",
        "--skip-special-tokens",
    ]
    request = generate.build_request(generate.build_parser().parse_args(demo))
    try:
        generate.stream(target, request, sys.stdout, False, None, _client(args))
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.INVALID_ARGUMENT or "chat template" not in str(
            error.details()
        ):
            raise
        request.text = args.demo  # the oneof: replaces the messages
        generate.stream(target, request, sys.stdout, False, None, _client(args))


def _client(args: argparse.Namespace) -> argparse.Namespace:
    """client_security flags for the demo's call to the stack (trusts the server's own cert)."""
    return argparse.Namespace(api_key_file=args.api_key_file, tls_ca=args.tls_cert)


async def run_stack(args: argparse.Namespace, model: str, workers: list) -> int:
    """The scheduler over the started workers, until a signal, a dead worker or the demo's end."""
    from yaie.scheduler_service.app import serve

    # The scheduler takes our flags as they are (ops/flags.py), with the workers and the model.
    scheduler_args = argparse.Namespace(**vars(args))
    scheduler_args.worker = [w for w, _ in workers] + args.worker
    scheduler_args.model = model
    stop, serving = asyncio.Event(), asyncio.Event()

    def restart(address: str) -> subprocess.Popen:
        index = [w for w, _ in workers].index(address)
        gpus = visible_gpus() if _gpus_used(args) else []
        gpu = _gpu_set(gpus, index, args.tp)
        return spawn_worker(args, model, int(address.rsplit(":", 1)[1]), gpu)

    watch = asyncio.create_task(_watch_children(workers, stop, serving, restart))
    noted = asyncio.create_task(stop_signals.stopping_once(stop))
    host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    scheduler_serving = asyncio.Event()
    ready = asyncio.create_task(
        _when_ready(f"{host}:{args.port}", args, stop, serving, scheduler_serving)
    )
    status = await serve(scheduler_args, stop, serving=scheduler_serving)
    stop_signals.stopping()  # serve() may also have returned on a failed start (stop unset)
    watch.cancel()
    noted.cancel()
    if ready.done() and not ready.cancelled() and ready.exception() is not None:
        logger.error("demo failed: %s", ready.exception())
        status = status or 1
    ready.cancel()
    # A worker dead before the stack was SERVING failed it; later deaths were restarts.
    if not serving.is_set() and any(process.poll() not in (None, 0) for _, process in workers):
        status = status or 1
    return status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.log_level is None:  # the demo's answer on stdout, and no log lines breaking into it
        args.log_level = "WARNING" if args.demo is not None else "INFO"
    stop_signals.install()  # a signal before serving unwinds through the finally below
    setup_logging(args.log_level, args.log_format)
    flags.check(parser, args)  # exits with status 2
    if args.demo is not None and args.tls_ca is not None:
        message = "--demo has no client certificate for a --tls-ca (mTLS) server: start it "
        parser.error(message + "without --demo, then `yaie generate --tls-cert C --tls-key K`")
    if args.workers < 0 or args.workers + len(args.worker) < 1:
        logger.error("--workers must be >= 1 (or >= 0 with --worker HOST:PORT)")
        return 2
    if args.port == 0:
        args.port = free_port(args.host)
    try:
        model = served_model(args.model, args.revision)
    except ModelUnavailable as error:
        logger.error("%s", error)
        return 1
    run_secret = None
    workers: list[tuple[str, subprocess.Popen]] = []
    try:
        if args.internal_secret_file is None:  # one for this run, in no file that outlives it
            run_secret = worker_child.RunSecret()
            args.internal_secret_file = run_secret.path
        # Fork the workers first, from the main thread, before gRPC or asyncio start any thread.
        start_workers(args, model, workers)
        return asyncio.run(run_stack(args, model, workers))
    finally:
        stop_signals.stopping()  # a repeated signal must not cut the workers' stop short
        stop_workers(workers)
        if run_secret is not None:
            run_secret.close()
