"""validate_generate resolves every default and accepts the edges of each valid range."""

from __future__ import annotations

import pytest

from yaie.scheduler_service.api.tokenizer import Tokenizer
from yaie.scheduler_service.api.validation import ModelLimits, validate_generate
from yaie.v1 import generation_pb2 as pb

LIMITS = ModelLimits(vocab_size=768, max_context=128, eos_token_ids=frozenset({1, 6}))


def _validate(tokenizer: Tokenizer, **fields):
    request = pb.GenerateRequest(**fields)
    return validate_generate(request, "id", tokenizer, LIMITS)


def test_unset_fields_take_the_documented_defaults(tokenizer: Tokenizer) -> None:
    validated = _validate(tokenizer, text="The sky is")
    request, sampling = validated.generation, validated.generation.sampling
    assert request.prompt_ids == tokenizer.encode("The sky is")
    assert request.max_new_tokens == 128 - len(request.prompt_ids)
    assert (request.min_new_tokens, request.stop_token_ids) == (0, frozenset({1, 6}))
    assert (sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p) == (1, 1, 0, 0)
    assert (sampling.repetition_penalty, sampling.frequency_penalty) == (1, 0)
    assert (sampling.presence_penalty, sampling.top_logprobs, sampling.return_logprobs) == (
        0,
        0,
        False,
    )
    assert validated.stop_strings == () and not validated.skip_special_tokens


def test_an_unset_seed_is_random_per_request_and_a_set_one_is_kept(tokenizer: Tokenizer) -> None:
    seeds = {_validate(tokenizer, text="a").generation.sampling.seed for _ in range(4)}
    assert len(seeds) == 4
    kept = _validate(tokenizer, text="a", sampling=pb.SamplingParams(seed=7))
    assert kept.generation.sampling.seed == 7


@pytest.mark.parametrize(
    "sampling",
    [
        pb.SamplingParams(temperature=0.0, top_p=1.0, min_p=0.0),
        pb.SamplingParams(top_p=1e-6, min_p=1.0, top_k=1),
        pb.SamplingParams(frequency_penalty=-2.0, presence_penalty=2.0),
        pb.SamplingParams(repetition_penalty=1e-3, logit_bias={0: -100.0, 767: 5.0}),
    ],
)
def test_the_edges_of_each_valid_range_are_accepted(tokenizer: Tokenizer, sampling) -> None:
    validated = _validate(tokenizer, text="a", sampling=sampling)
    assert validated.generation.sampling.top_k == sampling.top_k


def test_stopping_and_output_options_are_carried(tokenizer: Tokenizer) -> None:
    stopping = pb.StoppingCriteria(
        max_new_tokens=5,
        min_new_tokens=5,
        stop=["x"] * 16,
        stop_token_ids=[9],
        ignore_eos=True,
        include_stop_str_in_output=True,
    )
    output = pb.OutputOptions(top_logprobs=20, skip_special_tokens=True)
    validated = _validate(
        tokenizer, token_ids=pb.TokenIds(ids=[3, 4]), stopping=stopping, output=output
    )
    request = validated.generation
    assert (request.prompt_ids, request.max_new_tokens, request.min_new_tokens) == ([3, 4], 5, 5)
    assert request.stop_token_ids == frozenset({9}), "ignore_eos leaves EOS out"
    assert request.sampling.top_logprobs == 20 and request.sampling.return_logprobs
    assert validated.include_stop_str_in_output and validated.skip_special_tokens
    assert len(validated.stop_strings) == 16


def test_chat_messages_use_the_chat_template(tokenizer: Tokenizer) -> None:
    messages = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content="Hi")])
    ids = _validate(tokenizer, messages=messages).generation.prompt_ids
    assert tokenizer.decode(ids) == "<|bos|><|user|>\nHi<|end|>\n<|assistant|>\n"


def test_a_prompt_filling_the_whole_context_is_refused(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="context"):
        _validate(tokenizer, token_ids=pb.TokenIds(ids=[5] * 128))
    fits = _validate(tokenizer, token_ids=pb.TokenIds(ids=[5] * 127))
    assert fits.generation.max_new_tokens == 1


def test_text_too_long_for_any_tokenization_is_refused_before_tokenizing(
    tokenizer: Tokenizer,
) -> None:
    """Text longer than max_context * 64 characters can never fit: refused without encoding it
    (encoding megabytes would stall the scheduler's only thread)."""

    class NoEncode:
        def __getattr__(self, name):
            raise AssertionError(f"tokenizer.{name} must not be called")

    huge = "a" * (128 * 64 + 1)
    with pytest.raises(ValueError, match="characters"):
        _validate(NoEncode(), text=huge)
    messages = pb.ChatMessages(messages=[pb.ChatMessage(role="user", content=huge)])
    with pytest.raises(ValueError, match="characters"):
        _validate(NoEncode(), messages=messages)
    assert _validate(tokenizer, text="a" * 100).generation.prompt_ids


@pytest.mark.parametrize("n, resolved", [(0, 1), (1, 1), (8, 8), (64, 64)])
def test_n_unset_or_0_is_1_and_up_to_64_is_kept(tokenizer: Tokenizer, n: int, resolved) -> None:
    assert _validate(tokenizer, text="a", n=n).generation.n == resolved


def test_n_above_64_is_refused_naming_the_limit(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"n must be at most 64 \(0 or unset: 1\), got 65"):
        _validate(tokenizer, text="a", n=65)


@pytest.mark.parametrize("priority", [-1000, 0, 7, 1000])
def test_priority_in_range_is_carried(tokenizer: Tokenizer, priority: int) -> None:
    assert _validate(tokenizer, text="a", priority=priority).generation.priority == priority


def test_priority_out_of_range_names_the_range(tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"priority must be in \[-1000, 1000\], got 1001"):
        _validate(tokenizer, text="a", priority=1001)
