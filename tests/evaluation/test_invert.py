"""`irevnet invert` on bundles: every image of the split and its reconstruction from z by the
deployed inverse, as PNGs at the image's path in the split, with the records of evaluate."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from irevnet.cli import app
from irevnet.contract import Precision

runner = CliRunner()


def test_invert_writes_each_image_and_its_reconstruction_in_the_splits_structure(color_bundle, image_folder, tmp_path):
    from PIL import Image

    out = tmp_path / "inverted"
    result = runner.invoke(app, ["invert", str(color_bundle), "-d", f"imagefolder:{image_folder}", "-o", str(out),
                                 "--limit", "40", "--records", str(tmp_path / "r.parquet"), "-q"])
    assert result.exit_code == 0, result.output
    originals = sorted(p.relative_to(out / "originals") for p in (out / "originals").rglob("*.png"))
    reconstructions = sorted(p.relative_to(out / "reconstructions") for p in (out / "reconstructions").rglob("*.png"))
    assert len(originals) == 40 and originals == reconstructions
    assert all(p.parts[0].startswith("n0000") for p in originals), "in the split's class folders"
    a = np.asarray(Image.open(out / "originals" / originals[0]), np.int16)
    b = np.asarray(Image.open(out / "reconstructions" / originals[0]), np.int16)
    assert a.shape == b.shape == (32, 32, 3) and np.abs(a - b).max() <= 1, "exact up to the 8-bit rounding of a PNG"
    assert (out / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "r.parquet").is_file()


def test_invert_of_a_checkpoint_to_a_png_is_the_grid_alone(trained_tiny, tmp_path):
    """As before: `invert -c CKPT -o grid.png --samples N` writes the paper's figure."""
    png = tmp_path / "grid.png"
    result = runner.invoke(app, ["invert", "-c", str(trained_tiny / "best.pt"), "-o", str(png), "--samples", "4", "-q"])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


def test_evaluate_reads_cifar_batch_files(color_bundle, tmp_path):
    from tests.io.test_data import _write_cifar_py

    _write_cifar_py(tmp_path, n_train=20, n_test=10)  # its test labels are 0..n-1
    result = runner.invoke(app, ["evaluate", str(color_bundle), "-d", f"cifar10:{tmp_path}", "-q", "--json",
                                 str(tmp_path / "e.json")])
    assert result.exit_code == 0, result.output
    import json

    summary = json.loads((tmp_path / "e.json").read_text())
    assert summary["images"] == 10 and summary["unreadable"] == 0 and summary["round_trip"]["max"] < 1e-5


def test_a_shard_that_does_not_parse_is_one_line(bundles, tmp_path):
    result = runner.invoke(app, ["invert", str(bundles[Precision.fp32]), "-o", str(tmp_path / "x"), "--shard", "5/2"])
    assert result.exit_code == 2 and "--shard '5/2': give I/N with 0 <= I < N" in result.output
