"""GenerateRequest (protobuf) -> GenerationRequest with every default resolved, or ValueError.

Every check that can fail a request without the engine happens here, so a bad request becomes
INVALID_ARGUMENT before any worker is reached.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from yaie.kernels.sampling.config import SamplingConfig
from yaie.kernels.sampling.grammar import check_grammar
from yaie.scheduler_service.engine.request import MAX_COMPLETIONS, GenerationRequest
from yaie.v1 import generation_pb2 as pb

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
MAX_CACHE_SALT_BYTES = 256
MAX_PRIORITY = 1000  # GenerateRequest.priority is in [-MAX_PRIORITY, MAX_PRIORITY]
# A client's request_id is echoed in every frame and written into the request logs: short, and
# printable ASCII (no newline to forge a log line with, no bytes a terminal acts on).
MAX_REQUEST_ID_CHARS = 128
_REQUEST_ID = re.compile(r"[\x20-\x7e]*")


class PromptEncoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...


@dataclass(frozen=True)
class ModelLimits:
    """What the served model accepts (from the workers' Describe and the tokenizer)."""

    vocab_size: int
    max_context: int
    eos_token_ids: frozenset[int] = frozenset()
    # The server's treatment of constrained requests (SchedulerConfig.enable_jump_forward).
    jump_forward: bool = False


@dataclass(frozen=True)
class ValidatedRequest:
    """The engine's request plus what the API layer needs to shape the output text."""

    generation: GenerationRequest
    stop_strings: tuple[str, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = False


def check_request_id(request_id: str) -> None:
    """ValueError unless request_id is at most 128 printable ASCII characters (empty: the
    server assigns one)."""
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise ValueError(
            f"request_id has {len(request_id)} characters: at most {MAX_REQUEST_ID_CHARS}"
        )
    if not _REQUEST_ID.fullmatch(request_id):
        raise ValueError("request_id must be printable ASCII (U+0020 to U+007E)")


def check_ids(name: str, ids: Sequence[int] | np.ndarray, vocab_size: int) -> None:
    """ValueError naming the first id outside [0, vocab_size) (min and max: C loops)."""
    if len(ids) == 0:
        return
    if isinstance(ids, np.ndarray):
        low, high = int(ids.min()), int(ids.max())
    else:
        low, high = min(ids), max(ids)
    if low < 0 or high >= vocab_size:
        bad = next(int(t) for t in ids if not 0 <= t < vocab_size)
        raise ValueError(f"{name}: token id {bad} is outside the vocabulary [0, {vocab_size})")


def _check_range(name: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    """Rejects NaN too (every comparison with NaN is false)."""
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")


# No tokenizer has tokens longer than this on average: text past max_context times this cannot
# fit, and is refused before tokenizing it, which runs on the scheduler's only thread.
MAX_CHARS_PER_TOKEN = 64


def check_text_length(field: str, num_chars: int, max_context: int) -> None:
    """ValueError when text of num_chars characters could not fit in max_context tokens."""
    if num_chars > max_context * MAX_CHARS_PER_TOKEN:
        raise ValueError(
            f"{field} has {num_chars} characters: more than the model's context of "
            f"{max_context} tokens could hold"
        )


def check_num_ids(field: str, num_ids: int, max_context: int) -> None:
    """ValueError when num_ids token ids are more than the model's context."""
    if num_ids > max_context:
        raise ValueError(
            f"{field} has {num_ids} token ids: more than the model's context of {max_context}"
        )


def input_size(request: pb.GenerateRequest) -> tuple[int, int]:
    """(characters of text, token ids) in the request's input: what tokenizing it costs."""
    kind = request.WhichOneof("input")
    if kind == "text":
        return len(request.text), 0
    if kind == "messages":
        return sum(len(m.content) + len(m.role) for m in request.messages.messages), 0
    if kind == "token_ids":
        return 0, len(request.token_ids.ids)
    return 0, 0


def prompt_ids(
    request: pb.GenerateRequest, encoder: PromptEncoder, vocab_size: int, max_context: int
) -> list[int]:
    """The request's prompt as token ids (text tokenized, chat messages templated)."""
    kind = request.WhichOneof("input")
    if kind is None:
        raise ValueError("input is required: set text, token_ids or messages")
    if kind == "text":
        if not request.text:
            raise ValueError("input text is empty")
        check_text_length("input text", len(request.text), max_context)
        ids = encoder.encode(request.text)
    elif kind == "token_ids":
        if not request.token_ids.ids:
            raise ValueError("input token_ids is empty")
        check_num_ids("input token_ids", len(request.token_ids.ids), max_context)
        ids = list(request.token_ids.ids)
    else:
        messages = request.messages.messages
        if not messages:
            raise ValueError("input messages is empty")
        if len(messages) > max_context:  # every message costs its template some tokens
            raise ValueError(
                f"input messages has {len(messages)} messages: more than the model's context "
                f"of {max_context} tokens could hold"
            )
        num_chars = sum(len(m.content) + len(m.role) for m in messages)
        check_text_length("input messages", num_chars, max_context)
        ids = encoder.encode_chat(
            [{"role": m.role, "content": m.content} for m in request.messages.messages]
        )
    if not ids:
        raise ValueError("the prompt tokenizes to no tokens")
    check_ids("prompt", ids, vocab_size)
    return ids


def sampling_config(
    params: pb.SamplingParams, output: pb.OutputOptions, vocab_size: int
) -> SamplingConfig:
    """Resolves unset optional fields to their defaults and checks every range."""
    temperature = params.temperature if params.HasField("temperature") else 1.0
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be finite and >= 0, got {temperature}")
    top_p = params.top_p if params.HasField("top_p") else 1.0
    _check_range("top_p", top_p, 0.0, 1.0, low_open=True)
    top_k = params.top_k if params.HasField("top_k") else 0
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    min_p = params.min_p if params.HasField("min_p") else 0.0
    _check_range("min_p", min_p, 0.0, 1.0)
    repetition = params.repetition_penalty if params.HasField("repetition_penalty") else 1.0
    if not (math.isfinite(repetition) and repetition > 0):
        raise ValueError(f"repetition_penalty must be finite and > 0, got {repetition}")
    frequency = params.frequency_penalty if params.HasField("frequency_penalty") else 0.0
    _check_range("frequency_penalty", frequency, -2.0, 2.0)
    presence = params.presence_penalty if params.HasField("presence_penalty") else 0.0
    _check_range("presence_penalty", presence, -2.0, 2.0)
    check_ids("logit_bias", list(params.logit_bias), vocab_size)
    if any(math.isnan(bias) for bias in params.logit_bias.values()):
        raise ValueError("logit_bias values must be numbers, got NaN")
    if output.top_logprobs > MAX_TOP_LOGPROBS:
        raise ValueError(
            f"top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {output.top_logprobs}"
        )
    return SamplingConfig(
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        repetition_penalty=repetition,
        frequency_penalty=frequency,
        presence_penalty=presence,
        # Unset: a fresh random seed per request (63 bits, so it fits any signed 64-bit field).
        seed=params.seed if params.HasField("seed") else secrets.randbits(63),
        logit_bias=dict(params.logit_bias),
        top_logprobs=output.top_logprobs,
        return_logprobs=output.logprobs or output.top_logprobs > 0,
    )


def _with_constraint(
    sampling: SamplingConfig, response_format: pb.ResponseFormat, jump_forward: bool
) -> SamplingConfig:
    """sampling with the response format's constraint, whose syntax XGrammar checked (without
    the vocabulary: the worker compiles it); ValueError with the compiler's reason."""
    kind = response_format.WhichOneof("format")
    if kind is None:
        return sampling
    if kind == "json_object" and not response_format.json_object:
        raise ValueError("response_format.json_object must be true when set")
    text = "" if kind == "json_object" else getattr(response_format, kind)
    try:
        check_grammar(kind, text)
    except ValueError as exc:
        raise ValueError(f"response_format.{exc}") from exc
    return dataclasses.replace(sampling, grammar_kind=kind, grammar=text, jump_forward=jump_forward)


def _max_new_tokens(stopping: pb.StoppingCriteria, num_prompt: int, max_context: int) -> int:
    if num_prompt >= max_context:
        raise ValueError(
            f"the prompt has {num_prompt} tokens; the model's context is {max_context} tokens"
        )
    room = max_context - num_prompt
    if not stopping.HasField("max_new_tokens"):
        return room
    if stopping.max_new_tokens < 1:
        raise ValueError("max_new_tokens must be >= 1 (leave it unset to fill the context)")
    if stopping.max_new_tokens > room:
        raise ValueError(
            f"prompt ({num_prompt} tokens) + max_new_tokens ({stopping.max_new_tokens}) exceeds "
            f"the model's context of {max_context} tokens"
        )
    return stopping.max_new_tokens


def num_completions(request: pb.GenerateRequest) -> int:
    """GenerateRequest.n: 0 (proto3 cannot tell it from unset) is 1; above MAX_COMPLETIONS is
    refused."""
    if request.n > MAX_COMPLETIONS:
        raise ValueError(f"n must be at most {MAX_COMPLETIONS} (0 or unset: 1), got {request.n}")
    return request.n or 1


def validate_generate(
    request: pb.GenerateRequest, request_id: str, encoder: PromptEncoder, limits: ModelLimits
) -> ValidatedRequest:
    """Checks a GenerateRequest and resolves its defaults; raises ValueError naming the field."""
    n = num_completions(request)
    ids = prompt_ids(request, encoder, limits.vocab_size, limits.max_context)
    sampling = sampling_config(request.sampling, request.output, limits.vocab_size)
    stopping = request.stopping
    max_new_tokens = _max_new_tokens(stopping, len(ids), limits.max_context)
    if stopping.min_new_tokens > max_new_tokens:
        raise ValueError(
            f"min_new_tokens ({stopping.min_new_tokens}) exceeds max_new_tokens ({max_new_tokens})"
        )
    if len(stopping.stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stopping.stop)}")
    if any(not stop for stop in stopping.stop):
        raise ValueError("stop strings must not be empty")
    check_ids("stop_token_ids", list(stopping.stop_token_ids), limits.vocab_size)
    if len(request.cache_salt.encode("utf-8")) > MAX_CACHE_SALT_BYTES:
        raise ValueError(f"cache_salt must be at most {MAX_CACHE_SALT_BYTES} bytes")
    if not -MAX_PRIORITY <= request.priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be in [-{MAX_PRIORITY}, {MAX_PRIORITY}], got {request.priority}"
        )
    sampling = _with_constraint(sampling, request.response_format, limits.jump_forward)
    stop_ids = set(stopping.stop_token_ids)
    if not stopping.ignore_eos:
        stop_ids |= limits.eos_token_ids
    generation = GenerationRequest(
        request_id=request_id,
        prompt_ids=ids,
        sampling=sampling,
        max_new_tokens=max_new_tokens,
        min_new_tokens=stopping.min_new_tokens,
        stop_token_ids=frozenset(stop_ids),
        namespace=request.cache_salt,  # tenants with different salts share no cached prefix
        n=n,
        priority=request.priority,
    )
    return ValidatedRequest(
        generation=generation,
        stop_strings=tuple(stopping.stop),
        include_stop_str_in_output=stopping.include_stop_str_in_output,
        skip_special_tokens=request.output.skip_special_tokens,
    )
