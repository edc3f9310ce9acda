"""ModelConfig: one architecture-independent view of a Hugging Face config.json dict.

Reads transformers 4.x configs (top-level rope_theta, rope_scaling) and 5.x ones (rope_parameters)
alike, filling each missing key with the default of the matching transformers config class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# model_type -> architecture, for config.json files that lack "architectures".
MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}
# Defaults of the transformers config classes for keys a config.json may omit.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "LlamaForCausalLM": {"max_position_embeddings": 2048, "num_key_value_heads": None},
    "Qwen2ForCausalLM": {"max_position_embeddings": 32768, "num_key_value_heads": 32},
    "Qwen3ForCausalLM": {"max_position_embeddings": 32768, "num_key_value_heads": 32},
    "MistralForCausalLM": {"max_position_embeddings": 4096 * 32, "num_key_value_heads": 8},
}
SUPPORTED_ARCHITECTURES = tuple(_DEFAULTS)
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
DEFAULT_ROPE_THETA = 10_000.0


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    hidden_act: str
    tie_word_embeddings: bool
    qkv_bias: bool  # bias on q_proj, k_proj, v_proj
    o_bias: bool  # bias on o_proj
    mlp_bias: bool  # bias on gate_proj, up_proj, down_proj
    qk_norm: bool  # Qwen3: RMSNorm over head_dim on q and k before rope
    rope: dict[str, Any] = field(default_factory=dict)  # rope_type, rope_theta, factor, ...
    sliding_window: int | None = None  # set when some layer attends only to a window

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.rope["rope_type"] not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"unsupported rope_type {self.rope['rope_type']!r}; "
                f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if self.rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("partial_rotary_factor != 1 is not supported")

    @property
    def max_context(self) -> int:
        """Longest sequence served exactly. With a sliding window we attend to every token, which
        equals the windowed attention of transformers only while the sequence fits the window."""
        if self.sliding_window is None:
            return self.max_position_embeddings
        return min(self.max_position_embeddings, self.sliding_window)


def architecture_of(raw: dict[str, Any]) -> str:
    """The architecture named by a config.json dict; ValueError naming an unsupported one."""
    names = raw.get("architectures") or []
    name = names[0] if names else MODEL_TYPES.get(raw.get("model_type", ""), "")
    if name not in SUPPORTED_ARCHITECTURES:
        shown = name or f"model_type={raw.get('model_type')!r}"
        raise ValueError(
            f"unsupported architecture {shown}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    return name


def _rope_parameters(raw: dict[str, Any], max_position_embeddings: int) -> dict[str, Any]:
    """Mirrors transformers' RotaryEmbeddingConfigMixin: rope_scaling (4.x) wins over
    rope_parameters (5.x); rope_theta and partial_rotary_factor may sit at the top level."""
    rope = dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})
    rope.setdefault("rope_theta", raw.get("rope_theta", DEFAULT_ROPE_THETA))
    if raw.get("partial_rotary_factor") is not None:
        rope.setdefault("partial_rotary_factor", raw["partial_rotary_factor"])
    legacy_type = rope.pop("type", None)  # transformers < 4.45 spelling
    rope.setdefault("rope_type", legacy_type or "default")
    if rope["rope_type"] in ("llama3", "yarn"):
        rope.setdefault("original_max_position_embeddings", max_position_embeddings)
    return rope


def _sliding_window(raw: dict[str, Any], architecture: str, num_layers: int) -> int | None:
    window = raw.get("sliding_window", 4096 if architecture == "MistralForCausalLM" else None)
    if window is None or architecture == "LlamaForCausalLM":
        return None
    if architecture == "MistralForCausalLM":
        return int(window)
    # Qwen2/Qwen3: the window applies only with use_sliding_window, to the layers layer_types marks.
    if not raw.get("use_sliding_window", False):
        return None
    layer_types = raw.get("layer_types") or [
        "sliding_attention" if i >= raw.get("max_window_layers", 28) else "full_attention"
        for i in range(num_layers)
    ]
    return int(window) if "sliding_attention" in layer_types else None


def parse_config(raw: dict[str, Any]) -> ModelConfig:
    """Normalises a parsed config.json dict; ValueError naming what is unsupported."""
    architecture = architecture_of(raw)
    defaults = _DEFAULTS[architecture]
    num_heads = int(raw["num_attention_heads"])
    num_kv_heads = raw.get("num_key_value_heads", defaults["num_key_value_heads"]) or num_heads
    hidden_size = int(raw["hidden_size"])
    default_head_dim = 128 if architecture == "Qwen3ForCausalLM" else hidden_size // num_heads
    head_dim = raw.get("head_dim") or default_head_dim
    max_pos = int(raw.get("max_position_embeddings", defaults["max_position_embeddings"]))
    num_layers = int(raw["num_hidden_layers"])
    attention_bias = bool(raw.get("attention_bias", False))
    return ModelConfig(
        architecture=architecture,
        vocab_size=int(raw["vocab_size"]),
        hidden_size=hidden_size,
        intermediate_size=int(raw["intermediate_size"]),
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=int(num_kv_heads),
        head_dim=int(head_dim),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=max_pos,
        hidden_act=raw.get("hidden_act", "silu"),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias={
            "LlamaForCausalLM": attention_bias,
            "Qwen2ForCausalLM": True,
            "Qwen3ForCausalLM": attention_bias,
            "MistralForCausalLM": False,
        }[architecture],
        o_bias=attention_bias and architecture in ("LlamaForCausalLM", "Qwen3ForCausalLM"),
        mlp_bias=bool(raw.get("mlp_bias", False)) and architecture == "LlamaForCausalLM",
        qk_norm=architecture == "Qwen3ForCausalLM",
        rope=_rope_parameters(raw, max_pos),
        sliding_window=_sliding_window(raw, architecture, num_layers),
    )
