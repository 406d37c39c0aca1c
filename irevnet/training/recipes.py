"""The paper's SGD schedules, as data (no torch: the CLI's --recipe choices come from here)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


@dataclass(frozen=True)
class Recipe:
    """An optimisation schedule: SGD with momentum, lr multiplied by `gamma` at each milestone."""

    epochs: int
    batch_size: int  # global: split evenly across processes
    lr: float
    momentum: float
    weight_decay: float
    milestones: tuple[int, ...]  # epochs after which the lr drops
    gamma: float
    dropout: float | None  # F's dropout the recipe trains with; None keeps the preset's


class RecipeName(str, Enum):
    cifar = "cifar"
    imagenet = "imagenet"
    digits = "digits"


RECIPES = {
    # CIFAR_main.py: lr x0.2 after epochs 60/120/160, dropout 0.1, crop+flip (in the data module)
    RecipeName.cifar: Recipe(200, 128, 0.1, 0.9, 5e-4, (60, 120, 160), 0.2, 0.1),
    # ILSVRC_main.py: lr x0.1 every 32 epochs, batch 256
    RecipeName.imagenet: Recipe(128, 256, 0.1, 0.9, 1e-4, (32, 64, 96), 0.1, 0.0),
    # the bundled digits: a short run that reaches ~95% in seconds on a CPU (see README)
    RecipeName.digits: Recipe(10, 64, 0.05, 0.9, 5e-4, (7,), 0.2, None),
}
DEFAULT_RECIPE = {"digits": "digits", "synthetic": "digits", "cifar10": "cifar", "cifar100": "cifar", "imagefolder": "imagenet"}
