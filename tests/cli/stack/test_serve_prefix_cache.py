"""Through `yaie serve`: a shared prefix is served from the radix cache (>= 48 of 64 tokens), the
output is the same as with `--no-prefix-cache`, and that flag really turns sharing off."""

from __future__ import annotations

import grpc

from yaie.v1 import generation_pb2 as pb

SHARED_PREFIX = list(range(100, 164))  # 64 tokens: four 16-token blocks


def _greedy(stack, prompt: list[int]) -> tuple[list[int], int]:
    """(generated ids, usage.cached_tokens) of one greedy request with 16 new tokens."""
    request = pb.GenerateRequest(
        token_ids=pb.TokenIds(ids=prompt),
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=16, ignore_eos=True),
    )
    with grpc.insecure_channel(stack.target) as channel:
        frames = list(stack.stub(channel).Generate(request, timeout=60))
    return [t for f in frames for t in f.token_ids], frames[-1].usage.cached_tokens


def _two_requests(stack) -> list[tuple[list[int], int]]:
    return [_greedy(stack, SHARED_PREFIX + suffix) for suffix in ([7, 8, 9], [10, 11, 12, 13])]


def test_shared_prefix_is_cached_and_output_equals_the_uncached_run(tools, model_dirs):
    model = model_dirs["LlamaForCausalLM"]
    with tools.running_stack(model) as stack:
        cached = _two_requests(stack)
    with tools.running_stack(model, "--no-prefix-cache") as stack:
        uncached = _two_requests(stack)
    assert cached[1][1] >= 48, f"second request reused only {cached[1][1]} prompt tokens"
    assert [c for _, c in uncached] == [0, 0]
    assert [ids for ids, _ in cached] == [ids for ids, _ in uncached]
