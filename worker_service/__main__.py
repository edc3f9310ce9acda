"""`python -m yaie.worker_service` (and `yaie worker`): one GPU worker serving yaie.worker.v1.

SIGTERM and SIGINT stop it cleanly (exit code 0; with --join it first leaves the scheduler,
which drains it); a device failure exits with code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time

from yaie.kernels.attention import BACKENDS
from yaie.worker_service.auth import WorkerSecurity, is_loopback
from yaie.worker_service.config import (
    DEFAULT_CPU_MEMORY_BYTES,
    DEFAULT_MEMORY_FRACTION,
    DTYPES,
    KV_CACHE_DTYPES,
    WorkerConfig,
)
from yaie.worker_service.hub import model_argument
from yaie.worker_service.join import JoinChannel, Joiner, advertised_address
from yaie.worker_service.logs import LOG_FORMATS, setup_worker_logging

log = logging.getLogger("yaie.worker_service")


@dataclasses.dataclass(frozen=True)
class JoinPlan:
    """--join and its companions, resolved."""

    channel: JoinChannel
    advertise_host: str | None
    drain_timeout_s: float


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yaie worker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        required=True,
        help="local Hugging Face model directory or a hub id in the local cache",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50061, help="port to bind (0: any free one)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES])
    parser.add_argument(
        "--kv-cache-dtype",
        default="auto",
        choices=["auto", *KV_CACHE_DTYPES],
        help="KV pool dtype: auto (the model's), or fp8_e4m3 (about twice the tokens; "
        "per-token scales)",
    )
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV block")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--num-blocks", type=int, default=None, help="KV blocks in the pool")
    size.add_argument(
        "--memory-fraction",
        type=float,
        default=DEFAULT_MEMORY_FRACTION,
        help="fraction of free CUDA memory after the weights for the KV pool",
    )
    parser.add_argument(
        "--cpu-kv-memory-mib",
        type=int,
        default=DEFAULT_CPU_MEMORY_BYTES // 2**20,
        help="KV pool budget on the CPU, in MiB",
    )
    parser.add_argument("--attention-backend", default="auto", choices=list(BACKENDS))
    parser.add_argument(
        "--cascade-attention",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="decode rows sharing cached prefix blocks read the prefix once per group, where a "
        "step saves enough reads (Triton backend; default: on, off with --deterministic)",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="batch-invariant mode: a request's logits do not depend on the rest of the batch, "
        "its chunking or prefix-cache hits (slower)",
    )
    parser.add_argument(
        "--no-cuda-graphs",
        action="store_true",
        help="run every step eagerly instead of replaying CUDA graphs",
    )
    parser.add_argument(
        "--max-graph-batch-size",
        type=int,
        default=256,
        help="largest decode batch captured in a CUDA graph",
    )
    parser.add_argument(
        "--max-prefill-graph-tokens",
        type=int,
        default=4096,
        help="largest step of other kinds (prefill, mixed) replayed as piecewise CUDA graphs, in "
        "tokens; 0: such steps run eagerly",
    )
    parser.add_argument(
        "--tp",
        type=int,
        default=1,
        help="tensor-parallel ranks: processes (one GPU each) that split the model",
    )
    parser.add_argument(
        "--revision", default=None, help="branch, tag or commit of a hub --model (default: main)"
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG | INFO | WARNING | ERROR")
    parser.add_argument(
        "--log-format", default="text", choices=LOG_FORMATS, help="text (default) or JSON lines"
    )
    security = parser.add_argument_group("internal channel security")
    security.add_argument(
        "--internal-secret-file",
        default=None,
        help="file holding the secret the scheduler must send",
    )
    security.add_argument("--tls-cert", default=None, help="PEM certificate (enables TLS)")
    security.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    security.add_argument(
        "--tls-client-ca", default=None, help="PEM CA that client certificates must chain to (mTLS)"
    )
    security.add_argument(
        "--insecure-internal",
        action="store_true",
        help="listen on a non-loopback --host with neither a secret nor mTLS (a trusted "
        "network only: anyone reaching the port can run plans)",
    )
    join = parser.add_argument_group("joining a running scheduler (scale out)")
    join.add_argument(
        "--join",
        default=None,
        metavar="SCHEDULER_HOST:INTERNAL_PORT",
        help="once SERVING, register with the scheduler's --internal-port (with the internal "
        "secret; over mTLS with the TLS flags above); leave it on SIGTERM",
    )
    join.add_argument(
        "--advertise-host",
        default=None,
        help="host the scheduler dials this worker at (default: --host, or this machine's "
        "address when --host is a wildcard; in Kubernetes: the pod IP)",
    )
    join.add_argument(
        "--leave-drain-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="on SIGTERM, how long requests running here may finish before the scheduler moves "
        "them to other workers (default 20; capped by the scheduler's --drain-timeout)",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    return WorkerConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        device=args.device,
        dtype=args.dtype,
        kv_cache_dtype=args.kv_cache_dtype,
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        memory_fraction=args.memory_fraction,
        cpu_memory_bytes=args.cpu_kv_memory_mib * 2**20,
        attention_backend=args.attention_backend,
        cuda_graphs=not args.no_cuda_graphs,
        cascade_attention=args.cascade_attention,
        deterministic=args.deterministic,
        max_graph_batch_size=args.max_graph_batch_size,
        max_prefill_graph_tokens=args.max_prefill_graph_tokens,
        tp=args.tp,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_worker_logging(args.log_level, args.log_format)
    try:
        config = config_from_args(args)
        security = WorkerSecurity.from_files(
            args.internal_secret_file, args.tls_cert, args.tls_key, args.tls_client_ca
        )
        security.check_exposure(config.host, args.insecure_internal)
        join = None
        if args.join is not None:
            join = JoinChannel.from_files(
                args.join, security.secret, args.tls_client_ca, args.tls_cert, args.tls_key
            )
        if not args.leave_drain_timeout >= 0:
            raise ValueError("--leave-drain-timeout must be >= 0")
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    try:  # after the usage checks: a hub id is resolved (downloaded if need be) only then
        model = model_argument(config.model, args.revision)  # a hub id: its local snapshot
    except FileNotFoundError as exc:
        log.error("cannot start the worker: %s", exc)
        return 1
    config = dataclasses.replace(config, model=model)
    if not is_loopback(config.host) and not security.authenticates_callers:
        log.warning("listening on %s with no secret or mTLS (--insecure-internal)", config.host)
    stop = threading.Event()
    stopped_by: list[str] = []
    loaded = threading.Event()

    def on_signal(signum: int, _frame) -> None:
        # Handlers run on this thread and can nest: a second signal can land while the first
        # one's stop.set() holds the Event's lock, and setting it again there would wait on that
        # lock forever (seen: a SIGTERM then a SIGINT left the worker running). So only a
        # handler that found no signal before it sets stop. It decides that before appending:
        # deciding after let two signals landing together each see the other's entry and both
        # return without setting stop (seen: a worker whose `yaie serve` was SIGKILLed kept
        # serving with ["SIGTERM", "SIGTERM", ...] recorded and stop unset).
        first = not stopped_by
        stopped_by.append(signal.Signals(signum).name)
        if not first:
            return
        stop.set()
        if not loaded.is_set() and config.tp == 1:
            # Loading (minutes for a big model) runs on this thread: leave it now, not after.
            log.info("stopping (%s) while loading the model", stopped_by[0])
            raise SystemExit(128 + signum)

    leave = None if join is None else JoinPlan(join, args.advertise_host, args.leave_drain_timeout)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if config.tp > 1:  # this process is rank 0 of a tensor-parallel group
            from yaie.worker_service.tp.ranks import run_group

            serve = lambda: _serve(config, stop, stopped_by, security, loaded, leave)  # noqa: E731
            return run_group(config, stop, stopped_by, serve)
        return _serve(config, stop, stopped_by, security, loaded, leave)
    finally:  # main() may run inside another program (tests): give its handlers back
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(
    config: WorkerConfig,
    stop: threading.Event,
    stopped_by: list[str],
    security: WorkerSecurity | None = None,
    loaded: threading.Event | None = None,
    join: JoinPlan | None = None,
) -> int:
    """Loads and serves until stop; loaded is set once the model is loaded (a signal before
    that exits at once, see main). With join, registers with the scheduler once SERVING and
    leaves it (drained) on stop."""
    from yaie.worker_service.app import start_worker  # heavy imports after argument parsing

    try:
        worker = start_worker(config, security, loaded)
    except (OSError, ValueError) as exc:  # no such model, unsupported config, port taken
        log.error("cannot start the worker: %s", exc)
        return 1
    device_failed = worker.servicer.device_failed
    joiner = None
    if join is not None:
        try:
            address = advertised_address(config.host, worker.port, join.advertise_host)
        except OSError as exc:  # this machine's name does not resolve
            log.error("cannot tell the scheduler our address (give --advertise-host): %s", exc)
            worker.stop(grace=1.0)
            return 1
        joiner = Joiner(join.channel, address)
        joiner.start()
    # A device failure ends the wait too. This thread only polls `stop`: the signal handler sets
    # it on this same thread, and an Event.set() run inside this thread's own Event.wait() on it
    # can find the Event's lock held by that wait, forever (seen: a worker left running after its
    # scheduler was SIGKILLed, its main thread stuck in on_signal -> Event.set).
    # A recorded signal ends it too, whatever became of its handler's stop.set().
    while not stop.is_set() and not stopped_by and not device_failed.is_set():
        time.sleep(0.2)
    log.info("stopping (%s)", stopped_by[0] if stopped_by else "device failure")
    if joiner is not None and not device_failed.is_set():
        joiner.leave(join.drain_timeout_s)  # steps go on here while the scheduler drains us
    worker.stop(grace=1.0)
    return 1 if device_failed.is_set() else 0


if __name__ == "__main__":
    status = main()
    for signum in (signal.SIGTERM, signal.SIGINT):  # stopped: interpreter shutdown would put
        signal.signal(signum, signal.SIG_IGN)  # SIG_DFL back, and a repeat would then kill us
    sys.exit(status)
