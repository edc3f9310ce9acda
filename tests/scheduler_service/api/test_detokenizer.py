"""Incremental detokenization never splits a UTF-8 character and adds up to the full decode."""

from __future__ import annotations

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
