"""Reconstructing images from z with a PyTorch model and measuring how exact it is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import validation as check
from ..devices import Device
from ..io.images import reconstruction_metrics
from ..model.network import IRevNet


@dataclass
class Inversion:
    originals: np.ndarray  # (N, C, H, W), normalised, as the model saw them
    reconstructions: np.ndarray  # inverse(forward(x)), normalised
    metrics: dict  # see irevnet.io.images.reconstruction_metrics


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


@dataclass(frozen=True)
class InvertOptions:
    checkpoint: str
    dataset: str = "digits"  # spec, see irevnet.training.data
    out: str = "inversion.png"  # originals on top, reconstructions below
    samples: int = 8
    image_size: int | None = None
    projection: bool = True  # range projection for injective models
    device: str = "auto"

    def __post_init__(self) -> None:
        from ..io.datasets import parse_spec

        check.paths(self, "checkpoint", "out")
        object.__setattr__(self, "device", check.choice("device", self.device, Device).value)
        parse_spec(self.dataset)
        check.integer("samples", self.samples, 1, 1024)
        check.integer("image_size", self.image_size, 1, optional=True)


def invert_checkpoint(opts: InvertOptions) -> Inversion:
    """Inverts the first test images of a dataset with a checkpoint's model and writes the grid."""
    from ..devices import resolve_device
    from ..io.checkpoint import load_checkpoint
    from ..io.images import save_inversion
    from .data import load_datasets

    ckpt = load_checkpoint(opts.checkpoint, image_size=opts.image_size)
    data = load_datasets(opts.dataset, ckpt.config.in_shape, augment=False)
    model = ckpt.model.to(resolve_device(opts.device))
    result = invert(model, first_images(data.test, opts.samples), data.mean, data.std, project=opts.projection)
    save_inversion(result.originals, result.reconstructions, data.mean, data.std, opts.out)
    return result
