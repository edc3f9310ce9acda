"""Warm-up steps before a worker serves: every kernel variant a real step can need is compiled
(Triton JIT) and every code path run once, so no client request stalls on a compile.

Seen on the H100 (benchmarks/NOTES.md, "Stack", call 5): without it, the first steps of each
new shape (a lone prefill, a mixed prefill + decode step, a prefix hit, penalties, logprobs)
took ~1 s each instead of ~25 ms. Runs through ModelRunner.launch on a table of its own and
writes only blocks the scheduler has not handed out yet (it has not started).
"""

from __future__ import annotations

import itertools
import logging
import time
from typing import Any

import torch

from yaie.kernels.attention import PrefixGroups, decode_attention_grouped, resolve_backend
from yaie.kernels.sampling import SamplingConfig, sample
from yaie.kernels.sampling.batch import SamplingBatch
from yaie.worker_service.protocol import NewRequestSpec, Plan, RunEntry
from yaie.worker_service.step.runner import ModelRunner

log = logging.getLogger(__name__)

_GREEDY = SamplingConfig(temperature=0.0)
# Every filter, every penalty, logit bias and logprobs: the sampler's slowest variant.
_EVERYTHING = SamplingConfig(
    temperature=0.8,
    top_p=0.9,
    top_k=40,
    min_p=0.05,
    repetition_penalty=1.1,
    frequency_penalty=0.1,
    presence_penalty=0.1,
    seed=7,
    logit_bias={3: 1.0},
    top_logprobs=2,
    return_logprobs=True,
)
_TOP_P = SamplingConfig(temperature=1.0, top_p=0.95)


def warm_up(runner: ModelRunner) -> float:
    """Runs the warm-up steps; returns the seconds taken (0 when the pool is too small)."""
    bs, vocab = runner.pool.block_size, runner.vocab_size
    # tokens each request will hold (prompt + decodes); request 3 hits request 1's first 2 blocks
    lengths = {1: 37 + 3, 2: 64 + 3, 4: 20 + 3, 3: bs + 8}
    too_small = sum(-(-n // bs) for n in lengths.values()) > runner.pool.num_blocks
    if too_small or runner.max_context < 2 * bs + 16 or runner.max_context < 80:
        log.info("warm-up skipped: the pool or the context is too small")
        return 0.0
    start = time.perf_counter()
    free = iter(range(runner.pool.num_blocks))
    tables = {rid: [next(free) for _ in range(-(-n // bs))] for rid, n in lengths.items()}
    tables[3] = tables[1][:2] + tables[3]
    prompts = {
        rid: [(rid * 31 + i * 7) % vocab for i in range(n)]
        for rid, n in ((1, 37), (2, 64), (3, 2 * bs + 5), (4, 20))
    }
    prompts[3][: 2 * bs] = prompts[1][: 2 * bs]
    sampling = {1: _GREEDY, 2: _EVERYTHING, 3: _TOP_P, 4: _EVERYTHING}

    def new(rid: int, cached: int = 0) -> NewRequestSpec:
        return NewRequestSpec(rid, prompts[rid], len(prompts[rid]), cached, sampling[rid])

    def first(rid: int, n: int) -> RunEntry:  # a request's first run: its whole block table
        return RunEntry(rid, n, tables[rid])

    def decode(*rids: int) -> list[RunEntry]:
        return [RunEntry(rid, 1, []) for rid in rids]

    table = runner.new_table()
    plans = [
        # a lone prefill, then two prefills in one step
        Plan(1, [new(1)], [first(1, 37)], []),
        Plan(2, [new(2), new(4)], [first(2, 64), first(4, 20)], []),
        # decodes mixed with a prefill over a cached prefix
        Plan(3, [new(3, 2 * bs)], [*decode(1, 2, 4), first(3, 5)], []),
        # decode-only steps, then every request released
        Plan(4, [], decode(1, 2, 3, 4), []),
        Plan(5, [], decode(2, 3, 4), [1]),
        Plan(6, [], [], [2, 3, 4]),
    ]
    try:
        for plan in plans:
            output = runner.launch(table, plan).wait()
            if output.error or output.request_errors:
                raise RuntimeError(
                    f"warm-up step {plan.step_id} failed: {output.error or output.request_errors}"
                )
    finally:
        runner.close_table(table)
    _warm_sampler_filters(runner)
    if resolve_backend(runner.model.attention_backend, runner.device.type == "cuda") == "triton":
        _warm_decode_splits(runner)
    if runner.cascade:
        _warm_grouped_attention(runner)
    seconds = time.perf_counter() - start
    log.info("warm-up steps done in %.1f s", seconds)
    return seconds


def _warm_sampler_filters(runner: ModelRunner) -> None:
    """The sampler compiles one kernel per set of filters present in a batch (top-k, top-p,
    min-p: 8 sets); the steps above produce two of them, these direct calls the rest."""
    logits = torch.randn(2, runner.vocab_size, device=runner.device)  # fp32, as the model's
    for top_k, top_p, min_p in itertools.product((0, 20), (1.0, 0.9), (0.0, 0.05)):
        config = SamplingConfig(top_k=top_k, top_p=top_p, min_p=min_p, seed=1)
        sample(logits, SamplingBatch.build([config] * 2, [1, 2], runner.device, runner.vocab_size))


# One split count per variant the decode kernels compile: the split pass writes the output itself
# at 1 split (MERGE), and the reduce pass is compiled per power of two of the split count (up to
# default_num_splits' 64).
_SPLIT_CLASSES = (1, 2, 3, 5, 9, 17, 33)


def _layer0_attention_inputs(runner: ModelRunner, rows: int, blocks: list[list[int]]):
    """(q, k_cache, v_cache, block_tables, seq_lens, scale, k_scale, v_scale) of rows over layer
    0's pool, each row reading the given blocks (all full): what a direct kernel call takes."""
    model, bs = runner.model, runner.pool.block_size
    k_cache, v_cache = runner.pool.cache[0][0], runner.pool.cache[0][1]
    scales = runner.pool.scales
    k_scale, v_scale = (None, None) if scales is None else (scales[0][0], scales[0][1])
    num_q_heads = model.config.num_heads // (model.tp.size if model.tp is not None else 1)
    q = torch.randn(rows, num_q_heads, model.head_dim, dtype=model.dtype, device=runner.device)
    tables = torch.tensor(blocks, dtype=torch.int32, device=runner.device)
    seq_lens = torch.full((rows,), len(blocks[0]) * bs, dtype=torch.int32, device=runner.device)
    return q, k_cache, v_cache, tables, seq_lens, model.head_dim**-0.5, k_scale, v_scale


def _warm_decode_splits(runner: ModelRunner) -> None:
    """Every split-count variant of the plain decode kernels, with and without a row order.
    The decode graphs compile only the split counts of their captured batch sizes; a mixed
    step's one-token rows outside the mixed graphs (more than their decode slots) run the
    unordered kernel eagerly at other counts: on the H200 three such compiles stalled the first
    mixed steps of a run for 0.2-0.5 s each (benchmarks/NOTES.md, session 16)."""
    from yaie.kernels.attention.triton_decode import decode_attention_triton

    rows = 2
    q, k_cache, v_cache, tables, seq_lens, scale, k_scale, v_scale = _layer0_attention_inputs(
        runner, rows, [[0, 1]] * rows
    )
    order = torch.arange(rows, dtype=torch.int32, device=runner.device)
    for num_splits in _SPLIT_CLASSES:
        for row_order in (None, order):
            decode_attention_triton(
                q,
                k_cache,
                v_cache,
                tables,
                seq_lens,
                scale,
                num_splits=num_splits,
                k_scale=k_scale,
                v_scale=v_scale,
                order=row_order,
            )


def _warm_grouped_attention(runner: ModelRunner) -> None:
    """The grouped (cascade) decode kernels, on two rows sharing one block of layer 0's pool
    (real steps group only past batch_builder's thresholds, which the steps above stay under)."""
    bs = runner.pool.block_size
    q, k_cache, v_cache, tables, seq_lens, scale, k_scale, v_scale = _layer0_attention_inputs(
        runner, 2, [[0, 1], [0, 2]]
    )
    seq_lens.fill_(bs + 1)
    groups = PrefixGroups.from_lists([[0, 1]], [bs], 2, runner.device)
    decode_attention_grouped(
        q,
        k_cache,
        v_cache,
        tables,
        seq_lens,
        scale,
        groups,
        backend=runner.model.attention_backend,
        k_scale=k_scale,
        v_scale=v_scale,
    )


def log_later_compiles() -> None:
    """From now on every Triton compile is logged with its kernel and specialization: a step that
    stalled on one names the case the warm-up is missing."""
    try:
        from triton import knobs
    except ImportError:  # an older Triton: nothing to hook
        return

    def hook(**kwargs: Any) -> None:
        compiled = kwargs.get("compile") or {}
        log.warning(
            "Triton compiled a kernel while serving: %s; specialization %s; constants %s",
            kwargs.get("repr"),
            compiled.get("configs"),
            compiled.get("constants"),
        )

    knobs.runtime.jit_post_compile_hook = hook
