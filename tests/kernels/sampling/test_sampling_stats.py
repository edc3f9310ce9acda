"""Sampling statistics (torch reference path, CPU): over 20,000 seeded draws of a small vocabulary
each token's frequency matches the exact renormalised distribution of the kept set, and tokens
outside the kept set never appear.

Tolerances: with N = 20,000 draws a frequency has standard deviation sqrt(p (1 - p) / N) <= 0.0036;
we allow 5 of those per token (a false alarm about once in 2 million per token) and a chi-square
statistic under 30 (the 1e-4 upper quantile for 7 degrees of freedom, the most we have). The
draws are seeded, so a pass is reproducible; the bounds say a correct sampler passes them.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from yaie.kernels.sampling import SamplingBatch, SamplingConfig, process_logits, sample
from yaie.kernels.sampling.noise import uniforms

N = 20_000
PROBS = torch.tensor([0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.03, 0.02])
V = len(PROBS)


def _exact(s_row: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Exact distribution after top-k, top-p (renormalised, crossing kept) and min-p, float64."""
    p = torch.softmax(s_row.double(), 0)
    order = torch.argsort(p, descending=True)
    keep = torch.zeros(V, dtype=torch.bool)
    k = config.top_k if 0 < config.top_k < V else V
    keep[order[:k]] = True
    if config.top_p < 1.0:
        q = torch.where(keep, p, 0.0) / p[keep].sum()
        before = torch.cumsum(q[order], 0) - q[order]  # mass strictly before each token
        keep[order[before >= config.top_p]] = False
    keep &= p >= config.min_p * p.max()
    return torch.where(keep, p, 0.0) / p[keep].sum()


CASES = [
    SamplingConfig(temperature=0.7),
    SamplingConfig(temperature=1.3, top_k=4),
    SamplingConfig(top_p=0.7),
    SamplingConfig(min_p=0.3),
    SamplingConfig(temperature=0.9, top_k=6, top_p=0.85, min_p=0.05),
    SamplingConfig(repetition_penalty=1.8, presence_penalty=0.5, logit_bias={7: 2.0}, top_p=0.9),
]


@pytest.mark.parametrize("config", CASES)
def test_draws_follow_the_exact_kept_distribution(config):
    """20k draws (10k seeds x 1 position, 1 seed x 10k positions) match the exact distribution."""
    half = N // 2
    configs = [replace(config, seed=s) for s in range(half)]
    configs += [replace(config, seed=77)] * half
    positions = [3] * half + list(range(half))
    batch = SamplingBatch.build(configs, positions, "cpu", V)
    if config.uses_penalties:
        batch.output_tokens = torch.tensor([[0, 0, 2, -1]]).expand(N, 4)
    logits = PROBS.log().expand(N, V).contiguous()
    tokens = sample(logits, batch, backend="torch").token_ids
    freq = torch.bincount(tokens, minlength=V).double() / N
    processed = process_logits(logits[:1], _first(batch))[0]
    exact = _exact(processed * batch.inv_temperature[0], config)
    assert (freq[exact == 0] == 0).all(), (freq, exact)  # nothing outside the kept set
    sigma = (exact * (1 - exact) / N).sqrt()
    assert ((freq - exact).abs() <= 5 * sigma + 1e-12).all(), (freq, exact)
    kept = exact > 0
    chi2 = (N * (freq[kept] - exact[kept]) ** 2 / exact[kept]).sum()
    assert chi2 < 30, (chi2, freq, exact)


def _first(batch: SamplingBatch) -> SamplingBatch:
    """The batch's first row as a batch of one (same parameters and penalty tokens)."""
    rows = {
        name: value[:1] if isinstance(value, torch.Tensor) else value
        for name, value in batch.__dict__.items()
    }
    return SamplingBatch(**rows)


def test_uniforms_are_uniform_and_decorrelated():
    """Hash uniforms: in (0, 1), mean 1/2, flat over 16 bins, no correlation between neighbours."""
    keys = torch.arange(50, dtype=torch.int64) * 7919
    u = uniforms(keys, torch.arange(4000)).flatten()  # 200k values
    assert u.min() > 0 and u.max() < 1
    sigma_mean = (1 / 12 / u.numel()) ** 0.5
    assert abs(u.mean().item() - 0.5) < 5 * sigma_mean
    counts = torch.histc(u, bins=16, min=0, max=1)
    expected = u.numel() / 16
    assert ((counts - expected).abs() < 5 * (expected * 15 / 16) ** 0.5).all()
    pairs = uniforms(keys, torch.arange(4000))
    corr = torch.corrcoef(torch.stack([pairs[:, :-1].flatten(), pairs[:, 1:].flatten()]))[0, 1]
    assert abs(corr.item()) < 5 / u.numel() ** 0.5
