"""Greedy streams through `yaie serve` equal transformers' generate, for all four architectures."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
import torch

from yaie.v1 import generation_pb2 as pb

ARCHITECTURES = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM"]
PROMPT = "Question: Why is the sky blue?\nAnswer:"
NUM_NEW_TOKENS = 24


def transformers_greedy(model_dir: Path, num_new_tokens: int) -> tuple[list[int], list[int], str]:
    """(prompt ids, new ids, new text) from transformers' own generate, EOS ignored."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = tokenizer(PROMPT, return_tensors="pt").input_ids
    model.generation_config.eos_token_id = None  # run all num_new_tokens, as ignore_eos does
    with torch.no_grad():
        output = model.generate(
            prompt, max_new_tokens=num_new_tokens, do_sample=False, min_new_tokens=num_new_tokens
        )
    new = output[0, prompt.shape[1] :].tolist()
    return prompt[0].tolist(), new, tokenizer.decode(new)


def served_greedy(stack, num_new_tokens: int) -> list[pb.GenerateResponse]:
    request = pb.GenerateRequest(
        text=PROMPT,
        sampling=pb.SamplingParams(temperature=0.0),
        stopping=pb.StoppingCriteria(max_new_tokens=num_new_tokens, ignore_eos=True),
    )
    with grpc.insecure_channel(stack.target) as channel:
        return list(stack.stub(channel).Generate(request, timeout=120))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_greedy_stream_equals_transformers_generate(
    architecture: str, model_dirs: dict[str, Path], llama_stack, tools
) -> None:
    with ExitStack() as stacks:
        if architecture == "LlamaForCausalLM":
            stack = llama_stack
        else:
            stack = stacks.enter_context(tools.running_stack(model_dirs[architecture]))
        frames = served_greedy(stack, NUM_NEW_TOKENS)
        with grpc.insecure_channel(stack.target) as channel:
            info = stack.stub(channel).GetModelInfo(pb.GetModelInfoRequest())
    prompt_ids, expected_ids, expected_text = transformers_greedy(
        model_dirs[architecture], NUM_NEW_TOKENS
    )
    assert (info.architecture, info.random_weights) == (architecture, True)
    assert [t for f in frames for t in f.token_ids] == expected_ids
    assert "".join(f.text for f in frames) == expected_text
    assert frames[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert [f.usage.completion_tokens for f in frames][-1] == NUM_NEW_TOKENS
    assert all(f.usage.prompt_tokens == len(prompt_ids) for f in frames)
