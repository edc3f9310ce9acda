"""GrammarMasks: one batched fill gives each constrained row the mask its own matcher fills (a
done row its stop tokens only), forbidden logits become -inf, unconstrained rows stay as they
were, and the reused buffers grow with the batch."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch
import xgrammar as xgr

from yaie.worker_service.step.batch_builder import ScheduledEntry
from yaie.worker_service.step.grammar import RequestGrammar, StepTokens
from yaie.worker_service.step.grammar_step import GrammarMasks, advance_grammars

VOCAB = ["</s>", "a", "b", "c", "ab", "ba", "abc", "x", "cc"] + [f"t{i}" for i in range(31)]
STOP = 0


def _compiled() -> object:
    info = xgr.TokenizerInfo(VOCAB, stop_token_ids=[STOP])
    return xgr.GrammarCompiler(info).compile_regex("(ab|ba){1,4}c{0,2}")


def _entry(index: int, grammar: RequestGrammar | None) -> ScheduledEntry:
    return ScheduledEntry(index, SimpleNamespace(grammar=grammar), 0, 1, True, True)  # type: ignore[arg-type]


def _own_mask(grammar: RequestGrammar) -> torch.Tensor:
    """What the matcher alone fills (or the stop-only mask once done)."""
    if grammar.done:
        return grammar.bitmask[0].clone()
    own = xgr.allocate_token_bitmask(1, len(VOCAB))
    grammar.matcher.fill_next_token_bitmask(own)
    return own[0]


def _allowed(mask: torch.Tensor) -> list[int]:
    return [t for t in range(len(VOCAB)) if (int(mask[t // 32]) >> (t % 32)) & 1]


@torch.inference_mode()
def test_batched_masks_equal_each_matchers_own_along_random_walks() -> None:
    rng = random.Random(0)
    compiled = _compiled()
    masks = GrammarMasks(len(VOCAB), max_threads=2)
    num_done = 0
    for batch in (1, 3, 5):  # the buffers grow from 1 to 8 rows
        grammars = [RequestGrammar(compiled, len(VOCAB), jump_forward=False) for _ in range(batch)]
        # an unconstrained row between the constrained ones: the index_select path
        entries = [_entry(0, None)] + [_entry(i + 1, g) for i, g in enumerate(grammars)]
        for _ in range(8):
            entries, keep = advance_grammars(entries)
            assert keep is None
            logits = torch.randn(len(entries), len(VOCAB))
            before = logits.clone()
            expected = [_own_mask(g) for g in grammars]
            filled = masks.apply(logits, entries)
            assert filled is not None and filled.shape[0] == batch
            torch.testing.assert_close(logits[0], before[0])
            for j, g in enumerate(grammars):
                assert torch.equal(filled[j], expected[j])
                allowed = _allowed(expected[j])
                if g.done:
                    assert allowed == [STOP]
                    num_done += 1
                row = logits[j + 1]
                assert torch.isinf(row[[t for t in range(len(VOCAB)) if t not in allowed]]).all()
                assert torch.equal(row[allowed], before[j + 1][allowed])
            choices = [rng.choice(_allowed(m)) for m in expected]
            tokens = StepTokens(torch.tensor(choices, dtype=torch.int32), batch, None)
            for j, g in enumerate(grammars):
                g.expect(tokens, j)
    assert num_done  # the walks reached done rows too
