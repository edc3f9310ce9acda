"""Starting and stopping a worker: bind the port, load the model, size the pool, report SERVING.

Used by `python -m yaie.worker_service` / `yaie worker`, and by tests that run a worker in-process.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from yaie.kernels.attention import resolve_backend
from yaie.worker.v1 import worker_pb2, worker_pb2_grpc
from yaie.worker_service.auth import WorkerSecurity
from yaie.worker_service.config import WorkerConfig, dtype_name
from yaie.worker_service.loader import load_model, read_config, resolve_model_dir
from yaie.worker_service.plan_limit import max_plan_bytes, pool_tokens_bound
from yaie.worker_service.server import WorkerServicer
from yaie.worker_service.step.compute_thread import ComputeThread
from yaie.worker_service.step.grammar import GrammarBackend
from yaie.worker_service.step.kv_pool import KVPool
from yaie.worker_service.step.runner import ModelRunner
from yaie.worker_service.step.warmup import log_later_compiles, warm_up
from yaie.worker_service.tp.collectives import join_group
from yaie.worker_service.wire import worker_info

log = logging.getLogger(__name__)

SERVICE_NAME = "yaie.worker.v1.Worker"
MAX_SEND_BYTES = 256 << 20  # a step result: a few ints per run entry, logprobs when asked


@dataclass
class RunningWorker:
    """A started worker; stop() ends it (in-flight streams are cancelled after grace seconds)."""

    server: grpc.Server
    servicer: WorkerServicer
    health: health.HealthServicer
    port: int

    def stop(self, grace: float | None = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if not self.servicer.wait_streams_closed(5.0):
            log.warning("a step stream was still open 5 s after the server stopped")


def build_runner(config: WorkerConfig) -> tuple[ModelRunner, worker_pb2.WorkerInfo]:
    """Loads the model and allocates the KV pool (after the weights, so free memory is known).
    With config.tp > 1, first joins the tensor-parallel group (every rank calls this)."""
    tp = join_group(config) if config.tp > 1 else None
    device = tp.device if tp is not None else config.torch_device()
    dtype = config.torch_dtype(device)
    kv_dtype = config.kv_torch_dtype(dtype, device)  # before the load: a bad choice fails fast
    start = time.perf_counter()
    model = load_model(config.model, device, dtype, config.attention_backend, tp=tp)
    log.info(
        "loaded %s (%s, %s) on %s in %.1f s",
        config.model,
        model.architecture,
        dtype_name(model.dtype),
        device,
        time.perf_counter() - start,
    )
    if device.type == "cpu" and not config.deterministic:  # batch-invariant mode needs F.linear
        log.info("packed %d linear layers for oneDNN", model.pack_cpu_linears())
    raw_config = read_config(resolve_model_dir(config.model))
    random_weights = bool(raw_config.get("yaie_random_weights", False))
    if random_weights:
        log.warning("%s has RANDOM weights: its output is meaningless", config.model)
    pool = KVPool.allocate(
        config.pool_config(),
        model.num_layers,
        model.num_kv_heads,
        model.head_dim,
        kv_dtype,
        device,
        tp,
    )
    backend = resolve_backend(config.attention_backend, device.type == "cuda")
    use_graphs = config.cuda_graphs and device.type == "cuda" and backend == "triton"
    # Structured output reads the model folder's tokenizer on the first constrained request.
    grammars = GrammarBackend(resolve_model_dir(config.model), model.vocab_size)
    runner = ModelRunner(
        model,
        pool,
        use_graphs,
        config.max_graph_batch_size,
        tp,
        config.use_cascade_attention and backend == "triton",
        grammars,
        config.deterministic,
        config.max_prefill_graph_tokens,
    )
    if device.type == "cuda" and tp is None:  # compile every kernel variant before serving
        warm_up(runner)
        log_later_compiles()
    return runner, worker_info(config.model, model, pool, device, random_weights, backend)


def start_worker(
    config: WorkerConfig,
    security: WorkerSecurity | None = None,
    loaded: threading.Event | None = None,
) -> RunningWorker:
    """Binds config.host:config.port (0 picks a free port), then loads; returns once SERVING.
    loaded is set as soon as the model is in (before SERVING): from then on a stop request
    waits for the returned worker instead of interrupting the load."""
    security = security or WorkerSecurity()
    # Fixed at bind time, so from the pool's upper bound (the exact pool is sized after loading).
    max_receive = max_plan_bytes(pool_tokens_bound(config))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="worker-rpc"),
        # The secret is checked on the metadata: a refused call's message is never read.
        interceptors=security.interceptors(),
        options=[
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            ("grpc.max_receive_message_length", max_receive),
            # The scheduler pings every 30 s to notice a peer that vanished without a RST;
            # accept pings down to 20 s apart (gRPC's default would GOAWAY a faster pinger).
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # And the worker pings the scheduler: a scheduler whose host vanished (no RST) must
            # not hold the pool's step streams, which a new scheduler waits on, for gRPC's 2 h.
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 20_000),
        ],
    )
    servicer = WorkerServicer(ComputeThread.for_device(config.torch_device()))
    health_servicer = health.HealthServicer()
    worker_pb2_grpc.add_WorkerServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    port = security.add_port(server, f"{config.host}:{config.port}")
    if port == 0:
        raise OSError(f"cannot bind {config.host}:{config.port}")
    server.start()
    log.info("worker listening on %s:%d, loading %s", config.host, port, config.model)
    try:
        runner, info = servicer.compute.call(build_runner, config)
        info.max_plan_bytes = max_receive  # the scheduler keeps its plans under it
        servicer.load(runner, info)
        if loaded is not None:
            loaded.set()
    except BaseException:  # an interrupted load too (SystemExit from a signal handler)
        server.stop(None)
        raise
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("worker SERVING on %s:%d", config.host, port)
    return RunningWorker(server, servicer, health_servicer, port)
