"""A GGUF file of a Llama-architecture model into a Hugging Face folder (config.json, float32
model.safetensors, tokenizer with its chat template, generation_config.json), through
transformers' GGUF reader (the `gguf` package dequantizes the quantized tensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

STEPS = ("reading the tokenizer", "dequantizing the weights", "writing safetensors")


def convert_gguf(gguf_file: Path, out: Path) -> None:
    """Writes the Hugging Face folder of gguf_file into out (an existing, empty folder), with a
    progress bar over the steps (transformers shows its own bar per tensor)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    where, name = str(gguf_file.parent), gguf_file.name
    with tqdm(total=len(STEPS), desc=f"Converting {name}", unit="step") as bar:
        bar.set_postfix_str(STEPS[0])
        # Each call given the config reads the file's metadata once less (seconds apiece).
        config = AutoConfig.from_pretrained(where, gguf_file=name)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name, config=config)
        bar.update()
        bar.set_postfix_str(STEPS[1])
        loaded = AutoModelForCausalLM.from_pretrained(
            where, gguf_file=name, config=config, dtype=torch.float32
        )
        bar.update()
        bar.set_postfix_str(STEPS[2])
        _save_plain_model(loaded, config, out)
        del loaded
        tokenizer.save_pretrained(out)
        _tidy_tokenizer_config(out, config.max_position_embeddings)
        GenerationConfig(
            bos_token_id=config.bos_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
        ).save_pretrained(out)
        bar.update()


def _save_plain_model(loaded: Any, config: Any, out: Path) -> None:
    """save_pretrained refuses a model loaded with gguf_file= (it counts as quantized): build
    the plain model from the config on the meta device and give it the dequantized tensors."""
    from transformers import AutoModelForCausalLM

    # The GGUF's descriptive name is no repository path; leave it out of config.json.
    if hasattr(config, "_model_name_or_path"):
        delattr(config, "_model_name_or_path")
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.save_pretrained(out)


def _tidy_tokenizer_config(out: Path, model_max_length: int) -> None:
    """The saved tokenizer_config.json with a portable class name, the model's real context
    (GGUF gives none) and without the loader's bookkeeping keys."""
    path = out / "tokenizer_config.json"
    settings = json.loads(path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "backend"):
        settings.pop(key, None)
    settings["tokenizer_class"] = "PreTrainedTokenizerFast"
    settings["model_max_length"] = model_max_length
    settings["clean_up_tokenization_spaces"] = False
    path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
