"""Model registry: config.json dict -> a CausalLM on the paged KV pool (weights still unloaded)."""

from __future__ import annotations

from typing import Any

import torch

from yaie.worker_service.models.base import CausalLM
from yaie.worker_service.models.config import ModelConfig, parse_config
from yaie.worker_service.models.llama import LlamaForCausalLM

# Every supported architecture; all four are one decoder with different flags.
MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
}

__all__ = ["CausalLM", "ModelConfig", "MODEL_CLASSES", "build_model", "parse_config"]


def build_model(
    config: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device | str,
    attention_backend: str = "auto",
) -> CausalLM:
    """Builds the model of a parsed config.json on device with uninitialised parameters (fill them
    with load_weights). ValueError naming an unsupported architecture or config value."""
    cfg = parse_config(config)
    model_class = MODEL_CLASSES[cfg.architecture]
    with torch.device("meta"):  # no time spent initialising weights the checkpoint overwrites
        model = model_class(cfg, dtype, attention_backend)
    model = model.to_empty(device=device).requires_grad_(False).eval()
    for module in model.modules():
        if hasattr(module, "reset_inv_freq"):
            module.reset_inv_freq()
    return model
