"""The OpenAI request bodies the HTTP API accepts (pydantic, strict types: a wrong type is 400),
with the extensions SGLang and vLLM take; unknown fields are ignored, as OpenAI's server does.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

B = TypeVar("B", bound=BaseModel)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class StreamOptions(_Body):
    include_usage: bool = False


class JsonSchemaFormat(_Body):
    name: str = ""
    description: str | None = None
    # "schema" shadows a BaseModel attribute: the field is named schema_ under its JSON name.
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class SamplingFields(_Body):
    """Fields common to chat and completions (the engine's sampling and stopping knobs)."""

    model: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # Extensions (SGLang / vLLM names)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    regex: str | None = None
    ebnf: str | None = None
    # vLLM's meaning: lower is handled first (the gRPC field's sign is the other way round).
    priority: int = 0


class ContentPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class CompletionRequest(SamplingFields):
    # list[int] before list[str]: the union tries its members in order, and a token-id prompt
    # checked as list[str] first builds an error per id (~5x the whole body's validation).
    prompt: str | list[int] | list[str] | list[list[int]]
    # OpenAI's legacy default: 16 tokens when max_tokens is left out.
    max_tokens: int | None = 16
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None


def parse_body(model: type[B], raw: bytes) -> B:
    """The body, parsed and validated by pydantic in one pass over the bytes (FastAPI's own body
    handling decodes with json.loads, then validates the Python objects: ~4x the time for a
    1000-id prompt); errors raise as FastAPI's would, located under "body"."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as error:
        errors = [{**item, "loc": ("body", *item["loc"])} for item in error.errors()]
        raise RequestValidationError(errors) from None
