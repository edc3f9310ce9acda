"""OpenAI request bodies -> yaie.v1 GenerateRequest messages, the input of the shared request
path (api/frontend.py), so both APIs validate and generate alike. ValueError names the field.
"""

from __future__ import annotations

import json

from yaie.scheduler_service.api.http.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    SamplingFields,
)
from yaie.scheduler_service.api.validation import MAX_PRIORITY
from yaie.scheduler_service.engine.request import MAX_COMPLETIONS
from yaie.v1 import generation_pb2 as pb

# Prompts one /v1/completions call may batch (each is a request of its own in the engine).
MAX_PROMPTS = 64
# Fields named alike in the body and in SamplingParams (None: the engine's default).
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "frequency_penalty",
    "presence_penalty",
    "repetition_penalty",
)


def _sampling(body: SamplingFields) -> pb.SamplingParams:
    if body.seed is not None and not 0 <= body.seed < 1 << 64:
        raise ValueError(f"seed must be in [0, 2**64), got {body.seed}")
    params = pb.SamplingParams()
    for name in _SAMPLING_FIELDS:
        value = getattr(body, name)
        if value is not None:
            setattr(params, name, value)
    for key, bias in (body.logit_bias or {}).items():
        try:
            params.logit_bias[int(key)] = bias
        except ValueError:
            raise ValueError(f"logit_bias: keys must be token ids, got {key!r}") from None
    return params


def _stopping(body: SamplingFields, max_tokens: int | None) -> pb.StoppingCriteria:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    stopping = pb.StoppingCriteria(
        stop=stop,
        stop_token_ids=body.stop_token_ids or [],
        ignore_eos=body.ignore_eos,
        include_stop_str_in_output=body.include_stop_str_in_output,
    )
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        stopping.max_new_tokens = max_tokens
    if body.min_tokens < 0:
        raise ValueError(f"min_tokens must be >= 0, got {body.min_tokens}")
    stopping.min_new_tokens = body.min_tokens  # ignores EOS and stops until then (see README)
    return stopping


def _response_format(body: SamplingFields) -> pb.ResponseFormat:
    chosen: list[pb.ResponseFormat] = []
    kind = body.response_format.type if body.response_format else "text"
    if kind == "json_object":
        chosen.append(pb.ResponseFormat(json_object=True))
    elif kind == "json_schema":
        spec = body.response_format.json_schema
        if spec is None:
            raise ValueError("response_format: json_schema is required with type json_schema")
        chosen.append(pb.ResponseFormat(json_schema=json.dumps(spec.schema_)))
    if body.regex is not None:
        chosen.append(pb.ResponseFormat(regex=body.regex))
    if body.ebnf is not None:
        chosen.append(pb.ResponseFormat(ebnf=body.ebnf))
    if len(chosen) > 1:
        raise ValueError("set at most one of response_format, regex and ebnf")
    return chosen[0] if chosen else pb.ResponseFormat()


def _priority(body: SamplingFields) -> int:
    """vLLM's priority (lower first) as GenerateRequest.priority (higher first)."""
    if not -MAX_PRIORITY <= body.priority <= MAX_PRIORITY:
        raise ValueError(
            f"priority must be in [-{MAX_PRIORITY}, {MAX_PRIORITY}], got {body.priority}"
        )
    return -body.priority


def _common(body: SamplingFields, request_id: str, max_tokens: int | None) -> pb.GenerateRequest:
    if not 1 <= body.n <= MAX_COMPLETIONS:
        raise ValueError(f"n must be in [1, {MAX_COMPLETIONS}], got {body.n}")
    return pb.GenerateRequest(
        request_id=request_id,
        sampling=_sampling(body),
        stopping=_stopping(body, max_tokens),
        response_format=_response_format(body),
        n=body.n,  # the choices of one prompt: its n completions (GenerateResponse.index)
        priority=_priority(body),
    )


def _message_text(message: ChatMessage) -> str:
    """String content, or the text parts of the list form joined by newlines (vLLM's way)."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise ValueError(f"messages: content parts of type {part.type!r} are not supported")
        texts.append(part.text)
    return "\n".join(texts)


def chat_request(body: ChatCompletionRequest, request_id: str) -> pb.GenerateRequest:
    max_tokens = body.max_completion_tokens or body.max_tokens
    message = _common(body, request_id, max_tokens)
    for item in body.messages:
        message.messages.messages.add(role=item.role, content=_message_text(item))
    if not body.messages:
        raise ValueError("messages must not be empty")
    top = body.top_logprobs or 0
    if top and not body.logprobs:
        raise ValueError("top_logprobs needs logprobs: true")
    if top < 0:
        raise ValueError(f"top_logprobs must be >= 0, got {top}")
    message.output.CopyFrom(
        pb.OutputOptions(
            logprobs=body.logprobs, top_logprobs=top, skip_special_tokens=body.skip_special_tokens
        )
    )
    return message


def _prompts(prompt: str | list[int] | list[str] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    # The body's validation made the list one of the union's kinds: its first item tells which.
    if prompt and isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)  # several prompts: strings or token id lists


def completion_requests(body: CompletionRequest, request_id: str) -> list[pb.GenerateRequest]:
    """One GenerateRequest per prompt of the body (ids request_id-0, -1, ... when several),
    each with the body's n: prompt p's completion i is choice p * n + i, as OpenAI numbers them."""
    if body.echo or body.suffix:
        raise ValueError("echo and suffix are not supported by this server")
    if body.logprobs is not None and body.logprobs < 0:
        raise ValueError(f"logprobs must be >= 0, got {body.logprobs}")
    prompts = _prompts(body.prompt)
    if not prompts or len(prompts) > MAX_PROMPTS:
        raise ValueError(f"prompt: give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
    output = pb.OutputOptions(
        logprobs=body.logprobs is not None,
        top_logprobs=body.logprobs or 0,
        skip_special_tokens=body.skip_special_tokens,
    )
    messages = []
    for index, prompt in enumerate(prompts):
        rid = request_id if len(prompts) == 1 else f"{request_id}-{index}"
        message = _common(body, rid, body.max_tokens)
        if isinstance(prompt, str):
            message.text = prompt
        else:
            message.token_ids.ids.extend(prompt)
        message.output.CopyFrom(output)
        messages.append(message)
    return messages
