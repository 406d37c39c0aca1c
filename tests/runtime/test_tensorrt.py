"""Real TensorRT on a real GPU: run with `python -m pytest -m "tensorrt or gpu"` on a CUDA machine
with `pip install -e ".[dev,tensorrt]"`. Skipped elsewhere, with the reason."""

from __future__ import annotations

import json
import shutil

import pytest

from irevnet.contract import INVERSE, Precision

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


@pytest.mark.parametrize("precision", [Precision.fp32, Precision.mixed, Precision.fp16])
def test_engines_meet_the_bundle_tolerances(bundles, tmp_path, precision):
    from irevnet.runtime.trt_build import BuildOptions, build_engines
    from irevnet.runtime.verify import VerifyOptions, verify

    bundle = shutil.copytree(bundles[precision], tmp_path / precision)
    debug = precision != Precision.fp16  # the fp16 fixture has no debug graphs
    section = build_engines(BuildOptions(bundle=str(bundle), debug=debug))
    assert section["strongly_typed"] and not section["tf32"]
    r = verify(VerifyOptions(bundles=[str(bundle)], backends=["tensorrt", "onnxruntime"])).to_dict()
    print(json.dumps({k: r[k] for k in ("round_trip", "cross_round_trip", "parity")}, indent=1))
    assert r["passed"], "TensorRT engines within the bundle's tolerances (TF32 off keeps fp32 at ~1e-7)"
    if precision == Precision.fp32:
        trt_rt = next(e for e in r["round_trip"] if e[INVERSE].startswith("tensorrt"))
        assert trt_rt["rel_l2"] <= 1e-5
    if debug:
        same = next(e for e in r["blocks"] if e["backend"].startswith("tensorrt"))["f_identical_fraction"]
        print("F bits equal per block:", same)
        # The last block's F sees the same input in both engines (z), and the shared timing cache
        # gives both the same tactics: F must evaluate to the same bits there, or the mixed
        # bundle's exact-inverse claim fails. Earlier blocks see the recovered input, one rounding
        # away: on this injective model PyTorch's fp16 F matched in every block (README), so a
        # floor of 90% of F's outputs per block leaves room for tactic differences only.
        assert same[-1] == 1.0, "the last block's F differs between the forward and inverse engines"
        assert min(same) >= 0.9, f"F bits equal per block {same}"


def test_engine_from_another_version_is_refused(bundles, tmp_path):
    from irevnet.runtime import Bundle, open_backend
    from irevnet.runtime.engines import EngineMismatch
    from irevnet.runtime.trt_build import BuildOptions, build_engines

    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "b")
    build_engines(BuildOptions(bundle=str(bundle)))
    from tests.conftest import edit_manifest

    edit_manifest(bundle, lambda m: m["tensorrt"].update(version="9.0.0"))
    with pytest.raises(EngineMismatch, match="irevnet build"):
        open_backend("tensorrt", Bundle.open(bundle), INVERSE)
    from irevnet.runtime.trt_build import rebuild_stale_engines

    assert rebuild_stale_engines(bundle)["version"] == trt.__version__
    with open_backend("tensorrt", Bundle.open(bundle), INVERSE) as inv:
        assert inv.max_batch == 8


def test_the_precision_search_on_tensorrt_meets_its_budget(trained_tiny, tmp_path):
    """--search-backend tensorrt on a real GPU: each plan an engine, the chosen bundle judged on
    the held-out digits through its own forward graph's engine, within the budget."""
    from irevnet.export.options import ExportOptions
    from irevnet.search import export_searched

    opts = ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "auto"), dataset="digits",
                         precision="auto", budget="logits<=0.005", debug_graphs=False, search_backend="tensorrt",
                         calibration=64, search_images=96, held_out=120, search_bench_s=0.3, max_batch=8)
    search = export_searched(opts).search
    assert search and search.backend == "tensorrt" and search.judged.logits_p99 <= 0.005
