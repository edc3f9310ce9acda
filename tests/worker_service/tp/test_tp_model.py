"""Tensor-parallel sharding of the models, in one process: the ranks are threads whose all-reduce
and all-gather meet at a barrier. Two ranks, each loading only its slices of the checkpoint, give
the logits and greedy tokens of one unsharded model; a model tp cannot split is refused."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from yaie.worker.v1 import worker_pb2
from yaie.worker_service.loader import load_model
from yaie.worker_service.models import build_model
from yaie.worker_service.wire import plan_from_bytes, plan_from_proto, plan_to_bytes

BLOCK_SIZE, NEW_TOKENS = 4, 8
MODELS = [
    ("LlamaForCausalLM", {}),
    ("Qwen2ForCausalLM", {}),  # q/k/v biases shard with their rows
    ("Qwen3ForCausalLM", {}),  # q/k norm over head_dim, per head
    # tied embeddings, a vocabulary that 2 does not divide, biases after the all-reduce
    (
        "LlamaForCausalLM",
        dict(tie_word_embeddings=True, vocab_size=771, attention_bias=True, mlp_bias=True),
    ),
]


class ThreadedGroup:
    """TPGroup's collectives for `size` ranks that are threads of this process."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[torch.Tensor | None] = [None] * size

    def rank(self, rank: int) -> SimpleNamespace:
        return SimpleNamespace(
            rank=rank,
            size=self.size,
            all_reduce_=lambda x: x.copy_(self._exchange(rank, x, lambda xs: sum(xs))),
            all_gather=lambda x: self._exchange(rank, x, lambda xs: torch.cat(xs, dim=1)),
        )

    def _exchange(self, rank: int, x: torch.Tensor, combine: Callable) -> torch.Tensor:
        self.slots[rank] = x.clone()
        self.barrier.wait()
        out = combine(list(self.slots))  # every rank combines in rank order: equal results
        self.barrier.wait()
        return out


def run_ranks(size: int, work: Callable[[object], object]) -> list:
    """work(tp) on `size` threads, one per rank; their results in rank order."""
    group, results, errors = ThreadedGroup(size), [None] * size, []

    def run(rank: int) -> None:
        try:
            results[rank] = work(group.rank(rank))
        except BaseException as exc:  # noqa: BLE001 (re-raised below)
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def prompts() -> list[list[int]]:
    """Three ragged prompts of token ids clear of the special tokens."""
    lengths = [5, 11, 18]
    return [
        [3 + (i * 131 + j * 71 + j * j * 7) % 697 for j in range(n)] for i, n in enumerate(lengths)
    ]


@pytest.mark.parametrize(("architecture", "overrides"), MODELS)
def test_two_ranks_give_the_logits_and_tokens_of_one_model(
    architecture,
    overrides,
    tiny_model_dir,
    paged_engine,
    paged_sequence,
    make_forward_batch,
    hf_reference,
) -> None:
    model_dir = tiny_model_dir(architecture, **overrides)
    batch = make_forward_batch([p[:4] for p in prompts()], [0, 0, 0], [[0], [1], [2]], BLOCK_SIZE)

    def generate(tp) -> tuple[torch.Tensor, list[list[int]], object]:
        model = load_model(str(model_dir), "cpu", torch.float32, "torch", tp=tp)
        cache = torch.zeros(model.num_layers, 2, 8, BLOCK_SIZE, model.num_kv_heads, model.head_dim)
        with torch.inference_mode():
            logits = model(batch, cache)
        engine = paged_engine(model, BLOCK_SIZE)
        seqs = [paged_sequence(list(p)) for p in prompts()]
        engine.generate(seqs, NEW_TOKENS, chunk_size=5)  # chunked prefill beside decodes
        return logits, [s.output for s in seqs], model

    ((full_logits, full_tokens, full),) = run_ranks(1, lambda _: generate(None))
    ranks = run_ranks(2, generate)
    shard = ranks[0][2]
    attn = shard.model.layers[0].self_attn
    assert (attn.num_heads, attn.num_kv_heads) == (
        full.config.num_heads // 2,
        full.num_kv_heads // 2,
    )
    assert shard.model.layers[0].mlp.down_proj.weight.shape[1] == full.config.intermediate_size // 2
    for logits, tokens, _ in ranks:
        assert logits.shape == full_logits.shape
        torch.testing.assert_close(logits, full_logits, atol=1e-4, rtol=1e-4)
        assert tokens == full_tokens
    assert torch.equal(ranks[0][0], ranks[1][0])  # gathered logits: the same bytes on every rank
    for prompt, tokens in zip(prompts(), full_tokens, strict=True):
        assert tokens == hf_reference.greedy(model_dir, tuple(prompt), NEW_TOKENS)


@pytest.mark.parametrize(
    ("dims", "named"),
    [
        (dict(num_key_value_heads=1), "num_key_value_heads (1)"),
        (
            dict(num_attention_heads=3, num_key_value_heads=3),
            "num_attention_heads (3), num_key_value_heads (3)",
        ),  # noqa: E501
        (dict(intermediate_size=129), "intermediate_size (129)"),
    ],
)
def test_a_model_that_two_ranks_cannot_split_is_refused_with_the_reason(dims, named) -> None:
    config = (
        dict(
            architectures=["LlamaForCausalLM"],
            vocab_size=64,
            hidden_size=96,
            head_dim=16,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        | dims
    )
    with pytest.raises(
        ValueError, match=re.escape(f"tensor parallelism 2 needs {named} divisible by 2")
    ):
        build_model(config, torch.float32, "cpu", "torch", tp=SimpleNamespace(rank=0, size=2))


def test_a_plan_crosses_to_the_other_ranks_unchanged() -> None:
    """Plans travel between ranks as StepPlan bytes; every field, sampling included, survives."""
    message = worker_pb2.StepPlan(
        step_id=7,
        new_requests=[
            worker_pb2.NewRequest(
                request_id=3,
                token_ids=[5, 6, 7],
                num_prompt_tokens=2,
                num_cached_tokens=0,
                sampling=worker_pb2.SamplingParams(
                    temperature=0.7,
                    top_p=0.9,
                    top_k=5,
                    repetition_penalty=1.0,
                    seed=2**64 - 1,
                    logit_bias={4: -1.5},
                    top_logprobs=2,
                    return_logprobs=True,
                ),
            )
        ],
        run_request_ids=[3, 9],
        run_num_tokens=[3, 1],
        run_num_new_blocks=[1, 2],
        new_block_ids=[10, 11, 12],
        release_request_ids=[1, 2],
    )
    plan = plan_from_proto(message)
    assert plan_from_bytes(plan_to_bytes(plan)) == plan
