"""yaie bench --dataset multi-turn against a recording fake server: each turn's prompt is the
previous turn's prompt, its answer and a new question; a failed turn ends its conversation; the
per-turn metrics and table; the flags' validation. (Against a real stack: test_bench.py.)"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from yaie.cli import bench
from yaie.cli.bench import datasets as ds
from yaie.cli.bench import multi_turn
from yaie.cli.bench.metrics import RequestResult, format_table, summarize
from yaie.v1 import generation_pb2 as pb
from yaie.v1 import generation_pb2_grpc

QUIET = dict(disable_progress=True)
VOCAB = 1000


def mt_config(**sizes) -> bench.BenchConfig:
    sizes = {
        "mt_num_conversations": 3,
        "mt_turns": 4,
        "mt_system_prompt_len": 32,
        "mt_question_len": 16,
        "mt_output_len": 16,
        **sizes,
    }
    return bench.BenchConfig("multi-turn", **sizes, **QUIET)


class RecordingServer(generation_pb2_grpc.GenerationServicer):
    """Answers max_new_tokens ids in frames of 5, reports as cached the longest prefix any
    earlier request's prompt + answer shares with the prompt, and fails the request ids in
    fail (INVALID_ARGUMENT). Keeps every prompt and answer by request id."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prompts: dict[str, list[int]] = {}
        self.answers: dict[str, list[int]] = {}
        self.fail: set[str] = set()

    def GetModelInfo(self, request, context):
        return pb.ModelInfo(model="fake", vocab_size=VOCAB, max_context=4096, block_size=16)

    def Generate(self, request, context):
        prompt = list(request.token_ids.ids)
        if request.request_id in self.fail:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "refused")
        n = request.stopping.max_new_tokens
        answer = [(len(prompt) * 31 + i) % VOCAB for i in range(n)]
        with self.lock:
            cached = max(
                (_common_prefix(prompt, p + self.answers[k]) for k, p in self.prompts.items()),
                default=0,
            )
            self.prompts[request.request_id], self.answers[request.request_id] = prompt, answer
        for start in range(0, n, 5):
            yield pb.GenerateResponse(token_ids=answer[start : start + 5])
        usage = pb.Usage(prompt_tokens=len(prompt), completion_tokens=n, cached_tokens=cached)
        yield pb.GenerateResponse(finish_reason=pb.FINISH_REASON_LENGTH, usage=usage)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@pytest.fixture
def fake(tools) -> Iterator[tuple[str, RecordingServer]]:
    servicer = RecordingServer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    generation_pb2_grpc.add_GenerationServicer_to_server(servicer, server)
    port = tools.free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(None)


def _by_conversation(servicer: RecordingServer) -> dict[str, list[str]]:
    """Request ids bench-TAG-CONVERSATION-TURN grouped by conversation, in turn order."""
    chats: dict[str, list[str]] = {}
    for request_id in servicer.prompts:
        *_, chat, turn = request_id.split("-")
        chats.setdefault(chat, []).append(request_id)
    return {c: sorted(ids, key=lambda i: int(i.rsplit("-", 1)[1])) for c, ids in chats.items()}


def test_each_turn_resends_the_history_with_the_answer_and_a_new_question(fake) -> None:
    target, servicer = fake
    config = mt_config(max_concurrency=2)
    m, _ = bench.run_workload(target, config)
    assert (m.completed, m.failed, m.max_in_flight) == (12, 0, 2)
    chats = _by_conversation(servicer)
    assert len(chats) == 3 and all(len(ids) == 4 for ids in chats.values())
    systems = set()
    for ids in chats.values():
        prompts = [servicer.prompts[i] for i in ids]
        systems.add(tuple(prompts[0][:32]))
        assert [len(p) for p in prompts] == [48, 80, 112, 144]
        for k in range(3):
            history = prompts[k] + servicer.answers[ids[k]]
            assert prompts[k + 1][: len(history)] == history
            assert prompts[k + 1][len(history) :] != prompts[k][-16:]  # a new question
    assert len(systems) == 3  # every conversation has its own system prompt
    assert [t.turn for t in m.turns] == [1, 2, 3, 4]
    assert [t.completed for t in m.turns] == [3] * 4
    assert [t.mean_input_tokens for t in m.turns] == [48, 80, 112, 144]
    # the fake caches the whole history: turn k > 1 reuses all but the new question
    assert m.turns[0].cache_hit_rate == 0.0
    assert [t.cache_hit_rate for t in m.turns[1:]] == pytest.approx([64 / 80, 96 / 112, 128 / 144])
    assert all(0 < t.mean_ttft_ms <= t.mean_e2e_latency_ms for t in m.turns)
    assert m.total_input_tokens == 3 * (48 + 80 + 112 + 144) and m.total_output_tokens == 12 * 16


def test_a_failed_turn_ends_its_conversation_and_its_later_turns_count_failed(fake) -> None:
    target, servicer = fake
    servicer.fail = _FailSuffix("-1-2")  # conversation 1's turn 2 (the run's tag is random)
    m, _ = bench.run_workload(target, mt_config())
    assert (m.completed, m.failed) == (9, 3)
    assert [(t.completed, t.failed) for t in m.turns] == [(3, 0), (2, 1), (2, 1), (2, 1)]
    assert m.errors[0] == "INVALID_ARGUMENT: refused" and "not sent: turn 2" in m.errors[1]
    assert not any(i.endswith(("-1-3", "-1-4")) for i in servicer.prompts)


class _FailSuffix(set):
    """A `request_id in fail` that matches every id ending with suffix."""

    def __init__(self, suffix: str) -> None:
        super().__init__()
        self.suffix = suffix

    def __contains__(self, request_id: object) -> bool:
        return isinstance(request_id, str) and request_id.endswith(self.suffix)


def test_cli_prints_the_per_turn_table_and_records_it(fake, tmp_path: Path, capsys) -> None:
    target, _ = fake
    out = tmp_path / "runs.jsonl"
    argv = ["--target", target, "--dataset", "multi-turn", "--mt-num-conversations", "2"]
    argv += ["--mt-turns", "3", "--mt-system-prompt-len", "8", "--mt-question-len", "4"]
    argv += ["--mt-output-len", "6", "--disable-progress", "--output-file", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr()
    assert "Per turn" in printed.out and "hit rate" in printed.out
    assert "2 conversations x 3 turns, prompts 12 (turn 1) to 32 tokens (turn 3)" in printed.err
    run = json.loads(out.read_text())
    assert run["dataset"] == "multi-turn" and run["mt_turns"] == 3 and run["completed"] == 6
    assert [t["turn"] for t in run["turns"]] == [1, 2, 3]
    assert [t["mean_input_tokens"] for t in run["turns"]] == [12, 22, 32]


def test_cli_refuses_conversations_longer_than_the_context(fake, capsys) -> None:
    target, servicer = fake
    argv = ["--target", target, "--dataset", "multi-turn", "--mt-turns", "20"]
    assert bench.main([*argv, "--mt-system-prompt-len", "1000", "--disable-progress"]) == 1
    assert "turn 20 needs" in capsys.readouterr().err and not servicer.prompts


def test_conversations_are_seeded_and_sized_and_the_ideal_hit_is_block_granular() -> None:
    chats = ds.multi_turn_conversations(4, 3, 20, 5, 7, VOCAB, seed=2)
    assert chats == ds.multi_turn_conversations(4, 3, 20, 5, 7, VOCAB, seed=2)
    assert chats != ds.multi_turn_conversations(4, 3, 20, 5, 7, VOCAB, seed=3)
    assert all(len(c.system_ids) == 20 and [len(q) for q in c.questions] == [5] * 3 for c in chats)
    assert [chats[0].prompt_len(t) for t in (1, 2, 3)] == [25, 37, 49]
    # turn 3 can reuse turn 2's 37 prompt tokens + 6 of its 7 answer tokens: 43 -> 32 in blocks
    assert [ds.ideal_multi_turn_cached(chats[0], t, 16) for t in (1, 2, 3)] == [0, 16, 32]
    with pytest.raises(ValueError, match="multi-turn: turn 3 needs 56 tokens"):
        multi_turn.check_context(chats, 55)
    multi_turn.check_context(chats, 56)


def test_config_validates_the_multi_turn_flags() -> None:
    with pytest.raises(ValueError, match="only --backend yaie"):
        bench.BenchConfig("multi-turn", backend="openai")
    for flag in ("mt_num_conversations", "mt_turns", "mt_question_len", "mt_output_len"):
        with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} must be >= 1"):
            bench.BenchConfig("multi-turn", **{flag: 0})
    with pytest.raises(ValueError, match="--mt-system-prompt-len must be >= 0"):
        bench.BenchConfig("multi-turn", mt_system_prompt_len=-1)
    bench.BenchConfig("multi-turn", mt_system_prompt_len=0)
    bench.BenchConfig("random", mt_turns=0)  # only a multi-turn run reads them
    with pytest.raises(ValueError, match="make_conversations"):
        bench.make_requests(bench.BenchConfig("multi-turn"), VOCAB)
    args = bench.build_parser().parse_args(["--dataset", "multi-turn", "--mt-turns", "3"])
    config = bench.config_from_args(args)
    assert (config.mt_turns, config.mt_num_conversations, config.mt_system_prompt_len) == (
        3,
        64,
        1024,
    )


def test_per_turn_metrics_group_by_turn_and_stay_json_safe() -> None:
    def done(turn: int, ttft: float, prompt: int, cached: int) -> RequestResult:
        return RequestResult(
            prompt, 4, ok=True, ttft=ttft, latency=2 * ttft, output_tokens=4, itls=[0.01] * 3,
            prompt_tokens=prompt, cached_tokens=cached, turn=turn,
        )  # fmt: skip

    results = [done(1, 0.1, 40, 0), done(1, 0.3, 40, 0), done(2, 0.2, 80, 48)]
    results.append(RequestResult(120, 4, error="x", turn=3))
    m = summarize(results, duration_s=1.0, max_in_flight=2, client_cpu_s=0.0)
    first, second, third = m.turns
    assert (first.completed, first.mean_ttft_ms, first.median_ttft_ms) == (2, 200.0, 200.0)
    assert (second.cache_hit_rate, second.cached_tokens, second.mean_input_tokens) == (0.6, 48, 80)
    assert (third.completed, third.failed, third.cache_hit_rate) == (0, 1, 0.0)
    assert math.isnan(third.mean_ttft_ms) and m.to_dict()["turns"][2]["mean_ttft_ms"] is None
    assert m.cache_hit_rate == pytest.approx(48 / 160)
    table = format_table(m)
    assert "Per turn" in table and table.count("\n") > 20
    assert summarize(results[:2], 1.0, 1, 0.0).turns[0].turn == 1
    assert summarize([RequestResult(3, 2, ok=True)], 1.0, 1, 0.0).turns == []
