"""ImageNet as users keep it: class folders of PNGs and JPEGs in every mode, and the broken files
a real copy holds; preprocessing that equals torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from irevnet.cli import app

from .conftest import CLASSES, PER_CLASS

runner = CliRunner()


def test_a_folder_with_broken_files_is_evaluated_whole_and_says_what_it_passed_over(color_bundle, image_folder, tmp_path):
    """2,000 good images (RGB, grayscale, palette, CMYK), three that cannot be read (truncated,
    noise named .jpg, a decompression bomb): counted and named, the run goes on; the link loop
    is skipped and said; the text file is not an image."""
    out = tmp_path / "r.parquet"
    result = runner.invoke(app, ["evaluate", str(color_bundle), "-d", f"imagefolder:{image_folder}", "--records", str(out),
                                 "--batch-size", "16", "--chunk-size", "256", "-q", "--json", str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["images"] == CLASSES * PER_CLASS and summary["unreadable"] == 3
    names = sorted(u["path"].rsplit("/", 1)[1] for u in summary["unreadable_files"])
    assert names == ["bomb.png", "noise.jpg", "truncated.JPEG"]
    for u in summary["unreadable_files"]:  # each warned once, with its path
        assert result.output.count(u["error"]) == 1 and u["path"] in u["error"], result.output
    assert "a decompression bomb" in next(u["error"] for u in summary["unreadable_files"] if "bomb" in u["path"])
    assert any("again: a symbolic link loop" in note for note in summary["skipped"])
    assert "README" not in out.read_bytes().decode("latin-1")


def test_strict_stops_at_the_first_unreadable_file(color_bundle, image_folder):
    result = runner.invoke(app, ["evaluate", str(color_bundle), "-d", f"imagefolder:{image_folder}", "--strict", "-q"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: ") and "truncated.JPEG" in line and "--strict stops at the first" in line, line


@pytest.mark.parametrize("size", [(224, 224), (64, 64)])
def test_preprocessing_equals_torchvisions_resize_and_center_crop(size):
    """torchvision's Resize(round(h * 256 / 224)) + CenterCrop((h, w)) on PIL images, the
    ImageNet evaluation transform (256 -> 224), within one grey level on every pixel: both are
    Pillow's antialiased bilinear, cropped at the same offsets."""
    from PIL import Image
    from torchvision import transforms

    from irevnet.io.splits import center_crop

    rng = np.random.default_rng(1)
    h, w = size
    reference = transforms.Compose([transforms.Resize(round(h * 256 / 224)), transforms.CenterCrop((h, w))])
    for shape, mode in [((300, 500), "RGB"), ((517, 389), "L"), ((256, 256), "RGB"), ((1000, 260), "P"),
                        ((333, 333), "CMYK")]:
        image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).convert(mode).convert("RGB")
        ours = center_crop(image, (h, w)) * 255.0
        theirs = np.asarray(reference(image), np.float32).transpose(2, 0, 1)
        assert ours.shape == theirs.shape == (3, h, w)
        assert np.abs(ours - theirs).max() <= 1.0, (shape, mode, np.abs(ours - theirs).max())
