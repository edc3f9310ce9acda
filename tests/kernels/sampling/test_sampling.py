"""Sampling (torch reference path, CPU): exact greedy, each processing step against a slow per-row
implementation, seeded determinism across batch compositions, edge cases, validation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from yaie.kernels.sampling import (
    SamplingBatch,
    SamplingConfig,
    filter_thresholds,
    process_logits,
    sample,
)

V = 97


def _batch(configs, positions=None, vocab=V) -> SamplingBatch:
    positions = list(range(len(configs))) if positions is None else positions
    return SamplingBatch.build(configs, positions, "cpu", vocab)


def _tokens(logits, configs, positions=None) -> list[int]:
    return sample(
        logits, _batch(configs, positions, logits.shape[1]), backend="torch"
    ).token_ids.tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_greedy_and_top_k_1_equal_argmax(dtype):
    """Greedy rows, tiny temperatures and top_k = 1 rows all return torch.argmax exactly."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(12, V, generator=g) * 3).to(dtype)
    expected = torch.argmax(logits, dim=-1).tolist()
    assert _tokens(logits, [SamplingConfig(temperature=0.0)] * 12) == expected
    mixed = [
        SamplingConfig(temperature=0.0),
        SamplingConfig(top_k=1, seed=5),
        SamplingConfig(top_k=1, temperature=2.0, top_p=0.5, seed=9),
        SamplingConfig(temperature=1e-7, seed=3),
    ] * 3
    assert _tokens(logits, mixed) == expected


def test_a_plain_greedy_batch_reuses_one_set_of_neutral_vectors():
    """Greedy rows without penalties, bias or logprobs (a decode step's usual batch) copy
    nothing: their vectors, made once per batch size, hold the neutral values the general
    build gives a greedy row, and sample() takes the argmax."""
    greedy = [SamplingConfig(temperature=0.0, top_k=5, seed=3)] * 6
    first, again = _batch(greedy), _batch(greedy, positions=[9] * 6)
    assert first.greedy is again.greedy and first.top_p is again.top_p
    assert first.all_greedy and not (first.any_penalties or first.any_logprobs)
    assert first.bias_ids is None and first.num_top_logprobs == 0
    general = _batch([*greedy[:5], SamplingConfig(temperature=0.0, logit_bias={1: 0.0})])
    for name in ("greedy", "inv_temperature", "top_p", "min_p", "repetition_penalty",
                 "frequency_penalty", "presence_penalty", "row_keys"):  # fmt: skip
        assert torch.equal(getattr(first, name), getattr(general, name)), name
    assert _batch(greedy[:5]).greedy.shape == (5,)
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(1))
    assert sample(logits, first, backend="torch").token_ids.tolist() == logits.argmax(1).tolist()


def test_greedy_takes_the_first_of_tied_maxima():
    """Ties resolve like torch.argmax (the first index); top_k = 1 keeps every tied token."""
    logits = torch.zeros(30, V)
    logits[:, [7, 30, 90]] = 1.0
    assert _tokens(logits[:1], [SamplingConfig(temperature=0.0)]) == [7]
    tied = _tokens(logits, [SamplingConfig(top_k=1, seed=s) for s in range(30)])
    assert set(tied) == {7, 30, 90}


def _slow_penalties(logits, prompt, output, config):
    row = logits.clone().double()
    seen = {t for t in prompt + output}
    for t in seen:
        if config.repetition_penalty != 1.0:
            x = row[t]
            row[t] = x / config.repetition_penalty if x > 0 else x * config.repetition_penalty
    for t in set(output):
        row[t] -= config.frequency_penalty * output.count(t) + config.presence_penalty
    return row


def test_bias_and_penalties_match_slow_per_row_version():
    """Bias, then HF repetition over prompt+output, OpenAI frequency/presence over output."""
    g = torch.Generator().manual_seed(1)
    configs = [
        SamplingConfig(repetition_penalty=1.3, logit_bias={3: 2.5, 50: -100.0}),
        SamplingConfig(frequency_penalty=0.7, presence_penalty=0.4),
        SamplingConfig(repetition_penalty=0.8, frequency_penalty=-0.5, presence_penalty=1.0),
        SamplingConfig(),  # untouched even though it has tokens
        SamplingConfig(repetition_penalty=2.0, logit_bias={0: 1.0}),  # row with no tokens at all
    ]
    logits = torch.randn(5, V, generator=g) * 4
    prompts = [[1, 2, 3, 3, 40], [5, 6], [], [1, 2], []]
    outputs = [[2, 60, 60], [6, 6, 6, 7, 8, 7], [9, 9, 1, 3], [4], []]
    batch = _batch(configs)
    pad = lambda rows, n: torch.tensor([r + [-1] * (n - len(r)) for r in rows])  # noqa: E731
    batch.prompt_tokens, batch.output_tokens = pad(prompts, 6), pad(outputs, 7)
    got = process_logits(logits, batch)
    for b, config in enumerate(configs):
        row = logits[b].clone()
        for t, bias in config.logit_bias.items():
            row[t] += bias
        want = _slow_penalties(row, prompts[b], outputs[b], config)
        torch.testing.assert_close(got[b].double(), want, rtol=1e-6, atol=1e-5)
    assert process_logits(logits, _batch([SamplingConfig()] * 5)) is logits  # nothing to do


def _slow_kept(s_row: torch.Tensor, config: SamplingConfig) -> set[int]:
    """Top-k, then top-p on the renormalised top-k set (crossing token kept), then min-p."""
    order = sorted(range(len(s_row)), key=lambda j: -float(s_row[j]))
    kept = order[: config.top_k] if 0 < config.top_k < len(order) else order
    kth = float(s_row[kept[-1]])
    kept = [j for j in order if float(s_row[j]) >= kth]  # ties with the k-th are kept
    if config.top_p < 1.0:
        probs = torch.softmax(s_row[kept].double(), 0).tolist()
        total, cut = 0.0, len(kept)
        for i, p in enumerate(probs):
            total += p
            if total >= config.top_p:
                cut = i + 1
                break
        kept = kept[:cut]
    if config.min_p > 0.0:
        probs = torch.softmax(s_row.double(), 0)
        kept = [j for j in kept if probs[j] >= config.min_p * probs.max()]
    return set(kept)


@pytest.mark.parametrize("seed", range(4))
def test_filter_thresholds_keep_exactly_the_slow_sets(seed):
    """top-k, top-p (crossing token included), min-p and their mixes keep the slow sets."""
    g = torch.Generator().manual_seed(seed)
    configs = [
        SamplingConfig(top_k=5),
        SamplingConfig(top_p=0.5),
        SamplingConfig(top_p=0.93, temperature=0.6),
        SamplingConfig(top_k=30, top_p=0.8),
        SamplingConfig(min_p=0.1),
        SamplingConfig(top_k=12, top_p=0.7, min_p=0.2, temperature=1.7),
        SamplingConfig(top_k=V + 5, top_p=1.0, min_p=0.0),
        SamplingConfig(),
    ]
    logits = torch.randn(len(configs), V, generator=g) * 2
    batch = _batch(configs)
    s = logits * batch.inv_temperature.unsqueeze(1)
    tau = filter_thresholds(s, batch)
    for b, config in enumerate(configs):
        got = set(torch.nonzero(s[b] >= tau[b]).flatten().tolist())
        assert got == _slow_kept(s[b], config), config


def test_top_p_keeps_the_crossing_token_and_all_ties():
    """p = 0.6 over probs [.5, .3, .15, .05] keeps 2 tokens; tied values are kept together."""
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    batch = _batch([SamplingConfig(top_p=0.6)] * 2, vocab=4)
    tau = filter_thresholds(probs.log(), batch)
    assert (probs.log() >= tau[:, None]).sum(1).tolist() == [2, 4]
    batch = _batch([SamplingConfig(top_k=2)] * 2, vocab=4)
    assert (probs.log() >= filter_thresholds(probs.log(), batch)[:, None]).sum(1).tolist() == [2, 4]


def test_same_seed_same_tokens_whatever_the_batch():
    """A request draws the same tokens alone, first, last, or among mixed neighbours."""
    g = torch.Generator().manual_seed(2)
    target = SamplingConfig(temperature=0.9, top_p=0.95, top_k=40, seed=1234)
    others = [
        SamplingConfig(temperature=0.0),
        SamplingConfig(top_k=3, seed=7),
        SamplingConfig(min_p=0.3, seed=8, presence_penalty=1.0, logit_bias={1: 3.0}),
    ]
    for position in range(20):
        row = torch.randn(1, V, generator=g) * 2
        noise = torch.randn(3, V, generator=g)
        alone = _tokens(row, [target], [position])[0]
        first = _tokens(torch.cat([row, noise]), [target, *others], [position, 3, 4, 5])[0]
        last = _tokens(torch.cat([noise, row]), [*others, target], [9, 8, 7, position])[-1]
        assert alone == first == last


def test_different_seeds_and_positions_draw_differently():
    """Flat logits: 40 draws differ between two seeds, and along positions for one seed."""
    logits = torch.zeros(40, V)
    a = _tokens(logits, [SamplingConfig(seed=1)] * 40, [5] * 40)
    assert len(set(a)) == 1  # same (seed, position): same draw
    by_position = _tokens(logits, [SamplingConfig(seed=1)] * 40)
    other_seed = _tokens(logits, [SamplingConfig(seed=2)] * 40)
    assert len(set(by_position)) > 20 and by_position != other_seed
    big = _tokens(logits[:2], [SamplingConfig(seed=2**64 - 1), SamplingConfig(seed=2**32 - 1)])
    assert all(0 <= t < V for t in big)


@pytest.mark.parametrize(
    "config",
    [
        SamplingConfig(temperature=0.0),
        SamplingConfig(seed=3),
        SamplingConfig(top_k=10, seed=3),
        SamplingConfig(top_p=0.3, seed=3),
        SamplingConfig(min_p=0.5, seed=3),
        SamplingConfig(temperature=1e-4, top_k=2, top_p=0.9, min_p=0.1, seed=3),
    ],
)
def test_all_neg_inf_but_one_returns_it(config):
    """A row with one finite logit returns that token, with a finite logprob of 0."""
    logits = torch.full((3, V), float("-inf"))
    logits[torch.arange(3), torch.tensor([0, 41, V - 1])] = torch.tensor([-5.0, 3.0, 1e4])
    configs = [replace(config, top_logprobs=2)] * 3
    out = sample(logits, _batch(configs), backend="torch")
    assert out.token_ids.tolist() == [0, 41, V - 1]
    assert torch.allclose(out.logprobs, torch.zeros(3))


def test_disabled_filters_change_nothing():
    """k >= vocab, p = 1 and min_p = 0 draw what no filter draws (same seeds)."""
    logits = torch.randn(16, V, generator=torch.Generator().manual_seed(4))
    plain = _tokens(logits, [SamplingConfig(seed=s) for s in range(16)])
    off = [SamplingConfig(seed=s, top_k=V + s, top_p=1.0, min_p=0.0) for s in range(16)]
    assert _tokens(logits, off) == plain
    padded = SamplingBatch.build(off, range(16), "cpu", V - 10)  # model vocab padded past it
    assert sample(logits, padded, backend="torch").token_ids.tolist() == plain
    mixed = [SamplingConfig(seed=s, top_k=V) for s in range(16)]
    mixed[0] = SamplingConfig(seed=0, top_k=3)  # a batch that runs the filters at all
    assert _tokens(logits, mixed)[1:] == plain[1:]


def test_logprobs_are_log_softmax_of_raw_logits():
    """Chosen and top-n logprobs equal log_softmax(raw) (before bias, penalty, temperature)."""
    logits = torch.randn(6, V, generator=torch.Generator().manual_seed(5)) * 3
    configs = [
        SamplingConfig(top_logprobs=4, temperature=0.5, logit_bias={2: 5.0}, seed=1),
        SamplingConfig(return_logprobs=True, temperature=0.0),
        SamplingConfig(top_logprobs=1, top_k=3, repetition_penalty=1.5),
    ] * 2
    batch = _batch(configs)
    batch.output_tokens = torch.randint(0, V, (6, 9), generator=torch.Generator().manual_seed(6))
    out = sample(logits, batch, backend="torch")
    ref = torch.log_softmax(logits, dim=-1)
    torch.testing.assert_close(out.logprobs, ref.gather(1, out.token_ids[:, None]).squeeze(1))
    values, ids = ref.topk(4, dim=-1)
    assert out.top_token_ids.tolist() == ids.tolist()
    torch.testing.assert_close(out.top_logprobs, values)
    assert not torch.isnan(out.top_logprobs).any()
    assert sample(logits, _batch([SamplingConfig()] * 6), backend="torch").logprobs is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -1.0},
        {"temperature": math.inf},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"top_k": -1},
        {"min_p": 1.5},
        {"repetition_penalty": 0.0},
        {"seed": -1},
        {"seed": 2**64},
        {"top_logprobs": -1},
    ],
)
def test_invalid_configs_raise_value_error(kwargs):
    """Out-of-range parameters are a ValueError (INVALID_ARGUMENT upstream)."""
    with pytest.raises(ValueError):
        SamplingConfig(**kwargs)


def test_logit_bias_outside_vocab_raises():
    """A bias on a token id outside the vocabulary is rejected when the batch is built."""
    with pytest.raises(ValueError):
        _batch([SamplingConfig(logit_bias={V: 1.0})])


def test_row_keys_hashed_on_the_host_equal_the_device_hash():
    """build() hashes (seed, position) on the host for a list of positions: the same keys as the
    tensor path, for 64-bit seeds and large positions."""
    configs = [SamplingConfig(seed=s) for s in (0, 1, 2**32 - 1, 2**32, 2**63 + 12345, 2**64 - 1)]
    positions = [0, 1, 4095, 2**31, 2**32 + 7, 123456789]
    from_list = SamplingBatch.build(configs, positions, "cpu", 100)
    from_tensor = SamplingBatch.build(configs, torch.tensor(positions), "cpu", 100)
    assert from_list.row_keys.tolist() == from_tensor.row_keys.tolist()
    assert len(set(from_list.row_keys.tolist())) == len(configs)
