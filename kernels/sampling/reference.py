"""Torch reference of the sampler's stages: the specification the Triton kernels must match.

Penalties (triton_penalties.py), the top-k / top-p / min-p thresholds and the Gumbel-max draw
(triton_sample.py). Every filter is a per-row threshold on the scaled logits ("keep s >= tau",
ties kept), so the draw is one argmax of s + noise over the kept tokens.
"""

from __future__ import annotations

import torch

from yaie.kernels.sampling.batch import SamplingBatch
from yaie.kernels.sampling.noise import gumbel_noise


def apply_penalties(work: torch.Tensor, batch: SamplingBatch) -> None:
    """Repetition (HF: over prompt + output), frequency and presence (output only), in place.

    Only the [B, L] positions of the request's tokens are touched (gather, compute, scatter), never
    a [B, V] count table. Duplicates and padding write the same value to the same place, so the
    scatter is race-free: padding points at the row's largest token and computes its value.
    """
    tokens = batch.penalty_tokens()  # [B, L], -1 = padding
    row_max = tokens.max(dim=1, keepdim=True).values  # [B, 1]
    has_any = row_max >= 0
    idx = torch.where(tokens < 0, row_max.clamp_min(0), tokens)
    old = work.gather(1, idx)
    rep = batch.repetition_penalty.unsqueeze(1)
    new = torch.where(old > 0, old / rep, old * rep)
    if batch.output_tokens is not None:
        # count of each entry's token among the output tokens, by binary search in the sorted row
        out_sorted = batch.output_tokens.sort(dim=1).values.contiguous()
        above = torch.searchsorted(out_sorted, idx, right=True)
        count = (above - torch.searchsorted(out_sorted, idx)).to(torch.float32)
        new = new - batch.frequency_penalty.unsqueeze(1) * count
        new = new - batch.presence_penalty.unsqueeze(1) * (count > 0).to(torch.float32)
    work.scatter_(1, idx, torch.where(has_any, new, old))


def filter_thresholds(s: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """[B] thresholds tau on scaled logits s [B, V]: top-k, top-p, min-p keep exactly s >= tau.

    top-k: tau_k = the k-th largest value. top-p (on the top-k set, renormalised): tau_p = the
    largest value v with mass(s >= v) >= p * mass(top-k set), i.e. the token whose cumulative
    mass first reaches p, that token included. min-p: tau_m = max + log(min_p).
    """
    neg_inf = torch.full_like(s[:, 0], float("-inf"))
    tau = neg_inf
    ordered = s.sort(dim=-1, descending=True).values if batch.any_top_k or batch.any_top_p else s
    top = ordered[:, 0] if ordered is not s else s.max(dim=-1).values
    if batch.any_top_k:
        k = batch.top_k.to(torch.int64).clamp_max(s.shape[1])  # TOP_K_OFF: keep all
        tau = ordered.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
    if batch.any_top_p:
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).unsqueeze(1)
        weights = torch.exp(ordered - shift).masked_fill(ordered < tau.unsqueeze(1), 0.0)
        cum = weights.cumsum(dim=1)
        target = (batch.top_p * cum[:, -1]).unsqueeze(1)
        crossing = torch.searchsorted(cum, target).clamp_max(s.shape[1] - 1)
        tau_p = ordered.gather(1, crossing).squeeze(1)
        tau = torch.maximum(tau, torch.where(batch.top_p < 1.0, tau_p, neg_inf))
    if batch.any_min_p:
        tau = torch.maximum(tau, top + torch.log(batch.min_p))
    return tau


def draw_reference(work: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """[B] int64 tokens from processed logits work [B, V] (any float dtype): greedy rows argmax,
    the others Gumbel-max in fp32.

    The noise of token j in row b is a hash of (seed, position, j) alone (noise.py), so a
    request draws the same token whatever else is in its batch.
    """
    s = work * batch.inv_temperature.unsqueeze(1)
    if batch.any_filter:
        s = s.masked_fill(s < filter_thresholds(s, batch).unsqueeze(1), float("-inf"))
    vocab_ids = torch.arange(work.shape[1], device=work.device)
    tokens = (s + gumbel_noise(batch.row_keys, vocab_ids)).argmax(dim=-1)
    if batch.any_greedy:
        tokens = torch.where(batch.greedy, work.argmax(dim=-1), tokens)
    return tokens
