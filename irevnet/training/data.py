"""Torch datasets named by a spec string: digits, cifar10:PATH, cifar100:PATH, imagefolder:PATH, synthetic.

The files are read by irevnet.io.datasets (numpy, no torch); this module adds the tensors, the
resizing and the training augmentation.

Every dataset yields (image, label) with the image normalised by the dataset's (mean, std) and
shaped like the model's input; `Datasets.mean`/`std` travel into checkpoints and bundle manifests
so that exported inverses can turn z back into pixels.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DatasetError
from ..io.datasets import (
    CIFAR_FILES,
    CIFAR_STATS,
    IMAGENET_STATS,
    find_cifar,
    load_image,
    parse_spec,
    read_cifar,
    read_digits,
    walk,
)


@dataclass
class Datasets:
    """Train and test splits of one dataset, with what is needed to undo its normalisation."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalization(self) -> dict[str, Any]:
        return {"dataset": self.name, "mean": list(self.mean), "std": list(self.std)}


class TensorImages(Dataset):
    """Images held in memory as uint8 (N, C, H, W) or float [0, 1], transformed per sample."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def load_datasets(
    spec: str, in_shape: tuple[int, int, int], *, augment: bool = True, download: bool = False
) -> Datasets:
    """Train/test datasets for a spec, producing images of shape `in_shape` (C, H, W).

    Args:
        spec: see SPEC_HELP.
        augment: apply the recipe's training augmentation (random crops, flips, jitter).
        download: fetch CIFAR archives when the folder lacks them.
    """
    kind, path = parse_spec(spec)
    if kind == "digits":
        return _digits(in_shape)
    if kind == "synthetic":
        return _synthetic(in_shape)
    if kind in CIFAR_STATS:
        return _cifar(kind, path, in_shape, augment, download)
    return _imagefolder(path, in_shape, augment)


def _v2():
    from torchvision.transforms import v2

    return v2


def _channels(images: torch.Tensor, channels: int, name: str) -> torch.Tensor:
    """Matches the image channels to the model's: grayscale is replicated to 3 channels."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    raise DatasetError(f"{name} has {have}-channel images but the model takes {channels}; pick a matching model")


def _digits(in_shape: tuple[int, int, int]) -> Datasets:
    """scikit-learn's 8x8 handwritten digits (1,797 real images), resized to the model's input."""
    raw, raw_labels, train_idx, test_idx = read_digits()
    images, labels = torch.from_numpy(raw), torch.from_numpy(raw_labels)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    c, h, w = in_shape
    if (h, w) != (8, 8):
        images = torch.nn.functional.interpolate(images, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    # statistics of the train split at the model's resolution (upsampling smooths, lowering std)
    mean = float(images[train_idx].mean())
    std = float(images[train_idx].std())
    images = _channels(images, c, "digits")
    norm = _v2().Normalize([mean] * c, [std] * c)
    return Datasets(
        "digits",
        TensorImages(images[train_idx], labels[train_idx], norm),
        TensorImages(images[test_idx], labels[test_idx], norm),
        10, (mean,) * c, (std,) * c,
    )


def _synthetic(in_shape: tuple[int, int, int], n_train: int = 512, n_test: int = 128, classes: int = 10) -> Datasets:
    """Seeded random images and labels: smoke tests and benchmarks, nothing to learn."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_train + n_test, *in_shape, generator=g)
    labels = torch.randint(0, classes, (n_train + n_test,), generator=g)
    c = in_shape[0]
    identity = lambda x: x  # already standard normal
    return Datasets(
        "synthetic",
        TensorImages(images[:n_train], labels[:n_train], identity),
        TensorImages(images[n_train:], labels[n_train:], identity),
        classes, (0.0,) * c, (1.0,) * c,
    )


def _download_cifar(kind: str, root: Path) -> None:
    from torchvision.datasets import CIFAR10, CIFAR100
    from torchvision.datasets.utils import download_url

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    root.mkdir(parents=True, exist_ok=True)
    try:
        download_url(cls.url, str(root), cls.filename, cls.tgz_md5)
    except Exception as e:  # noqa: BLE001 - network errors come in many types
        raise DatasetError(f"could not download {cls.url} ({type(e).__name__}); place the data under {root} by hand") from None
    with tarfile.open(root / cls.filename) as tar:
        tar.extractall(root, filter="data")


def _cifar(kind: str, root: Path, in_shape, augment: bool, download: bool) -> Datasets:
    if find_cifar(kind, root) is None and download:
        _download_cifar(kind, root)
    splits = read_cifar(kind, root)
    if splits is None:
        folder, train_files, test_files = CIFAR_FILES[kind]["py"]
        raise DatasetError(
            f"no {kind} data under {root}: expected {root / folder}/{{{','.join(train_files + test_files)}}} "
            f"(or the binary layout); pass --download to fetch it"
        )
    (xtr, ytr), (xte, yte) = ((torch.from_numpy(x), torch.from_numpy(y)) for x, y in splits)
    mean, std = CIFAR_STATS[kind]
    c, h, w = in_shape
    if c != 3:
        raise DatasetError(f"{kind} has RGB images but the model takes {c} channels; pick a 3-channel model")
    v2 = _v2()
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    resize = [] if (h, w) == (32, 32) else [v2.Resize((h, w), antialias=True)]
    train_tf = resize + ([v2.RandomCrop((h, w), padding=4), v2.RandomHorizontalFlip()] if augment else []) + tail
    return Datasets(
        kind,
        TensorImages(xtr, ytr, v2.Compose(train_tf)),
        TensorImages(xte, yte, v2.Compose(resize + tail)),
        100 if kind == "cifar100" else 10, mean, std,
    )


# -- ImageNet-style folders -------------------------------------------------------------------


def _imagefolder(root: Path, in_shape, augment: bool) -> Datasets:
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DatasetError(f"imagefolder:{root} needs {root / split}/ with one sub-folder per class")
    c, h, w = in_shape
    if c != 3:
        raise DatasetError(f"imagefolder images are RGB but the model takes {c} channels; pick a 3-channel model")
    mean, std = IMAGENET_STATS
    v2 = _v2()
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_tf = (
        [v2.RandomResizedCrop((h, w)), v2.RandomHorizontalFlip(), v2.ColorJitter(0.87, 0.5, 0.5, 0.2)]
        if augment
        else [v2.Resize(round(h * 256 / 224)), v2.CenterCrop((h, w))]
    )
    val_tf = [v2.Resize(round(h * 256 / 224)), v2.CenterCrop((h, w))]  # 256 -> 224 for ImageNet
    folder = _image_folder_class()
    try:
        train = folder(str(root / "train"), v2.Compose(train_tf + tail), loader=load_image)
        val = folder(str(root / "val"), v2.Compose(val_tf + tail), loader=load_image)
    except (FileNotFoundError, RuntimeError) as e:
        raise DatasetError(f"imagefolder:{root}: {e}") from None
    if train.classes != val.classes:
        raise DatasetError(f"imagefolder:{root}: train/ and val/ have different class folders")
    return Datasets("imagefolder", train, val, len(train.classes), mean, std)


def _image_folder_class():
    """torchvision's ImageFolder with a directory walk that refuses symlink loops.

    torchvision walks with os.walk(followlinks=True), which never ends in a folder that links to
    one of its ancestors (`class/up -> ..`).
    """
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import has_file_allowed_extension

    class LoopSafeImageFolder(ImageFolder):
        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            samples = []
            for name in sorted(class_to_idx):
                before = len(samples)
                for file in walk(Path(directory) / name):
                    if extensions is None or has_file_allowed_extension(file, extensions):
                        samples.append((file, class_to_idx[name]))
                if len(samples) == before and not allow_empty:
                    raise DatasetError(f"{Path(directory) / name}: no image files (.jpg, .png, ...) in this class folder")
            return samples

    return LoopSafeImageFolder


