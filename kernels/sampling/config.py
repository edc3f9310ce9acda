"""One request's sampling parameters, resolved and validated: shared by the scheduler (which
must not import torch) and the worker's sampler (kernels/sampling/batch.py batches them).
The one codec to and from a message with the same fields (from_message, message_fields)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

# Temperatures below this are greedy (as vLLM does): dividing by them only overflows.
GREEDY_TEMPERATURE = 1e-5
# Alternatives per sampled token a request may ask for (the public API allows 20): bounds the
# top-k over the vocabulary and the size of a step result.
MAX_TOP_LOGPROBS = 64
# What a structured-output constraint's text is (grammar_kind): "" means unconstrained.
GRAMMAR_KINDS = ("", "json_schema", "json_object", "regex", "ebnf")


@dataclass(frozen=True)
class SamplingConfig:
    """One request's resolved sampling parameters (python values, validated on construction).

    temperature 0 (or below GREEDY_TEMPERATURE) is greedy; top_k 0 (or >= vocab) is off; top_p 1
    and min_p 0 are off; penalties of 1 / 0 / 0 are off. seed is any integer in [0, 2^64).
    logit_bias maps token id -> additive bias. top_logprobs > 0 or return_logprobs asks for the
    chosen token's logprob (and the top-n) of the raw logits. grammar_kind (GRAMMAR_KINDS) and
    grammar (its text: a JSON schema, a regex, an EBNF grammar; empty for json_object) constrain
    the output (the worker compiles them, worker_service/step/grammar.py); jump_forward lets the
    worker append the tokens such a grammar forces without a decode step each.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int = 0
    logit_bias: Mapping[int, float] = field(default_factory=lambda: MappingProxyType({}))
    top_logprobs: int = 0
    return_logprobs: bool = False
    grammar_kind: str = ""
    grammar: str = ""
    jump_forward: bool = True

    def __post_init__(self) -> None:
        checks = [
            (math.isfinite(self.temperature) and self.temperature >= 0, "temperature >= 0"),
            (0.0 < self.top_p <= 1.0, "0 < top_p <= 1"),
            (self.top_k >= 0, "top_k >= 0"),
            (0.0 <= self.min_p <= 1.0, "0 <= min_p <= 1"),
            (
                math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
                "repetition_penalty > 0",
            ),
            (math.isfinite(self.frequency_penalty), "finite frequency_penalty"),
            (math.isfinite(self.presence_penalty), "finite presence_penalty"),
            (0 <= self.seed < 2**64, "0 <= seed < 2^64"),
            (0 <= self.top_logprobs <= MAX_TOP_LOGPROBS, f"top_logprobs <= {MAX_TOP_LOGPROBS}"),
            (
                all(not math.isnan(float(v)) for v in self.logit_bias.values()),
                "logit_bias values that are not NaN (+-inf bans or forces a token)",
            ),
            (self.grammar_kind in GRAMMAR_KINDS, f"grammar_kind in {GRAMMAR_KINDS}"),
            (bool(self.grammar_kind) or not self.grammar, "a grammar_kind for the grammar text"),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"invalid sampling parameters: need {what}, got {self}")

    @classmethod
    def from_message(cls, message: object) -> SamplingConfig:
        """The config of any object with one attribute per field, read by name (the worker
        protocol's SamplingParams, say); mappings are copied into dicts. ValueError as on
        construction; AttributeError when the object lacks a field."""
        return cls(**{f.name: _plain(getattr(message, f.name)) for f in fields(cls)})

    def message_fields(self) -> dict[str, Any]:
        """Every field by name, mappings as dicts: the keyword arguments of a message with the
        same fields (worker_pb2.SamplingParams(**config.message_fields()))."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @property
    def is_greedy(self) -> bool:
        """True when this request takes the argmax of its processed logits."""
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def uses_penalties(self) -> bool:
        """True when any of the repetition / frequency / presence penalties is on."""
        return (
            self.repetition_penalty != 1.0
            or self.frequency_penalty != 0.0
            or self.presence_penalty != 0.0
        )

    @property
    def is_constrained(self) -> bool:
        """True when a grammar constrains the output (structured output)."""
        return bool(self.grammar_kind)

    @property
    def wants_logprobs(self) -> bool:
        """True when the sampled token's logprob (and maybe the top-n) goes back."""
        return self.return_logprobs or self.top_logprobs > 0


def _plain(value: object) -> object:
    """A mapping (a message's map field, a MappingProxyType) as a dict; anything else as is."""
    return dict(value) if isinstance(value, Mapping) else value
