"""Precision per block: a plan's bundle is a bundle like any other, with an exact inverse."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from irevnet.cli import app
from irevnet.contract import FORWARD, FORWARD_BLOCKS, BlockPrecision, Precision, graph_file
from irevnet.errors import BundleError, IRevNetError
from irevnet.export.plan import PrecisionPlan
from irevnet.runtime import Bundle
from irevnet.runtime.verify import VerifyOptions, verify
from tests.conftest import PLAN, edit_manifest

runner = CliRunner()

def test_a_plan_with_one_block_in_fp32_exports_and_verifies_on_onnxruntime_and_openvino(plan_bundle):
    bundle = Bundle.open(plan_bundle)
    assert bundle.precision is Precision.plan and [p.value for p in bundle.manifest.precision_plan] == PLAN.split(",")
    assert bundle.manifest.verification.passed
    report = verify(VerifyOptions(bundles=[str(plan_bundle)], backends=["onnxruntime", "openvino"], dataset="digits"))
    assert report, str(report)
    # the exact coupling: the round trip is the input's rounding to the grid, whatever F's precision
    assert {r.kind for r in report.round_trip} >= {"onnxruntime", "openvino"}
    assert all(r.comparison.rel_l2 <= 1e-6 for r in report.round_trip if r.forward == r.inverse), report.round_trip
    # int8 blocks carry Q/DQ, the fp16 block casts at F's edges, the fp32 block neither
    import onnx

    nodes = onnx.load(str(plan_bundle / graph_file(FORWARD)), load_external_data=False).graph.node
    kinds = {i: {n.op_type for n in nodes if n.name.startswith(f"block{i}/F/")} for i in range(6)}
    assert "QuantizeLinear" in kinds[0] and "Cast" not in kinds[0]
    assert "QuantizeLinear" not in kinds[2] and "Cast" not in kinds[2]
    assert "Cast" in kinds[4] and "QuantizeLinear" not in kinds[4]


def test_the_uniform_plans_are_the_bundle_precisions():
    assert PrecisionPlan.parse("int8 int8", 2).precision is Precision.int8
    assert PrecisionPlan.parse('["fp16", "fp16"]', 2).precision is Precision.mixed
    assert PrecisionPlan.parse("fp32,fp32", 2).precision is Precision.fp32
    assert PrecisionPlan.parse("fp32,int8", 2).precision is Precision.plan
    assert PrecisionPlan.for_precision(Precision.mixed, 3).blocks == (BlockPrecision.fp16,) * 3
    assert PrecisionPlan.for_precision(Precision.fp16, 3) is None, "fp16 computes the coupling stream in fp16 too"
    assert str(PrecisionPlan.parse("int8,int8,fp32,int8", 4)) == "int8 x2, fp32, int8"


@pytest.mark.parametrize("plan, message", [
    ("int8,int8", "names 2 precisions, but the model has 6 blocks"),
    ("int8,int8,int4,int8,int8,int8", "block 2 is 'int4'"),
    ("int8,bf16,int8,int8,int8,int8", "opset 22"),
    ('{"blocks": 6}', "a list of precision names"),
    ('["int8", ', "not a JSON list"),
    ('["int8", 8, "int8", "int8", "int8", "int8"]', "a list of precision names"),
])
def test_a_malformed_plan_is_one_line_and_exit_2(trained_tiny, tmp_path, plan, message):
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["export", "-c", str(trained_tiny / "best.pt"), "-o", str(out), "--precision-plan", plan])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0] and "Traceback" not in result.output
    assert not out.exists(), "refused before any bundle was written"


def test_a_long_plan_of_words_parses_and_an_empty_entry_is_refused():
    words = " ".join([BlockPrecision.int8.value] * 100)  # irevnet-301's 100 blocks: no file name that long
    assert PrecisionPlan.parse(words, 100).blocks == (BlockPrecision.int8,) * 100
    with pytest.raises(IRevNetError, match="entry 1 is empty"):
        PrecisionPlan.parse(f"{BlockPrecision.int8.value},,{BlockPrecision.fp32.value}", 2)


def test_a_plan_file_is_read_and_a_huge_one_refused(tmp_path):
    good = tmp_path / "plan.json"
    good.write_text(json.dumps([BlockPrecision.fp32.value, BlockPrecision.int8.value]))
    assert PrecisionPlan.parse(str(good), 2).blocks == (BlockPrecision.fp32, BlockPrecision.int8)
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"int8 " * 20000)
    with pytest.raises(IRevNetError, match="over 64 KiB"):
        PrecisionPlan.parse(str(huge), 2)


def test_a_manifest_whose_plan_does_not_fit_the_model_is_refused(plan_bundle, tmp_path):
    short = shutil.copytree(plan_bundle, tmp_path / "short")
    edit_manifest(short, lambda m: m.update(precision_plan=m["precision_plan"][:5]))
    with pytest.raises(BundleError, match="names 5 precisions for a model of 6 blocks"):
        Bundle.open(short)
    uniform = shutil.copytree(plan_bundle, tmp_path / "uniform")
    edit_manifest(uniform, lambda m: m.update(precision=Precision.int8.value))
    with pytest.raises(BundleError, match="does not agree with precision int8"):
        Bundle.open(uniform)


def test_a_block_alone_in_fp32_adds_no_drift_and_in_int8_some(plan_bundle, trained_tiny):
    """The sensitivity measurement is not vacuous: F against itself is exact, int8 F is not. Its
    scale, ||a_i||^2 + ||y1_i||^2 from the forward graph's taps, is the squared norm of the block's
    output pair h_{i+1} that the debug graph hands out (psi permutes), to float32's rounding: both
    read from the plan bundle's forward debug graph, whose F are named as the forward's."""
    import onnxruntime as ort

    from irevnet.contract import IMAGE, block_input
    from irevnet.export.bundle import Lowering, _samples, lower, measure_lowering, trace
    from irevnet.export.options import ExportOptions
    from irevnet.io.checkpoint import load_checkpoint
    from irevnet.search.sensitivity import block_sensitivity, block_taps, debug_view

    opts = ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(plan_bundle), dataset="digits",
                         precision_plan=PLAN, max_batch=8, calibration=32, debug_graphs=False)
    ckpt = load_checkpoint(opts.checkpoint)
    samples = _samples(ckpt, opts.dataset, 8)
    traced = trace(ckpt, opts)  # traced once, forward and inverse
    lowering = Lowering(measure_lowering(ckpt, opts, traced, samples, PrecisionPlan.parse(PLAN, 6)).calibration, None)
    images = samples.images.numpy()
    fp32 = lower(traced, FORWARD, None, lowering)
    assert block_sensitivity(fp32, lower(traced, FORWARD, PrecisionPlan.uniform(BlockPrecision.fp32, 6), lowering), images, 8) \
        == [0.0] * 6
    int8 = block_sensitivity(fp32, lower(traced, FORWARD, PrecisionPlan.uniform(BlockPrecision.int8, 6), lowering), images, 8)
    assert max(int8) > 1e-3 and all(np.isfinite(int8)), int8

    import onnx

    debug = onnx.load(str(plan_bundle / graph_file(FORWARD_BLOCKS)))  # its weights from the bundle's weights file
    taps = block_taps(debug.graph)
    view = ort.InferenceSession(debug_view(debug, taps).SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in view.get_outputs()], view.run(None, {IMAGE: images})))
    for i in range(6):
        ours = np.sum(np.square(values[taps.f_input[i]], dtype=np.float64)) + \
            np.sum(np.square(values[taps.coupled[i]], dtype=np.float64))
        theirs = np.sum(np.square(values[block_input(i + 1)], dtype=np.float64))
        assert abs(ours - theirs) <= 1e-5 * theirs, (i, ours, theirs)


def test_a_plan_bundle_is_built_made_a_repository_and_benched_like_any_other(plan_bundle, tmp_path, fake_trt):
    """The engine build, the Triton repository and bench take a plan bundle unchanged. The engines
    through the TensorRT double (strongly typed: the plan's precisions are the graph's own; the
    double runs the graph with ONNX Runtime), so this checks what is built from what, not
    TensorRT's arithmetic (tests/test_gpu.py runs the real thing)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from irevnet.contract import INVERSE, Z
    from irevnet.runtime import bench as bench_module
    from irevnet.runtime.trt_build import BuildOptions, build_engines
    from irevnet.serving.repository import TritonOptions, write_repository
    from tests.runtime import trt_double

    trt = fake_trt("10.13.0.35")
    bundle = shutil.copytree(plan_bundle, tmp_path / "b")
    build_engines(BuildOptions(bundle=str(bundle)))
    opened = Bundle.open(bundle)
    assert [trt_double.MODELS[c["path"]] for c in trt.calls] == [opened.graph_bytes(g) for g in (FORWARD, INVERSE)]
    assert all(c["flags"] == 1 << 1 for c in trt.calls), "strongly typed (10.x's bit): no precision left to TensorRT"
    assert opened.precision is Precision.plan and opened.has_engine(FORWARD) and opened.has_engine(INVERSE)
    for flavour in ("python", "onnxruntime", "tensorrt"):
        record = write_repository(TritonOptions(bundle=str(bundle), out=str(tmp_path / flavour), flavour=flavour, name="p"))
        config = text_format.Parse((tmp_path / flavour / record.models[INVERSE] / "config.pbtxt").read_text(),
                                   model_config_pb2.ModelConfig())
        assert [(t.name, list(t.dims)) for t in config.input] == [(Z, list(opened.config.z_shape))], flavour
    assert (tmp_path / "python" / "p_forward" / "shared" / "bundles" / "1" / graph_file(FORWARD)).read_bytes() == \
        (plan_bundle / graph_file(FORWARD)).read_bytes(), "the python flavour serves the plan bundle's own graphs"
    timed = bench_module.bench(bench_module.BenchOptions(
        bundles=[str(plan_bundle)], backends=["onnxruntime", "openvino"], batch_sizes=[1], warmup_s=0,
        iterations=2)).to_dict()
    assert {(e["precision"], e["kind"], e["direction"]) for e in timed["results"]} == {
        (Precision.plan, kind, direction) for kind in ("onnxruntime", "openvino") for direction in (FORWARD, INVERSE)}
    assert all(e["median_ms"] > 0 for e in timed["results"])
