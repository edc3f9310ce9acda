"""The models of the stack benchmarks: random weights in the shapes of real checkpoints (their
hub config.json, weights left random), written as Hugging Face folders with a tokenizer that
has a text for every id, and their shapes for the rooflines (stack_roofline.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import stack_roofline as rf
import torch

# Real configs (config.json of the hub models): the shape only, weights random, bf16.
_LLAMA3_ROPE = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=8192, rope_theta=500000.0)  # fmt: skip
SHAPES: dict[str, tuple[str, dict]] = {
    "qwen3-0.6b": ("Qwen3ForCausalLM", dict(
        hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
        num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
        max_position_embeddings=40960, rms_norm_eps=1e-6, attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "llama-3.2-1b": ("LlamaForCausalLM", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={**_LLAMA3_ROPE, "factor": 32.0})),
    "llama-3.1-8b": ("LlamaForCausalLM", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False,
        max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_parameters={**_LLAMA3_ROPE, "factor": 8.0})),
    # the built-in model's shape (SmolLM2-135M-Instruct): measures the engine's own ceiling
    "smollm2-135m": ("LlamaForCausalLM", dict(
        hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True,
        max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 1e5})),
    # --tiny: a vocabulary larger than the tokenizer's, like the real shapes' here
    "tiny": ("Qwen3ForCausalLM", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=4096, tie_word_embeddings=True,
        max_position_embeddings=4096)),
}  # fmt: skip


def model_shape(config: dict) -> rf.ModelShape:
    heads = config["num_attention_heads"]
    return rf.ModelShape(
        num_layers=config["num_hidden_layers"],
        hidden=config["hidden_size"],
        intermediate=config["intermediate_size"],
        num_q_heads=heads,
        num_kv_heads=config["num_key_value_heads"],
        head_dim=config.get("head_dim", config["hidden_size"] // heads),
        vocab=config["vocab_size"],
        tied=config["tie_word_embeddings"],
    )


def write_model(shape: str, root: Path, device: str) -> Path:
    from yaie.cli.models.random_model import write_random_model

    architecture, config = SHAPES[shape]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    start = time.perf_counter()
    path = write_random_model(root / shape, architecture, seed=0, dtype=dtype, **config)
    cover_vocab(path, config["vocab_size"])
    print(f"model {shape} ({architecture}, {dtype}) written in {time.perf_counter() - start:.1f} s")
    return path


def cover_vocab(model_dir: Path, vocab_size: int) -> None:
    """Gives every id of the model's vocabulary a text in the tokenizer (" t<id>"), as a real
    tokenizer has: write_random_model's tokenizer knows 768 ids, and an id with no text keeps
    the scheduler's incremental detokenizer from advancing, which makes it quadratic in the
    output length (seen on the GPU: 40% of the scheduler's time). Unreachable by encoding (no
    merges), so prompts given as text tokenize as before."""
    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    taken = set(vocab.values()) | {t["id"] for t in data.get("added_tokens", [])}
    vocab.update({f"\u0120t{i}": i for i in range(vocab_size) if i not in taken})  # Ġ = space
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
