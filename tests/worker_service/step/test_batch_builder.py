"""build_forward_batch: the plan's slots, positions and device-held decode tokens; decode rows
longest first; prefix groups found by both builders; deterministic mode's decode rows."""

from __future__ import annotations

import torch

from tests.worker_service.conftest import build_forward_batch as reference_batch
from yaie.worker_service.step.batch_builder import ScheduledEntry, build_forward_batch
from yaie.worker_service.step.request_state import RequestState, RequestTable

BLOCK_SIZE = 4


def test_forward_batch_has_the_plan_slots_positions_and_device_held_decode_tokens():
    table = RequestTable(torch.device("cpu"), capacity=2)
    states = [
        RequestState(i, table._take_row(), list(range(10 * i, 10 * i + 9)), 9, 0, [], None)
        for i in range(3)
    ]
    states[0].num_computed = 4  # prefill 5 after 4 cached
    states[1].num_computed, states[1].num_sampled = 9, 1
    states[2].num_computed = 0  # chunk of 3, no sample
    for state, blocks in zip(states, [[7, 2], [3, 1, 0], [6, 4]], strict=True):
        table.append_blocks(state, blocks)
    table.append_blocks(states[0], [5])  # a table grows across steps
    table.last_tokens[states[1].row] = 777
    entries = [
        ScheduledEntry(0, states[0], 4, 5, True, False),
        ScheduledEntry(1, states[1], 9, 1, True, True),
        ScheduledEntry(2, states[2], 0, 3, False, False),
    ]
    batch, sample_rows = build_forward_batch(entries, table, BLOCK_SIZE)
    expected = reference_batch(
        [list(range(4, 9)), [777], [20, 21, 22]],
        [4, 9, 0],
        [s.block_table for s in states],
        BLOCK_SIZE,
    )
    for name in ("input_ids", "positions", "slots", "block_tables", "seq_lens", "query_start"):
        assert torch.equal(getattr(batch, name), getattr(expected, name)), name
        assert getattr(batch, name).dtype == getattr(expected, name).dtype, name
    assert batch.logits_indices.tolist() == [4, 5]  # the third entry samples nothing
    assert batch.max_query_len == 5 and not batch.is_decode
    assert sample_rows.tolist() == [states[0].row, states[1].row]
    table._requests = {s.request_id: s for s in states}
    table.release(1)  # its row's blocks are cleared for the next request that takes the row
    assert table._take_row() == states[1].row and not table.blocks[states[1].row].any()


def test_decode_batches_list_their_rows_longest_first_for_decode_attention():
    """Both builders' decode batches (with and without cascade grouping asked for) carry
    decode_order, the rows by length longest first (ties in row order); a mixed batch none."""
    table = RequestTable(torch.device("cpu"), capacity=4)
    lengths = [5, 14, 9, 14]
    states = []
    for i, n in enumerate(lengths):
        state = RequestState(i, table._take_row(), list(range(n)), n, 0, [], None)
        state.num_computed, state.num_sampled = n, 1
        table.append_blocks(state, list(range(10 * i, 10 * i + 4)))
        states.append(state)
    decodes = [ScheduledEntry(i, s, s.num_computed, 1, True, True) for i, s in enumerate(states)]
    for max_groups in (0, 4):
        batch, _ = build_forward_batch(decodes, table, BLOCK_SIZE, max_groups)
        assert batch.is_decode and batch.prefix_groups is None
        assert batch.decode_order.dtype == torch.int32
        assert batch.decode_order.tolist() == [1, 3, 2, 0]
    prompt = ScheduledEntry(4, states[0], 0, 3, False, False)
    mixed, _ = build_forward_batch([*decodes, prompt], table, BLOCK_SIZE)
    assert not mixed.is_decode and mixed.decode_order is None


def test_decode_batches_over_shared_blocks_carry_the_groups_both_builders_find(monkeypatch):
    """A decode batch (the numpy builder) and a batch of one-token runs with a prompt token
    among them (the general builder) group the same rows over the same shared blocks."""
    from yaie.worker_service.step import batch_builder

    for name, value in (("MIN_PREFIX_TOKENS", 4), ("MIN_GROUP_SAVED_TOKENS", 0)):
        monkeypatch.setattr(batch_builder, name, value)
    monkeypatch.setattr(batch_builder, "MIN_SAVED_TOKENS", 1)
    table = RequestTable(torch.device("cpu"), capacity=5)
    shared = [[1, 2, 3], [1, 2, 3], [9, 8], [1, 2, 3], [9, 8]]
    states = []
    for i, first in enumerate(shared):
        n = 4 * len(first) + 3 + i
        state = RequestState(i, table._take_row(), list(range(n)), n, 0, [], None)
        state.num_computed, state.num_sampled = n, 1
        table.append_blocks(state, first + [100 + 10 * i, 101 + 10 * i])
        states.append(state)
    decodes = [ScheduledEntry(i, s, s.num_computed, 1, True, True) for i, s in enumerate(states)]
    prompt_token = [
        *decodes[:-1],
        ScheduledEntry(4, states[4], states[4].num_computed, 1, True, False),
    ]
    found = []
    for entries in (decodes, prompt_token):
        batch, _ = build_forward_batch(entries, table, BLOCK_SIZE, 4)
        groups = batch.prefix_groups
        assert batch.is_decode and groups is not None and batch.decode_order is None
        found.append([t.tolist() for t in (groups.rows, groups.starts, groups.prefix_lens)])
        assert groups.kv_start.tolist() == [12, 12, 8, 12, 8]
    assert found[0] == found[1] == [[0, 1, 3, 2, 4], [0, 3, 5], [12, 8]]


def test_deterministic_batches_keep_decode_attention_for_generated_tokens_only():
    """single_by_decode: a prompt's last token run alone (its prefix cached) is an extend row,
    not a decode row, so its attention is the kernel any chunking of the prompt would use; the
    decodes of generated tokens (first in the entries) stay decode rows."""
    table = RequestTable(torch.device("cpu"), capacity=3)
    states = [
        RequestState(i, table._take_row(), list(range(10 * i, 10 * i + 9)), 9, 0, [], None)
        for i in range(3)
    ]
    states[0].num_computed, states[0].num_sampled = 9, 1  # a decode
    states[1].num_computed = 8  # the prompt's last token, alone
    states[2].num_computed = 4  # a chunk of 5
    for state in states:
        table.append_blocks(state, [3 * state.request_id, 3 * state.request_id + 1, 3 * 3])
    decode = ScheduledEntry(0, states[0], 9, 1, True, True)
    last = ScheduledEntry(1, states[1], 8, 1, True, False)
    chunk = ScheduledEntry(2, states[2], 4, 5, True, False)
    plain, _ = build_forward_batch([decode, last, chunk], table, BLOCK_SIZE)
    assert plain.num_single == 2
    batch, _ = build_forward_batch([decode, last, chunk], table, BLOCK_SIZE, single_by_decode=True)
    assert batch.num_single == 1 and not batch.is_decode
    assert batch.extend_query_start.tolist() == [0, 1, 6]
    only_last, _ = build_forward_batch([last], table, BLOCK_SIZE, single_by_decode=True)
    assert not only_last.is_decode and only_last.num_single == 0


def test_a_mixed_batch_groups_its_one_token_rows_over_shared_blocks(monkeypatch):
    """In a mixed batch the leading one-token rows (decode attention) are grouped as a decode
    batch would be (kv_start for those rows only); the prompt rows after them never are."""
    from yaie.worker_service.step import batch_builder

    for name, value in (("MIN_PREFIX_TOKENS", 4), ("MIN_GROUP_SAVED_TOKENS", 0)):
        monkeypatch.setattr(batch_builder, name, value)
    monkeypatch.setattr(batch_builder, "MIN_SAVED_TOKENS", 1)
    table = RequestTable(torch.device("cpu"), capacity=4)
    states = []
    for i in range(4):  # rows 0-2 decode over blocks [1, 2, 3]; row 3 is a prompt over them too
        n = 4 * 3 + 3 + i
        state = RequestState(i, table._take_row(), list(range(n)), n, 0, [], None)
        state.num_computed, state.num_sampled = (n, 1) if i < 3 else (12, 0)
        table.append_blocks(state, [1, 2, 3, 100 + 10 * i, 101 + 10 * i])
        states.append(state)
    decodes = [
        ScheduledEntry(i, s, s.num_computed, 1, True, True) for i, s in enumerate(states[:3])
    ]
    prompt = ScheduledEntry(3, states[3], 12, 6, True, False)
    batch, _ = build_forward_batch([*decodes, prompt], table, BLOCK_SIZE, 4)
    groups = batch.prefix_groups
    assert not batch.is_decode and batch.num_single == 3 and groups is not None
    assert [t.tolist() for t in (groups.rows, groups.starts, groups.prefix_lens)] == [
        [0, 1, 2],
        [0, 3],
        [12],
    ]
    assert groups.kv_start.tolist() == [12, 12, 12]
    plain, _ = build_forward_batch([*decodes, prompt], table, BLOCK_SIZE, 0)
    assert plain.prefix_groups is None
