"""How large one message on the worker's port may be: the step plan cap, derived from the KV pool.

The server's receive limit is fixed when the port is bound, before the model (and so the exact
pool) is loaded: it is computed from an upper bound of the pool that the configuration gives.
Calls without the internal secret read no message at all (auth.py), so this cap only bounds
what an authenticated scheduler may send.
"""

from __future__ import annotations

from yaie.worker_service.config import KV_CACHE_DTYPES, WorkerConfig
from yaie.worker_service.loader import read_config, resolve_model_dir
from yaie.worker_service.models.config import parse_config
from yaie.worker_service.step.kv_pool import bytes_per_block

# A plan's new requests carry their sampling parameters: structured-output grammars and logit
# biases (each bounded by the public API's 16 MiB message), whatever the pool's size.
PLAN_BASE_BYTES = 64 << 20
# Per token the pool holds: a token id of a new request (a varint, at most 5 bytes) for each of
# the requests that may share that token's cached block, and the plan's per-entry arrays.
PLAN_BYTES_PER_TOKEN = 64
MAX_PLAN_BYTES = 1 << 30  # gRPC's limit is a signed 32-bit length
# With the pool sized from free CUDA memory, the bound assumes the largest GPU memory served
# on (H200: 141 GB, B200: 180 GB); querying the device here would initialise CUDA too early.
LARGEST_GPU_BYTES = 192 << 30


def max_plan_bytes(num_pool_tokens: int) -> int:
    """The largest step plan a pool of num_pool_tokens tokens can need, in bytes on the wire."""
    return min(PLAN_BASE_BYTES + PLAN_BYTES_PER_TOKEN * num_pool_tokens, MAX_PLAN_BYTES)


def pool_tokens_bound(config: WorkerConfig) -> int:
    """At most how many tokens config's KV pool will hold: exact with --num-blocks, else the
    memory budget over this rank's bytes per block (the model folder's config.json)."""
    pool = config.pool_config()
    if pool.num_blocks is not None:
        return pool.num_blocks * pool.block_size
    model = parse_config(read_config(resolve_model_dir(config.model)))
    device = config.torch_device()
    num_kv_heads = max(1, model.num_kv_heads // config.tp)  # each rank holds its share
    kv_dtype = config.torch_dtype(device)
    if config.kv_cache_dtype != "auto":  # fp8: about twice the tokens in the same memory
        kv_dtype = KV_CACHE_DTYPES[config.kv_cache_dtype]
    per_block = bytes_per_block(
        model.num_layers, num_kv_heads, model.head_dim, pool.block_size, kv_dtype
    )
    if device.type == "cuda":
        budget = int(LARGEST_GPU_BYTES * pool.memory_fraction)
    else:
        budget = pool.cpu_memory_bytes
    return max(1, budget // per_block) * pool.block_size
