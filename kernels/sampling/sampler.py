"""Batched sampling with per-request parameters on the logits' device, with no host sync.

Order (HF/vLLM): logit bias, repetition penalty (HF), frequency and presence penalties (OpenAI),
then greedy argmax or temperature, top-k, top-p, min-p and a seeded Gumbel-max draw. The torch
code in reference.py is the specification; on CUDA Triton kernels find the same thresholds
without sorting the vocabulary (triton_sample.py) and apply the penalties (triton_penalties.py).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from yaie.kernels.sampling.batch import SamplingBatch
from yaie.kernels.sampling.reference import apply_penalties, draw_reference


@dataclass
class SampleOutput:
    """What sample() returns; n = the largest top_logprobs in the batch.

    token_ids [B] int64; logprobs [B] fp32 (log_softmax of the raw logits at the chosen token),
    top_token_ids [B, n] int64 and top_logprobs [B, n] fp32, each None when no request asked.
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_token_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


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
        from yaie.kernels.sampling.triton_sample import draw_triton

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
        from yaie.kernels.sampling.triton_penalties import apply_penalties_triton

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
        from yaie.kernels.sampling.triton_sample import row_logsumexp

        lse = _guarded(lambda: row_logsumexp(raw), slow, "auto")  # [B]
    else:
        lse = slow()
    chosen = raw.gather(1, tokens.unsqueeze(1)).squeeze(1).float() - lse
    if n == 0:
        return SampleOutput(token_ids=tokens, logprobs=chosen)
    top_values, top_ids = raw.topk(n, dim=-1)  # exact in the logits' own dtype
    return SampleOutput(tokens, chosen, top_ids, top_values.float() - lse.unsqueeze(1))
