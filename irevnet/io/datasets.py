"""Datasets read without torch (numpy and Pillow): the digits, CIFAR batch files, image folders.

The runtime (`irevnet verify --dataset`) reads its images here; training wraps the same readers in
torch datasets with its augmentation (irevnet.training.data). Every file is untrusted: CIFAR
batches go through a restricted unpickler that sizes arrays by the bytes present, images are
opened with Pillow's decompression-bomb limit, and folder walks refuse link loops.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import DatasetError, shown
from .restricted_pickle import Refused, RestrictedUnpickler, latin1

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS_TEST_SIZE = 360  # of 1,797: a fixed permutation (numpy seed 0) puts 1,437 in train
SPEC_HELP = "digits, cifar10:PATH, cifar100:PATH, imagefolder:PATH or synthetic"


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


def read_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 1,797 real 8x8 handwritten digits scikit-learn ships (its digits.csv.gz, read directly:
    importing scikit-learn loads scipy, which a runtime does not need).

    Returns:
        images (N, 1, 8, 8) float32 in [0, 1], labels (N,) int64, and the fixed train and test
        indices (a numpy seed-0 permutation; DIGITS_TEST_SIZE held out).
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or spec.origin is None:
        raise DatasetError("the digits dataset ships with scikit-learn; pip install scikit-learn")
    with gzip.open(Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz", "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)  # 64 pixels (0..16) and the label per row
    images = (table[:, :-1] / 16.0).reshape(-1, 1, 8, 8)
    labels = table[:, -1].astype(np.int64)
    order = np.random.RandomState(0).permutation(len(labels))
    return images, labels, order[DIGITS_TEST_SIZE:], order[:DIGITS_TEST_SIZE]


def read_cifar(kind: str, root: Path) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None:
    """(train, test) of a CIFAR folder, each (images (N, 3, 32, 32) uint8, labels int64); None
    when the folder holds neither layout."""
    found = find_cifar(kind, root)
    if found is None:
        return None
    layout, base = found
    _, train_files, test_files = CIFAR_FILES[kind][layout]
    read = _read_cifar_py if layout == "py" else _read_cifar_bin
    joined = lambda parts: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return (joined([_read_batch(read, base / f, kind) for f in train_files]),
            joined([_read_batch(read, base / f, kind) for f in test_files]))


CIFAR_FILES = {
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


def find_cifar(kind: str, root: Path) -> tuple[str, Path] | None:
    for layout, (folder, train_files, test_files) in CIFAR_FILES[kind].items():
        for base in (root / folder, root):
            if all((base / f).is_file() for f in train_files + test_files):
                return layout, base
    return None


# -- image folders ----------------------------------------------------------------------------------


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


def walk(top: Path) -> list[str]:
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


def _bilinear(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of (N, C, h0, w0), PyTorch's `interpolate(align_corners=False)` formula."""
    def axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
        return i0, np.minimum(i0 + 1, size_in - 1), (src - i0).astype(np.float32)
    r0, r1, fr = axis(x.shape[2], h)
    c0, c1, fc = axis(x.shape[3], w)
    rows = x[:, :, r0] * (1 - fr)[:, None] + x[:, :, r1] * fr[:, None]  # (N, C, h, w0)
    return rows[..., c0] * (1 - fc) + rows[..., c1] * fc


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 -> (C, h, w) uint8, Pillow's antialiased bilinear (as torchvision's Resize)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR)).transpose(2, 0, 1)


# the extensions torchvision's ImageFolder reads
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})
