"""Loads a model from a local Hugging Face directory or a hub id (from the local HF cache, or
downloaded: hub.py): config.json plus single or sharded safetensors, streamed tensor by tensor
into the parameters."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from yaie.worker_service.hub import resolve_model_dir
from yaie.worker_service.models import CausalLM, build_model

if TYPE_CHECKING:
    from yaie.worker_service.tp import TPGroup

SHARD_INDEX = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PROGRESS_MIN_BYTES = 256 * 2**20  # a smaller checkpoint loads too fast for a progress bar


def read_config(model_dir: Path) -> dict[str, Any]:
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not a Hugging Face model directory")
    return json.loads(config_path.read_text(encoding="utf-8"))


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the shards its index names, or model.safetensors."""
    index_path = model_dir / SHARD_INDEX
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        files = [model_dir / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{model_dir}: shard(s) named in {SHARD_INDEX} not found: {', '.join(missing)}"
            )
        return files
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    present = ", ".join(sorted(p.name for p in model_dir.iterdir())) or "nothing"
    raise FileNotFoundError(
        f"{model_dir}: neither {SINGLE_FILE} nor {SHARD_INDEX} found "
        f"(only safetensors checkpoints load; the directory holds {present})"
    )


def iter_weights(
    files: list[Path],
    device: torch.device,
    progress: bool | None = None,
    select: Callable[[str], tuple[int, int, int] | None] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) over every tensor of the files, read straight onto device; a progress bar
    over tensors when progress is True, or (None) when the checkpoint is large. select(name) ->
    (dim, start, stop) reads only that slice of a tensor (tensor parallelism)."""
    from safetensors import safe_open

    names = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            names[file] = list(f.keys())
    if progress is None:
        progress = sum(file.stat().st_size for file in files) >= PROGRESS_MIN_BYTES
    total = sum(len(keys) for keys in names.values())
    with tqdm(total=total, desc="Loading weights", unit="tensor", disable=not progress) as bar:
        for file, keys in names.items():
            bar.set_postfix_str(file.name)
            with safe_open(file, framework="pt", device=str(device)) as f:
                for name in keys:
                    part = select(name) if select is not None else None
                    if part is None:
                        yield name, f.get_tensor(name)
                    else:  # only the slice is read from the file
                        dim, start, stop = part
                        tensor = f.get_slice(name)
                        tensor = tensor[start:stop] if dim == 0 else tensor[:, start:stop]
                        yield name, tensor.to(device)
                    bar.update(1)


def load_model(
    model: str,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    attention_backend: str = "auto",
    progress: bool | None = None,
    tp: TPGroup | None = None,
) -> CausalLM:
    """Builds and loads `model` (a directory or a cached hub id); with tp, this rank's shard of
    it. dtype defaults to bfloat16 on CUDA and float32 elsewhere. Errors name the missing file,
    the unsupported architecture or the missing/unexpected weights."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model_dir = resolve_model_dir(model)
    config = read_config(model_dir)
    files = checkpoint_files(model_dir)
    net = build_model(config, dtype, device, attention_backend, tp)
    net.load_weights(iter_weights(files, device, progress, net.weight_slice))
    return net
