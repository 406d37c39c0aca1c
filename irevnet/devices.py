"""Which torch device a command runs on: `--device auto | cpu | cuda`. Imports torch only to resolve it."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING

from .errors import IRevNetError

if TYPE_CHECKING:
    import torch


class Device(str, Enum):
    auto = "auto"  # cuda when torch sees a GPU, else cpu
    cpu = "cpu"
    cuda = "cuda"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto picks CUDA when torch sees a GPU; `local_rank` is the GPU of this process under torchrun."""
    import torch  # here, so that the CLI's --device choices need no torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise IRevNetError("--device cuda but torch sees no GPU; use --device cpu (or auto)")
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise IRevNetError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device("cpu")
