"""PNG pictures of an evaluation: the images whose top-1 changed against another run, and
originals beside their reconstructions from z."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..io.images import denormalize, save_inversion
from ..io.splits import Item, Split
from .engine import Engine, Target
from .summary import Agreement

GRID_IMAGES = 16  # columns of a grid: enough to see, small enough to open


def changed_grid(agreement: Agreement, target: Target, split: Split, opts: Any) -> Path | None:
    """The first GRID_IMAGES images whose top-1 changed, originals on top and their reconstructions
    from z by this run's target below (None when no image changed)."""
    if not agreement.changed:
        return None
    items = [split.items[c["index"]] for c in agreement.changed[:GRID_IMAGES]]  # an item's index is its place
    with Engine(target, split, round_trip=True, batch_size=min(len(items), target.max_batch or len(items)), workers=0,
                strict=True) as engine:
        originals, reconstructions = reconstruct(engine, items)
    return save_inversion(originals, reconstructions, split.mean, split.std, opts.changed_grid)


def reconstruct(engine: Engine, items: list[Item]) -> tuple[np.ndarray, np.ndarray]:
    """(originals, reconstructions) of `items`, normalised, through the engine's graphs."""
    originals, reconstructions = [], []
    for i in range(0, len(items), engine.batch_size):
        x = np.stack([engine.split.decode(it) for it in items[i:i + engine.batch_size]])
        _, _, back = engine.infer(x)
        originals.append(x)
        reconstructions.append(back)
    return np.concatenate(originals), np.concatenate(reconstructions)


def save_pair_pngs(items: list[Item], originals: np.ndarray, reconstructions: np.ndarray, split: Split,
                   out: Path) -> None:
    """Each image as a PNG under out/originals/ and its reconstruction under out/reconstructions/,
    at its path in the split (extension .png), in [0, 1] pixels clipped to 8 bits."""
    from PIL import Image

    from ..io.files import atomic_output

    for folder, images in (("originals", originals), ("reconstructions", reconstructions)):
        pixels = np.clip(denormalize(images, split.mean, split.std), 0.0, 1.0)
        for item, image in zip(items, pixels):
            path = out / folder / Path(item.path.replace("#", "_")).with_suffix(".png")
            array = np.round(image * 255.0).astype(np.uint8).transpose(1, 2, 0)
            with atomic_output(path) as tmp:
                Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(tmp, format="PNG")
