"""Stop strings never leak into the stream, whatever the split of the text into deltas."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from yaie.scheduler_service.api.stop_strings import StopStringMatcher


def _run(matcher: StopStringMatcher, deltas: list[str]) -> tuple[list[str], str | None]:
    sent: list[str] = []
    for delta in deltas:
        check = matcher.feed(delta)
        sent.append(check.text)
        if check.matched is not None:
            return sent, check.matched
    sent.append(matcher.flush())
    return sent, None


def test_a_stop_string_spanning_deltas_is_never_sent() -> None:
    sent, matched = _run(StopStringMatcher(["lo w"]), ["Hel", "lo", " wo", "rld"])
    assert matched == "lo w"
    assert sent == ["He", "l", ""]  # "l" is held: it could start "lo w"


def test_held_text_is_released_once_ruled_out() -> None:
    matcher = StopStringMatcher(["abc"])
    assert matcher.feed("xa").text == "x"
    assert matcher.feed("b").text == ""
    assert matcher.feed("d").text == "abd"


def test_include_stop_str_in_output_sends_the_stop_string_and_nothing_after() -> None:
    sent, matched = _run(
        StopStringMatcher(["END"], include_stop_str_in_output=True), ["a E", "NDz"]
    )
    assert matched == "END"
    assert "".join(sent) == "a END"


def test_the_stop_string_that_ends_first_wins() -> None:
    sent, matched = _run(StopStringMatcher(["world", "o w", "ell"]), ["hello world"])
    assert matched == "ell"
    assert "".join(sent) == "h"
    sent, matched = _run(StopStringMatcher(["world", "o w"]), ["hello world"])
    assert (matched, "".join(sent)) == ("o w", "hell")


def test_before_min_new_tokens_no_match_but_the_tail_is_still_held() -> None:
    matcher = StopStringMatcher(["ab"])
    assert matcher.feed("xab a", can_stop=False).text == "xab "
    check = matcher.feed("b", can_stop=True)
    assert (check.text, check.matched) == ("", "ab")


def test_held_text_is_flushed_when_the_stream_ends() -> None:
    sent, matched = _run(StopStringMatcher(["stop!"]), ["one st", "o"])
    assert matched is None
    assert "".join(sent) == "one sto"


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet="ab c", max_size=30),
    stops=st.lists(st.text(alphabet="ab c", min_size=1, max_size=4), min_size=1, max_size=3),
    cuts=st.lists(st.integers(0, 30), max_size=8),
    include=st.booleans(),
)
def test_any_split_sends_exactly_the_text_before_the_first_stop_string(
    text: str, stops: list[str], cuts: list[int], include: bool
) -> None:
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    deltas = [text[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    sent, matched = _run(StopStringMatcher(stops, include), deltas)
    # Reference: read text one character at a time; stop at the first stop string to complete.
    ends = [(i, -len(s), s) for i in range(len(text) + 1) for s in stops if text[:i].endswith(s)]
    if not ends:
        assert matched is None and "".join(sent) == text
        return
    end, _, stop = min(ends)
    assert matched == stop
    expected = text[:end] if include else text[: end - len(stop)]
    assert "".join(sent) == expected
    # Every prefix the client has seen is a prefix of the answer: nothing was ever taken back.
    assert all(expected.startswith("".join(sent[:i])) for i in range(len(sent) + 1))
