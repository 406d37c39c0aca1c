"""int8 bundles: Q/DQ only inside F, the same F in both graphs, and what ONNX Runtime makes of them."""

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

from irevnet.contract import (
    FORWARD,
    FORWARD_BLOCKS,
    GRAPH_OPERATORS,
    GRAPHS,
    IMAGE,
    INVERSE,
    INVERSE_BLOCKS,
    LOGITS,
    REFERENCE_IMAGES,
    Precision,
    graph_file,
)
from irevnet.runtime import Bundle, Invertible
from irevnet.runtime.verify import VerifyOptions, verify

COUPLING_OPS = {"Add", "Sub", "SpaceToDepth", "DepthToSpace", "Pad", "Slice", "Concat", "Mul"}


@pytest.fixture(scope="module")
def int8_bundle(int8_bundle):
    """The shared int8 bundle (tests/conftest.py), opened."""
    return Bundle.open(int8_bundle)


def _graph(bundle: Bundle, name: str) -> onnx.ModelProto:
    return onnx.load(bundle.path / graph_file(name), load_external_data=False)


def test_the_graph_policy_allows_what_export_writes_and_no_more(int8_bundle, bundles):
    """Every operator of the contract's graph policy is one that export writes (fp32, mixed, fp16
    and int8, the debug graphs and the exact coupling included), and export writes no other."""
    written = {node.op_type for b in [int8_bundle.path, *bundles.values()] for graph in GRAPHS
               if (b / graph_file(graph)).is_file()
               for node in onnx.load(b / graph_file(graph), load_external_data=False).graph.node}
    assert written == GRAPH_OPERATORS


@pytest.mark.parametrize("graph", [FORWARD, INVERSE, FORWARD_BLOCKS, INVERSE_BLOCKS])
def test_only_f_is_quantized_and_the_coupling_stays_fp32(int8_bundle, graph):
    model = _graph(int8_bundle, graph)
    quantized = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # per F convolution: Q/DQ on its input and output, DQ of its weights (and of its bias when it has one)
    assert len(quantized) >= 5 * len(convs) and all(re.match(r"block\d+/F/", n.name) for n in quantized)
    produced_by = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in COUPLING_OPS:
            for name in node.input:
                source = produced_by.get(name)
                assert source is None or source.op_type != "QuantizeLinear", f"{node.name} reads int8 {name}"
    outputs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert set(outputs.values()) == {onnx.TensorProto.FLOAT}, "fp32 at the edges"


def test_f_is_identical_in_both_graphs(int8_bundle):
    """Same node names, attributes and int8 weights and scales in forward and inverse: the recorded
    signature covers the Q/DQ nodes too (they are named block{i}/F/...)."""
    graphs = int8_bundle.manifest.graphs
    assert int8_bundle.manifest.branches.identical_in_forward_and_inverse
    assert graphs[FORWARD].branches_sha256 == graphs[INVERSE].branches_sha256
    calibration = int8_bundle.manifest.calibration
    assert calibration.source == "dataset digits, training split" and calibration.images == 256
    assert calibration.method.startswith("mse:"), "the default method, recorded"
    snaps = [n for n in _graph(int8_bundle, FORWARD).graph.node if n.op_type == "Round"]
    assert len(snaps) == 1 + int8_bundle.num_blocks, "the input and every F output onto the grid"


def test_int8_on_onnx_runtime_agrees_with_fp32_and_inverts_bit_exactly(int8_bundle):
    """The held-out digits: int8 F moves logits ~1e-2 but keeps the arg-max. With the exact
    coupling (on by default for int8) every F sees the same bits in both directions, so the inverse
    returns the forward's input, rounded to the grid, bit for bit: on all 360 held-out digits.
    Without it 1 of the 360 reconstructed at 1.4e-2 (an int8 rounding flip)."""
    from irevnet.export.coupling import MANTISSA_BITS, MARGIN
    from irevnet.model.graphs import to_grid
    from irevnet.training.data import load_datasets
    from irevnet.training.invert import first_images

    grid = int8_bundle.manifest.exact_coupling
    # k from the measured stream: the largest grid whose range 2^(24-k) holds MARGIN x the largest value
    k, largest = grid.exponent, grid.max_abs_measured
    needed = max(MARGIN * largest, 1.0)
    assert grid.bound == 2.0 ** (MANTISSA_BITS - k) and needed <= grid.bound < 2 * needed
    x = first_images(load_datasets("digits", int8_bundle.config.in_shape, augment=False).test, 360)
    ref = int8_bundle.reference(REFERENCE_IMAGES, LOGITS)
    with Invertible(int8_bundle, threads=1) as net:
        logits, _ = net.encode(ref.images)
        x_hat = np.concatenate([net.decode(net.encode(x[i:i + 8].numpy())[1]) for i in range(0, len(x), 8)])
    drift = np.linalg.norm(logits - ref.logits) / np.linalg.norm(ref.logits)
    assert 1e-4 < drift < 5e-2, "int8 moves the logits (else it was not quantized), by ~1e-2"
    assert np.array_equal(logits.argmax(1), ref.logits.argmax(1))
    assert np.array_equal(x_hat, to_grid(x, grid.exponent).numpy()), "bit for bit, every sample"
    assert np.linalg.norm(x_hat - x.numpy()) / np.linalg.norm(x.numpy()) <= 1e-6, "the grid's rounding: measured 5.3e-7"


def test_verify_reports_int8_f_bits_and_agreement(int8_bundle, tmp_path):
    """On ONNX Runtime and, where installed, OpenVINO (which lowers the Q/DQ pattern to its own int8
    convolutions; run through the CLI in a fresh process, see tests/runtime/test_ov_backend.py):
    F bit-identical in every block, top-1 kept, logits moved by int8."""
    results = [verify(VerifyOptions([str(int8_bundle.path)], threads=1)).to_dict()]
    if importlib.util.find_spec("openvino"):
        out = subprocess.run([sys.executable, "-m", "irevnet", "verify", str(int8_bundle.path), "-b", "openvino",
                              "--threads", "1", "--json", str(tmp_path / "ov.json")], check=False, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        results.append(json.loads((tmp_path / "ov.json").read_text()))
    for result in results:
        assert result["passed"], result
        blocks, parity = result["blocks"][0], result["parity"][0]
        # exact coupling: every block's F sees the same input bits in both graphs (without it, only the last)
        assert blocks["f_identical_fraction"] == [1.0] * len(blocks["f_identical_fraction"])
        assert parity["top1_agreement"] == 1.0 and parity[LOGITS]["rel_l2"] > 1e-4


def test_the_torch_backend_refuses_int8(int8_bundle):
    """PyTorch would run the checkpoint in fp32: an int8 label on fp32 figures would mislead."""
    from irevnet.errors import IRevNetError
    from irevnet.runtime import open_backend

    with pytest.raises(IRevNetError, match="no int8 path"):
        open_backend("torch", int8_bundle, FORWARD)


def test_the_exact_coupling_needs_an_fp32_stream(trained_tiny, tmp_path):
    from irevnet.errors import IRevNetError
    from irevnet.export.bundle import ExportOptions

    with pytest.raises(IRevNetError, match="needs an fp32 coupling stream"):
        ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "b"), precision=Precision.fp16, exact_coupling=True)
    assert ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "b"), precision=Precision.mixed).exact_coupling
    assert not ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "b")).exact_coupling


def test_fused_int8_kernels_compute_what_the_graph_says(int8_bundle):
    """ONNX Runtime's fused int8 convolutions (QLinearConv) against the same graph run node by node
    (optimizations off: DequantizeLinear, an fp32 Conv, QuantizeLinear). Integer accumulation is
    exact, so they differ only where a requantization lands on the other side of a rounding
    boundary: measured 3.6e-4 to 9e-4. With 8-bit weights an AVX2 CPU (no VNNI) saturates int16
    pair sums and the fused logits moved 7.6e-2 from fp32 (1e-2 with VNNI); 7-bit weights keep
    every CPU exact."""
    import onnxruntime as ort

    model = onnx.load(str(int8_bundle.path / graph_file(FORWARD)))  # weights read from weights.bin
    images = int8_bundle.reference(REFERENCE_IMAGES).images
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    outputs = [ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
               .run([LOGITS], {IMAGE: images})[0] for options in (plain, ort.SessionOptions())]
    node_by_node, fused = outputs
    assert np.linalg.norm(fused - node_by_node) / np.linalg.norm(node_by_node) <= 5e-3


def test_calibration_methods_choose_ranges_from_the_histogram():
    """N(0, 1) magnitudes with a sparse tail of outliers. The percentile range sits at the bulk's
    tail; the MSE range's squared quantization error, computed here directly on the values, is
    within 2% of the best of 400 ranges tried by brute force (the histogram's bins and the
    uniform-rounding estimate account for the rest)."""
    from irevnet.export.quantize import HISTOGRAM_BINS, INT8_MAX, mse_range, percentile_range

    rng = np.random.default_rng(0)
    values = np.abs(np.concatenate([rng.standard_normal(200_000), rng.uniform(10, 40, 20)]))
    largest = float(values.max())
    counts = np.histogram(values, HISTOGRAM_BINS, (0.0, largest))[0]

    def error(t):
        step = t / INT8_MAX
        return float(np.sum((np.clip(np.rint(values / step), 0, INT8_MAX) * step - values) ** 2))

    assert 3.5 < percentile_range(counts, largest) < 5.0  # 20 outliers are 0.01%: the bulk's tail, not 40
    best = min(error(t) for t in np.linspace(largest / 400, largest, 400))
    chosen = mse_range(counts, largest)
    assert error(chosen) <= 1.02 * best < error(largest)


def test_calibration_on_overflowing_activations_is_one_line():
    """A model whose fp32 activations overflow cannot be calibrated: one line naming the tensor,
    not an OverflowError from turning infinity into a scale."""
    from onnx import TensorProto, helper, numpy_helper

    from irevnet.errors import IRevNetError
    from irevnet.export.quantize import calibrate

    weight = numpy_helper.from_array(np.full((1, 1, 1, 1), 1e38, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", [IMAGE, "w"], ["y"], name="block0/F/0/Conv")], "g",
        [helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, [None, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1, 2, 2])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(IRevNetError, match="'y' is not finite"):
        calibrate(model, np.full((2, 1, 2, 2), 1e10, np.float32), batch=2)


def test_an_overflowing_model_cannot_get_an_exact_coupling_grid():
    """The grid's exponent comes from the largest coupling value: infinite there, one line instead
    of an OverflowError from ceil(log2(inf))."""
    import torch

    import irevnet
    from irevnet.errors import IRevNetError
    from irevnet.export.bundle import _grid

    model = irevnet.create_model("irevnet-tiny-bijective").eval()
    with torch.no_grad():
        for conv in (m for m in model.stack[0].modules() if isinstance(m, torch.nn.Conv2d)):
            conv.weight.fill_(3e38)
    with pytest.raises(IRevNetError, match="not finite"):
        _grid(model, torch.ones(2, 1, 32, 32), "test images")
