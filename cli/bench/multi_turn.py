"""`yaie bench --dataset multi-turn`: chats sent turn by turn, as SGLang's bench_multiturn and
vLLM's benchmarks/multi_turn do. Each turn's prompt is the whole history (the system prompt, every
earlier question and the model's own answer to it) and a new question, so a turn goes out only
once the answer before it is in. Conversations start at --request-rate (Poisson; inf: all at
once) and all their turns share the --max-concurrency cap. Over yaie.v1 only: the answers' token
ids come back in its frames (the HTTP API streams text).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

from yaie.cli.bench import datasets as ds
from yaie.cli.bench import grpc_client as bench_grpc
from yaie.cli.bench.flight import Flight, RunRecord, arrival_gaps
from yaie.cli.bench.metrics import RequestResult

if TYPE_CHECKING:
    from yaie.cli.bench.workload import BenchConfig


def check_context(conversations: list[ds.Conversation], max_context: int) -> None:
    """ValueError unless every conversation's last turn (prompt + answer) fits the context."""
    for conversation in conversations:
        turns = len(conversation.questions)
        need = conversation.prompt_len(turns) + conversation.output_len
        if need > max_context:
            raise ValueError(
                f"multi-turn: turn {turns} needs {need} tokens (its prompt, the whole history, "
                f"and its answer); the model's context is {max_context}: ask for fewer or "
                "shorter turns"
            )


def describe(conversations: list[ds.Conversation]) -> str:
    """How many conversations and turns, and the prompt lengths from the first turn to the last."""
    if not conversations:
        return "no conversations"
    first, turns = conversations[0], len(conversations[0].questions)
    answers = sum(c.output_len * len(c.questions) for c in conversations)
    return (
        f"{len(conversations)} conversations x {turns} turns, prompts {first.prompt_len(1)} "
        f"(turn 1) to {first.prompt_len(turns)} tokens (turn {turns}), output {first.output_len} "
        f"tokens per turn ({answers} in all)"
    )


async def send_conversations(
    target: str,
    conversations: list[ds.Conversation],
    config: BenchConfig,
    api_key: str | None = None,
    timeout_s: float | None = None,
    tls: object = None,
) -> RunRecord:
    """Runs every conversation to its last turn over one channel. A turn that fails ends its
    conversation: the turns after it count as failed (not sent). After timeout_s the turns in
    flight or unsent are cancelled and count as failed."""
    tag = uuid.uuid4().hex[:8]
    turns_of = [
        [
            RequestResult(c.prompt_len(turn), c.output_len, turn=turn, output_ids=[])
            for turn in range(1, len(c.questions) + 1)
        ]
        for c in conversations
    ]
    results = [result for turns in turns_of for result in turns]
    gaps = arrival_gaps(len(conversations), config.request_rate, config.seed)
    flight = Flight(config.max_concurrency, len(results), not config.disable_progress)

    async with bench_grpc.session(target, api_key, tls) as call:

        async def converse(index: int, chat: ds.Conversation, turns: list[RequestResult]) -> None:
            history = list(chat.system_ids)
            for turn, (question, result) in enumerate(zip(chat.questions, turns, strict=True), 1):
                history += question
                result.prompt_len = len(history)
                message = bench_grpc.to_proto(
                    ds.BenchRequest(history, chat.output_len),
                    f"bench-{tag}-{index}-{turn}",
                    config.temperature,
                    config.single_frame,
                    config.json_schema,
                )
                await flight.send(call, message, [result])
                if not result.ok:
                    for later in turns[turn:]:
                        later.error = f"not sent: turn {turn} of its conversation failed"
                    return
                history += result.output_ids

        async def send_all() -> None:
            tasks = []
            for index, (chat, turns, gap) in enumerate(
                zip(conversations, turns_of, gaps, strict=True)
            ):
                if gap:
                    await asyncio.sleep(gap)
                tasks.append(asyncio.create_task(converse(index, chat, turns)))
            await asyncio.gather(*tasks)

        return await flight.run(send_all(), results, timeout_s)
