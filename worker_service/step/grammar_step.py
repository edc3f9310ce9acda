"""The grammar half of a step, between the forward pass and sampling: constrained rows catch up
on their previous token (the only host wait, and only for them), jump-forward moves forced
tokens into the request, and the rows' bitmasks are applied to their logits.

Runs after the forward pass was queued, so on a GPU the matchers advance and the masks fill
while the device computes. Every tensor-parallel rank runs it on the same sampled tokens: all
apply the same masks and make the same jump decisions, so their batches stay equal.
"""

from __future__ import annotations

import dataclasses

import torch

from yaie.worker_service.step.batch_builder import ScheduledEntry
from yaie.worker_service.step.request_state import RequestState, append_known


def catch_up_before_run(state: RequestState, num_tokens: int) -> None:
    """A constrained request the worker would decode, run for more than one token: the
    scheduler learned of a jump the worker found after its last token. Read that token now (the
    jump is decided by it) so the run computes the sampled and forced tokens as one chunk."""
    grammar = state.grammar
    if grammar is None or num_tokens == 1 or state.num_computed < len(state.token_ids):
        return
    grammar.catch_up()
    if grammar.jump:
        append_known(state, *grammar.take_known())


def advance_grammars(
    entries: list[ScheduledEntry],
) -> tuple[list[ScheduledEntry], list[int] | None]:
    """Catches up each sampling constrained entry. A decode whose previous token turns out to
    force a jump samples nothing (its logits are at the wrong position: the forced tokens come
    first); returns the entries with those no longer sampling, and which of the step's sampling
    rows remain (None: all)."""
    out, keep, dropped = [], [], False
    row = 0
    for original in entries:
        e, grammar = original, original.state.grammar
        if e.samples and grammar is not None:
            grammar.catch_up()
            if grammar.jump:
                assert e.is_decode, "a prefill chunk found a jump before it ran"
                append_known(e.state, *grammar.take_known())
                e = dataclasses.replace(e, samples=False)
                dropped = True
        if original.samples:  # logits has a row for it
            if e.samples:
                keep.append(row)
            row += 1
        out.append(e)
    return out, keep if dropped else None


def apply_grammar_masks(logits: torch.Tensor, sampled: list[ScheduledEntry]) -> None:
    """Sets logits [num_sampled, vocab] to -inf where each constrained row's grammar forbids the
    token (XGrammar's CPU or CUDA kernel); unconstrained rows are untouched."""
    import xgrammar as xgr

    rows = [i for i, e in enumerate(sampled) if e.state.grammar is not None]
    if not rows:
        return
    masks = torch.cat([sampled[i].state.grammar.bitmask for i in rows])  # [len(rows), words]
    if logits.device.type == "cuda":
        masks = masks.pin_memory().to(logits.device, non_blocking=True)
    vocab_size = logits.shape[1]
    if len(rows) == logits.shape[0]:
        xgr.apply_token_bitmask_inplace(logits, masks, vocab_size=vocab_size)
        return
    index = torch.tensor(rows, device=logits.device)
    constrained = logits.index_select(0, index)
    xgr.apply_token_bitmask_inplace(constrained, masks, vocab_size=vocab_size)
    logits.index_copy_(0, index, constrained)
