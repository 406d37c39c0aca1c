"""`irevnet evaluate` on bundles: whole splits, per-image records, and the numbers it reports
equal those of the other paths to the same images (verify, the checkpoint on torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from irevnet.cli import app
from irevnet.contract import LOGITS, Precision
from irevnet.errors import IRevNetError
from irevnet.evaluation.run import EvaluateOptions, evaluate

runner = CliRunner()


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


def test_a_bundle_scores_what_verify_and_the_checkpoint_on_torch_score(bundles, trained_tiny, tmp_path):
    """The same 360 held-out digits three ways: evaluate on the fp32 bundle (ONNX Runtime),
    verify on the whole split (the same backend: equal top-1, exactly), and the checkpoint on
    torch (top-1 equal; logits within the fp32 parity tolerance, 1e-5 relative)."""
    from irevnet.runtime import Bundle
    from irevnet.runtime.verify import VerifyOptions, verify

    bundle = evaluate(EvaluateOptions(target=str(bundles[Precision.fp32]), records=str(tmp_path / "fp32.parquet")))
    torch_run = evaluate(EvaluateOptions(checkpoint=str(trained_tiny / "best.pt"), records=str(tmp_path / "torch.parquet")))
    assert bundle.summary.images == torch_run.summary.images == 360 and bundle.summary.unreadable == []
    checked = verify(VerifyOptions([str(bundles[Precision.fp32])], dataset="digits", samples=360, blocks=False))
    (parity,) = checked.parity
    assert parity.to_dict()["top1_backend"] == pytest.approx(bundle.summary.top1, abs=1e-9)
    assert torch_run.summary.top1 == bundle.summary.top1 >= 90.0, "trained: 98.9% measured"
    against = evaluate(EvaluateOptions(target=str(bundles[Precision.fp32]), against=str(tmp_path / "torch.parquet")))
    agreement = against.summary.agreement
    assert agreement.images == 360 and agreement.top1 == 1.0 and agreement.changed == []
    assert agreement.drift["max"] <= Bundle.open(bundles[Precision.fp32]).manifest.tolerances.logits
    # the round trip through the exported inverse: the input's rounding (fp32), on every image
    assert bundle.summary.round_trip["max"] <= 1e-5 and bundle.summary.psnr_db["min"] > 100


def test_the_records_hold_one_row_per_image_and_say_what_they_are_of(bundles, tmp_path):
    import pyarrow.parquet as pq

    from irevnet.evaluation.records import META, RunIdentity
    from irevnet.runtime import Bundle

    out = tmp_path / "r.parquet"
    report = evaluate(EvaluateOptions(target=str(bundles[Precision.mixed]), records=str(out), limit=100, chunk_size=32))
    table = pq.read_table(out)
    assert table.num_rows == 100 and table.column("index").to_pylist() == list(range(100))
    assert set(table.column_names) >= {"index", "path", "label", "top5", "top5_logits", LOGITS, "loss",
                                       "round_trip_rel_l2", "psnr_db", "backend"}
    identity = RunIdentity.from_json(pq.read_schema(out).metadata[META], str(out))
    manifest = Bundle.open(bundles[Precision.mixed]).manifest
    assert identity.weights_sha256 == manifest.weights_sha256 and identity.dataset == "digits"
    assert identity.split == "val" and identity.precision == Precision.mixed
    top5 = np.stack(table.column("top5").to_numpy(zero_copy_only=False))
    logits = np.stack(table.column(LOGITS).to_numpy(zero_copy_only=False))
    assert np.array_equal(top5[:, 0], logits.argmax(axis=1)), "top-5 is of the stored logits"
    labels = table.column("label").to_numpy()
    assert report.summary.top1 == pytest.approx(100 * np.mean(top5[:, 0] == labels))
    assert not (tmp_path / "r.parquet.parts").exists(), "the chunks are removed once joined"


def test_the_summary_has_the_keys_a_script_reads(bundles, tmp_path):
    out = tmp_path / "e.json"
    result = runner.invoke(app, ["evaluate", str(bundles[Precision.fp32]), "--limit", "64", "--json", str(out), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert {"images", "top1", "top5", "unreadable", "round_trip", "agreement", "images_per_s"} <= set(summary)
    assert summary["images"] == 64 and set(summary["round_trip"]) == {"median", "p99", "max"}
    assert summary["images_per_s"] > 0 and summary["agreement"] is None


def test_records_of_another_model_or_dataset_are_refused_naming_what_differs(bundles, trained_tiny, tmp_path):
    digits = tmp_path / "digits.parquet"
    evaluate(EvaluateOptions(target=str(bundles[Precision.fp32]), records=str(digits), limit=40, chunk_size=8))
    synthetic = tmp_path / "synthetic.parquet"
    evaluate(EvaluateOptions(target=str(bundles[Precision.fp32]), dataset="synthetic", records=str(synthetic), limit=40,
                             chunk_size=8))
    with pytest.raises(IRevNetError, match=r"--against records synthetic \(val, 40 images\), this run digits"):
        evaluate(EvaluateOptions(target=str(bundles[Precision.fp32]), against=str(synthetic), limit=40))
    import shutil

    from tests.conftest import edit_manifest

    # the same model exported from another checkpoint: what the records compare is the checkpoint
    # the manifest names
    other = edit_manifest(shutil.copytree(bundles[Precision.fp32], tmp_path / "other"),
                          lambda m: m["checkpoint"].update(sha256="0" * 64))
    with pytest.raises(IRevNetError, match=r"--against records a run of another checkpoint \(sha256 [0-9a-f]{16}"):
        evaluate(EvaluateOptions(target=str(other), against=str(digits), limit=40))


@pytest.mark.parametrize("color, spec, message", [
    (False, "imagefolder:{folder}", "imagefolder images are RGB but the model takes 1 channels"),
    (False, "cifar10:{empty}", "has RGB images but the model takes 1 channels"),
    (True, "cifar10:{empty}", "no cifar10 data under"),
])
def test_channels_that_do_not_match_and_missing_data_are_one_line(bundles, color_bundle, image_folder, tmp_path, color,
                                                                  spec, message):
    (tmp_path / "empty").mkdir()
    target = color_bundle if color else bundles[Precision.fp32]
    line = _one_line_error(runner.invoke(app, ["evaluate", str(target), "-d",
                                               spec.format(folder=image_folder, empty=tmp_path / "empty")]))
    assert message in line, line


def test_an_empty_split_is_one_line(color_bundle, tmp_path):
    for c in range(10):
        (tmp_path / "data" / "val" / f"n{c:08d}").mkdir(parents=True)
    line = _one_line_error(runner.invoke(app, ["evaluate", str(color_bundle), "-d", f"imagefolder:{tmp_path / 'data'}"]))
    assert "has no images in its val split" in line, line
