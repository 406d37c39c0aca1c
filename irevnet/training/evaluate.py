"""Loss, top-1 and top-5 of a model on a dataset split, sharded across processes (the training
loop's held-out check)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

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
