"""Undecodable request bytes become INVALID_ARGUMENT on every method of the public server.

grpc.aio runs a method's request deserializer after the interceptors and, when it raises, logs a
traceback and ends the call with UNKNOWN. This interceptor gives every method (ours, health,
reflection; unary or streamed requests) a deserializer that never raises: bad bytes become an
UndecodableRequest, and the method refuses it with INVALID_ARGUMENT before its handler runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message

from yaie.scheduler_service.api.wire import UndecodableRequest, explain_decode_error


def _guarded(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    message_class = getattr(deserializer, "__self__", None)  # a message class's FromString

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:
            if isinstance(message_class, type) and issubclass(message_class, Message):
                return UndecodableRequest(explain_decode_error(message_class, data, error))
            return UndecodableRequest(f"malformed request: {error}")

    return deserialize


async def _refuse(context: grpc.aio.ServicerContext, request: UndecodableRequest) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.reason)


def _unary_request(behavior: Callable, streamed_response: bool) -> Callable:
    if streamed_response:

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator:
            if isinstance(request, UndecodableRequest):
                await _refuse(context, request)
            async for response in behavior(request, context):
                yield response

        return unary_stream

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, UndecodableRequest):
            await _refuse(context, request)
        return await behavior(request, context)

    return unary_unary


def _streamed_request(behavior: Callable, streamed_response: bool) -> Callable:
    async def checked(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> AsyncIterator:
        async for request in requests:
            if isinstance(request, UndecodableRequest):
                await _refuse(context, request)
            yield request

    if streamed_response:

        async def stream_stream(requests: AsyncIterator, context: grpc.aio.ServicerContext):
            async for response in behavior(checked(requests, context), context):
                yield response

        return stream_stream

    async def stream_unary(requests: AsyncIterator, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(checked(requests, context), context)

    return stream_unary


def guard_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """handler with a never-raising deserializer and a behavior that refuses what it flags."""
    streamed = handler.response_streaming
    if handler.request_streaming:
        name = "stream_stream" if streamed else "stream_unary"
        behavior = _streamed_request(getattr(handler, name), streamed)
    else:
        name = "unary_stream" if streamed else "unary_unary"
        behavior = _unary_request(getattr(handler, name), streamed)
    return handler._replace(
        request_deserializer=_guarded(handler.request_deserializer), **{name: behavior}
    )


class UndecodableRequestInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every method's handler with guard_handler (the server's innermost interceptor: an
    earlier one, e.g. the API key check, answers before the bytes are looked at)."""

    def __init__(self) -> None:
        # method -> (the handler as registered, the guarded one): built once per method
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        cached = self._guarded.get(details.method)
        if cached is None or cached[0] is not handler:
            cached = (handler, guard_handler(handler))
            self._guarded[details.method] = cached
        return cached[1]
