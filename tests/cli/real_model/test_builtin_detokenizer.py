"""The streaming detokenizer on the real built-in tokenizer (SmolLM2's byte-level BPE): a
frame's tokens detokenized together give the text of one token at a time, and the full decode."""

from __future__ import annotations

import random

from yaie.scheduler_service.api.detokenizer import IncrementalDetokenizer
from yaie.scheduler_service.api.tokenizer import Tokenizer

TEXT = "Grüße aus Köln — 東京の天気は晴れ 🙂; naïve café, ok?\n\tdone."


def _per_token(detokenizer: IncrementalDetokenizer, ids: list[int]) -> str:
    return "".join([detokenizer.add_token(t) for t in ids] + [detokenizer.flush()])


def _chunked(detokenizer: IncrementalDetokenizer, ids: list[int], rng: random.Random) -> str:
    parts, start = [], 0
    while start < len(ids):
        size = rng.randint(1, 6)
        parts.append(detokenizer.add_tokens(ids[start : start + size]))
        start += size
    return "".join(parts + [detokenizer.flush()])


def test_frames_of_several_tokens_match_token_by_token(builtin_dir) -> None:
    tokenizer = Tokenizer(builtin_dir)
    rng = random.Random(1)
    prompt = tokenizer.encode("Say something:", add_special_tokens=False)
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert _chunked(IncrementalDetokenizer(tokenizer, prompt), ids, rng) == TEXT
    for trial in range(40):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 48))]
        skip = bool(trial % 2)
        one = _per_token(IncrementalDetokenizer(tokenizer, prompt, skip), ids)
        assert _chunked(IncrementalDetokenizer(tokenizer, prompt, skip), ids, rng) == one
