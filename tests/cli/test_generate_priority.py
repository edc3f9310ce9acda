"""`yaie generate --priority N` sets GenerateRequest.priority; a value no int32 holds is a usage
error (the range the server accepts is checked by the server)."""

from __future__ import annotations

import pytest

from yaie.cli import generate


def _request(argv: list[str]):
    return generate.build_request(generate.build_parser().parse_args(["hi", *argv]))


def test_priority_goes_into_the_request() -> None:
    assert _request(["--priority", "7"]).priority == 7
    assert _request(["--priority", "-1000"]).priority == -1000
    assert _request([]).priority == 0


def test_priority_beyond_int32_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        generate.build_parser().parse_args(["hi", "--priority", str(1 << 31)])
