"""Pixels and pictures, numpy only: de-normalisation, reconstruction metrics, PNG grids and plots.

Shared by training (`irevnet invert`) and the torch-free runtime (`irevnet verify`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..metrics import rel_l2
from .files import atomic_output

GRID_MIN_CELL = 64  # small images (8x8 digits) are enlarged, pixel for pixel, to at least this


def denormalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised (N, C, H, W) -> pixel intensities in [0, 1] units (not clipped)."""
    mean = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    return x.astype(np.float64) * std + mean


def reconstruction_metrics(original: np.ndarray, reconstruction: np.ndarray, mean, std) -> dict:
    """Per-image and overall error of a reconstruction, in pixel units (intensity range 1.0).

    Args:
        original, reconstruction: normalised (N, C, H, W) arrays.
    Returns:
        rel_l2 (normalised space, all images), max_abs (pixels), psnr_db (overall, from the mean
        squared error; None when the reconstruction is exact), and the same per image.
    """
    a = denormalize(original, mean, std)
    b = denormalize(reconstruction, mean, std)
    diff = b - a
    per_mse = (diff**2).reshape(len(a), -1).mean(axis=1)
    per_max = np.abs(diff).reshape(len(a), -1).max(axis=1)
    return {
        "rel_l2": rel_l2(reconstruction, original),
        "max_abs": float(per_max.max()),
        "psnr_db": psnr(float(per_mse.mean())),
        "per_image": [{"psnr_db": psnr(float(m)), "max_abs": float(e)} for m, e in zip(per_mse, per_max)],
    }


def psnr(mse: float, peak: float = 1.0) -> float | None:
    """Peak signal-to-noise ratio in dB; None for an exact reconstruction (infinite PSNR)."""
    return None if mse <= 0 else 10.0 * math.log10(peak * peak / mse)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8; grayscale becomes gray RGB."""
    img = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img[:, :, :3]


def grid_shape(n: int, h: int, w: int, rows: int = 2, gap: int = 2) -> tuple[int, int]:
    """(height, width) in pixels of `save_grid`'s PNG for n columns of h x w images."""
    s = max(1, math.ceil(GRID_MIN_CELL / min(h, w)))
    return rows * h * s + (rows + 1) * gap, n * w * s + (n + 1) * gap


def save_grid(rows: Sequence[np.ndarray], path: str | Path, gap: int = 2) -> Path:
    """Writes rows of images side by side as one PNG, like the paper's inversion figure.

    Args:
        rows: each (N, C, H, W) in [0, 1] pixel units (values outside are clipped for display).
    """
    from PIL import Image

    n, _, h, w = rows[0].shape
    s = max(1, math.ceil(GRID_MIN_CELL / min(h, w)))
    height, width = grid_shape(n, h, w, len(rows), gap)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for r, images in enumerate(rows):
        for i, img in enumerate(images):
            tile = _to_uint8(img).repeat(s, axis=0).repeat(s, axis=1)
            top, left = gap + r * (h * s + gap), gap + i * (w * s + gap)
            canvas[top : top + h * s, left : left + w * s] = tile
    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


def save_inversion(originals: np.ndarray, reconstructions: np.ndarray, mean, std, path: str | Path) -> Path:
    """The paper's figure: normalised originals on top, their reconstructions from z below, as pixels."""
    return save_grid([np.clip(denormalize(a, mean, std), 0, 1) for a in (originals, reconstructions)], path)


def plot_error_vs_depth(panels: dict[str, dict[str, Sequence[float | None]]], path: str | Path, title: str) -> Path:
    """Error-vs-depth line plots, log y, side by side: one panel per direction, one line per label.
    An exact (zero) error is drawn at 0, on a linear stretch at the bottom of the log axis (symlog),
    instead of vanishing from it.

    Args:
        panels: panel title -> (label, e.g. "fp16 onnxruntime" -> relative error at block 0..B;
            None where not measured).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.2), dpi=110, squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        positive = [v for values in series.values() for v in values if v is not None and v > 0]
        for label, values in series.items():
            xs = [i for i, v in enumerate(values) if v is not None]
            ax.plot(xs, [values[i] for i in xs], marker="o", markersize=3, label=label)
        # below the smallest error measured, the axis is linear down to 0: exact blocks sit on it
        ax.set_yscale("symlog", linthresh=min(positive) / 10 if positive else 1e-12)
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_xlabel("block boundary (0 = input of the first block, B = z)")
        ax.set_ylabel("relative L2 error")
        ax.set_title(panel, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        if series:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Writes a matplotlib figure as a PNG, atomically, and closes it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
