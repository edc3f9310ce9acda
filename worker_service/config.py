"""WorkerConfig: the one frozen configuration of a worker process, validated on construction,
and the KV pool's sizing settings it carries. Imports nothing of the worker."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yaie.kernels.attention import BACKENDS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# --kv-cache-dtype: "auto" is the model's dtype; fp8_e4m3 stores K/V as e4m3 with scales.
KV_CACHE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8_e4m3": torch.float8_e4m3fn}
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_MEMORY_FRACTION = 0.85
DEFAULT_CPU_MEMORY_BYTES = 512 * 1024**2


@dataclass(frozen=True)
class KVPoolConfig:
    """How to size the pool: num_blocks wins; else memory_fraction (CUDA) or cpu_memory_bytes."""

    block_size: int = 16
    num_blocks: int | None = None
    memory_fraction: float = DEFAULT_MEMORY_FRACTION
    cpu_memory_bytes: int = DEFAULT_CPU_MEMORY_BYTES

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.num_blocks is not None and self.num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {self.num_blocks}")
        if not 0.0 < self.memory_fraction <= 1.0:
            raise ValueError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")
        if self.cpu_memory_bytes <= 0:
            raise ValueError(f"cpu_memory_bytes must be positive, got {self.cpu_memory_bytes}")


@dataclass(frozen=True)
class WorkerConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 50061
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    kv_cache_dtype: str = "auto"  # auto (the model's dtype) | bf16 | fp16 | fp8_e4m3
    block_size: int = 16
    num_blocks: int | None = None  # None: size the pool from memory
    memory_fraction: float = DEFAULT_MEMORY_FRACTION  # of free CUDA memory after the weights
    cpu_memory_bytes: int = DEFAULT_CPU_MEMORY_BYTES  # KV budget on the CPU
    attention_backend: str = "auto"
    cuda_graphs: bool = True  # decode CUDA graphs (CUDA only)
    max_graph_batch_size: int = 256
    # Every other step (prefill, mixed) of up to this many tokens replays piecewise CUDA graphs
    # (worker_service/step/prefill_graphs.py); 0: such steps run eagerly.
    max_prefill_graph_tokens: int = 4096
    # Decode steps whose rows share cached prefix blocks read each prefix once per group
    # (shared-prefix / cascade attention, in the decode graphs; batch_builder decides per step).
    # Triton backend only (the CPU's sdpa path reads every row's blocks anyway). None: on, except
    # in deterministic mode (grouping reorders the sums).
    cascade_attention: bool | None = None
    # Batch-invariant mode (kernels/batch_invariant): a request's logits are the same bit for
    # bit whatever else is in the batch, however its prompt was chunked, whether its prefix came
    # from the cache. Costs throughput (benchmarks/NOTES.md); turns cascade attention off.
    deterministic: bool = False
    tp: int = 1  # tensor-parallel ranks (processes, one GPU each) of this worker

    def __post_init__(self) -> None:
        if not (self.device in DEVICES or self.device.startswith("cuda:")):
            raise ValueError(f"device must be one of {DEVICES} or cuda:N, got {self.device!r}")
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.kv_cache_dtype != "auto" and self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"kv_cache_dtype must be auto or one of {sorted(KV_CACHE_DTYPES)}, "
                f"got {self.kv_cache_dtype!r}"
            )
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port {self.port} out of range")
        if self.max_graph_batch_size <= 0:
            raise ValueError("max_graph_batch_size must be positive")
        if self.max_prefill_graph_tokens < 0:
            raise ValueError("max_prefill_graph_tokens must be >= 0")
        if self.tp < 1:
            raise ValueError(f"tp must be at least 1, got {self.tp}")
        if self.deterministic and self.cascade_attention:  # asked for both
            raise ValueError("deterministic mode excludes cascade attention (it reorders sums)")
        if self.deterministic and self.tp > 1:
            # NCCL picks its all-reduce algorithm by message size, i.e. by the step's tokens
            raise ValueError("deterministic mode is not available with tensor parallelism yet")
        self.pool_config()  # validates the KV pool settings

    @property
    def use_cascade_attention(self) -> bool:
        """cascade_attention resolved: None means on unless deterministic."""
        if self.cascade_attention is None:
            return not self.deterministic
        return self.cascade_attention

    def pool_config(self) -> KVPoolConfig:
        return KVPoolConfig(
            self.block_size, self.num_blocks, self.memory_fraction, self.cpu_memory_bytes
        )

    def torch_device(self) -> torch.device:
        """auto: the first CUDA device when there is one, else the CPU."""
        if self.device == "auto":
            return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but CUDA is not available")
        return device

    def torch_dtype(self, device: torch.device) -> torch.dtype:
        """auto: bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on the CPU."""
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def kv_torch_dtype(self, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
        """The pool's dtype: auto is model_dtype. fp8 on CUDA needs compute capability 8.9+
        (Ada, Hopper): ValueError on an older GPU."""
        if self.kv_cache_dtype == "auto":
            return model_dtype
        dtype = KV_CACHE_DTYPES[self.kv_cache_dtype]
        if dtype == torch.float8_e4m3fn and device.type == "cuda":
            if torch.cuda.get_device_capability(device) < (8, 9):
                raise ValueError("--kv-cache-dtype fp8_e4m3 needs a GPU of compute capability 8.9+")
        return dtype


def dtype_name(dtype: torch.dtype) -> str:
    """The name Describe and GetModelInfo report: a DTYPES key, or fp8_e4m3 for a KV pool."""
    if dtype == torch.float8_e4m3fn:
        return "fp8_e4m3"
    return next(name for name, value in DTYPES.items() if value == dtype)
