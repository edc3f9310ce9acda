"""Greedy tokens of a worker over gRPC equal transformers' generate, token for token, for tiny
random-weight models of all four architectures: ragged batches, cached prefixes, chunked prefill,
requests joining, leaving and being preempted; logprobs match transformers' log_softmax."""

from __future__ import annotations

import pytest

from tests.worker_service.driver import (
    Driver,
    Seq,
    StepStream,
    hf_greedy,
    hf_log_softmax,
    load_hf_model,
    sampling,
    start_cpu_worker,
    stop_worker,
)

ARCHITECTURES = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"]
BLOCK_SIZE, NUM_BLOCKS = 4, 256
NEW_TOKENS = 32


def prompt(seed: int, length: int) -> list[int]:
    """Deterministic token ids in [3, 700) (clear of the special tokens)."""
    return [3 + (seed * 131 + i * 71 + i * i * 7) % 697 for i in range(length)]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def setup(request, tiny_model_dir):
    model_dir = tiny_model_dir(request.param)
    handle = start_cpu_worker(model_dir, BLOCK_SIZE, NUM_BLOCKS)
    yield handle[1], load_hf_model(model_dir)
    stop_worker(handle)


@pytest.fixture
def driver(setup):
    stream = StepStream(setup[0])
    yield Driver(stream, BLOCK_SIZE, NUM_BLOCKS)
    stream.close()


def assert_matches_hf(hf, seqs: list[Seq]) -> None:
    for seq in seqs:
        expected = hf_greedy(hf, seq.token_ids[: seq.num_prompt_tokens], seq.max_new_tokens)
        assert seq.outputs == expected, f"request {seq.request_id} diverged from transformers"


def test_ragged_batch_greedy_equals_transformers_generate(setup, driver):
    """A batch of ragged prompts prefilled together, then 32 decode steps: same greedy tokens."""
    seqs = [
        driver.add(Seq(i + 1, prompt(i, n), n, NEW_TOKENS)) for i, n in enumerate([3, 8, 13, 21])
    ]
    driver.run()
    assert_matches_hf(setup[1], seqs)


def test_cached_prefix_from_an_earlier_request_gives_the_same_tokens(setup, driver):
    """B's first blocks were written by A (num_cached_tokens > 0); C's prompt is all cached."""
    shared = prompt(7, 12)
    a = driver.add(Seq(1, shared + prompt(8, 3), 15, 2, keep_blocks=True))
    driver.run()  # A's blocks stay allocated: they hold the shared prefix
    b = driver.add(Seq(2, shared[:8] + prompt(9, 7), 15, NEW_TOKENS, cached_blocks=a.blocks[:2]))
    c = driver.add(Seq(3, list(shared), 12, NEW_TOKENS, cached_blocks=a.blocks[:3]))
    driver.run()
    assert_matches_hf(setup[1], [b, c])


def test_chunked_prefill_beside_decodes_gives_the_same_tokens(setup, driver):
    """A 37-token prompt prefilled 5 tokens per step while another request decodes."""
    short = driver.add(Seq(1, prompt(3, 6), 6, NEW_TOKENS))
    driver.step()
    long = driver.add(Seq(2, prompt(4, 37), 37, NEW_TOKENS, chunk=5))
    driver.run()
    assert_matches_hf(setup[1], [short, long])


def test_requests_joining_leaving_and_preempted_give_the_same_tokens(setup, driver):
    """Requests join at different steps, finish at different lengths, one is preempted and
    re-prefilled with its earlier output (its tokens continue unchanged)."""
    seqs = [driver.add(Seq(1, prompt(10, 9), 9, 34)), driver.add(Seq(2, prompt(11, 4), 4, 12))]
    for step in range(60):
        if step == 3:
            seqs.append(driver.add(Seq(3, prompt(12, 11), 11, NEW_TOKENS, chunk=4)))
        if step == 10:
            seqs.append(driver.add(Seq(4, prompt(13, 17), 17, 20)))
        if step == 15:
            driver.preempt(seqs[0])
        if not driver.running:
            break
        driver.step()
    driver.run()
    assert_matches_hf(setup[1], seqs)


def test_logprobs_equal_transformers_log_softmax(setup, driver):
    """The sampled token's logprob and the top-3 are transformers' log_softmax within 1e-4."""
    params = sampling(return_logprobs=True, top_logprobs=3)
    seqs = [
        driver.add(Seq(1, prompt(20, 5), 5, 8, params)),
        driver.add(Seq(2, prompt(21, 10), 10, 8, params)),
        driver.add(Seq(3, prompt(22, 7), 7, 8)),
    ]  # asks for nothing
    top: dict[int, list[tuple[list[int], list[float]]]] = {1: [], 2: []}
    while driver.running:
        entries = [(s.request_id, s.params.top_logprobs) for s in driver.running]
        result = driver.step()
        offset = 0
        for request_id, n in entries:
            if n:
                top[request_id].append(
                    (
                        list(result.top_token_ids[offset : offset + n]),
                        list(result.top_logprobs[offset : offset + n]),
                    )
                )
                offset += n
        assert offset == len(result.top_token_ids)
    assert not seqs[2].logprobs
    for seq in seqs[:2]:
        reference = hf_log_softmax(setup[1], seq.token_ids)
        steps = range(seq.num_prompt_tokens - 1, len(seq.token_ids) - 1)
        for i, position in enumerate(steps):
            row = reference[position]
            assert abs(seq.logprobs[i] - row[seq.outputs[i]].item()) < 1e-4
            ids, values = top[seq.request_id][i]
            assert ids[0] == seq.outputs[i]  # greedy: the best token is the sampled one
            assert values == pytest.approx(row[ids].tolist(), abs=1e-4)
            assert values == pytest.approx(row.topk(3).values.tolist(), abs=1e-4)
