"""The OpenAI-compatible HTTP API (FastAPI): /v1/chat/completions, /v1/completions, /v1/models,
/health and /metrics, over the same request path as the gRPC API (api/frontend.py): each body
becomes yaie.v1 GenerateRequests, and their frames become OpenAI chunks or responses.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from yaie.scheduler_service.api.frontend import Frontend
from yaie.scheduler_service.api.http import to_generate
from yaie.scheduler_service.api.http.chunks import DONE, Chunker, sse
from yaie.scheduler_service.api.http.errors import (
    ApiError,
    error_body,
    install_handlers,
    status_of,
)
from yaie.scheduler_service.api.http.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    parse_body,
)
from yaie.scheduler_service.api.output_stream import merge_completions
from yaie.scheduler_service.ops.auth import KeyTable
from yaie.scheduler_service.ops.logs import observe_frames
from yaie.scheduler_service.ops.metrics import Metrics
from yaie.scheduler_service.ops.tenants import Tenant
from yaie.v1 import generation_pb2 as pb

T = TypeVar("T")
Frames = AsyncIterator[pb.GenerateResponse]
_OUTCOMES = {400: "invalid_argument", 429: "resource_exhausted", 503: "unavailable"}
# The gRPC API's message limit: a larger body is refused (413) before it is held in memory and
# parsed on the event loop.
MAX_BODY_BYTES = 16 << 20


class ClientGone(Exception):
    """The HTTP client disconnected before its response began."""


class ClosingStreamingResponse(StreamingResponse):
    """Closes its body iterator however the response ends (a disconnect too), so the request
    behind it is aborted at once rather than at garbage collection."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[union-attr]


async def _body(request: Request) -> bytes:
    """The request's body, at most MAX_BODY_BYTES (ApiError 413 past it)."""
    too_large = ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """work's result; ClientGone (work cancelled: its request aborted) if the client leaves."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        raise ClientGone()
    return task.result()


class OpenAIApi:
    """The routes' state: the shared frontend, the API keys, the trace of each request."""

    def __init__(self, frontend: Frontend, keys: KeyTable, metrics: Metrics | None):
        self.frontend = frontend
        self.keys = keys
        self.metrics = metrics

        def outcome_of(error: BaseException, outcome: str) -> str:
            if isinstance(error, Exception):
                return _OUTCOMES.get(status_of(error), "error")
            # Closed or cancelled: after its last frame, the request had ended as that said.
            return outcome

        self._observe = observe_frames(metrics, outcome_of)

    async def tenant(self, request: Request) -> Tenant:
        """The caller's tenant, by its key (the gRPC API's table); 401 without a known key."""
        # async: FastAPI runs a plain def dependency in its thread pool, a hop per request.
        given = [("authorization", v) for v in request.headers.getlist("authorization")]
        tenant = self.keys.tenant_of(given)
        if tenant is None:
            raise ApiError(401, "a valid API key is required (Authorization: Bearer KEY)")
        return tenant

    def model_id(self, asked: str) -> str:
        """The served model's id; an empty model means it too (404 for any other)."""
        served = self.frontend.engine.model_info.model
        if asked and asked != served:
            message = f"The model `{asked}` does not exist (this server serves `{served}`)"
            raise ApiError(404, message, "model")
        return served

    def token_text(self, token_id: int) -> str:
        return self.frontend.ready_tokenizer().decode([token_id])

    def frames(self, message: pb.GenerateRequest, request: Request, tenant: Tenant) -> Frames:
        peer = f"{request.client.host}:{request.client.port}" if request.client else "-"
        frames = self.frontend.generate(message, tenant)
        return self._observe(frames, message.request_id, peer, tenant.label)

    async def respond(
        self,
        request: Request,
        tenant: Tenant,
        chunker: Chunker,
        messages: list[pb.GenerateRequest],
        body: Any,
    ) -> Response:
        streams = [self.frames(message, request, tenant) for message in messages]
        if not body.stream:
            merged = await _unless_disconnected(request, _collect_all(streams))
            return JSONResponse(chunker.response(merged))
        if len(streams) > 1:
            raise ValueError("stream: one prompt per streamed request (send a list unstreamed)")
        first = await _unless_disconnected(request, _first(streams[0]))
        usage = body.stream_options is not None and body.stream_options.include_usage
        events = _events(chunker, first, streams[0], usage, messages[0].n or 1)
        return ClosingStreamingResponse(events, media_type="text/event-stream")


async def _collect_all(streams: list[Frames]) -> list[pb.GenerateResponse]:
    """One merged frame per choice: each prompt's completions in index order, prompt by prompt."""

    async def collect(frames: Frames) -> list[pb.GenerateResponse]:
        try:
            return merge_completions([frame async for frame in frames])
        finally:
            await frames.aclose()

    merged = await asyncio.gather(*(collect(frames) for frames in streams))
    return [frame for choices in merged for frame in choices]


async def _first(frames: Frames) -> pb.GenerateResponse:
    """The first frame: errors before any output become the HTTP status of the response."""
    try:
        return await frames.__anext__()
    except BaseException:
        await frames.aclose()
        raise


async def _events(
    chunker: Chunker, first: pb.GenerateResponse, frames: Frames, include_usage: bool, n: int
) -> AsyncIterator[bytes]:
    """The SSE body: a chat stream's role chunk per choice, a chunk per frame (its choice:
    frame.index of the n), the usage chunk when asked, then [DONE]; an error mid-stream (the
    server gave up on the request) is an error event."""
    frame = first
    last: dict[int, pb.GenerateResponse] = {}  # choice -> its final frame
    try:
        if chunker.chat:
            for index in range(n):
                yield sse(_with_usage(chunker.role_chunk(index), include_usage))
        while True:
            yield chunker.encoded_chunk(frame, include_usage)
            if frame.finish_reason != pb.FINISH_REASON_UNSPECIFIED:
                last[frame.index] = frame
                if len(last) == n:
                    break
            frame = await frames.__anext__()
        if include_usage:
            yield sse(chunker.usage_chunk([last[index] for index in sorted(last)]))
    except Exception as error:
        yield sse(error_body(status_of(error), str(error)))
    finally:
        await frames.aclose()
    yield DONE


def _with_usage(chunk: dict[str, Any], include_usage: bool) -> dict[str, Any]:
    if include_usage:
        chunk["usage"] = None  # OpenAI's: null on every chunk but the last
    return chunk


def create_app(frontend: Frontend, keys: KeyTable, metrics: Metrics | None) -> FastAPI:
    """The app; keys: the gRPC API's table (an open one: no key needed); metrics: served at
    /metrics."""
    api = OpenAIApi(frontend, keys, metrics)
    app = FastAPI(title="Mini-YAIE OpenAI-compatible API", docs_url=None, redoc_url=None)
    install_handlers(app)

    async def on_gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it: nginx's "client closed request"

    app.add_exception_handler(ClientGone, on_gone)
    keyed = [Depends(api.tenant)]

    @app.get("/health")
    async def health() -> Response:
        engine = frontend.engine
        serving = bool(getattr(engine, "serving", engine.ready))
        return Response(status_code=200 if serving else 503)

    if metrics is not None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        @app.get("/metrics")
        async def prometheus() -> Response:
            # A thread: the engine collector waits on this event loop for its snapshot.
            text = await asyncio.to_thread(generate_latest, metrics.registry)
            return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=keyed)
    async def models() -> dict[str, Any]:
        info = frontend.engine.model_info
        card = {"id": info.model, "object": "model", "created": 0, "owned_by": "yaie"}
        card |= {"max_model_len": info.max_context, "vocab_size": info.vocab_size}
        return {"object": "list", "data": [card]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        tenant = await api.tenant(request)  # 401 before the body is read
        body = parse_body(ChatCompletionRequest, await _body(request))
        model = api.model_id(body.model)
        request_id = uuid.uuid4().hex
        message = to_generate.chat_request(body, request_id)
        chunker = Chunker(True, f"chatcmpl-{request_id}", model, api.token_text, body.logprobs)
        return await api.respond(request, tenant, chunker, [message], body)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        tenant = await api.tenant(request)
        body = parse_body(CompletionRequest, await _body(request))
        model = api.model_id(body.model)
        request_id = uuid.uuid4().hex
        messages = to_generate.completion_requests(body, request_id)
        logprobs = body.logprobs is not None
        chunker = Chunker(False, f"cmpl-{request_id}", model, api.token_text, logprobs)
        return await api.respond(request, tenant, chunker, messages, body)

    return app
