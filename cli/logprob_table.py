"""The table `yaie generate --top-logprobs N` prints after the text: each generated token, its
logprob, and its N most likely alternatives (token texts from the server's Detokenize)."""

from __future__ import annotations

import argparse

from yaie.cli import client_security
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

_TOKEN_WIDTH = 16


def token_texts(
    target: str, logprobs: list[pb.TokenLogprob], security: argparse.Namespace
) -> dict[int, str]:
    """The text of every token id in logprobs (each id asked once)."""
    ids = sorted({lp.token_id for lp in logprobs} | {t.token_id for lp in logprobs for t in lp.top})
    metadata = client_security.call_metadata(security)
    with client_security.open_channel(target, security) as channel:
        stub = generation_pb2_grpc.GenerationStub(channel)
        return {
            token_id: stub.Detokenize(
                pb.DetokenizeRequest(ids=[token_id]), timeout=30, metadata=metadata
            ).text
            for token_id in ids
        }


def format_table(logprobs: list[pb.TokenLogprob], texts: dict[int, str]) -> str:
    """One line per generated token: `'text'  logprob  | 'alt' logprob | ...`."""
    width = max(_TOKEN_WIDTH, *(len(repr(texts[lp.token_id])) for lp in logprobs))
    lines = [f"{'token':<{width}} {'logprob':>8}   most likely"]
    for lp in logprobs:
        alternatives = " | ".join(f"{texts[t.token_id]!r} {t.logprob:.3f}" for t in lp.top)
        lines.append(f"{texts[lp.token_id]!r:<{width}} {lp.logprob:>8.3f}   {alternatives}")
    return "\n".join(lines) + "\n"
