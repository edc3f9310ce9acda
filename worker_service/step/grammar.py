"""Structured output on the worker: XGrammar's compiler over the model's vocabulary, a bounded
cache of compiled grammars, and one matcher per constrained request (RequestGrammar).

The matcher advances here because the sampled token is here: under overlap scheduling the
scheduler learns step N's token after it sent plan N+1. A constrained row's previous token is
read back (a host wait on that step's copy) just before its next mask is needed; unconstrained
rows never wait.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from yaie.kernels.sampling import SamplingConfig
from yaie.kernels.sampling.grammar import compile_grammar

log = logging.getLogger(__name__)

# XGrammar's compiler keeps what it compiled, keyed by the constraint; bounded by bytes here
# (its default is unbounded: every distinct schema a client sends would stay in memory).
COMPILE_CACHE_BYTES = 256 << 20


class StepTokens:
    """A step's sampled ids on their way to the host: the first num_ids of host (its packed
    int32 results) once event is done, read once for all of the step's constrained rows."""

    def __init__(self, host: torch.Tensor, num_ids: int, event: torch.cuda.Event | None) -> None:
        self.host, self.num_ids, self.event = host, num_ids, event
        self._ids: list[int] | None = None

    def get(self, index: int) -> int:
        if self._ids is None:
            if self.event is not None:
                self.event.synchronize()
            self._ids = self.host[: self.num_ids].tolist()
        return self._ids[index]


@dataclass
class PendingToken:
    """A constrained request's sampled token while it is still on its way to the host (row
    index of the step's sampled ids), and what the matcher made of it."""

    tokens: StepTokens
    index: int
    processed: bool = False
    done: bool = False  # the grammar is complete and admits nothing more after it (and jump)
    jump: list[int] = field(default_factory=list)  # the tokens the grammar forced after it


class RequestGrammar:
    """One request's matcher, the token it waits for, and the tokens known here but not yet in
    the request's token_ids (sampled ones, then forced ones) until the runner moves them there
    (take_known). The step fills the next-token masks of all its rows at once (GrammarMasks);
    bitmask [1, ceil(vocab / 32)] int32 is this request's own: its stop tokens once done."""

    def __init__(self, compiled: Any, vocab_size: int, jump_forward: bool) -> None:
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(compiled)
        self.stop_ids = list(self.matcher.stop_token_ids)
        self.bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self.jump_forward = jump_forward
        self.pending: PendingToken | None = None
        self.done = False
        self.sampled: list[int] = []  # caught-up tokens that are only on the device's side
        self.jump: list[int] = []  # forced tokens after them
        self._settle()

    def accept_known(self, tokens: list[int]) -> None:
        """Advances over output generated before a preemption (ValueError if it does not fit)."""
        for token in tokens:
            if self.done or self.matcher.is_terminated():
                break
            if not self.matcher.accept_token(token):
                raise ValueError(f"earlier output token {token} does not fit the grammar")
        self._settle()

    def expect(self, tokens: StepTokens, index: int) -> PendingToken:
        """The token just sampled for this request is row index of tokens."""
        assert self.pending is None, "a constrained request sampled before its last token was read"
        self.pending = PendingToken(tokens, index)
        return self.pending

    def catch_up(self) -> None:
        """Reads the pending token (waiting for its step), advances the matcher over it and over
        any continuation it forces, and decides whether it is done. Idempotent."""
        pending, self.pending = self.pending, None
        if pending is None:
            return
        token = pending.tokens.get(pending.index)
        self.sampled.append(token)
        if not self.done:
            if not self.matcher.accept_token(token):
                # only a token the mask did not allow gets here (e.g. an empty mask)
                log.warning("a constrained request sampled token %d outside its grammar", token)
                self._finish()
            elif self.jump_forward and not self.matcher.is_terminated():
                pending.jump = self._jump()
                self.jump = list(pending.jump)
            self._settle()
        pending.done, pending.processed = self.done, True

    def take_known(self) -> tuple[list[int], list[int]]:
        """The sampled and the forced tokens to append to the request's known tokens, now."""
        known = self.sampled, self.jump
        self.sampled, self.jump = [], []
        return known

    def _jump(self) -> list[int]:
        """The tokens the grammar forces next, accepted (XGrammar tokenizes the forced string)."""
        tokens = []
        for token in self.matcher.find_jump_forward_tokens():
            if not self.matcher.accept_token(token):
                break
            tokens.append(token)
        return tokens

    def _settle(self) -> None:
        """Done once the grammar is terminated, or complete with only stop tokens admitted (the
        output cannot go on: finish without sampling EOS). Only a complete grammar's mask is
        filled here (to see what it admits); the others' wait for the step's batched fill."""
        if self.done:
            return
        if not self.matcher.is_terminated():
            if not self.matcher.is_completed():
                return
            self.matcher.fill_next_token_bitmask(self.bitmask)
            if self._admits_more():
                return
        self._finish()

    def _finish(self) -> None:
        self.done = True
        self.bitmask.zero_()  # from now on only stop tokens; the scheduler drops them
        for token in self.stop_ids:
            self.bitmask[0, token // 32] |= _bit(token % 32)

    def _admits_more(self) -> bool:
        """Whether the filled bitmask admits any token that is not a stop token."""
        row = self.bitmask[0].clone()
        for token in self.stop_ids:
            row[token // 32] &= ~_bit(token % 32)
        return bool(row.any())


def _bit(position: int) -> int:
    """Bit position of an int32 word as a signed int32 value (bit 31 is the sign)."""
    return (1 << position) - (1 << 32 if position == 31 else 0)


class GrammarBackend:
    """XGrammar's tokenizer info and compiler for one model (built on the first constrained
    request: the tokenizer's vocabulary is read then; the compiler caches compiled grammars)."""

    def __init__(self, model_dir: str | Path | None, vocab_size: int) -> None:
        self.model_dir = model_dir
        self.vocab_size = vocab_size
        self._compiler: Any = None

    def new_grammar(self, sampling: SamplingConfig, earlier_output: list[int]) -> RequestGrammar:
        """A matcher for a new (or re-sent) request, advanced over its earlier output."""
        compiled = compile_grammar(self._load_compiler(), sampling.grammar_kind, sampling.grammar)
        grammar = RequestGrammar(compiled, self.vocab_size, sampling.jump_forward)
        grammar.accept_known(earlier_output)
        return grammar

    def _load_compiler(self) -> Any:
        if self._compiler is None:
            self._compiler = load_compiler(self.model_dir, self.vocab_size)
        return self._compiler


def load_compiler(model_dir: str | Path | None, vocab_size: int) -> Any:
    """An xgrammar.GrammarCompiler over the tokenizer in model_dir, whose stop tokens are the
    EOS ids of the tokenizer and of generation_config.json (as the scheduler's are)."""
    import xgrammar as xgr
    from transformers import AutoTokenizer, GenerationConfig

    if model_dir is None:
        raise ValueError("structured output needs the model's tokenizer; this worker has none")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as exc:
        raise ValueError(f"structured output needs the model's tokenizer: {exc}") from exc
    stop_ids = set(_ids(tokenizer.eos_token_id))
    try:
        stop_ids |= set(_ids(GenerationConfig.from_pretrained(str(model_dir)).eos_token_id))
    except OSError:
        pass  # no generation_config.json
    info = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(stop_ids) or None
    )
    log.info("structured output: %d-token vocabulary, stop ids %s", vocab_size, sorted(stop_ids))
    return xgr.GrammarCompiler(info, max_threads=2, cache_limit_bytes=COMPILE_CACHE_BYTES)


def _ids(value: object) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else [int(v) for v in value]  # type: ignore[union-attr]
