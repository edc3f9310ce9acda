"""The public yaie.v1.Generation service: decode the proto, call one engine method, encode.

Exceptions become status codes in one place (`_status_code`); request bytes that do not decode
(invalid UTF-8, a corrupt wire format) are refused with INVALID_ARGUMENT, for every method of the
server, by api/undecodable.py's interceptor before any handler runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from yaie.scheduler_service.api.frontend import EngineApi, Frontend
from yaie.scheduler_service.api.output_stream import merge_completions
from yaie.scheduler_service.api.reflection import enable_reflection
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.api.undecodable import UndecodableRequestInterceptor
from yaie.scheduler_service.api.validation import check_request_id
from yaie.scheduler_service.engine.errors import ResourceExhaustedError, UnavailableError
from yaie.scheduler_service.ops.auth import current_tenant
from yaie.v1 import generation_pb2 as pb

SERVICE_NAME = "yaie.v1.Generation"


def _status_code(error: Exception) -> grpc.StatusCode | None:
    """The one map from exceptions to status codes (None: a bug, left to gRPC as UNKNOWN)."""
    if isinstance(error, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, ResourceExhaustedError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, UnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    return None


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    """Ends the call with error's status code; an error with none is raised again."""
    code = _status_code(error)
    if code is None:
        raise error
    await context.abort(code, str(error))


def _unary(method: Callable) -> Callable:
    @functools.wraps(method)
    async def handler(self: GenerationServicer, request: Any, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except Exception as error:
            await _abort(context, error)

    return handler


def _stream(method: Callable) -> Callable:
    @functools.wraps(method)
    async def handler(self: GenerationServicer, request: Any, context: grpc.aio.ServicerContext):
        try:
            async for frame in method(self, request, context):
                yield frame
        except Exception as error:
            await _abort(context, error)

    return handler


class GenerationServicer:
    """Serves yaie.v1.Generation over an engine; answers UNAVAILABLE until `attach_tokenizer`.
    Its `frontend` is the request path the HTTP API shares."""

    def __init__(self, engine: EngineApi, tokenizer: Tokenizer | None = None) -> None:
        self.frontend = Frontend(engine, tokenizer)
        self._engine = engine

    def attach_tokenizer(self, tokenizer: Tokenizer) -> None:
        self.frontend.attach_tokenizer(tokenizer)

    def _ready_tokenizer(self) -> Tokenizer:
        return self.frontend.ready_tokenizer()

    @_stream
    async def Generate(self, request: Any, context: grpc.aio.ServicerContext):
        frames = self.frontend.generate(request, current_tenant())
        try:
            if not request.output.single_frame:
                async for frame in frames:
                    yield frame
                return
            for merged in merge_completions([frame async for frame in frames]):
                yield merged  # one frame per completion
        finally:
            await frames.aclose()  # at once, not at garbage collection: aborts the request

    @_unary
    async def Tokenize(self, request: Any, context: grpc.aio.ServicerContext):
        ids = await self.frontend.tokenize(request.text, request.add_special_tokens)
        return pb.TokenizeResponse(ids=ids)

    @_unary
    async def Detokenize(self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext):
        text = await self.frontend.detokenize(request.ids, request.skip_special_tokens)
        return pb.DetokenizeResponse(text=text)

    @_unary
    async def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ):
        tokenizer = self._ready_tokenizer()
        info = self._engine.model_info
        return pb.ModelInfo(
            model=info.model,
            architecture=info.architecture,
            dtype=info.dtype,
            vocab_size=info.vocab_size,
            max_context=info.max_context,
            block_size=info.block_size,
            random_weights=info.random_weights,
            eos_token_ids=sorted(tokenizer.eos_token_ids),
            num_workers=info.num_workers,
            kv_cache_dtype=info.kv_cache_dtype,
        )

    @_unary
    async def GetServerStats(
        self, request: pb.GetServerStatsRequest, context: grpc.aio.ServicerContext
    ):
        stats = self._engine.stats()
        admin = current_tenant().admin  # worker addresses are the operator's to see
        workers = [
            pb.WorkerStats(
                address=w.address if admin else f"worker-{index}",
                healthy=w.healthy,
                total_blocks=w.total_blocks,
                free_blocks=w.free_blocks,
                used_blocks=w.used_blocks,
                cached_blocks=w.cached_blocks,
                cache_hit_rate=w.cache_hit_rate,
            )
            for index, w in enumerate(stats.workers)
        ]
        return pb.ServerStats(
            waiting=stats.waiting,
            running=stats.running,
            workers=workers,
            num_preemptions=stats.num_preemptions,
            completed_requests=stats.completed_requests,
            priorities=[
                pb.PriorityStats(priority=p.priority, waiting=p.waiting, running=p.running)
                for p in stats.priorities
            ],
        )

    @_unary
    async def Abort(self, request: Any, context: grpc.aio.ServicerContext):
        check_request_id(request.request_id)
        # Only the caller's own requests: another tenant's id is not found.
        found = self._engine.abort(request.request_id, current_tenant().name)
        return pb.AbortResponse(found=found)


def generation_handler(
    servicer: GenerationServicer, observe: Callable[[Callable], Callable] | None = None
) -> grpc.GenericRpcHandler:
    """The service's method handlers (observe: wraps Generate, e.g. logs.observe_generate for
    request logs and metrics)."""

    def unary(method: Callable, request_class: type) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            method, request_deserializer=request_class.FromString, response_serializer=_serialize
        )

    handlers = {
        "Generate": grpc.unary_stream_rpc_method_handler(
            servicer.Generate if observe is None else observe(servicer.Generate),
            request_deserializer=pb.GenerateRequest.FromString,
            response_serializer=_serialize,
        ),
        "Tokenize": unary(servicer.Tokenize, pb.TokenizeRequest),
        "Detokenize": unary(servicer.Detokenize, pb.DetokenizeRequest),
        "GetModelInfo": unary(servicer.GetModelInfo, pb.GetModelInfoRequest),
        "GetServerStats": unary(servicer.GetServerStats, pb.GetServerStatsRequest),
        "Abort": unary(servicer.Abort, pb.AbortRequest),
    }
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


# A grpc.health.v1 service name that is SERVING for as long as the process answers at all,
# workers or not: a liveness probe (Kubernetes) that must not restart a scheduler waiting for
# its workers checks it; readiness checks "" (SERVING only with a worker ready).
LIVENESS_SERVICE = "yaie.liveness"


async def set_health(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Sets the overall status and this service's status."""
    status = health_pb2.HealthCheckResponse.NOT_SERVING
    if serving:
        status = health_pb2.HealthCheckResponse.SERVING
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, status)


# The public server's channel options, each value chosen for this API:
PUBLIC_SERVER_OPTIONS = [
    # No SO_REUSEPORT: a second server on a port in use must fail, not share its traffic.
    ("grpc.so_reuseport", 0),
    # A request is at most a max-context prompt (128k tokens of text or ids: ~1 MiB) with its
    # stop strings and logit bias; 16 MiB refuses absurd ones before they are held in memory.
    ("grpc.max_receive_message_length", 16 << 20),
    # The largest reply is one single_frame response of a max-context generation with top-20
    # logprobs (~25 MiB); frames of a stream are far smaller.
    ("grpc.max_send_message_length", 64 << 20),
    # Ping clients with a stream open every 60 s (20 s to answer): a client gone without a FIN
    # has its streams cancelled, so its requests are aborted and their KV blocks freed.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Clients may ping as often as every 10 s (gRPC's default of 5 min would answer common
    # client keepalive settings with GOAWAY and drop their streams).
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
]


def create_server(
    servicer: GenerationServicer,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    observe: Callable[[Callable], Callable] | None = None,
) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    """A grpc.aio server with Generation, grpc.health.v1 and reflection (await set_health next:
    a new health servicer reports the overall status as SERVING). interceptors: e.g. the API
    key check of ops/auth.py (they run first); observe: see generation_handler."""
    health_servicer = health.aio.HealthServicer()
    interceptors = [*interceptors, UndecodableRequestInterceptor()]
    server = grpc.aio.server(interceptors=interceptors, options=PUBLIC_SERVER_OPTIONS)
    server.add_generic_rpc_handlers((generation_handler(servicer, observe),))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    enable_reflection((SERVICE_NAME, health.SERVICE_NAME), server)
    return server, health_servicer
