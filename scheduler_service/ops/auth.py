"""API keys on the public API: every yaie.v1.Generation call needs `authorization: Bearer <key>`,
and the key says which tenant calls (ops/tenants.py). One KeyTable serves gRPC and HTTP.

grpc.health.v1 and server reflection stay open; any other call without a known key (missing,
wrong, another scheme, another case, extra spaces) ends UNAUTHENTICATED before its request is
decoded. A call that passes runs with its tenant as `current_tenant()`.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable

import grpc

from yaie.scheduler_service.ops.tenants import (
    ANONYMOUS,
    API_KEY_ENV,
    Tenant,
    TenantDefaults,
    key_digest,
    load_keys,
)

logger = logging.getLogger(__name__)
# Method prefixes served without a key: load balancers probe health, tools list services.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_CURRENT_TENANT: contextvars.ContextVar[Tenant] = contextvars.ContextVar(
    "yaie_tenant", default=ANONYMOUS
)
NO_LIMITS = TenantDefaults()


def current_tenant() -> Tenant:
    """The tenant of the gRPC call being served (each call runs in a task of its own); the
    anonymous tenant on a server without keys."""
    return _CURRENT_TENANT.get()


class KeyTable:
    """Who each API key is; `reload()` re-reads the key file (SIGHUP). A table built with no
    key file and no $YAIE_API_KEY is open: every caller is the anonymous tenant."""

    def __init__(
        self,
        key_file: str | None = None,
        defaults: TenantDefaults = NO_LIMITS,
        environ: dict[str, str] | None = None,
    ) -> None:
        self._source = (key_file, defaults, environ)
        self._tenants = load_keys(key_file, defaults, environ)

    @classmethod
    def single(cls, key: bytes, defaults: TenantDefaults = NO_LIMITS) -> KeyTable:
        """A table of one key (tenant `default`, an admin)."""
        return cls(None, defaults, {API_KEY_ENV: key.decode("ascii")})

    @property
    def required(self) -> bool:
        """Whether callers need a key."""
        return self._tenants is not None

    def tenants(self) -> list[Tenant]:
        return sorted(set((self._tenants or {}).values()), key=lambda t: t.name)

    def tenant_of(self, metadata: tuple | list | None) -> Tenant | None:
        """The tenant whose key the metadata's one `authorization: Bearer <key>` entry holds;
        None when there is no such entry or the key is unknown."""
        if self._tenants is None:
            return ANONYMOUS
        key = bearer_key(metadata)
        return None if key is None else self._tenants.get(key_digest(key))

    def reload(self) -> None:
        """Re-reads the key file; on a ValueError the table stays as it was."""
        key_file, defaults, environ = self._source
        if self._tenants is None:
            return  # an open server stays open (its calls pass no interceptor)
        self._tenants = load_keys(key_file, defaults, environ)
        logger.info("API keys reloaded: %d tenant(s)", len(self.tenants()))


def bearer_key(metadata: tuple | list | None) -> bytes | None:
    """The key of exactly one `authorization: Bearer <key>` entry (exact scheme and spacing)."""
    values = [value for name, value in metadata or () if name == "authorization"]
    if len(values) != 1:
        return None
    value = values[0]
    given = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    if not given.startswith(b"Bearer ") or not given[7:] or b" " in given[7:]:
        return None
    return given[7:]


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


def _as_tenant(behavior: Callable, tenant: Tenant) -> Callable:
    """behavior, run with tenant as current_tenant()."""
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request: object, context: grpc.aio.ServicerContext):
            _CURRENT_TENANT.set(tenant)
            async for reply in behavior(request, context):
                yield reply

        return streaming

    async def unary(request: object, context: grpc.aio.ServicerContext):
        _CURRENT_TENANT.set(tenant)
        return await behavior(request, context)

    return unary


def _for_tenant(handler: grpc.RpcMethodHandler, tenant: Tenant) -> grpc.RpcMethodHandler:
    kinds = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
    kind = next(kind for kind in kinds if getattr(handler, kind) is not None)
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(
        _as_tenant(getattr(handler, kind), tenant),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses every call but health and reflection unless it carries a key of keys; a call
    that passes runs as the key's tenant."""

    def __init__(self, keys: KeyTable) -> None:
        if not keys.required:
            raise ValueError("an API key interceptor needs a table with keys")
        self._keys = keys

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        tenant = self._keys.tenant_of(details.invocation_metadata)
        if tenant is None:
            return _denying(handler)
        return _for_tenant(handler, tenant)
