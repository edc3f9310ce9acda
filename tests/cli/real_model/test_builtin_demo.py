"""The README's first command, `yaie serve --demo`, with no --model: the stack serves the built-in
model and prints the question and its greedy chat answer, alone on stdout, equal to transformers'
answer on the same folder, which names Paris."""

from __future__ import annotations

import os

import pytest
import torch

from yaie.cli.serve import DEMO_QUESTION

pytestmark = pytest.mark.slow
DEMO_TOKENS = 48  # yaie serve's --demo-tokens default


def transformers_answer(hf_model, hf_tokenizer, question: str) -> str:
    """Greedy, until EOS or DEMO_TOKENS tokens, special tokens left out (as the demo asks)."""
    messages = [{"role": "user", "content": question}]
    rendered = hf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    prompt = hf_tokenizer(rendered, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        output = hf_model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=DEMO_TOKENS,
            do_sample=False,
        )
    return hf_tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)


def test_serve_demo_answers_the_capital_of_france_like_transformers(
    builtin_cache, hf_model, hf_tokenizer, tools
) -> None:
    env = {**os.environ, "YAIE_CACHE": str(builtin_cache)}
    demo = ("serve", "--demo", "--port", "0", "--device", "cpu", "--num-blocks", "64")
    result = tools.run_yaie(*demo, env=env, timeout=300)
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, err
    expected = transformers_answer(hf_model, hf_tokenizer, DEMO_QUESTION)
    assert "Paris" in expected
    assert out == f"{DEMO_QUESTION}\n{expected}\n"
    assert " INFO " not in err  # the demo runs at --log-level WARNING
