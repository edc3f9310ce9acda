"""The request path both public APIs share (yaie.v1 over gRPC, the OpenAI HTTP API): a
GenerateRequest in, its GenerateResponse frames out; validation, admission, stop strings and
the abort of a request whose reader went away all happen here, once.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from yaie.scheduler_service.api.output_stream import OutputStream
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.api.validation import ModelLimits, ValidatedRequest, validate_generate
from yaie.scheduler_service.engine.errors import ResourceExhaustedError, UnavailableError
from yaie.scheduler_service.engine.request import GenerationRequest, OutputEvent
from yaie.scheduler_service.ops.tenants import ANONYMOUS, Tenant
from yaie.v1 import generation_pb2 as pb


class EngineApi(Protocol):
    """The part of scheduler_service.engine.Engine the public APIs call."""

    model_info: Any
    ready: bool

    def check_admissible(self, request: GenerationRequest) -> None: ...
    def submit(self, request: GenerationRequest) -> AsyncIterator[OutputEvent]: ...
    def abort(self, request_id: str, tenant: str = "") -> bool: ...
    def finish(self, request_id: str, tenant: str = "") -> None: ...
    def tenant_load(self, tenant: str) -> tuple[int, int]: ...
    def stats(self) -> Any: ...


class Frontend:
    """One engine's public request path; UnavailableError until `attach_tokenizer`."""

    def __init__(self, engine: EngineApi, tokenizer: Tokenizer | None = None) -> None:
        self.engine = engine
        self._tokenizer = tokenizer
        self._live: set[tuple[str, str]] = set()  # (tenant, request_id) of streams open here

    def attach_tokenizer(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    def ready_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None or not self.engine.ready:
            raise UnavailableError("the server is starting (workers not ready) or draining")
        return self._tokenizer

    def limits(self, tokenizer: Tokenizer) -> ModelLimits:
        info = self.engine.model_info
        config = getattr(self.engine, "config", None)  # a test's fake engine may have none
        jump_forward = getattr(config, "enable_jump_forward", False)
        return ModelLimits(info.vocab_size, info.max_context, tokenizer.eos_token_ids, jump_forward)

    async def generate(
        self, request: pb.GenerateRequest, tenant: Tenant = ANONYMOUS
    ) -> AsyncIterator[pb.GenerateResponse]:
        """The request's frames, the last with its finish reason. Raises ValueError (a bad
        request), ResourceExhaustedError or UnavailableError before the first frame; a reader
        that stops early (cancel, disconnect, aclose) has the request aborted in the engine.
        The request is tenant's: its id is checked against tenant's alone, its prefix-cache
        namespace is tenant's, and tenant's limits apply."""
        tokenizer = self.ready_tokenizer()
        request_id = request.request_id or uuid.uuid4().hex
        key = (tenant.name, request_id)
        if key in self._live:
            raise ValueError(f"request_id {request_id!r} is already live")
        validated = validate_generate(request, request_id, tokenizer, self.limits(tokenizer))
        validated = _for_tenant(validated, tenant, request.cache_salt)
        self._check_tenant_limits(tenant)
        self.engine.check_admissible(validated.generation)
        stream = OutputStream(validated, tokenizer)
        events = self.engine.submit(validated.generation)
        self._live.add(key)
        try:
            async for event in events:
                frame = stream.frame(event)
                if stream.matched_stop is not None and event.finish_reason is None:
                    self.engine.finish(request_id, tenant.name)
                if frame is not None:
                    yield frame
                if stream.finished:
                    break
        finally:
            # Client cancel, deadline, disconnect, or an error: the engine must drop the request.
            self._live.discard(key)
            if not stream.finished:
                self.engine.abort(request_id, tenant.name)
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    def _check_tenant_limits(self, tenant: Tenant) -> None:
        """ResourceExhaustedError when tenant is at one of its limits."""
        if tenant.max_concurrent is None and tenant.max_queued is None:
            return
        live, waiting = self.engine.tenant_load(tenant.name)
        if tenant.max_concurrent is not None and live >= tenant.max_concurrent:
            raise ResourceExhaustedError(
                f"tenant {tenant.label} has {live} requests live (its limit: "
                f"{tenant.max_concurrent})"
            )
        if tenant.max_queued is not None and waiting >= tenant.max_queued:
            raise ResourceExhaustedError(
                f"tenant {tenant.label} has {waiting} requests queued (its limit: "
                f"{tenant.max_queued})"
            )


def _for_tenant(validated: ValidatedRequest, tenant: Tenant, cache_salt: str) -> ValidatedRequest:
    """validated's request as tenant's, in tenant's prefix-cache namespace."""
    generation = dataclasses.replace(
        validated.generation, tenant=tenant.name, namespace=tenant.cache_namespace(cache_salt)
    )
    return dataclasses.replace(validated, generation=generation)
