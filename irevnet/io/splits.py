"""A dataset's split as a list of items, each decoded on its own, without torch.

A split is listed once (index, path in the split, label), cheaply: image folders are walked, not
read; CIFAR and the digits are arrays already in memory. Decoding an item gives the image as the
model sees it, (C, H, W) float32 normalised, with the preprocessing of irevnet's training
pipeline (torchvision's): ImageNet-style folders resized so the short side is 256/224 of the
input, center-cropped, RGB whatever the file's mode (grayscale, CMYK and palette images are
converted as torchvision's loader converts them). A file that cannot be decoded (truncated,
corrupt, a decompression bomb) raises Unreadable: the run counts it and goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from .datasets import (
    CIFAR_FILES,
    CIFAR_STATS,
    IMAGE_EXTENSIONS,
    IMAGENET_STATS,
    _bilinear,
    find_cifar,
    load_image,
    parse_spec,
    read_cifar,
    read_digits,
)

SPLITS = ("val", "train")


class Unreadable(Exception):
    """An item whose file could not be decoded (its message names the file and why)."""


@dataclass(frozen=True)
class Item:
    index: int  # position in the split, 0-based: what shards and records are keyed by
    path: str  # where it is in the split: a file relative to the split's folder, or "batch#row"
    label: int


@dataclass
class Split:
    """The items of one split of a dataset, and how to decode each for a model's input shape."""

    spec: str
    kind: str
    split: str
    in_shape: tuple[int, int, int]
    items: list[Item]
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    root: Path | None = None  # image folders: the split's folder
    skipped: list[str] = field(default_factory=list)  # what the listing left out, and why (link loops)
    _arrays: np.ndarray | None = field(default=None, repr=False)  # digits, CIFAR: the split's pixels

    def __len__(self) -> int:
        return len(self.items)

    def decode(self, item: Item) -> np.ndarray:
        """The item as the model's input: (C, H, W) float32, normalised.

        Raises:
            Unreadable: the file could not be decoded.
        """
        c, h, w = self.in_shape
        if self.kind == "synthetic":
            return np.random.default_rng(item.index).standard_normal((c, h, w), dtype=np.float32)
        if self.kind == "imagefolder":
            try:
                image = load_image(str(self.root / item.path))
            except DatasetError as e:
                raise Unreadable(str(e)) from None
            pixels = center_crop(image, (h, w))
        elif self.kind == "digits":
            pixels = self._arrays[item.index]  # (1, h, w) in [0, 1], resized when the split was listed
            pixels = np.repeat(pixels, c, axis=0) if c != 1 else pixels
        else:
            pixels = self._arrays[item.index]  # (3, 32, 32) uint8
            if (h, w) != (32, 32):
                from .datasets import _resized

                pixels = _resized(pixels.transpose(1, 2, 0), (h, w))
            pixels = pixels.astype(np.float32) / 255.0
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return ((np.asarray(pixels, np.float32) - mean) / std).astype(np.float32)


def center_crop(image, size: tuple[int, int]) -> np.ndarray:
    """torchvision's Resize(round(h * 256 / 224)) then CenterCrop((h, w)) of a PIL RGB image,
    as (3, h, w) float32 in [0, 1]: the short side to that size (the long one scaled, truncated,
    as torchvision does), Pillow's antialiased bilinear, the crop's offsets rounded."""
    from PIL import Image

    h, w = size
    short = round(h * 256 / 224)
    width, height = image.size
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    if new != image.size:
        image = image.resize(new, Image.BILINEAR)
    top, left = round((new[1] - h) / 2.0), round((new[0] - w) / 2.0)  # torchvision: int(round(...)), the same
    image = image.crop((left, top, left + w, top + h))
    return np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0


def open_split(spec: str, split: str, in_shape: tuple[int, int, int], limit: int | None = None) -> Split:
    """Lists a split of a dataset for a model's input (C, H, W), at most `limit` items.

    Raises:
        DatasetError: an unknown spec or split, a folder without the split, channels that do not
            match the model's, or an empty split.
    """
    if split not in SPLITS:
        raise DatasetError(f"--split {split!r}: choose val (the held-out images) or train")
    kind, path = parse_spec(spec)
    c, h, w = in_shape
    if kind == "synthetic":
        n = 10_000 if split == "val" else 50_000
        items = [Item(i, f"synthetic/{split}/{i:06d}", i % 10) for i in range(n)]
        result = Split(spec, kind, split, in_shape, items, 10, (0.0,) * c, (1.0,) * c)
    elif kind == "digits":
        images, labels, train, test = read_digits()
        if (h, w) != (8, 8):  # resized first, then the statistics of the resized training images, as training does
            images = np.clip(_bilinear(images, h, w), 0.0, 1.0)
        order = test if split == "val" else train
        mean, std = float(images[train].mean()), float(images[train].std(ddof=1))
        items = [Item(i, f"digits/{split}/{int(j):04d}", int(labels[j])) for i, j in enumerate(order)]
        result = Split(spec, kind, split, in_shape, items, 10, (mean,) * c, (std,) * c, _arrays=images[order])
    elif kind in CIFAR_STATS:
        if c != 3:
            raise DatasetError(f"{spec} has RGB images but the model takes {c} channels; pick a 3-channel model")
        splits = read_cifar(kind, path)
        if splits is None:
            raise DatasetError(f"no {kind} data under {path}; give the folder `irevnet train --download` fills")
        pixels, labels = splits[1] if split == "val" else splits[0]
        layout, _ = find_cifar(kind, path)
        names = CIFAR_FILES[kind][layout][2 if split == "val" else 1]
        per_file = len(pixels) // len(names)
        items = [Item(i, f"{names[i // per_file]}#{i % per_file}", int(labels[i])) for i in range(len(pixels))]
        mean, std = CIFAR_STATS[kind]
        result = Split(spec, kind, split, in_shape, items, 100 if kind == "cifar100" else 10, mean, std,
                       _arrays=pixels)
    else:
        root = path / split
        if not root.is_dir():
            raise DatasetError(f"imagefolder:{path} needs {root}/ with one sub-folder per class")
        if c != 3:
            raise DatasetError(f"imagefolder images are RGB but the model takes {c} channels; pick a 3-channel model")
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
        items, skipped = [], []
        for label, name in enumerate(classes):
            for file in _image_files(root / name, skipped):
                items.append(Item(len(items), Path(file).relative_to(root).as_posix(), label))
        result = Split(spec, kind, split, in_shape, items, len(classes), *IMAGENET_STATS, root=root, skipped=skipped)
    if limit is not None:
        result.items = result.items[:limit]
        if result._arrays is not None:
            result._arrays = result._arrays[:limit]
    if not result.items:
        raise DatasetError(f"{spec} has no images in its {split} split; check the folder")
    return result


def _image_files(top: Path, skipped: list[str]) -> list[str]:
    """Image files under `top` (by extension, as torchvision's ImageFolder takes them), in
    sorted order, following links into folders except those leading back to a folder already
    on the way (a loop: skipped, and noted), each real folder once."""
    files: list[str] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, names in os.walk(top, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        here = os.path.realpath(folder)
        kept = []
        for d in sorted(dirs):
            path = os.path.join(folder, d)
            target = os.path.realpath(path)
            if os.path.islink(path) and (here == target or here.startswith(target.rstrip(os.sep) + os.sep)):
                skipped.append(f"{path}: a symbolic link loop (it leads back to {target}); skipped")
            else:
                kept.append(d)
        dirs[:] = kept
        files += [os.path.join(folder, n) for n in sorted(names) if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
    return files


def stratified(split: Split, seed: int = 0) -> list[Item]:
    """The split's items in an order whose every prefix is a sample over the whole split,
    stratified by class: each class's items in a seeded order of their own, spread evenly through
    the whole order (the k-th of a class of m at (k + 1/2) / m), ties broken by a seeded draw. A
    prefix of n holds each class's share of n within one image."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Item]] = {}
    for item in split.items:
        by_class.setdefault(item.label, []).append(item)
    keyed = []
    for label in sorted(by_class):
        members = by_class[label]
        order = rng.permutation(len(members))
        ties = rng.random(len(members))
        keyed += [((k + 0.5) / len(members), ties[k], members[j].index, members[j]) for k, j in enumerate(order)]
    return [entry[3] for entry in sorted(keyed, key=lambda e: e[:3])]


def sample_images(split: Split, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """n readable images drawn over the whole split, stratified by class (`stratified`): an
    unreadable one is passed over for the next in the order, and noted.

    Returns:
        images (n, C, H, W) float32 as the model sees them, labels (n,) int64, their paths in the
        split, and what was passed over (one line each).
    """
    images, labels, paths, passed = [], [], [], []
    for item in stratified(split, seed):
        if len(images) == n:
            break
        try:
            images.append(split.decode(item))
        except Unreadable as e:
            passed.append(str(e))
            continue
        labels.append(item.label)
        paths.append(item.path)
    if not images:
        raise DatasetError(f"{split.spec}: no image of its {split.split} split could be read ({passed[0]})")
    return np.stack(images), np.asarray(labels, np.int64), paths, passed


def read_test_images(spec: str, in_shape: tuple[int, int, int], n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n images of a dataset's held-out split, as the model sees them, without torch: a seeded
    sample over the whole split, stratified by class (sample_images).

    Returns:
        images (n, C, H, W) float32, resized to `in_shape` and normalised by the dataset's
        (mean, std) as training does; labels (n,) int64; their paths in the split. The same files,
        split and normalisation as irevnet.training.data; resizing is numpy's or Pillow's, so
        values may differ from the torch pipeline's by float32 rounding.
    """
    x, y, paths, _ = sample_images(open_split(spec, "val", in_shape), n)
    return x, y, paths
