"""The request path both public APIs share (yaie.v1 over gRPC, the OpenAI HTTP API): a
GenerateRequest in, its GenerateResponse frames out; validation, admission, stop strings and
the abort of a request whose reader went away all happen here, once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from yaie.scheduler_service.api.output_stream import OutputStream
from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.api.validation import (
    ModelLimits,
    check_request_id,
    validate_generate,
)
from yaie.scheduler_service.engine.errors import UnavailableError
from yaie.scheduler_service.engine.request import GenerationRequest, OutputEvent
from yaie.v1 import generation_pb2 as pb


class EngineApi(Protocol):
    """The part of scheduler_service.engine.Engine the public APIs call."""

    model_info: Any
    ready: bool

    def check_admissible(self, request: GenerationRequest) -> None: ...
    def submit(self, request: GenerationRequest) -> AsyncIterator[OutputEvent]: ...
    def abort(self, request_id: str) -> bool: ...
    def finish(self, request_id: str) -> None: ...
    def stats(self) -> Any: ...


class Frontend:
    """One engine's public request path; UnavailableError until `attach_tokenizer`."""

    def __init__(self, engine: EngineApi, tokenizer: Tokenizer | None = None) -> None:
        self.engine = engine
        self._tokenizer = tokenizer
        self._live: set[str] = set()

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

    async def generate(self, request: pb.GenerateRequest) -> AsyncIterator[pb.GenerateResponse]:
        """The request's frames, the last with its finish reason. Raises ValueError (a bad
        request), ResourceExhaustedError or UnavailableError before the first frame; a reader
        that stops early (cancel, disconnect, aclose) has the request aborted in the engine."""
        tokenizer = self.ready_tokenizer()
        check_request_id(request.request_id)
        request_id = request.request_id or uuid.uuid4().hex
        if request_id in self._live:
            raise ValueError(f"request_id {request_id!r} is already live")
        validated = validate_generate(request, request_id, tokenizer, self.limits(tokenizer))
        self.engine.check_admissible(validated.generation)
        stream = OutputStream(validated, tokenizer)
        events = self.engine.submit(validated.generation)
        self._live.add(request_id)
        try:
            async for event in events:
                frame = stream.frame(event)
                if stream.matched_stop is not None and event.finish_reason is None:
                    self.engine.finish(request_id)
                if frame is not None:
                    yield frame
                if stream.finished:
                    break
        finally:
            # Client cancel, deadline, disconnect, or an error: the engine must drop the request.
            self._live.discard(request_id)
            if not stream.finished:
                self.engine.abort(request_id)
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
