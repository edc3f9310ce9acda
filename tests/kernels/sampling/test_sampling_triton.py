"""Triton sampler against the torch reference: same kept sets, same tokens, same logprobs.

The interpreter cases run in a child pytest with TRITON_INTERPRET=1 (triton.jit reads it when a
kernel module is imported, so setting it here would leak into other test modules); the parent only
starts the child. GPU cases run where CUDA is present.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.kernels.triton_modes import gpu_only, interpreter_only
from yaie.kernels.sampling import (
    SamplingBatch,
    SamplingConfig,
    apply_penalties,
    draw_reference,
    filter_thresholds,
    sample,
)

EXPECTED_CHILD_TESTS = 12

MIXED = [
    SamplingConfig(temperature=0.0),
    SamplingConfig(temperature=0.8, top_p=0.9),
    SamplingConfig(top_k=7),
    SamplingConfig(temperature=0.7, top_k=40, top_p=0.95),
    SamplingConfig(min_p=0.05),
    SamplingConfig(top_p=0.5, temperature=1.5),
    SamplingConfig(top_k=1),
    SamplingConfig(temperature=1.0),
    SamplingConfig(top_k=300, top_p=0.99, min_p=0.01),
    SamplingConfig(top_p=0.3, temperature=0.3),
]


def test_sampler_matches_reference_under_triton_interpreter(interpreter_child) -> None:
    """The interpreter cases of this file all pass in a child with TRITON_INTERPRET=1."""
    interpreter_child(__file__, EXPECTED_CHILD_TESTS, select="interpreter")


def _mixed_logits(rows: int, vocab: int, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 2.5
    logits[1::4] = logits[1::4].round()  # many exact ties
    logits[2::5, : vocab // 2] = float("-inf")  # masked halves
    return logits.to(device)


def _check_against_reference(
    logits: torch.Tensor, block: int, rows_per_tile: int, max_differing: int = 0, **options
) -> None:
    """Kept sets equal but for at most max_differing tokens (fp32 sums in another order can put
    a top-p crossing one token over: seen 5-9 of 256 x 151,936 on an H100); tokens equal."""
    from yaie.kernels.sampling.triton_sample import draw_triton

    rows, vocab = logits.shape
    configs = [replace(MIXED[b % len(MIXED)], seed=11 * b) for b in range(rows)]
    batch = SamplingBatch.build(configs, range(100, 100 + rows), logits.device, vocab)
    tau = torch.full((rows,), float("nan"), device=logits.device)
    tokens = draw_triton(
        logits, batch, block, rows_per_tile, thresholds=tau, fast_log=False, **options
    )
    s = logits.float() * batch.inv_temperature.unsqueeze(1)
    finite = torch.isfinite(s)  # -inf tokens are never drawn; the kernel may leave them out
    want = (s >= filter_thresholds(s, batch).unsqueeze(1)) & finite
    sampled = ~batch.greedy
    differing = (((s >= tau.unsqueeze(1)) & finite) != want)[sampled].sum().item()
    assert differing <= max_differing, differing
    assert torch.equal(tokens, draw_reference(logits, batch))


@interpreter_only
@pytest.mark.parametrize(
    ("dtype", "block", "rows"), [(torch.float32, 32, 4), (torch.bfloat16, 64, 2)]
)
def test_interpreter_kept_sets_and_tokens_match(dtype, block, rows):
    """Tiles of 128 over a 600-token vocabulary: every loop runs several iterations."""
    logits = _mixed_logits(12, 600, "cpu", seed=block).to(dtype)
    _check_against_reference(logits, block, rows)


@interpreter_only
@pytest.mark.parametrize(
    ("scale", "vocab", "seed", "bounds", "mass", "compact", "sample"),
    [
        (8.0, 600, 16, True, True, True, True),
        (8.0, 600, 12, False, False, False, False),
        (2.5, 4000, 6, True, True, True, True),
    ],
)
def test_interpreter_bounds_sample_pivots_and_compaction_keep_exact_sets(
    scale, vocab, seed, bounds, mass, compact, sample
):
    """Peaked rows (x8: the top-k and top-p searches start from the lane-maxima bound and draw
    from the copy) and flatter ones over 4000 tokens (first top-p pivots from a sample, copies
    compacted in place as the bracket shrinks), or none of these: same kept sets and tokens."""
    logits = _mixed_logits(12, vocab, "cpu", seed=seed) * (scale / 2.5)
    _check_against_reference(
        logits, 32, 4, bounds=bounds, mass_bound=mass, compact=compact, sample_pivots=sample
    )


@interpreter_only
@pytest.mark.parametrize("sample", [True, False])
def test_interpreter_flat_top_p_rows_drawn_without_a_final_row_pass(sample):
    """N(0, 1) rows rounded to bf16 (flat: top-p sets of up to ~60% of the row; many exact ties),
    top-p only: sample pivots (or uniform ones: a bigger copy, compacted), the bracket copy with
    the best noisy key above it (cut winners are drawn from both, some from each), one-value
    brackets: same kept sets and tokens."""
    from yaie.kernels.sampling.triton_sample import draw_triton

    rows, vocab = 12, 3000
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(rows, vocab, generator=g).bfloat16().float()
    configs = [
        SamplingConfig(top_p=(0.9, 0.05, 0.2)[b % 3], temperature=(1.0, 0.8)[b % 2], seed=b)
        for b in range(rows)
    ]
    batch = SamplingBatch.build(configs, range(rows), "cpu", vocab)
    tau = torch.empty(rows)
    options = dict(sample_pivots=sample, min_recopy=0)
    tokens = draw_triton(logits, batch, 128, 4, thresholds=tau, fast_log=False, **options)
    s = logits * batch.inv_temperature.unsqueeze(1)
    assert torch.equal(s >= tau.unsqueeze(1), s >= filter_thresholds(s, batch).unsqueeze(1))
    assert torch.equal(tokens, draw_reference(logits, batch))


@interpreter_only
def test_interpreter_edge_rows():
    """All -inf but one, fewer finite tokens than k, a single token: no NaN, the right token."""
    from yaie.kernels.sampling.triton_sample import draw_triton

    logits = torch.full((4, 300), float("-inf"))
    logits[0, 17] = 2.0
    logits[1, [3, 200]] = torch.tensor([1.0, 1.5])
    logits[2, :] = 0.0
    logits[3, 299] = -1e4
    configs = [SamplingConfig(top_k=50, top_p=0.5, min_p=0.1, seed=b) for b in range(4)]
    batch = SamplingBatch.build(configs, range(4), "cpu", 300)
    tokens = draw_triton(logits, batch, block=16, rows_per_tile=4)
    assert tokens[0] == 17 and tokens[1] in (3, 200) and tokens[3] == 299
    assert torch.equal(tokens, draw_reference(logits, batch))


@interpreter_only
def test_interpreter_sample_with_logprobs_matches_torch_backend():
    """sample(backend="triton") equals the torch backend, logprobs included."""
    logits = _mixed_logits(10, 400, "cpu", seed=3)
    logits[2::5, :200] = 0.0  # logprobs of masked rows are -inf; keep them finite here
    configs = [replace(c, top_logprobs=3) for c in MIXED]
    batch = SamplingBatch.build(configs, range(10), "cpu", 400)
    a, b = sample(logits, batch, backend="triton"), sample(logits, batch, backend="torch")
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.top_token_ids, b.top_token_ids)
    torch.testing.assert_close(a.logprobs, b.logprobs)
    torch.testing.assert_close(a.top_logprobs, b.top_logprobs)


@interpreter_only
def test_interpreter_row_logsumexp_matches_torch():
    """One-pass logsumexp over several tiles, with -inf entries and an all -inf but one row."""
    from yaie.kernels.sampling.triton_sample import row_logsumexp

    x = torch.randn(3, 5000, generator=torch.Generator().manual_seed(8)) * 5
    x[0, ::3] = float("-inf")
    x[1, :] = float("-inf")
    x[1, 4321] = 2.0
    torch.testing.assert_close(row_logsumexp(x, block=256), torch.logsumexp(x, dim=-1))
    torch.testing.assert_close(
        row_logsumexp(x.bfloat16(), block=256), torch.logsumexp(x.bfloat16().float(), dim=-1)
    )


def _check_penalties(device: str, vocab: int, with_output: bool) -> None:
    from yaie.kernels.sampling.triton_penalties import apply_penalties_triton

    g = torch.Generator().manual_seed(vocab)
    configs = [
        SamplingConfig(repetition_penalty=1.4, frequency_penalty=0.3, presence_penalty=0.2),
        SamplingConfig(repetition_penalty=0.7),
        SamplingConfig(frequency_penalty=-0.5, presence_penalty=1.5),
        SamplingConfig(),
    ] * 3
    batch = SamplingBatch.build(configs, range(12), device, vocab)
    prompt = torch.randint(0, 40, (12, 150), generator=g)  # small ids: many duplicates
    prompt[:, 100:] = -1
    prompt[5] = -1  # a row with no prompt
    batch.prompt_tokens = prompt.to(device)
    if with_output:
        output = torch.randint(0, 60, (12, 70), generator=g)
        output[::3, 50:] = -1
        output[7] = -1
        batch.output_tokens = output.to(device)
    logits = torch.randn(12, vocab, generator=g).to(device) * 3
    want, got = logits.clone(), logits.clone()
    apply_penalties(want, batch)
    apply_penalties_triton(got, batch)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # FMA may round differently


@interpreter_only
@pytest.mark.parametrize("with_output", [True, False])
def test_interpreter_penalty_kernel_matches_torch(with_output):
    """The two penalty launches equal apply_penalties, duplicates and padding included."""
    _check_penalties("cpu", 300, with_output)


@gpu_only
def test_gpu_penalty_kernel_matches_torch():
    _check_penalties("cuda", 151_936, True)


@gpu_only
def test_gpu_kept_sets_and_tokens_match_at_full_vocab():
    """On CUDA, 64 x 151,936 bf16 logits: same kept sets and tokens as the reference."""
    _check_against_reference(_mixed_logits(64, 151_936, "cuda", seed=0).bfloat16(), 512, 1, 16)
