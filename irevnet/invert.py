"""Reconstructing images from z with a PyTorch model and measuring how exact it is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import reconstruction_metrics
from .model import IRevNet


@dataclass
class Inversion:
    originals: np.ndarray  # (N, C, H, W), normalised, as the model saw them
    reconstructions: np.ndarray  # inverse(forward(x)), normalised
    metrics: dict  # see irevnet.images.reconstruction_metrics


def first_images(dataset: Dataset, n: int) -> torch.Tensor:
    """The first n images of a dataset as one (n, C, H, W) batch."""
    n = min(n, len(dataset))
    return torch.stack([dataset[i][0] for i in range(n)])


@torch.no_grad()
def invert(model: IRevNet, x: torch.Tensor, mean, std, *, project: bool = True) -> Inversion:
    """Round trip x -> z -> x_hat in the model's dtype and device, metrics in float64."""
    param = next(model.parameters())
    x = x.to(param.device, param.dtype)
    z = model(x)[1]
    x_hat = model.inverse(z, project=project)
    a, b = x.float().cpu().numpy(), x_hat.float().cpu().numpy()
    return Inversion(a, b, reconstruction_metrics(a, b, mean, std))
