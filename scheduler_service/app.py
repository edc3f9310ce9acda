"""The scheduler process, assembled: the engine over its workers, the public server (yaie.v1
Generation, grpc.health.v1: SERVING once every given worker is ready, server reflection), the
internal port where workers join (workers/registry.py) and DNS discovery, metrics and request
logs. serve() runs it until SIGTERM or Ctrl-C and stops it cleanly (SIGHUP re-reads the API key
file); `yaie scheduler` (__main__.py), `yaie serve` and `yaie in-process` call it with their
parsed flags (ops/flags.py).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import logging
import signal
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from yaie.scheduler_service.api.server import (
    LIVENESS_SERVICE,
    GenerationServicer,
    create_server,
    set_health,
)
from yaie.scheduler_service.engine.engine import Engine
from yaie.scheduler_service.engine.worker_set import JOINED
from yaie.scheduler_service.ops import flags
from yaie.scheduler_service.ops.channel_security import configure_workers, open_worker_channel
from yaie.scheduler_service.ops.logs import observe_generate
from yaie.scheduler_service.ops.metrics import Metrics
from yaie.scheduler_service.ops.server_options import ServerOptions
from yaie.scheduler_service.workers.dns_discovery import DnsWatcher, Resolver, resolve_host
from yaie.scheduler_service.workers.registry import RegistryServicer, start_registry
from yaie.scheduler_service.workers.worker_client import WorkerClient

if TYPE_CHECKING:
    from yaie.scheduler_service.api.http.server import HttpServer

logger = logging.getLogger("yaie.scheduler")


async def wait_for_serving(address: str, timeout_s: float, worker: bool = False) -> None:
    """Polls grpc.health.v1 at address until it says SERVING (a worker: its model is loaded;
    worker=True: over the worker channel's TLS, see channel_security)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    if worker:
        channel = open_worker_channel(address, with_secret=False)
    else:
        channel = grpc.aio.insecure_channel(address)
    async with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            if loop.time() > deadline:
                raise TimeoutError(f"{address} was not SERVING after {timeout_s:.0f} s")
            await asyncio.sleep(0.25)


def _import_slow_modules() -> ModuleType:
    """The tokenizer module (transformers), then xgrammar (torch, tvm-ffi): ~0.5 s that the
    first constrained request's syntax check (validation) would otherwise stall the event loop
    for. One thread imports both, in turn: their imports share torch."""
    module = importlib.import_module("yaie.scheduler_service.api.tokenizer")
    importlib.import_module("xgrammar")
    return module


async def _start_engine(
    engine, servicer: GenerationServicer, args: argparse.Namespace, wait_for_workers: bool = True
) -> None:
    # transformers takes seconds to import: do it while the workers load their model.
    tokenizer_module = asyncio.create_task(asyncio.to_thread(_import_slow_modules))
    if wait_for_workers:
        await asyncio.gather(
            *(wait_for_serving(address, args.worker_wait, worker=True) for address in args.worker)
        )
    await engine.start()
    if not engine.workers.described.is_set():
        logger.info("waiting for a first worker to join")
    await engine.workers.described.wait()  # the tokenizer is the workers' model's
    info = engine.model_info
    label = " (RANDOM WEIGHTS: its text is meaningless)" if info.random_weights else ""
    logger.info(
        "workers ready: %s (%s, %s, KV %s) on %d worker(s)%s",
        info.model,
        info.architecture,
        info.dtype,
        info.kv_cache_dtype,
        info.num_workers,
        label,
    )
    module = await tokenizer_module
    tokenizer = await asyncio.to_thread(module.Tokenizer, args.model or info.model)
    servicer.attach_tokenizer(tokenizer)


async def _watch_health(
    engine, health_servicer: health.aio.HealthServicer, first_serving: asyncio.Event | None
) -> None:
    """SERVING only while the engine is serving (taking requests, and some worker is up: a
    lost one's requests move on); first_serving is set the first time."""
    serving = None
    while True:
        ready = bool(engine.serving)
        if ready != serving:
            await set_health(health_servicer, ready)
            logger.info("health: %s", "SERVING" if ready else "NOT_SERVING")
            serving = ready
            if ready and first_serving is not None:
                first_serving.set()
        await asyncio.sleep(0.5)


async def _start_http(
    options: ServerOptions, servicer: GenerationServicer, metrics: Metrics | None
) -> HttpServer | None:
    """The OpenAI-compatible HTTP API over the gRPC API's request path, in this event loop
    (None when --http-port is unset). OSError when its port cannot be bound."""
    if options.http_port is None:
        return None
    # Imported here: FastAPI and uvicorn cost a scheduler without the HTTP API nothing.
    from yaie.scheduler_service.api.http import server as http_server
    from yaie.scheduler_service.api.http.routes import create_app

    app = create_app(servicer.frontend, options.keys, metrics)
    http = http_server.HttpServer(app, options.http_host, options.http_port, options.http_tls)
    port = http.bind()
    await http.start()
    scheme = "https" if options.http_tls is not None else "http"
    logger.info("OpenAI-compatible HTTP API on %s://%s:%d/v1", scheme, options.http_host, port)
    return http


def _reload_keys(options: ServerOptions) -> None:
    """SIGHUP: the API key file again (tenants, keys, limits); a bad file keeps the old table."""
    try:
        options.keys.reload()
    except ValueError as error:
        logger.error("API keys not reloaded (the previous ones stay): %s", error)


async def _start_discovery(
    engine: Engine, args: argparse.Namespace, options: ServerOptions, resolver: Resolver
) -> tuple[grpc.aio.Server | None, list[asyncio.Task]]:
    """One DNS watcher task per --worker-dns, and the internal port's Registry server, started
    (None without --internal-port). ValueError / OSError when the port cannot serve."""
    interval, drain = args.dns_interval, engine.config.drain_timeout_s
    watchers = [DnsWatcher(name, engine, interval, drain, resolver) for name in args.worker_dns]
    server = None
    if args.internal_port is not None:
        servicer = RegistryServicer(engine, JOINED)
        host, insecure = args.internal_host, args.insecure_internal
        server, port = start_registry(servicer, host, args.internal_port, options.workers, insecure)
        if port == 0:
            raise OSError(f"cannot listen on {host}:{args.internal_port}")
        await server.start()
        logger.info("worker joins accepted on %s:%d", host, port)
    return server, [asyncio.create_task(w.run(), name=w.origin) for w in watchers]


async def serve(
    args: argparse.Namespace,
    stop: asyncio.Event | None = None,
    client_factory: Callable[[str], WorkerClient] | None = None,
    serving: asyncio.Event | None = None,
    resolver: Resolver = resolve_host,
) -> int:
    """Runs until SIGINT/SIGTERM (or `stop` is set); returns the exit status. client_factory
    (address -> client, default a gRPC WorkerClient) gives clients of workers that are ready
    when handed in: their addresses are then not polled over gRPC before the engine starts.
    serving is set once health first says SERVING (for a caller in this process: no probe
    over the public port, which may demand a client certificate). resolver answers the
    --worker-dns names (tests hand in their own)."""
    options = flags.server_options(args)
    configure_workers(options.workers)
    engine = Engine(args.worker, flags.engine_config(args), client_factory or WorkerClient)
    engine.workers.forget_after_s = args.forget_lost_worker
    servicer = GenerationServicer(engine)
    try:
        metrics = options.start_metrics(engine)
    except OSError as error:
        logger.error("cannot serve metrics on port %s: %s", options.metrics_port, error)
        return 1
    observe = observe_generate(metrics)  # request logs, and metrics when they are on
    server, health_servicer = create_server(servicer, options.interceptors(), observe)
    await set_health(health_servicer, False)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    try:
        port = options.add_port(server, f"{args.host}:{args.port}")
    except RuntimeError as error:  # the port is in use, or the host is not ours
        logger.error("cannot listen on %s:%d: %s", args.host, args.port, error)
        if metrics is not None:
            metrics.stop()
        return 1
    try:
        http = await _start_http(options, servicer, metrics)
    except OSError as error:
        logger.error(
            "cannot serve the HTTP API on %s:%s: %s", options.http_host, options.http_port, error
        )
        if metrics is not None:
            metrics.stop()
        return 1
    try:
        registry, watchers = await _start_discovery(engine, args, options, resolver)
    except (OSError, ValueError) as error:
        logger.error("cannot accept worker joins: %s", error)
        if http is not None:
            await http.stop()
        if metrics is not None:
            metrics.stop()
        return 1
    await server.start()
    logger.info(
        "scheduler listening on %s:%d (workers: %s)",
        args.host,
        port,
        ", ".join(args.worker + [f"DNS {n}" for n in args.worker_dns]) or "joining",
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.getsignal(signum) for signum in signals}
    for signum in signals[:2]:
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_keys, options)
    start = asyncio.create_task(_start_engine(engine, servicer, args, client_factory is None))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({start, stopping}, return_when=asyncio.FIRST_COMPLETED)
    status, watch = 0, None
    if start.done() and start.exception() is None:
        # What startup left (torch, the tokenizer: ~270k objects) is never garbage: frozen, the
        # collector's older generations stop walking it. Unfrozen, the collections that a burst
        # of HTTP requests sets off cost ~0.6 ms of this loop per request.
        gc.freeze()
        watch = asyncio.create_task(_watch_health(engine, health_servicer, serving))
        await stopping
    elif start.done():
        logger.error("start failed: %s", start.exception())
        status = 1
    logger.info("stopping")
    for task in (start, stopping, watch, *watchers):
        if task is not None:
            task.cancel()
    await set_health(health_servicer, False)
    if watch is not None:  # drain: no new requests; streams in flight finish or are cancelled
        cancelled = await engine.drain()
        logger.info("drained (%d stream(s) cancelled after the drain timeout)", cancelled)
    if http is not None:
        await http.stop()
    if registry is not None:
        await registry.stop(grace=1.0)
    await server.stop(grace=3.0)
    await engine.stop()
    if metrics is not None:
        metrics.stop()
    # remove_signal_handler leaves SIG_DFL, and a repeated SIGTERM would then kill a caller
    # that is still stopping its workers: the caller's own handlers go back instead.
    for signum, handler in previous.items():
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    return status
