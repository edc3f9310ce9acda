"""Batched sampling with per-request parameters on the logits' device, with no host sync.

Order (HF/vLLM): logit bias, repetition penalty (HF), frequency and presence penalties (OpenAI),
then greedy argmax or temperature, top-k, top-p, min-p and a seeded Gumbel-max draw. Every filter
is a per-row threshold on the scaled logits ("keep s >= tau", ties kept), so the draw is one
argmax of s + noise over the kept tokens. The torch code below is the specification; on CUDA a
Triton kernel finds the same thresholds without sorting the vocabulary (sampling_triton.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from yaie.kernels.sampling_params import (
    SampleOutput,
    SamplingBatch,
    SamplingConfig,
    gumbel_noise,
)

__all__ = [
    "SampleOutput",
    "SamplingBatch",
    "SamplingConfig",
    "sample",
    "apply_penalties",
    "process_logits",
    "filter_thresholds",
    "draw_reference",
]

BACKENDS = ("auto", "torch", "triton")
# Set when a Triton kernel failed (e.g. an unsupported Triton version): "auto" then uses torch.
_triton_failure: str | None = None


def sample(logits: torch.Tensor, batch: SamplingBatch, backend: str = "auto") -> SampleOutput:
    """Draws one token per row of logits [B, V] (any float dtype; the work is in fp32).

    Logprobs, when some request asked, are log_softmax of the raw logits (before penalties, bias
    and temperature). backend: "torch" (the reference), "triton" (CUDA) or "auto" (Triton for
    CUDA logits when it imports, else torch). Branches only on batch's host flags: no sync.
    """
    assert logits.dim() == 2 and logits.shape[0] == batch.greedy.shape[0], "logits [B, V]"
    work = process_logits(logits, batch, backend)
    if batch.all_greedy:
        tokens = work.argmax(dim=-1)
    elif _use_triton(backend, work):
        from yaie.kernels.sampling_triton import draw_triton

        tokens = _guarded(
            lambda: draw_triton(work if work.stride(1) == 1 else work.contiguous(), batch),
            lambda: draw_reference(work, batch),
            backend,
        )
    else:
        tokens = draw_reference(work, batch)
    if not batch.any_logprobs:
        return SampleOutput(token_ids=tokens)
    fused = _use_triton(backend, logits)
    return _with_logprobs(
        logits.contiguous() if fused else logits, tokens, batch.num_top_logprobs, fused
    )


def process_logits(
    logits: torch.Tensor, batch: SamplingBatch, backend: str = "auto"
) -> torch.Tensor:
    """Logits [B, V] after logit bias and penalties, as a private fp32 copy; the input itself
    (no copy, any dtype) when the batch changes nothing. Every later reader converts as it reads
    (argmax is exact on bf16, as the conversion to fp32 is). backend as in sample()."""
    has_tokens = batch.prompt_tokens is not None or batch.output_tokens is not None
    penalize = batch.any_penalties and has_tokens
    if batch.bias_ids is None and not penalize:
        return logits
    work = logits.to(torch.float32, copy=True)
    if batch.bias_ids is not None:
        work.scatter_add_(1, batch.bias_ids, batch.bias_values)  # padding adds 0 to id 0
    if penalize and _use_triton(backend, work):
        from yaie.kernels.sampling_penalties import apply_penalties_triton

        _guarded(
            lambda: apply_penalties_triton(work, batch),
            lambda: apply_penalties(work, batch),
            backend,
        )
    elif penalize:
        apply_penalties(work, batch)
    return work


def _use_triton(backend: str, work: torch.Tensor) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampling backend {backend!r}; expected one of {BACKENDS}")
    if backend == "torch" or (backend == "auto" and (not work.is_cuda or _triton_failure)):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        if backend == "triton":
            raise
        return False
    return True


def _guarded(fast: Callable, slow: Callable, backend: str):
    """fast() (a Triton path); if it raises under backend "auto", warns once, runs slow() (the
    torch path, same function) and keeps "auto" on torch from then on."""
    global _triton_failure
    try:
        return fast()
    except Exception as exc:
        if backend == "triton":
            raise
        _triton_failure = repr(exc)
        warnings.warn(f"Triton sampling failed, using torch from now on: {exc!r}", stacklevel=3)
        return slow()


def _with_logprobs(raw: torch.Tensor, tokens: torch.Tensor, n: int, fused: bool) -> SampleOutput:
    """Chosen and top-n logprobs as raw - logsumexp(raw): no [B, V] log_softmax is written, and
    with fused (Triton) not even an fp32 copy of bf16 logits."""
    slow = lambda: torch.logsumexp(raw.float(), dim=-1)  # noqa: E731
    if fused:
        from yaie.kernels.sampling_triton import row_logsumexp

        lse = _guarded(lambda: row_logsumexp(raw), slow, "auto")  # [B]
    else:
        lse = slow()
    chosen = raw.gather(1, tokens.unsqueeze(1)).squeeze(1).float() - lse
    if n == 0:
        return SampleOutput(token_ids=tokens, logprobs=chosen)
    top_values, top_ids = raw.topk(n, dim=-1)  # exact in the logits' own dtype
    return SampleOutput(tokens, chosen, top_ids, top_values.float() - lse.unsqueeze(1))


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

    The noise of token j in row b is a hash of (seed, position, j) alone (sampling_params), so a
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
