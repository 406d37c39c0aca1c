"""The torch-free runtime: bundles, backends, bad input, verify and bench."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from irevnet.contract import (
    FORWARD,
    FORWARD_BLOCKS,
    IMAGE,
    INVERSE,
    INVERSE_BLOCKS,
    LOGITS,
    WEIGHTS,
    Precision,
    graph_file,
)
from irevnet.errors import BundleError, IRevNetError
from irevnet.runtime import Bundle, InputError, open_backend
from irevnet.runtime.bench import BenchOptions, bench
from irevnet.runtime.verify import VerifyOptions, verify
from tests.conftest import edit_manifest


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / bundle.name)


def test_runtime_runs_where_torch_cannot_be_imported(bundles):
    """verify on the stored reference samples and on held-out digits (read by the torch-free
    dataset reader), and bench, with `import torch` made to fail."""
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        from irevnet.runtime.verify import VerifyOptions, verify
        from irevnet.runtime.bench import BenchOptions, bench
        r = verify(VerifyOptions(bundles=[{str(bundles[Precision.fp32])!r}]))
        b = bench(BenchOptions(bundles=[{str(bundles[Precision.fp32])!r}], batch_sizes=[1], warmup_s=0, iterations=2))
        d = verify(VerifyOptions(bundles=[{str(bundles[Precision.fp32])!r}], dataset="digits", samples=16, blocks=False))
        print(json.dumps({{"passed": r.passed, "reference": r.reference, "bench": len(b.results),
                          "digits": [d.passed, d.samples, d.inputs, len(d.round_trip)], "images": d.images}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["passed"] and result["bench"] == 2
    assert result["reference"] == "PyTorch fp32 outputs stored in the bundle at export"
    inputs = "images of digits (a seeded sample of its held-out split, stratified by class)"
    assert result["digits"] == [True, 16, inputs, 1]
    assert len(set(result["images"])) == 16 and all(p.startswith("digits/val/") for p in result["images"])


@pytest.mark.parametrize(
    "feed, message",
    [
        ({IMAGE: np.zeros((2, 1, 15, 16), np.float32)}, r"shape \[2, 1, 15, 16\], the graph takes \['N', 1, 16, 16\]"),
        ({IMAGE: np.zeros((2, 1, 16, 16), np.float64)}, "must be float32, got float64"),
        ({IMAGE: np.full((2, 1, 16, 16), np.nan, np.float32)}, "NaN or Inf"),
        ({IMAGE: np.zeros((9, 1, 16, 16), np.float32)}, r"batch 9 is outside the exported range 1..8"),
        ({"x": np.zeros((1, 1, 16, 16), np.float32)}, r"the graph takes \['image'\]"),
    ],
)
def test_bad_feeds_are_refused_in_one_line(bundles, feed, message):
    fwd = open_backend("onnxruntime", Bundle.open(bundles[Precision.fp32]), FORWARD)
    with fwd, pytest.raises(InputError, match=message) as err:
        fwd.infer(feed)
    assert "\n" not in str(err.value)


def test_tampered_incomplete_and_future_bundles_are_refused(bundles, tmp_path):
    tampered = _copy(bundles[Precision.fp32], tmp_path / "a")
    data = bytearray((tampered / graph_file(INVERSE)).read_bytes())
    data[-100] ^= 0xFF  # one flipped byte in the weights
    (tampered / graph_file(INVERSE)).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="inverse.onnx does not match its sha256"):
        Bundle.open(tampered)

    incomplete = _copy(bundles[Precision.fp32], tmp_path / "b")
    (incomplete / graph_file(FORWARD)).unlink()
    with pytest.raises(BundleError, match="forward.onnx is missing"):
        Bundle.open(incomplete)

    future = edit_manifest(_copy(bundles[Precision.fp32], tmp_path / "c"), lambda m: m.update(schema_version=m["schema_version"] + 1))
    with pytest.raises(BundleError, match="newer than this irevnet reads"):
        Bundle.open(future)
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Bundle.open(tmp_path)



@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda m: m.pop("graphs"), "graphs"),
        (lambda m: m["graphs"][INVERSE].pop("file"), "graphs.inverse.file"),
        (lambda m: m["graphs"][FORWARD_BLOCKS].update(inputs=IMAGE), "graphs.forward_blocks.inputs"),
        (lambda m: m["batch"].update(max="32"), "batch.max"),
        (lambda m: m.update(normalization=None), "normalization.mean"),
    ],
    ids=["no-graphs", "no-inverse-file", "inputs-not-a-list", "max-as-string", "null-normalization"],
)
def test_hand_edited_manifests_are_refused_by_field(bundles, tmp_path, edit, field):
    # the manifest is not covered by its own hashes; without this check each case was a KeyError
    # or TypeError traceback somewhere in verify, bench or build
    edited = edit_manifest(_copy(bundles[Precision.fp32], tmp_path / "edited"), edit)
    with pytest.raises(BundleError, match=rf"field '{re.escape(field)}' is missing or not a \w+; re-export"):
        Bundle.open(edited)

def test_verify_reports_round_trips_parity_and_blocks(bundles, tmp_path):
    plot = tmp_path / "blocks.png"
    r = verify(VerifyOptions(bundles=[str(bundles[Precision.fp32]), str(bundles[Precision.mixed])], backends=["onnxruntime", "torch"],
                             plot=str(plot))).to_dict()
    assert r["passed"] and r["reference"].startswith("PyTorch fp32, live")
    assert len(r["round_trip"]) == 4  # 2 precisions x 2 backends
    # cross: PyTorch's z into each backend, and each backend's z into the other
    assert len(r["cross_round_trip"]) == 2 * (2 + 2)
    fp32 = [e for e in r["round_trip"] if e["precision"] == Precision.fp32]
    # trained injective model with the range projection: ~1e-7 (measured 1.2e-7 ORT, 1.8e-7 torch)
    assert all(e["rel_l2"] <= 1e-6 and e["psnr_db"] > 120 for e in fp32)
    parity = {(e["precision"], e["backend"]): e for e in r["parity"]}
    assert parity[(Precision.fp32, "onnxruntime[cpu]")][LOGITS]["rel_l2"] <= 1e-5
    assert parity[(Precision.fp32, "onnxruntime[cpu]")]["top1_difference"] == 0.0
    blocks = {(e["precision"], e["backend"]): e for e in r["blocks"]}
    torch_mixed = blocks[(Precision.mixed, "torch[cpu]")]
    assert len(torch_mixed["round_trip"]) == 7 and len(torch_mixed["f_identical_fraction"]) == 6
    # PyTorch evaluates the fp16 F to the same bits in both directions: every block matches
    assert torch_mixed["f_identical_fraction"] == [1.0] * 6
    # the last block's F sees z itself in both graphs: identical bits on ONNX Runtime too
    assert blocks[(Precision.fp32, "onnxruntime[cpu]")]["f_identical_fraction"][-1] == 1.0
    assert blocks[(Precision.fp32, "onnxruntime[cpu]")]["gain"][0] < 1.0, "block 0 with projection: gain ~0.25"
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_verify_fails_against_a_tighter_tolerance(bundles, tmp_path):
    strict = edit_manifest(_copy(bundles[Precision.fp16], tmp_path), lambda m: m["tolerances"].update(round_trip=1e-9))  # fp16: ~4e-4
    r = verify(VerifyOptions(bundles=[str(strict)], blocks=False))
    assert not r and not r.passed and r.to_dict()["passed"] is False
    assert [bool(e) for e in r.round_trip] == [False] and "FAIL" in str(r.round_trip[0])


def test_bench_reports_percentiles_and_ratios(bundles):
    r = bench(BenchOptions(bundles=[str(bundles[Precision.fp32])], backends=["onnxruntime", "torch"], batch_sizes=[1, 4],
                           warmup_s=0, iterations=5)).to_dict()
    assert len(r["results"]) == 2 * 2 * 2
    for e in r["results"]:
        assert e["iterations"] == 5
        assert e["min_ms"] <= e["median_ms"] <= e["p90_ms"] <= e["p95_ms"] <= e["p99_ms"] <= e["max_ms"]
        assert e["images_per_s"] > 0 and e["gflops"] > 0 and e["baseline"] == "torch[cpu] fp32"
    base = {(e["direction"], e["batch"]): e for e in r["results"] if e["kind"] == "torch"}
    for e in r["results"]:  # a speedup is the baseline's median over this one, measured in the same rounds
        ref = base[e["direction"], e["batch"]]
        if e is ref:
            assert e["speedup"] is None, "the baseline is not compared with itself"
        else:
            assert e["speedup"] == pytest.approx(ref["median_ms"] / e["median_ms"], rel=1e-12)
    assert r["machine"]["cpu_count"] >= 1 and r["machine"]["fp32_matmul_gflops"] > 0
    with pytest.raises(IRevNetError, match="outside the bundles' range 1..8"):
        bench(BenchOptions(bundles=[str(bundles[Precision.fp32])], batch_sizes=[64]))
    # without --batch-sizes: 1, 8 and the bundle's max, so a bundle exported with --max-batch 8 benches
    default = bench(BenchOptions(bundles=[str(bundles[Precision.fp32])], direction=INVERSE, warmup_s=0, iterations=1))
    assert [e.batch for e in default.results] == [1, 8]


def test_an_old_layout_bundle_still_verifies(bundles, tmp_path):
    """Schema 1 bundles (weights inline in every graph, no weights.bin) open and verify as before."""
    import hashlib

    import onnx

    old = _copy(bundles[Precision.fp32], tmp_path / "old")
    for graph in (FORWARD, INVERSE, FORWARD_BLOCKS, INVERSE_BLOCKS):
        model = onnx.load(str(old / graph_file(graph)))  # weights read back from weights.bin
        onnx.save_model(model, str(old / graph_file(graph)))  # and written inline
    (old / WEIGHTS).unlink()

    def to_schema_1(m):
        m["schema_version"] = 1
        del m["weights"], m["files"][WEIGHTS]
        for spec in m["graphs"].values():
            spec["files"] = [spec["file"]]
            m["files"][spec["file"]] = hashlib.sha256((old / spec["file"]).read_bytes()).hexdigest()

    edit_manifest(old, to_schema_1)
    r = verify(VerifyOptions(bundles=[str(old)])).to_dict()
    assert r["passed"] and r["blocks"][0]["round_trip"], "round trips, parity and the per-block analysis"
