"""reference.npz: the verification inputs and the PyTorch fp32 outputs stored at export.

Its members are the contract's names (REFERENCE_IMAGES, REFERENCE_LABELS, LOGITS, Z, RECONSTRUCTION,
block_input(i)). The file may come from another machine, so before numpy allocates an array its
header is checked against the bytes the member holds (a compressed member could inflate without
bound), and every array read is checked for dtype and shape against the model.
"""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass

import numpy as np

from ..contract import LOGITS, RECONSTRUCTION, REFERENCE, REFERENCE_IMAGES, REFERENCE_LABELS, Z, block_input
from ..errors import BundleError
from ..model.config import IRevNetConfig

# what every bundle stores; labels (with --dataset) and h0..hB (as many samples as fit) may be absent
REQUIRED_MEMBERS = (REFERENCE_IMAGES, LOGITS, Z)


@dataclass(frozen=True)
class ReferenceSamples:
    """The arrays of reference.npz that were asked for; those not asked for or not stored are None
    (blocks: empty).

    images: (N, C, H, W) normalised inputs; labels: (N,) classes; logits: (N, classes);
    z: (N, *z_shape); reconstruction: (N, C, H, W) PyTorch's inverse of z; blocks: h0..hB, each
    (n, ...) for the first n <= N samples.
    """

    images: np.ndarray | None = None
    labels: np.ndarray | None = None
    logits: np.ndarray | None = None
    z: np.ndarray | None = None
    reconstruction: np.ndarray | None = None
    blocks: tuple[np.ndarray, ...] = ()

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], num_blocks: int) -> ReferenceSamples:
        blocks = [arrays[block_input(i)] for i in range(num_blocks + 1) if block_input(i) in arrays]
        return cls(arrays.get(REFERENCE_IMAGES), arrays.get(REFERENCE_LABELS), arrays.get(LOGITS), arrays.get(Z),
                   arrays.get(RECONSTRUCTION), tuple(blocks))


def read_reference(data: bytes, names: tuple[str, ...], config: IRevNetConfig, where: str) -> ReferenceSamples:
    """The members `names` (default: all) of reference.npz's checked bytes.

    Raises:
        BundleError: one line naming the member that is missing, compressed, truncated or does not
            fit the model; `where` (the bundle) first.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            wanted = names or tuple(npz.files)
            missing = [k for k in REQUIRED_MEMBERS if k in wanted and k not in npz.files]
            if missing:
                raise BundleError(f"{where}: {REFERENCE} lacks {missing}; re-export the bundle")
            present = [k for k in wanted if k in npz.files]
            for key in present:
                _check_member(npz.zip, key, where)
            arrays = {k: npz[k] for k in present}
    except BundleError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as e:
        raise BundleError(f"{where}: {REFERENCE} is unreadable ({str(e)[:100]}); re-export the bundle") from None
    _check_arrays(arrays, config, where)
    return ReferenceSamples.from_arrays(arrays, config.num_blocks)


def _check_member(archive: zipfile.ZipFile, key: str, where: str) -> None:
    """Refuses an array of reference.npz whose header declares more bytes than its member holds,
    or that is compressed (export writes them stored: a compressed one could inflate without
    bound), before numpy allocates it."""
    info = archive.getinfo(f"{key}.npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise BundleError(f"{where}: {REFERENCE}[{key!r}] is compressed, which irevnet never writes; re-export")
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(member)
    declared = math.prod(shape) * dtype.itemsize
    if declared > info.file_size:
        raise BundleError(f"{where}: {REFERENCE}[{key!r}] declares shape {list(shape)[:8]} ({declared} bytes) "
                          f"but holds {info.file_size} bytes; re-export the bundle")


def _check_arrays(arrays: dict[str, np.ndarray], cfg: IRevNetConfig, where: str) -> None:
    images = arrays.get(REFERENCE_IMAGES)
    n = len(images) if images is not None and images.ndim >= 1 else None  # a 0-d one is refused below
    expected = {REFERENCE_IMAGES: cfg.in_shape, RECONSTRUCTION: cfg.in_shape, LOGITS: (cfg.num_classes,), Z: cfg.z_shape}
    for key, array in arrays.items():
        if key == REFERENCE_LABELS:
            ok = array.dtype.kind in "iu" and array.ndim == 1
        else:
            ok = array.dtype == np.float32 and array.ndim >= 1 and (key not in expected or array.shape[1:] == tuple(expected[key]))
        if not ok or (n is not None and len(array) > max(n, 1)) or len(array) < 1:
            raise BundleError(
                f"{where}: {REFERENCE}[{key!r}] has dtype {array.dtype} and shape {list(array.shape)}, which "
                f"do not fit the model; re-export the bundle"
            )
