"""Datasets named by a spec string: digits, cifar10:PATH, cifar100:PATH, imagefolder:PATH, synthetic.

Every dataset yields (image, label) with the image normalised by the dataset's (mean, std) and
shaped like the model's input; `Datasets.mean`/`std` travel into checkpoints and bundle manifests
so that exported inverses can turn z back into pixels.
"""

from __future__ import annotations

import io
import math
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DatasetError, shown
from ..io.restricted_pickle import Refused, RestrictedUnpickler, latin1

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS_TEST_SIZE = 360  # of 1,797: a fixed permutation (numpy seed 0) puts 1,437 in train
SPEC_HELP = "digits, cifar10:PATH, cifar100:PATH, imagefolder:PATH or synthetic"


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


def parse_spec(spec: str) -> tuple[str, Path | None]:
    kind, _, path = spec.partition(":")
    kind = kind.lower()
    if kind in ("digits", "synthetic"):
        if path:
            raise DatasetError(f"dataset {kind!r} takes no path, got {spec!r}")
        return kind, None
    if kind in ("cifar10", "cifar100", "imagefolder"):
        if not path:
            raise DatasetError(f"dataset {kind!r} needs a folder: --dataset {kind}:PATH")
        return kind, Path(path).expanduser()
    raise DatasetError(f"unknown dataset {spec!r}; use {SPEC_HELP}")


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
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = torch.from_numpy(raw.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    labels = torch.from_numpy(raw.target.astype(np.int64))
    order = torch.from_numpy(np.random.RandomState(0).permutation(len(labels)))
    test_idx, train_idx = order[:DIGITS_TEST_SIZE], order[DIGITS_TEST_SIZE:]
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


# -- CIFAR ------------------------------------------------------------------------------------

_CIFAR_FILES = {
    # python pickle layout (torchvision's download) and the binary layout
    "cifar10": {
        "py": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]),
        "bin": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"]),
    },
    "cifar100": {
        "py": ("cifar-100-python", ["train"], ["test"]),
        "bin": ("cifar-100-binary", ["train.bin"], ["test.bin"]),
    },
}


class _NDArrayName:
    """What the name numpy.ndarray resolves to in a CIFAR batch: only `_reconstruct`'s first argument."""


_NDARRAY = _NDArrayName()
_CIFAR_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})  # pixels and labels


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """Stands in for numpy's `_reconstruct(ndarray, (0,), b"b")`: an empty array to fill by BUILD."""
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise Refused("a CIFAR array is reconstructed with arguments numpy never writes")
    return np.ndarray((0,), np.uint8)


def _dtype(name: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """Stands in for numpy.dtype(name, align, copy): integer types only, always a new object."""
    if name not in _CIFAR_DTYPES:
        raise Refused(f"a CIFAR array has dtype {shown(name)}, not an integer type")
    return np.dtype(name, bool(align), True)


def _empty_bytes(*args: Any) -> bytes:
    """Stands in for bytes(), which protocol 2 calls for an empty array's buffer."""
    if args not in ((), ([],), ("",), (b"",)):
        raise Refused("the file calls bytes() with arguments other than nothing")
    return b""


class _ArrayUnpickler(RestrictedUnpickler):
    """Reads CIFAR batch files (dicts of integer arrays, lists and strings) and nothing else.

    An array's bytes come from the file and must be exactly what its shape and dtype need,
    checked before numpy sees them, so a batch file cannot allocate more than its own size.
    """

    GLOBALS: ClassVar[dict[str, Any]] = {
        "numpy.core.multiarray._reconstruct": _reconstruct,
        "numpy._core.multiarray._reconstruct": _reconstruct,
        "numpy.ndarray": _NDARRAY,
        "numpy.dtype": _dtype,
        "_codecs.encode": latin1,
        "builtins.bytes": _empty_bytes,
    }
    CALLABLES = (_reconstruct, _dtype, latin1, _empty_bytes)

    def call(self, func: Any, args: tuple) -> Any:
        obj = func(*args)
        if func in (_reconstruct, _dtype):
            self.created.add(id(obj))
        return obj

    def build(self, inst: Any, state: Any) -> None:
        if id(inst) not in self.created or not isinstance(state, tuple):
            raise Refused(f"the file sets the state of a {type(inst).__name__}, which is not allowed")
        if isinstance(inst, np.dtype):
            if len(state) > 9 or not all(type(v) in (int, str, type(None)) for v in state):
                raise Refused("a CIFAR dtype's state is not numpy's")
            inst.__setstate__(state)
            return
        if len(state) != 5:
            raise Refused("a CIFAR array's state is not numpy's (version, shape, dtype, order, bytes)")
        _, shape, dtype, _, raw = state
        if not (isinstance(shape, tuple) and len(shape) <= 8 and all(type(n) is int and n >= 0 for n in shape)):
            raise Refused("a CIFAR array's shape is not a tuple of sizes")
        if id(dtype) not in self.created or type(raw) is not bytes:
            raise Refused("a CIFAR array's dtype or bytes are not numpy's")
        if math.prod(shape) * dtype.itemsize != len(raw):
            raise Refused(f"a CIFAR array of shape {shape} holds {len(raw)} bytes")
        inst.__setstate__(state)


def _read_cifar_py(file: Path, fine: bool) -> tuple[np.ndarray, np.ndarray]:
    entry = _ArrayUnpickler(io.BytesIO(file.read_bytes())).load()  # in memory: lengths bounded by the bytes
    if not isinstance(entry, dict):
        raise DatasetError(f"{file}: holds a {type(entry).__name__}, not a CIFAR batch (a dict); re-download it")
    entry = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    labels = entry.get("fine_labels" if fine else "labels")
    if not (isinstance(labels, np.ndarray) or (isinstance(labels, list) and all(type(n) is int for n in labels))):
        raise DatasetError(f"{file}: its labels are not a list of integers; re-download it")
    data = entry.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
        raise DatasetError(f"{file}: its data is not an array of 3x32x32 uint8 images; re-download it")
    data = data.reshape(-1, 3, 32, 32)
    labels = np.asarray(labels, dtype=np.int64)
    return _checked_cifar(file, data, labels, fine)


def _read_cifar_bin(file: Path, fine: bool) -> tuple[np.ndarray, np.ndarray]:
    label_bytes = 2 if fine else 1  # CIFAR-100 records: coarse label, fine label, 3072 pixels
    raw = np.fromfile(file, dtype=np.uint8)
    record = label_bytes + 3072
    if raw.size % record:
        raise DatasetError(f"{file}: size {raw.size} is not a multiple of the {record}-byte CIFAR record")
    raw = raw.reshape(-1, record)
    return _checked_cifar(file, raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_bytes - 1].astype(np.int64), fine)


def _checked_cifar(file: Path, data: np.ndarray, labels: np.ndarray, fine: bool) -> tuple[np.ndarray, np.ndarray]:
    """One label per image, each a class of the dataset, and at least one image."""
    classes = 100 if fine else 10
    if len(data) == 0:
        raise DatasetError(f"{file}: no images in this batch file; re-download it")
    if labels.ndim != 1 or len(labels) != len(data):
        raise DatasetError(f"{file}: {len(labels)} labels for {len(data)} images; re-download it")
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        raise DatasetError(f"{file}: label {labels[bad[0]]} of image {bad[0]} is outside 0..{classes - 1}; re-download it")
    return data, labels


def _read_batch(read: Callable[[Path, bool], tuple[np.ndarray, np.ndarray]], file: Path, kind: str):
    """One batch file's (images, labels), or a one-line error naming the file."""
    try:
        return read(file, kind == "cifar100")
    except DatasetError:
        raise
    except Refused as e:
        what = str(e).replace("Unsupported global: GLOBAL ", "it names ")
        raise DatasetError(f"{file}: refused ({what}); CIFAR batches hold arrays only, re-download it") from None
    except Exception as e:  # noqa: BLE001 - a corrupt pickle makes the unpickler raise almost anything
        raise DatasetError(f"{file}: unreadable {kind} batch file ({shown(e)}); re-download it") from None


def _find_cifar(kind: str, root: Path) -> tuple[str, Path] | None:
    for layout, (folder, train_files, test_files) in _CIFAR_FILES[kind].items():
        for base in (root / folder, root):
            if all((base / f).is_file() for f in train_files + test_files):
                return layout, base
    return None


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
    found = _find_cifar(kind, root)
    if found is None and download:
        _download_cifar(kind, root)
        found = _find_cifar(kind, root)
    if found is None:
        folder, train_files, test_files = _CIFAR_FILES[kind]["py"]
        raise DatasetError(
            f"no {kind} data under {root}: expected {root / folder}/{{{','.join(train_files + test_files)}}} "
            f"(or the binary layout); pass --download to fetch it"
        )
    layout, base = found
    _, train_files, test_files = _CIFAR_FILES[kind][layout]
    read = _read_cifar_py if layout == "py" else _read_cifar_bin
    fine = kind == "cifar100"
    train = [_read_batch(read, base / f, kind) for f in train_files]
    test = [_read_batch(read, base / f, kind) for f in test_files]
    mean, std = CIFAR_STATS[kind]
    c, h, w = in_shape
    if c != 3:
        raise DatasetError(f"{kind} has RGB images but the model takes {c} channels; pick a 3-channel model")
    v2 = _v2()
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    resize = [] if (h, w) == (32, 32) else [v2.Resize((h, w), antialias=True)]
    train_tf = resize + ([v2.RandomCrop((h, w), padding=4), v2.RandomHorizontalFlip()] if augment else []) + tail
    to_tensors = lambda parts: (
        torch.from_numpy(np.concatenate([p[0] for p in parts])),
        torch.from_numpy(np.concatenate([p[1] for p in parts])),
    )
    (xtr, ytr), (xte, yte) = to_tensors(train), to_tensors(test)
    return Datasets(
        kind,
        TensorImages(xtr, ytr, v2.Compose(train_tf)),
        TensorImages(xte, yte, v2.Compose(resize + tail)),
        100 if fine else 10, mean, std,
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


def load_image(path: str):
    """Opens one image as RGB; an unreadable file or a decompression bomb (more pixels than PIL's
    MAX_IMAGE_PIXELS, ~89 M) is a one-line DatasetError naming the file, not a PIL traceback."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # over the limit, under 2x
            with open(path, "rb") as f, Image.open(f) as img:
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"{path}: {str(e).split('.')[0]}, a decompression bomb; remove it from the dataset") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise DatasetError(f"{path}: not a readable image ({str(e)[:100]}); remove or replace it") from None


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
                for file in _walk(Path(directory) / name):
                    if extensions is None or has_file_allowed_extension(file, extensions):
                        samples.append((file, class_to_idx[name]))
                if len(samples) == before and not allow_empty:
                    raise DatasetError(f"{Path(directory) / name}: no image files (.jpg, .png, ...) in this class folder")
            return samples

    return LoopSafeImageFolder


def _walk(top: Path) -> list[str]:
    """Files under `top`, following links into folders, but each real folder once: a link that
    leads back to a folder already on the way is a loop and a one-line error."""
    files: list[str] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, names in os.walk(top, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            raise DatasetError(
                f"{folder}: a symbolic link loop (it leads back to a folder already read); remove the link"
            )
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        files += [os.path.join(folder, n) for n in sorted(names)]
    return files
