"""Reconstructing images from z with the PyTorch model: metrics and the paper's grid."""

from PIL import Image

from irevnet.io.images import grid_shape
from irevnet.training.invert import InvertOptions, invert_checkpoint


def test_inversion_grid_and_psnr_of_a_trained_model(trained_tiny, tmp_path):
    result = invert_checkpoint(InvertOptions(checkpoint=trained_tiny / "best.pt", out=tmp_path / "grid.png"))
    # fp32 with the range projection: relative error ~2e-7, i.e. ~140 dB; 100 dB leaves margin
    assert result.metrics["psnr_db"] > 100, result.metrics
    assert all(r["psnr_db"] > 100 for r in result.metrics["per_image"])
    with Image.open(tmp_path / "grid.png") as img:
        assert img.format == "PNG" and img.mode == "RGB"
        # 8 columns of 16x16 digits enlarged 4x to 64 px, two rows, 2 px gaps
        assert (img.height, img.width) == grid_shape(8, 16, 16) == (2 * 64 + 3 * 2, 8 * 64 + 9 * 2)
