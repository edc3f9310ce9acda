"""The served model's tokenizer: text and chat messages to ids, ids to text, and its EOS ids."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The Rust tokenizer's single decode holds the GIL throughout (0.4 s for 2M ids: every other
# thread, the event loop's too, waits); its batch decode releases it but costs ~2 us more per
# call, which the per-token incremental decodes of streaming would pay.
_GIL_HELD_MAX_IDS = 256


def _as_id_set(value: object) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}  # type: ignore[union-attr]


class Tokenizer:
    """Wraps a Hugging Face tokenizer loaded from a model directory (or a cached hub id)."""

    def __init__(self, model: str | Path) -> None:
        from transformers import AutoTokenizer

        self.name = str(model)
        self._tokenizer = AutoTokenizer.from_pretrained(str(model))
        self._fast_decoder = self._find_fast_decoder()
        # The text of each single id, by skip_special_tokens: filled by the detokenizers.
        self._token_texts: dict[bool, dict[int, str]] = {False: {}, True: {}}
        self.eos_token_ids = frozenset(self._find_eos_ids(str(model)))
        logger.info(
            "tokenizer %s: %d tokens, EOS ids %s", model, len(self), sorted(self.eos_token_ids)
        )

    def _find_eos_ids(self, model: str) -> set[int]:
        """EOS ids from the tokenizer and from generation_config.json (Llama 3 lists several)."""
        ids = _as_id_set(self._tokenizer.eos_token_id)
        try:
            from transformers import GenerationConfig

            ids |= _as_id_set(GenerationConfig.from_pretrained(model).eos_token_id)
        except OSError:
            pass  # no generation_config.json: the tokenizer's EOS is all there is
        return ids

    def __len__(self) -> int:
        return len(self._tokenizer)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Renders messages with the model's chat template (generation prompt added)."""
        if not getattr(self._tokenizer, "chat_template", None):
            raise ValueError(f"model {self.name} has no chat template: send text or token_ids")
        try:
            prompt = self._tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # template errors (e.g. a role it refuses) are the caller's
            raise ValueError(f"chat template rejected the messages: {exc}") from exc
        # The template writes BOS itself where the model wants one.
        return self.encode(prompt, add_special_tokens=False)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        decoder = self._fast_decoder
        if decoder is None:
            return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
        if len(ids) > _GIL_HELD_MAX_IDS:  # the batch call releases the GIL while it decodes
            return decoder.decode_batch([ids], skip_special_tokens=skip_special_tokens)[0]
        return decoder.decode(ids, skip_special_tokens=skip_special_tokens)

    def window_decoder(self, skip_special_tokens: bool = False) -> Callable[[list[int]], str]:
        """decode() of short id lists (an incremental detokenizer's window, a few ids), bound
        once: the Rust decoder itself when there is one (no Python frame per decode)."""
        decoder = self._fast_decoder
        if decoder is None:
            return functools.partial(self.decode, skip_special_tokens=skip_special_tokens)
        return functools.partial(decoder.decode, skip_special_tokens=skip_special_tokens)

    def token_texts(self, skip_special_tokens: bool = False) -> dict[int, str]:
        """A memo of decode([id]) by id, shared by this tokenizer's detokenizers (at most one
        entry per vocabulary id): an incremental detokenizer decodes its last emitted token
        alone for every new token."""
        return self._token_texts[skip_special_tokens]

    def _find_fast_decoder(self) -> Any:
        """The Rust `tokenizers.Tokenizer` behind a fast tokenizer, when decoding through it gives
        the same text: it skips transformers' per-call Python conversion of the id list, which
        dominated the scheduler's time per streamed token under load."""
        if getattr(self._tokenizer, "clean_up_tokenization_spaces", False):
            return None
        return getattr(self._tokenizer, "backend_tokenizer", None)
