"""The request path both public APIs share (yaie.v1 over gRPC, the OpenAI HTTP API): a
GenerateRequest in, its GenerateResponse frames out; validation, admission, stop strings and
the abort of a request whose reader went away all happen here, once.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

import numpy as np

from yaie.scheduler_service.api.cpu_pool import INLINE_MAX_CHARS, INLINE_MAX_IDS, CpuPool
from yaie.scheduler_service.api.output_stream import OutputStream
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.api.validation import (
    ModelLimits,
    ValidatedRequest,
    check_ids,
    check_num_ids,
    check_request_id,
    check_text_length,
    input_size,
    validate_generate,
)
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
    def finish(self, request_id: str, tenant: str = "", *, index: int = 0) -> None: ...
    def tenant_load(self, tenant: str) -> tuple[int, int]: ...
    def stats(self) -> Any: ...


class Frontend:
    """One engine's public request path; UnavailableError until `attach_tokenizer`. Tokenizing
    and detokenizing large inputs run in `cpu_pool`'s threads, off the event loop."""

    def __init__(self, engine: EngineApi, tokenizer: Tokenizer | None = None) -> None:
        self.engine = engine
        self._tokenizer = tokenizer
        self._live: set[tuple[str, str]] = set()  # (tenant, request_id) of streams open here
        self.cpu_pool = CpuPool()

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
        """The request's frames, each completion's last with its finish reason (n > 1: the
        completions' frames interleave, each with its index). Raises ValueError (a bad
        request), ResourceExhaustedError or UnavailableError before the first frame; a reader
        that stops early (cancel, disconnect, aclose) has the request aborted in the engine.
        The request is tenant's: its id is checked against tenant's alone, its prefix-cache
        namespace is tenant's, and tenant's limits apply."""
        tokenizer = self.ready_tokenizer()
        check_request_id(request.request_id)
        request_id = request.request_id or uuid.uuid4().hex
        key = (tenant.name, request_id)
        if key in self._live:
            raise ValueError(f"request_id {request_id!r} is already live")
        num_chars, num_ids = input_size(request)
        heavy = num_chars > INLINE_MAX_CHARS or num_ids > INLINE_MAX_IDS
        limits = self.limits(tokenizer)
        validated = await self.cpu_pool.run(
            heavy, validate_generate, request, request_id, tokenizer, limits
        )
        validated = _for_tenant(validated, tenant, request.cache_salt)
        # From here to submit nothing awaits: the tenant's load checked is the load admitted to.
        self._check_tenant_limits(tenant, validated.generation.n)
        self.engine.check_admissible(validated.generation)
        streams = [OutputStream(validated, tokenizer, i) for i in range(validated.generation.n)]
        events = self.engine.submit(validated.generation)
        self._live.add(key)
        try:
            async for event in events:
                stream = streams[event.index]
                if stream.finished:  # ended by a stop string: the engine's own end is dropped
                    continue
                frame = stream.frame(event)
                if stream.matched_stop is not None and event.finish_reason is None:
                    self.engine.finish(request_id, tenant.name, index=event.index)
                if frame is not None:
                    yield frame
                if all(s.finished for s in streams):
                    break
        finally:
            # Client cancel, deadline, disconnect, or an error: the engine must drop the request.
            self._live.discard(key)
            if not all(s.finished for s in streams):
                self.engine.abort(request_id, tenant.name)
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()

    async def tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        """text's token ids; ValueError when it could not fit the model's context."""
        tokenizer = self.ready_tokenizer()
        check_text_length("text", len(text), self.engine.model_info.max_context)
        heavy = len(text) > INLINE_MAX_CHARS
        return await self.cpu_pool.run(heavy, tokenizer.encode, text, add_special_tokens)

    async def detokenize(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        """The text of ids; ValueError for more ids than the model's context, or one outside
        the vocabulary."""
        tokenizer = self.ready_tokenizer()
        info = self.engine.model_info
        check_num_ids("ids", len(ids), info.max_context)
        heavy = len(ids) > INLINE_MAX_IDS
        return await self.cpu_pool.run(
            heavy, _checked_decode, tokenizer, ids, info.vocab_size, skip_special_tokens
        )

    def _check_tenant_limits(self, tenant: Tenant, num_completions: int) -> None:
        """ResourceExhaustedError when a request of num_completions (GenerateRequest.n) would
        take tenant past one of its limits: each completion counts as a request, as in the
        server's own queue limit."""
        if tenant.max_concurrent is None and tenant.max_queued is None:
            return
        live, waiting = self.engine.tenant_load(tenant.name)
        if tenant.max_concurrent is not None and live + num_completions > tenant.max_concurrent:
            raise ResourceExhaustedError(
                f"tenant {tenant.label} has {live} requests live and asks for "
                f"{num_completions} more (its limit: {tenant.max_concurrent})"
            )
        if tenant.max_queued is not None and waiting + num_completions > tenant.max_queued:
            raise ResourceExhaustedError(
                f"tenant {tenant.label} has {waiting} requests queued and asks for "
                f"{num_completions} more (its limit: {tenant.max_queued})"
            )


def _for_tenant(validated: ValidatedRequest, tenant: Tenant, cache_salt: str) -> ValidatedRequest:
    """validated's request as tenant's, in tenant's prefix-cache namespace."""
    generation = dataclasses.replace(
        validated.generation, tenant=tenant.name, namespace=tenant.cache_namespace(cache_salt)
    )
    return dataclasses.replace(validated, generation=generation)


def _checked_decode(
    tokenizer: Tokenizer, ids: Sequence[int], vocab_size: int, skip_special_tokens: bool
) -> str:
    # One array copy (~1 ms for 2M ids) instead of Python ints for min, max and a list: each
    # of those held the GIL, and so stalled the event loop, ~0.1 s.
    array = np.asarray(ids, dtype=np.int64)
    check_ids("ids", array, vocab_size)
    return tokenizer.decode(array.tolist(), skip_special_tokens)
