"""Real TensorRT on a real GPU: run with `python -m pytest -m "tensorrt or gpu"` on a CUDA machine
with `pip install -e ".[dev,tensorrt]"`. Skipped elsewhere, with the reason."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.tensorrt
trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'irevnet[tensorrt]' from NVIDIA's index)")


@pytest.fixture(scope="module", autouse=True)
def _gpu():
    from irevnet.errors import IRevNetError
    from irevnet.runtime.gpu import cuda_api

    try:
        cuda_api().device()
    except IRevNetError as e:
        pytest.skip(f"no usable CUDA GPU: {e}")


@pytest.mark.parametrize("precision", ["fp32", "mixed", "fp16"])
def test_engines_meet_the_bundle_tolerances(bundles, tmp_path, precision):
    from irevnet.export.trt_build import BuildOptions, build_engines
    from irevnet.runtime.verify import VerifyOptions, verify

    bundle = shutil.copytree(bundles[precision], tmp_path / precision)
    debug = precision != "fp16"  # the fp16 fixture has no debug graphs
    section = build_engines(BuildOptions(bundle=str(bundle), debug=debug))
    assert section["strongly_typed"] and not section["tf32"]
    r = verify(VerifyOptions(bundles=[str(bundle)], backends=["tensorrt", "onnxruntime"]))
    print(json.dumps({k: r[k] for k in ("round_trip", "cross_round_trip", "parity")}, indent=1))
    assert r["passed"], "TensorRT engines within the bundle's tolerances (TF32 off keeps fp32 at ~1e-7)"
    if precision == "fp32":
        trt_rt = next(e for e in r["round_trip"] if e["inverse"].startswith("tensorrt"))
        assert trt_rt["rel_l2"] <= 1e-5
    if debug:
        blocks = next(e for e in r["blocks"] if e["backend"].startswith("tensorrt"))
        print("F bits equal per block:", blocks["f_identical_fraction"])


def test_engine_from_another_version_is_refused(bundles, tmp_path):
    from irevnet.export.trt_build import BuildOptions, build_engines
    from irevnet.runtime import Bundle, open_backend
    from irevnet.runtime.engines import EngineMismatch

    bundle = shutil.copytree(bundles["fp32"], tmp_path / "b")
    build_engines(BuildOptions(bundle=str(bundle)))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["tensorrt"]["version"] = "9.0.0"
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineMismatch, match="irevnet build"):
        open_backend("tensorrt", Bundle.open(bundle), "inverse")
    with open_backend("tensorrt", Bundle.open(bundle), "inverse", rebuild=True) as inv:
        assert inv.max_batch == 8
