"""Tiny random-weight Llama-family models with an offline byte-level BPE tokenizer.

The tests and benchmarks build their model directories here (fast, nothing downloaded). The
weights are random and labelled so (config `yaie_random_weights`): their text is nonsense.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from yaie.cli.models.random_model_text import TRAINING_TEXT

BOS, EOS, PAD, END = "<|bos|>", "<|eos|>", "<|pad|>", "<|end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, "<|system|>", "<|user|>", "<|assistant|>", END]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
_TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)
_ARCHITECTURE_DEFAULTS: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {},
    "Qwen2ForCausalLM": {"use_sliding_window": False},
    "Qwen3ForCausalLM": {"use_sliding_window": False},
    "MistralForCausalLM": {"sliding_window": None},
}


def write_tokenizer(
    path: str | os.PathLike, vocab_size: int = 768, model_max_length: int = 2048
) -> Any:
    """Trains a byte-level BPE tokenizer on the built-in text and writes tokenizer.json,
    tokenizer_config.json (with a chat template) and special_tokens_map.json into path.
    Deterministic; no BOS is added on encode (the chat template writes it). Returns the
    `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TRAINING_TEXT.splitlines(keepends=True), trainer)
    tokenizer.save(str(path / "tokenizer.json"))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "additional_special_tokens": SPECIAL_TOKENS[3:],
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    _write_json(path / "tokenizer_config.json", tokenizer_config)
    _write_json(
        path / "special_tokens_map.json",
        {**special, "additional_special_tokens": SPECIAL_TOKENS[3:]},
    )
    return tokenizer


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Fills every parameter from one seeded generator, at scales that keep activations O(1)
    and make the next-token distribution peaked (so greedy decoding has clear winners)."""
    generator = torch.Generator().manual_seed(seed)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if name.endswith("norm.weight"):
                values = 1.0 + 0.1 * noise
            elif param.dim() == 1:  # biases
                values = 0.1 * noise
            elif "embed_tokens" in name and not tied:
                values = noise
            elif "embed_tokens" in name:
                # Tied: the embedding is also the lm_head. At std 1 the self-logit |e|^2 ~ hidden
                # dwarfs the rest and greedy just repeats its input token, so scale it like the
                # untied lm_head below.
                values = noise * 2.0 / param.shape[1] ** 0.5
            else:  # [out, in]; the lm_head a little sharper
                scale = 2.0 if name.startswith("lm_head") else 1.0
                values = noise * scale / param.shape[1] ** 0.5
            param.copy_(values.to(param.dtype))


def _allocate_uninitialised(model_class: type, config: Any, dtype: torch.dtype) -> Any:
    """The transformers model with uninitialised parameters in dtype: built on the meta device,
    so a model of a real size (billions of parameters) costs neither init time nor a float32
    copy. Buffers are not saved, so their contents do not matter."""
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = model_class(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model = model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives the tied lm_head its own storage
    return model


def write_random_model(
    path: str | os.PathLike,
    architecture: str = "LlamaForCausalLM",
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Writes a complete Hugging Face model directory (config.json, model.safetensors, tokenizer,
    generation_config.json) of a tiny random-weight model, deterministic in seed.

    config_overrides go to the transformers config class (e.g. tie_word_embeddings=True,
    rope_scaling={...}, num_hidden_layers=4); `vocab_size` defaults to the tokenizer's size
    rounded up to a multiple of 64, `max_shard_size` (not a config key) shards the weights."""
    import transformers

    if architecture not in _ARCHITECTURE_DEFAULTS:
        raise ValueError(f"unsupported architecture {architecture!r}")
    path = Path(path)
    max_shard_size = config_overrides.pop("max_shard_size", None)
    dtype = config_overrides.pop("dtype", torch.float32)
    tokenizer = write_tokenizer(
        path,
        model_max_length=config_overrides.get(
            "max_position_embeddings", _TINY_CONFIG["max_position_embeddings"]
        ),
    )
    ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
    settings: dict[str, Any] = {
        **_TINY_CONFIG,
        **_ARCHITECTURE_DEFAULTS[architecture],
        "vocab_size": -(-tokenizer.get_vocab_size() // 64) * 64,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
        "yaie_random_weights": True,
        **config_overrides,
    }
    if architecture == "Qwen2ForCausalLM":
        settings.pop("head_dim")  # Qwen2 always derives it from hidden_size
    config_class = getattr(transformers, architecture.replace("ForCausalLM", "Config"))
    config = config_class(**settings)
    model = _allocate_uninitialised(getattr(transformers, architecture), config, dtype)
    _randomize(model, seed)
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **save_kwargs)
    generation = transformers.GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=[ids[EOS], ids[END]], pad_token_id=ids[PAD]
    )
    generation.save_pretrained(path)
    return path
