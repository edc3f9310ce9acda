"""Property-based fuzz of 10,000 random GenerateRequests (NaN/inf floats, huge ints, ids outside
the vocabulary, empty and oversized stop lists, invalid UTF-8, random logit_bias, cancelled
streams) against a real scheduler server on a fake worker: never INTERNAL or UNKNOWN, the server
stays up, and no KV block is held afterwards."""

from __future__ import annotations

import math
import random
import time

import grpc
import pytest
import served_stack
from fake_worker import FakeWorkerConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

NAN, INF = math.nan, math.inf
# Each scalar field takes its default most of the time and otherwise one of its extreme values
# (some valid, some not). Choices are bit-fields of one drawn integer and bulk content comes from
# a PRNG seeded by a second one: a hypothesis draw costs ~0.05 ms, and 10,000 examples must run
# in well under a minute. Shrinking the choice integer toward 0 turns fields back to their defaults.
EXTREME_FLOATS = [0.0, 0.5, 1.0, 1.5, -0.0, -1.0, 2.0, -2.5, NAN, INF, -INF, 3.4e38, 1e-45]
FIELDS: dict[str, tuple[object, list]] = {  # name -> (default, extremes)
    "temperature": (None, EXTREME_FLOATS),
    "top_p": (None, EXTREME_FLOATS),
    "min_p": (None, EXTREME_FLOATS),
    "repetition_penalty": (None, EXTREME_FLOATS),
    "frequency_penalty": (None, EXTREME_FLOATS),
    "presence_penalty": (None, EXTREME_FLOATS),
    "top_k": (None, [0, 1, 5, 767, 768, 2**31 - 1, -1, -(2**31)]),
    "seed": (None, [0, 1, 2**63, 2**64 - 1]),
    # Small by default so that valid requests stay cheap; unset fills the (64-token) context.
    "max_new_tokens": ("small", [None, 0, 2**32 - 1, 61, 64]),
    "min_new_tokens": (0, [1, 3, 5, 2**32 - 1]),
    "top_logprobs": (0, [1, 20, 21, 2**32 - 1]),
    "num_stops": (0, [1, 3, 16, 17]),
    "kind": ("ids", ["text"] * 8 + ["chat"] * 3 + ["none"]),
    "request_id": ("", ["fuzz"]),
    "cache_salt": ("", ["a", "b", "s" * 256, "s" * 257]),
    "mutation": (None, ["bad text", "bad salt", "bad stop", "junk"]),
}
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
ALPHABET = ["a", "b", " ", "\n", "é", "中", "🙂", "\x00", "\ufffd", "<", "s>", "ab"]
BITS = 6  # per field: 64 slots, the extremes take one slot each, the default the rest


def _choices(bits: int) -> dict[str, object]:
    chosen = {}
    for index, (name, (default, extremes)) in enumerate(FIELDS.items()):
        slot = (bits >> (BITS * index)) & ((1 << BITS) - 1)
        spare = (1 << BITS) - len(extremes)
        chosen[name] = default if slot < spare else extremes[slot - spare]
        if chosen[name] == "small":
            chosen[name] = 1 + slot % 4
    return chosen


def _token(rng: random.Random) -> int:
    """Mostly inside the vocabulary of 768; sometimes negative or huge."""
    if rng.random() < 0.95:
        return rng.randrange(768)
    return rng.choice([-1, 768, 2**31 - 1, -(2**31), rng.randrange(-(2**31), 2**31)])


def _text(rng: random.Random, max_len: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(max_len + 1)))


def _fill_content(request: pb.GenerateRequest, kind: str, num_stops: int, seed: int) -> None:
    rng = random.Random(seed)
    if kind == "text":
        request.text = _text(rng, 30)
    elif kind == "ids":
        request.token_ids.ids.extend(_token(rng) for _ in range(rng.randrange(40)))
    elif kind == "chat":
        for _ in range(rng.randrange(3)):
            request.messages.messages.add(role=_text(rng, 6), content=_text(rng, 12))
    request.stopping.stop.extend(_text(rng, 4) for _ in range(num_stops))
    request.stopping.stop_token_ids.extend(_token(rng) for _ in range(rng.randrange(3)))
    for _ in range(rng.choice([0, 0, 0, 1, 4])):
        bias = rng.choice([rng.uniform(-100, 100), NAN, INF, -INF, 0.0])
        request.sampling.logit_bias[_token(rng)] = bias


@st.composite
def generate_requests(draw) -> bytes:
    """A GenerateRequest's bytes; some with invalid UTF-8 spliced in, some plain garbage."""
    chosen = _choices(draw(st.integers(0, 2 ** (BITS * len(FIELDS)) - 1)))
    seed = draw(st.integers(0, 2**32 - 1))
    request = pb.GenerateRequest(request_id=chosen.pop("request_id"))
    request.cache_salt = chosen.pop("cache_salt")
    for name in ("max_new_tokens", "min_new_tokens"):
        if (value := chosen.pop(name)) is not None:
            setattr(request.stopping, name, value)
    request.output.top_logprobs = chosen.pop("top_logprobs")
    kind, num_stops, mutation = chosen.pop("kind"), chosen.pop("num_stops"), chosen.pop("mutation")
    for name, value in chosen.items():
        if value is not None:
            setattr(request.sampling, name, value)
    _fill_content(request, kind, num_stops, seed)
    flags = seed >> 27  # ignore_eos, include_stop_str, skip_special, logprobs, single_frame
    request.stopping.ignore_eos = bool(flags & 1)
    request.stopping.include_stop_str_in_output = bool(flags & 2)
    request.output.skip_special_tokens = bool(flags & 4)
    request.output.logprobs = bool(flags & 8)
    request.output.single_frame = bool(flags & 16)
    return _mutate(request.SerializeToString(), mutation)


def _mutate(data: bytes, mutation: str | None) -> bytes:
    bad = bytes([0x61, 0xFF, 0xFE, 0xC3])  # never valid UTF-8
    if mutation == "bad text":  # field 2 (text): length-delimited
        return data + bytes([0x12, len(bad)]) + bad
    if mutation == "bad salt":  # field 8 (cache_salt)
        return data + bytes([0x42, len(bad)]) + bad
    if mutation == "bad stop":  # field 6 (stopping) holding field 3 (stop)
        inner = bytes([0x1A, len(bad)]) + bad
        return data + bytes([0x32, len(inner)]) + inner
    if mutation == "junk":
        return random.Random(data).randbytes(len(data) % 64)
    return data


@pytest.fixture(scope="module")
def stack(tokenizer):
    worker = FakeWorkerConfig(vocab_size=768, max_context=64, num_blocks=64, block_size=4)
    with served_stack.served_stack(tokenizer, worker=worker) as stack:
        yield stack


def _outcome(call, cancel: bool) -> grpc.StatusCode:
    """The call's status (a cancelled call counts as OK: the cancel was ours)."""
    try:
        for _ in call:
            if cancel:
                call.cancel()
                return grpc.StatusCode.OK
    except grpc.RpcError as error:
        if cancel and error.code() == grpc.StatusCode.CANCELLED:
            return grpc.StatusCode.OK
        return error.code()
    return grpc.StatusCode.OK


def test_random_generate_requests_never_fail_internally_or_leak_blocks(stack) -> None:
    channel = grpc.insecure_channel(stack.address)
    generate = channel.unary_stream(
        "/yaie.v1.Generation/Generate",
        request_serializer=lambda data: data,
        response_deserializer=pb.GenerateResponse.FromString,
    )
    stub = generation_pb2_grpc.GenerationStub(channel)
    codes: dict[grpc.StatusCode, int] = {}

    @settings(
        max_examples=10_000,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=generate_requests())
    def check(data: bytes) -> None:
        cancel = len(data) % 10 == 0  # about one call in ten is cancelled after its first frame
        call = generate(data, timeout=30)
        code = _outcome(call, cancel)
        codes[code] = codes.get(code, 0) + 1
        assert code in ALLOWED, (code, call.details())

    try:
        check()
        assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=5).vocab_size == 768
        assert codes.get(grpc.StatusCode.OK, 0) > 1000, codes  # enough valid requests ran
        assert codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 3000, codes
        deadline = time.monotonic() + 10
        while True:  # cancelled requests finish, and retired ones free blocks, at a next step
            stats = stub.GetServerStats(pb.GetServerStatsRequest(), timeout=5)
            idle = stats.running == 0 and all(w.used_blocks == 0 for w in stats.workers)
            if idle or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert stats.waiting == 0 and stats.running == 0
        assert [w.used_blocks for w in stats.workers] == [0]
        assert stack.workers[0].worker.violations == []
    finally:
        channel.close()
