"""The grammar half of a step, between the forward pass and sampling: constrained rows catch up
on their previous token (the only host wait, and only for them), jump-forward moves forced
tokens into the request, and the rows' bitmasks are applied to their logits.

Runs after the forward pass was queued, so on a GPU the matchers advance and the masks fill
while the device computes. Every tensor-parallel rank runs it on the same sampled tokens: all
apply the same masks and make the same jump decisions, so their batches stay equal.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from yaie.worker_service.step.batch_builder import ScheduledEntry
from yaie.worker_service.step.grammar import RequestGrammar
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


class GrammarMasks:
    """The next-token bitmasks of a step's constrained rows, filled by one multi-threaded
    XGrammar call into a reused host buffer [rows, ceil(vocab / 32)] int32 (pinned on a GPU),
    and applied to their logits. One per runner: a per-row fill, a torch.cat of the rows and a
    fresh pinned buffer each step cost ~14-20 us a row (1.3 ms at batch 64 on a 152k vocab)."""

    def __init__(self, vocab_size: int, max_threads: int = 0) -> None:
        import xgrammar as xgr

        self.num_words = -(-vocab_size // 32)
        # Half the cores this process may use, at most 8: the step's other host work (and the
        # other tensor-parallel ranks, which run the same matchers) need the rest.
        max_threads = max_threads or min(8, max(1, len(os.sched_getaffinity(0)) // 2))
        self._filler = xgr.BatchGrammarMatcher(max_threads)
        # Two buffers in turn: step N+1 fills its masks while step N's copy may still read its
        # own; the event says when a buffer's copy is done.
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._copied: list[torch.cuda.Event | None] = [None, None]
        self._turn = 0

    def apply(self, logits: torch.Tensor, sampled: list[ScheduledEntry]) -> torch.Tensor | None:
        """Sets logits [num_sampled, vocab] to -inf where each constrained row's grammar forbids
        the token (XGrammar's CPU or CUDA kernel); unconstrained rows are untouched. Returns the
        host masks [num_constrained, words] (valid until the step after next), None if none."""
        import xgrammar as xgr

        rows = [i for i, e in enumerate(sampled) if e.state.grammar is not None]
        if not rows:
            return None
        masks = self._fill([sampled[i].state.grammar for i in rows], logits.device)
        device_masks = masks
        if logits.device.type == "cuda":
            device_masks = masks.to(logits.device, non_blocking=True)
            self._copied[self._turn] = torch.cuda.Event()
            self._copied[self._turn].record()
        self._turn ^= 1
        vocab_size = logits.shape[1]
        if len(rows) == logits.shape[0]:
            xgr.apply_token_bitmask_inplace(logits, device_masks, vocab_size=vocab_size)
            return masks
        index = torch.tensor(rows, device=logits.device)
        constrained = logits.index_select(0, index)
        xgr.apply_token_bitmask_inplace(constrained, device_masks, vocab_size=vocab_size)
        logits.index_copy_(0, index, constrained)
        return masks

    def _fill(self, grammars: list[RequestGrammar], device: torch.device) -> torch.Tensor:
        """The masks of grammars in this turn's buffer: a done grammar's own (its stop tokens),
        the others' filled by their matchers, all in one batched call."""
        masks = self._buffer(len(grammars), device.type == "cuda")
        matchers, indices = [], []
        for j, grammar in enumerate(grammars):
            if grammar.done:
                masks[j].copy_(grammar.bitmask[0])
            else:
                matchers.append(grammar.matcher)
                indices.append(j)
        if matchers:
            self._filler.batch_fill_next_token_bitmask(matchers, masks, indices)
        return masks

    def _buffer(self, num_rows: int, pinned: bool) -> torch.Tensor:
        """This turn's buffer, its last copy done, grown to a power of two rows if too small."""
        copied = self._copied[self._turn]
        if copied is not None:
            copied.synchronize()  # the copy two steps back: finished by now, all but always
        buffer = self._buffers[self._turn]
        if buffer is None or buffer.shape[0] < num_rows or buffer.is_pinned() != pinned:
            size = 1 << max(num_rows - 1, 0).bit_length()
            buffer = torch.empty((size, self.num_words), dtype=torch.int32, pin_memory=pinned)
            self._buffers[self._turn] = buffer
        return buffer[:num_rows]
