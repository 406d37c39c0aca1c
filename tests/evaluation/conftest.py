"""Fixtures of the whole-dataset tests: an ImageNet-style folder as users keep it (real PNG and
JPEG files in every mode Pillow reads, and the broken ones a real copy holds), and a bundle of a
3-channel model for it (tests/conftest.py's color_bundle)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.conftest import COLOR_CLASSES

CLASSES = COLOR_CLASSES  # the classes of the folder, of the session's color_bundle (tests/conftest.py)
PER_CLASS = 200  # 2,000 validation images: enough that chunks, shards and workers all matter


def _image(rng, mode: str):
    from PIL import Image

    h, w = int(rng.integers(30, 60)), int(rng.integers(30, 60))
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    return image.convert(mode) if mode != "RGB" else image


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """imagefolder:ROOT with train/ and val/ (10 class folders), val holding 2,000 small images:
    RGB, grayscale and palette PNGs, RGB and CMYK JPEGs, and four that are not what they claim:
    a truncated JPEG, a file of noise named .jpg, a decompression bomb, and a link back to its
    own class folder (a loop); plus a text file (not an image: not listed)."""
    from tests.io.test_data import _png_header

    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "P", "CMYK", "RGB"]
    for split, n in (("train", 2), ("val", PER_CLASS)):
        for c in range(CLASSES):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                mode = modes[i % len(modes)]
                ext = "JPEG" if mode == "CMYK" or i % 5 == 4 else "png"
                _image(rng, mode).save(folder / f"img_{i:04d}.{ext}", format="JPEG" if ext == "JPEG" else "PNG")
    val = root / "val"
    good = io.BytesIO()
    _image(rng, "RGB").save(good, format="JPEG")
    (val / "n00000001" / "truncated.JPEG").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (val / "n00000002" / "noise.jpg").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    (val / "n00000003" / "bomb.png").write_bytes(_png_header(50_000, 50_000))
    (val / "n00000004" / "again").symlink_to("..")  # val/n00000004/again -> val: a loop
    (val / "n00000005" / "README.txt").write_text("not an image")
    return root
