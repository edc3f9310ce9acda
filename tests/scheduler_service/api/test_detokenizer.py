"""Incremental detokenization never splits a UTF-8 character and adds up to the full decode."""

from __future__ import annotations

import random

from yaie.scheduler_service.api.detokenizer import IncrementalDetokenizer
from yaie.scheduler_service.api.tokenizer import Tokenizer

MULTI_BYTE_TEXT = "naïve café — 日本語 🙂 ok"


class ByteDecoder:
    """Token id = one byte: every multi-byte character spans several tokens."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def _stream(detokenizer: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detokenizer.add_token(token) for token in ids] + [detokenizer.flush()]


def test_a_character_split_over_byte_tokens_is_held_until_complete() -> None:
    detokenizer = IncrementalDetokenizer(ByteDecoder(), prompt_ids=list(b"x"))
    euro = list("€".encode())  # 3 bytes
    assert [detokenizer.add_token(b) for b in euro] == ["", "", "€"]
    assert detokenizer.add_token(ord("!")) == "!"
    assert detokenizer.flush() == ""


def test_byte_tokens_add_up_to_the_text_with_no_replacement_character() -> None:
    deltas = _stream(IncrementalDetokenizer(ByteDecoder(), []), list(MULTI_BYTE_TEXT.encode()))
    assert "".join(deltas) == MULTI_BYTE_TEXT
    assert not any("\ufffd" in delta for delta in deltas)


def test_an_incomplete_character_at_the_end_is_flushed_as_a_replacement_character() -> None:
    detokenizer = IncrementalDetokenizer(ByteDecoder(), [])
    assert detokenizer.add_token(ord("a")) == "a"
    assert detokenizer.add_token(0xE6) == ""  # first byte of a 3-byte character
    assert detokenizer.flush() == "\ufffd"


def test_an_invalid_byte_followed_by_ascii_is_emitted_like_the_full_decode() -> None:
    ids = [0xE6, ord("a"), ord("b")]
    assert "".join(_stream(IncrementalDetokenizer(ByteDecoder(), []), ids)) == "\ufffdab"


def test_bpe_tokens_of_multi_byte_characters_never_split_them(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode(MULTI_BYTE_TEXT, add_special_tokens=False)
    pieces = [tokenizer.decode([token]) for token in ids]
    assert any("\ufffd" in piece for piece in pieces), "the test needs split characters"
    prompt = tokenizer.encode("The cook says:", add_special_tokens=False)
    deltas = _stream(IncrementalDetokenizer(tokenizer, prompt), ids)
    assert "".join(deltas) == tokenizer.decode(ids) == MULTI_BYTE_TEXT
    assert not any("\ufffd" in delta for delta in deltas)


def test_special_tokens_are_dropped_only_when_asked(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("the sky", add_special_tokens=False) + [1]  # 1 = <|eos|>
    with_special = "".join(_stream(IncrementalDetokenizer(tokenizer, []), ids))
    skipped = "".join(_stream(IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True), ids))
    assert with_special == "the sky<|eos|>"
    assert skipped == "the sky"


def test_a_leading_space_after_the_prompt_is_kept(tokenizer: Tokenizer) -> None:
    prompt = tokenizer.encode("The train", add_special_tokens=False)
    ids = tokenizer.encode(" leaves the station", add_special_tokens=False)
    text = "".join(_stream(IncrementalDetokenizer(tokenizer, prompt), ids))
    assert text == " leaves the station"


def test_the_shared_single_token_memo_keeps_skipped_and_kept_special_tokens_apart(
    tokenizer: Tokenizer,
) -> None:
    """Requests of one tokenizer share its memo of single-token texts (the usual context of the
    next token): a request that skips special tokens must not see another's "<|eos|>"."""
    ids = tokenizer.encode("the", add_special_tokens=False) + [1]  # 1 = <|eos|>
    ids += tokenizer.encode(" sky is", add_special_tokens=False)
    for _ in range(2):  # the second round reads every context from the memo
        with_special = "".join(_stream(IncrementalDetokenizer(tokenizer, []), ids))
        detokenizer = IncrementalDetokenizer(tokenizer, [], skip_special_tokens=True)
        assert with_special == "the<|eos|> sky is"
        assert "".join(_stream(detokenizer, ids)) == "the sky is"
    assert tokenizer.token_texts(False)[1] == "<|eos|>" and tokenizer.token_texts(True)[1] == ""


def _chunked(detokenizer: IncrementalDetokenizer, ids: list[int], rng: random.Random) -> list[str]:
    """add_tokens over ids cut into random chunks of 1-6 (a stream interval's frames)."""
    deltas, start = [], 0
    while start < len(ids):
        size = rng.randint(1, 6)
        deltas.append(detokenizer.add_tokens(ids[start : start + size]))
        start += size
    return deltas + [detokenizer.flush()]


def _same_text_per_chunk_and_per_token(decoder, ids, prompt, rng, skip=False) -> str:
    per_token = "".join(_stream(IncrementalDetokenizer(decoder, prompt, skip), ids))
    chunked = "".join(_chunked(IncrementalDetokenizer(decoder, prompt, skip), ids, rng))
    assert chunked == per_token
    return chunked


def test_several_tokens_at_once_give_the_text_of_one_at_a_time(tokenizer: Tokenizer) -> None:
    """add_tokens (a frame's tokens in one window decode) equals add_token per token on text
    with split characters, on random ids (specials, invalid byte runs) and skipping specials."""
    rng = random.Random(0)
    text_ids = tokenizer.encode(MULTI_BYTE_TEXT + " and the end.", add_special_tokens=False)
    prompt = tokenizer.encode("The cook says:", add_special_tokens=False)
    assert _same_text_per_chunk_and_per_token(tokenizer, text_ids, prompt, rng) == (
        MULTI_BYTE_TEXT + " and the end."
    )
    for trial in range(60):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randint(1, 40))]
        _same_text_per_chunk_and_per_token(
            tokenizer, ids, prompt[: trial % 4], rng, bool(trial % 2)
        )
    byte_ids = list(MULTI_BYTE_TEXT.encode()) + [0xE6, ord("a"), 0xF0, 0x9F]
    for _ in range(20):
        _same_text_per_chunk_and_per_token(ByteDecoder(), byte_ids, list(b"x"), rng)


def test_a_frame_of_several_tokens_decodes_the_window_once(tokenizer: Tokenizer) -> None:
    """Plain text (no character split, context from the memo) costs two decodes a frame, not
    two a token."""
    calls = []
    decoder = tokenizer.window_decoder(False)

    class Counting:
        def window_decoder(self, skip_special_tokens: bool = False):
            return lambda ids: calls.append(len(ids)) or decoder(ids)

    ids = tokenizer.encode(" the sky is blue and the sea is green", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(Counting(), [ids[0]])
    assert (
        detokenizer.add_tokens(ids[1:5])
        == tokenizer.decode(ids[:5])[len(tokenizer.decode(ids[:1])) :]
    )
    assert len(calls) == 2
