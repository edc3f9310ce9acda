"""API keys on the public API: every yaie.v1.Generation call needs `authorization: Bearer <key>`.

grpc.health.v1 and server reflection stay open; any other call without the key (missing, wrong,
another scheme, another case, extra spaces) ends UNAUTHENTICATED before its request is decoded.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

API_KEY_ENV = "YAIE_API_KEY"
# Method prefixes served without a key: load balancers probe health, tools list services.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def load_api_key(
    key_file: str | None = None, environ: dict[str, str] | None = None
) -> bytes | None:
    """The key from key_file (first line, surrounding whitespace dropped) or $YAIE_API_KEY;
    None when neither is set. ValueError on an empty key or an unreadable file."""
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read the API key file {key_file}: {exc}") from exc
        key = text.strip().splitlines()[0].strip() if text.strip() else ""
        source = key_file
    else:
        key = (os.environ if environ is None else environ).get(API_KEY_ENV)
        if key is None:
            return None
        source = f"${API_KEY_ENV}"
    if not key or any(c.isspace() for c in key):
        raise ValueError(f"the API key from {source} is empty or holds whitespace")
    return key.encode("utf-8")


def bearer_matches(metadata: tuple | list | None, key: bytes) -> bool:
    """Exactly one `authorization` entry, equal to `Bearer <key>` (compared in constant time)."""
    values = [value for name, value in metadata or () if name == "authorization"]
    if len(values) != 1:
        return False
    value = values[0]
    given = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, b"Bearer " + key)


async def _deny_unary(request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid API key is required")


async def _deny_stream(request: object, context: grpc.aio.ServicerContext):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a valid API key is required")
    yield  # pragma: no cover (an async generator for the streaming kinds)


def _denying(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind that refuses; the request bytes are never parsed."""
    keep = {"request_deserializer": None, "response_serializer": None}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_deny_unary, **keep)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_deny_stream, **keep)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_deny_unary, **keep)
    return grpc.stream_stream_rpc_method_handler(_deny_stream, **keep)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health and reflection unless it carries the key."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the API key is empty")
        self._key = key

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        if bearer_matches(details.invocation_metadata, self._key):
            return handler
        return _denying(handler)
