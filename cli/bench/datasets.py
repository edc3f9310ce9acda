"""Workloads of `yaie bench`: random token-id prompts with exact output lengths.

random (nano-vllm's / SGLang's --dataset random), shared-prefix (SGLang's generated-shared-prefix:
groups of prompts behind one system prompt), fixed, and multi-turn (conversations whose every turn
resends the whole history: drawn here, sent by multi_turn.py). Every prompt is token ids drawn
uniformly from the served vocabulary; the output length is exact (ignore_eos + max_new_tokens).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DATASETS = ("random", "shared-prefix", "fixed", "multi-turn")
# nano-vllm's bench.py draws lengths from randint(100, 1024): input_len 1024 with this ratio gives
# the same range [int(1024 * ratio), 1024] = [100, 1024] under SGLang's --random-range-ratio rule.
NANO_VLLM_RANGE_RATIO = 100 / 1024


@dataclass(frozen=True)
class BenchRequest:
    """One request of a workload: its prompt ids and how many tokens it must generate."""

    prompt_ids: list[int]
    output_len: int


@dataclass(frozen=True)
class Conversation:
    """One chat of a multi-turn workload: its system prompt and one question per turn. Turn k's
    prompt is the system prompt, then each earlier turn's question and answer, then question k;
    the answers are the model's, so the prompts exist only as the conversation runs."""

    system_ids: list[int]
    questions: list[list[int]]
    output_len: int  # tokens of every answer

    def prompt_len(self, turn: int) -> int:
        """Prompt tokens of turn (1-based) when every earlier answer had output_len tokens."""
        asked = self.questions[:turn]
        return len(self.system_ids) + sum(map(len, asked)) + (turn - 1) * self.output_len


def length_range(max_len: int, range_ratio: float) -> tuple[int, int]:
    """[low, high] of a random length: low = max(1, int(max_len * range_ratio)), high = max_len."""
    if max_len < 1 or not 0.0 <= range_ratio <= 1.0:
        raise ValueError(
            f"need length >= 1 and 0 <= range ratio <= 1, got {max_len}, {range_ratio}"
        )
    return max(1, int(max_len * range_ratio)), max_len


def _rng(dataset: str, seed: int) -> random.Random:
    """Each dataset its own stream: the same seed must not give two datasets a common prefix
    (which the server's prefix cache would find, inflating the hit rate)."""
    return random.Random(f"{dataset}:{seed}")


def _ids(rng: random.Random, n: int, vocab_size: int) -> list[int]:
    return [rng.randrange(vocab_size) for _ in range(n)]


def random_requests(
    num_prompts: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    vocab_size: int,
    seed: int,
) -> list[BenchRequest]:
    """Input and output lengths each uniform (inclusive) in length_range(len, range_ratio)."""
    rng = _rng("random", seed)
    in_low, in_high = length_range(input_len, range_ratio)
    out_low, out_high = length_range(output_len, range_ratio)
    requests = []
    for _ in range(num_prompts):
        n_in, n_out = rng.randint(in_low, in_high), rng.randint(out_low, out_high)
        requests.append(BenchRequest(_ids(rng, n_in, vocab_size), n_out))
    return requests


def shared_prefix_requests(
    num_groups: int,
    prompts_per_group: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    vocab_size: int,
    seed: int,
) -> list[BenchRequest]:
    """num_groups random system prompts, each followed by prompts_per_group random questions;
    sent group by group (SGLang's order). Every prompt has system_prompt_len + question_len ids."""
    rng = _rng("shared-prefix", seed)
    requests = []
    for _ in range(num_groups):
        system = _ids(rng, system_prompt_len, vocab_size)
        for _ in range(prompts_per_group):
            requests.append(BenchRequest(system + _ids(rng, question_len, vocab_size), output_len))
    return requests


def fixed_requests(
    num_prompts: int, input_len: int, output_len: int, vocab_size: int, seed: int
) -> list[BenchRequest]:
    rng = _rng("fixed", seed)
    return [BenchRequest(_ids(rng, input_len, vocab_size), output_len) for _ in range(num_prompts)]


def check_multi_turn(
    num_conversations: int,
    num_turns: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
) -> None:
    """ValueError naming the multi-turn size out of range."""
    sizes = {
        "--mt-num-conversations": (num_conversations, 1),
        "--mt-turns": (num_turns, 1),
        "--mt-system-prompt-len": (system_prompt_len, 0),
        "--mt-question-len": (question_len, 1),
        "--mt-output-len": (output_len, 1),
    }
    for flag, (value, least) in sizes.items():
        if value < least:
            raise ValueError(f"multi-turn: {flag} must be >= {least}, got {value}")


def multi_turn_conversations(
    num_conversations: int,
    num_turns: int,
    system_prompt_len: int,
    question_len: int,
    output_len: int,
    vocab_size: int,
    seed: int,
) -> list[Conversation]:
    """num_conversations chats of num_turns turns, each with its own random system prompt (so
    the only prefix a turn shares is its own conversation's history) and random questions."""
    check_multi_turn(num_conversations, num_turns, system_prompt_len, question_len, output_len)
    rng = _rng("multi-turn", seed)
    return [
        Conversation(
            _ids(rng, system_prompt_len, vocab_size),
            [_ids(rng, question_len, vocab_size) for _ in range(num_turns)],
            output_len,
        )
        for _ in range(num_conversations)
    ]


def ideal_cached_tokens(
    num_groups: int, prompts_per_group: int, system_prompt_len: int, block_size: int
) -> int:
    """Prompt tokens a block-granular prefix cache can serve at best on shared-prefix: every
    prompt but the first of its group reuses the system prompt, rounded down to whole blocks."""
    shared = system_prompt_len // block_size * block_size
    return num_groups * (prompts_per_group - 1) * shared


def ideal_multi_turn_cached(conversation: Conversation, turn: int, block_size: int) -> int:
    """Prompt tokens of turn (1-based) a block-granular prefix cache can serve at best: the
    earlier turn's prompt and answer but the answer's last token (never fed back, so it has no
    K/V), rounded down to whole blocks; none on turn 1 (every system prompt is its own)."""
    if turn == 1:
        return 0
    written = conversation.prompt_len(turn - 1) + conversation.output_len - 1
    return written // block_size * block_size


def describe(requests: list[BenchRequest]) -> str:
    """How many requests, and their input and output lengths: range and total of each."""
    if not requests:
        return "no requests"
    ins = [len(r.prompt_ids) for r in requests]
    outs = [r.output_len for r in requests]
    return (
        f"{len(requests)} requests, input {min(ins)}-{max(ins)} tokens ({sum(ins)} in all), "
        f"output {min(outs)}-{max(outs)} tokens ({sum(outs)} in all)"
    )
