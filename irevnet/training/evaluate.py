"""Loss, top-1 and top-5 of a model or a checkpoint on a dataset's test split, sharded across processes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import validation as check
from ..devices import Device, resolve_device
from ..errors import IRevNetError
from ..io.checkpoint import load_checkpoint
from ..io.datasets import parse_spec
from .data import load_datasets
from .distributed import Dist, Shard


def topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return float((logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).sum())


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, device: torch.device, *, batch_size: int = 256, workers: int = 0,
    dist: Dist | None = None, amp: bool = False,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) of `model` over `dataset`, sharded across processes."""
    dist = dist or Dist()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=Shard(len(dataset), dist), num_workers=workers)
    model.eval()
    loss = top1 = top5 = n = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)[0].float()
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top1 += topk_correct(logits, y, 1)
        top5 += topk_correct(logits, y, 5)
        n += len(y)
    loss, top1, top5, n = dist.sum([loss, top1, top5, n], device)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "images": int(n)}


@dataclass(frozen=True)
class EvaluateOptions:
    checkpoint: str
    dataset: str = "digits"  # spec, see irevnet.training.data
    image_size: int | None = None  # for reference files that do not store it
    batch_size: int = 256
    workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check.paths(self, "checkpoint")
        object.__setattr__(self, "device", check.choice("device", self.device, Device).value)
        parse_spec(self.dataset)
        check.integer("image_size", self.image_size, 1, optional=True)
        check.integer("batch_size", self.batch_size, 1, 1 << 16)
        check.integer("workers", self.workers, 0, 256)


def evaluate_checkpoint(opts: EvaluateOptions) -> dict[str, float]:
    """Loss, top-1 and top-5 of a checkpoint on a dataset's test split (the class counts must match)."""
    ckpt = load_checkpoint(opts.checkpoint, image_size=opts.image_size)
    data = load_datasets(opts.dataset, ckpt.config.in_shape, augment=False)
    if data.num_classes != ckpt.config.num_classes:
        raise IRevNetError(
            f"{opts.checkpoint} has {ckpt.config.num_classes} classes but {opts.dataset} has {data.num_classes}; "
            f"evaluate on the dataset it was trained on"
        )
    device = resolve_device(opts.device)
    return evaluate(ckpt.model.to(device), data.test, device, batch_size=opts.batch_size, workers=opts.workers)
