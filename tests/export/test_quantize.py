"""int8 bundles: Q/DQ only inside F, the same F in both graphs, and what ONNX Runtime makes of them."""

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

from irevnet.runtime import Bundle, Invertible
from irevnet.runtime.verify import VerifyOptions, verify
from tests.conftest import export_tiny

COUPLING_OPS = {"Add", "Sub", "SpaceToDepth", "DepthToSpace", "Pad", "Slice", "Concat", "Mul"}


@pytest.fixture(scope="module")
def int8_bundle(trained_tiny, tmp_path_factory):
    return Bundle.open(export_tiny(trained_tiny, tmp_path_factory.mktemp("int8") / "b", "int8"))


def _graph(bundle: Bundle, name: str) -> onnx.ModelProto:
    return onnx.load(bundle.path / f"{name}.onnx", load_external_data=False)


@pytest.mark.parametrize("graph", ["forward", "inverse", "forward_blocks", "inverse_blocks"])
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
    graphs = int8_bundle.manifest["graphs"]
    assert int8_bundle.manifest["branches"]["identical_in_forward_and_inverse"]
    assert graphs["forward"]["branches_sha256"] == graphs["inverse"]["branches_sha256"]
    calibration = int8_bundle.manifest["calibration"]
    assert calibration["source"] == "dataset digits, training split" and calibration["images"] == 256
    snaps = [n for n in _graph(int8_bundle, "forward").graph.node if n.op_type == "Round"]
    assert len(snaps) == 1 + int8_bundle.num_blocks, "the input and every F output onto the grid"


def test_int8_on_onnx_runtime_agrees_with_fp32_and_inverts_bit_exactly(int8_bundle):
    """The held-out digits: int8 F moves logits ~1e-2 but keeps the arg-max. With the exact
    coupling (on by default for int8) every F sees the same bits in both directions, so the inverse
    returns the forward's input, rounded to the grid, bit for bit: on all 360 held-out digits.
    Without it 1 of the 360 reconstructed at 1.4e-2 (an int8 rounding flip)."""
    from irevnet.data import load_datasets
    from irevnet.graphs import to_grid
    from irevnet.invert import first_images

    grid = int8_bundle.manifest["exact_coupling"]
    assert grid["exponent"] == 19 and grid["max_abs_measured"] < grid["bound"] / 4, "k from the measured stream, 4x headroom"
    x = first_images(load_datasets("digits", int8_bundle.config.in_shape, augment=False).test, 360)
    ref = int8_bundle.reference("images", "logits")
    with Invertible(int8_bundle, threads=1) as net:
        logits, _ = net.encode(ref["images"])
        x_hat = np.concatenate([net.decode(net.encode(x[i:i + 8].numpy())[1]) for i in range(0, len(x), 8)])
    drift = np.linalg.norm(logits - ref["logits"]) / np.linalg.norm(ref["logits"])
    assert 1e-4 < drift < 5e-2, "int8 moves the logits (else it was not quantized), by ~1e-2"
    assert np.array_equal(logits.argmax(1), ref["logits"].argmax(1))
    assert np.array_equal(x_hat, to_grid(x, grid["exponent"]).numpy()), "bit for bit, every sample"
    assert np.linalg.norm(x_hat - x.numpy()) / np.linalg.norm(x.numpy()) <= 1e-6, "the grid's rounding: measured 5.3e-7"


def test_verify_reports_int8_f_bits_and_agreement(int8_bundle, tmp_path):
    """On ONNX Runtime and, where installed, OpenVINO (which lowers the Q/DQ pattern to its own int8
    convolutions; run through the CLI in a fresh process, see tests/runtime/test_ov_backend.py):
    F bit-identical in every block, top-1 kept, logits moved by int8."""
    results = [verify(VerifyOptions([str(int8_bundle.path)], threads=1))]
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
        assert parity["top1_agreement"] == 1.0 and parity["logits"]["rel_l2"] > 1e-4


def test_the_torch_backend_refuses_int8(int8_bundle):
    """PyTorch would run the checkpoint in fp32: an int8 label on fp32 figures would mislead."""
    from irevnet.errors import IRevNetError
    from irevnet.runtime import open_backend

    with pytest.raises(IRevNetError, match="no int8 path"):
        open_backend("torch", int8_bundle, "forward")


def test_the_exact_coupling_needs_an_fp32_stream(trained_tiny, tmp_path):
    from irevnet.errors import IRevNetError
    from irevnet.export.bundle import ExportOptions

    with pytest.raises(IRevNetError, match="needs an fp32 coupling stream"):
        ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "b"), precision="fp16", exact_coupling=True)
    assert ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "b"), precision="mixed").exact_coupling
    assert not ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "b")).exact_coupling
