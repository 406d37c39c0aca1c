"""What a training run depends on (`TrainOptions`, recorded in run.json) and what the memory
measurement takes (`MemoryOptions`, irevnet.training.memory), each validated when made.

Torch-free: the CLI imports it at start-up, to take its parameters' defaults from the fields.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import validation as check
from ..devices import Device
from ..errors import IRevNetError
from ..io.datasets import parse_spec
from ..model.config import get_config
from .recipes import DEFAULT_RECIPE, RECIPES, Recipe, RecipeName

MAX_SEED = 2**32 - 1  # numpy's and most tools' seed range; torch's is wider

@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run depends on; written to run.json beside the checkpoints."""

    model: str = "irevnet-tiny"  # preset name
    dataset: str = "digits"  # spec, see irevnet.training.data
    out: str = "runs/irevnet"
    recipe: str | None = None  # default by dataset (DEFAULT_RECIPE)
    epochs: int | None = None  # overrides of the recipe
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # fp16 autocast + grad scaling, CUDA only
    channels_last: bool | None = None  # default: on with CUDA + AMP, where tensor cores want NHWC
    workers: int = 0  # DataLoader worker processes
    resume: bool = False  # continue from OUT/last.pt
    download: bool = False  # fetch CIFAR when missing
    memory_efficient: bool = False  # backprop through block inverses (irevnet.model.reversible)

    def __post_init__(self) -> None:
        check.paths(self, "out")
        parse_spec(self.dataset)
        get_config(self.model)  # an unknown preset names the choices
        for name, enum in (("recipe", RecipeName), ("device", Device)):
            if getattr(self, name) is not None:  # plain strings in run.json
                object.__setattr__(self, name, check.choice(name, getattr(self, name), enum).value)
        check.integer("epochs", self.epochs, 1, 100_000, optional=True)
        check.integer("batch_size", self.batch_size, 1, 1 << 20, optional=True)
        check.number("lr", self.lr, 0.0, low_open=True, optional=True)
        check.number("weight_decay", self.weight_decay, 0.0, 1.0, optional=True)
        check.integer("seed", self.seed, 0, MAX_SEED)
        check.integer("workers", self.workers, 0, 256)

    def resolved_recipe(self) -> Recipe:
        r = RECIPES[RecipeName(self.recipe or DEFAULT_RECIPE[parse_spec(self.dataset)[0]])]
        overrides = {
            k: v for k, v in (("epochs", self.epochs), ("batch_size", self.batch_size), ("lr", self.lr),
                              ("weight_decay", self.weight_decay)) if v is not None
        }
        return dataclasses.replace(r, **overrides)


@dataclass(frozen=True)
class MemoryOptions:
    """The presets and batch of `irevnet memory`'s training steps (irevnet.training.memory)."""

    presets: tuple[str, ...] = ("irevnet-cifar", "irevnet-301")
    batch_size: int = 32  # of the measured training step
    image_size: int | None = None  # default: each preset's
    device: str = "cpu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "presets", tuple(self.presets))
        object.__setattr__(self, "device", check.choice("device", self.device, Device).value)
        check.integer("batch_size", self.batch_size, 1, 1 << 16)
        check.integer("image_size", self.image_size, 1, optional=True)
        if not self.presets:
            raise IRevNetError("give at least one --model")
        for name in self.presets:  # unknown names and sizes the preset cannot take fail here, in one line
            config = get_config(name)
            if self.image_size:  # replace() validates the new config; the measurement builds its own
                _ = config.replace(in_shape=(config.in_shape[0], self.image_size, self.image_size))
