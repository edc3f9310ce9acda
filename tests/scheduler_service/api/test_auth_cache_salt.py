"""Prefix-cache isolation: a request never reuses blocks cached by a request with another
cache_salt (cached_tokens 0), while the same salt does hit."""

from __future__ import annotations

import grpc
import pytest
import served_stack

from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

PROMPT = list(range(100, 164))  # 64 tokens: 16 full blocks of the fake worker's 4


def _cached_tokens(stub, salt: str) -> int:
    request = pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=PROMPT),
        stopping=pb.StoppingCriteria(max_new_tokens=2),
        cache_salt=salt,
    )
    frames = list(stub.Generate(request, timeout=10))
    return frames[-1].usage.cached_tokens


def test_requests_with_different_salts_share_no_cached_prefix(tokenizer) -> None:
    with served_stack.served_stack(tokenizer) as stack:
        with grpc.insecure_channel(stack.address) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            assert _cached_tokens(stub, "tenant-a") == 0
            assert _cached_tokens(stub, "tenant-b") == 0  # a's blocks are not b's
            assert _cached_tokens(stub, "") == 0  # nor the default namespace's
            assert _cached_tokens(stub, "tenant-a") >= 60  # a's own prefix does hit
            assert _cached_tokens(stub, "") >= 60


def test_an_oversized_salt_is_invalid(tokenizer) -> None:
    with served_stack.served_stack(tokenizer) as stack:
        with grpc.insecure_channel(stack.address) as channel:
            stub = generation_pb2_grpc.GenerationStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                _cached_tokens(stub, "s" * 257)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
