"""Model registry: config.json dict -> a CausalLM on the paged KV pool (weights still unloaded)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from yaie.worker_service.models.base import CausalLM
from yaie.worker_service.models.config import ModelConfig, parse_config
from yaie.worker_service.models.llama import LlamaForCausalLM
from yaie.worker_service.models.parallel import check_tp_size

if TYPE_CHECKING:
    from yaie.worker_service.tp import TPGroup

# Every supported architecture; all four are one decoder with different flags.
MODEL_CLASSES: dict[str, type[CausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": LlamaForCausalLM,
    "Qwen3ForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": LlamaForCausalLM,
}

__all__ = [
    "CausalLM",
    "ModelConfig",
    "MODEL_CLASSES",
    "build_model",
    "check_tp_config",
    "parse_config",
]


def check_tp_config(cfg: ModelConfig, tp_size: int) -> None:
    """ValueError unless tp_size ranks can split the heads, KV heads and MLP columns evenly."""
    check_tp_size(
        tp_size,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
    )


def build_model(
    config: dict[str, Any],
    dtype: torch.dtype,
    device: torch.device | str,
    attention_backend: str = "auto",
    tp: TPGroup | None = None,
) -> CausalLM:
    """Builds the model of a parsed config.json on device with uninitialised parameters (fill them
    with load_weights); with tp, this rank's shard. ValueError naming an unsupported architecture
    or config value, or the dimensions tp.size does not divide."""
    cfg = parse_config(config)
    if tp is not None:
        check_tp_config(cfg, tp.size)
    model_class = MODEL_CLASSES[cfg.architecture]
    with torch.device("meta"):  # no time spent initialising weights the checkpoint overwrites
        model = model_class(cfg, dtype, attention_backend, tp)
    model = model.to_empty(device=device).requires_grad_(False).eval()
    for module in model.modules():
        if hasattr(module, "reset_inv_freq"):
            module.reset_inv_freq()
    return model
