"""Host-to-device copies that never hold the host back behind the GPU."""

from __future__ import annotations

import torch


def to_device(host: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """host on device, without waiting: on CUDA the copy starts from pinned memory, because a
    copy from pageable memory may synchronize with the stream (the host would then wait for the
    kernels already queued, and could not prepare the next step meanwhile)."""
    if torch.device(device).type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
