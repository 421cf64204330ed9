"""Which device a training process runs on, from ``trainer.device`` and torchrun's LOCAL_RANK."""
from __future__ import annotations

import torch


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for "auto"/"cuda", ``cuda:N+LOCAL_RANK`` for
    "cuda:N" (N offsets the ranks' GPUs; one process: GPU N), else ``name`` ("cpu")."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        return torch.device(name)
    if not torch.cuda.is_available():
        raise RuntimeError(f"trainer.device = {name!r} but CUDA is not available on this machine")
    base = torch.device(name).index or 0
    index = base + local_rank
    if index >= torch.cuda.device_count():
        raise RuntimeError(f"trainer.device = {name!r} with LOCAL_RANK {local_rank} needs GPU {index}, but this "
                           f"machine has {torch.cuda.device_count()}; lower --nproc_per_node or the device index")
    return torch.device("cuda", index)
