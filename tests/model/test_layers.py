import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from irevnet.model.layers import IRevNetBlock, depth_to_space, space_to_depth
from tests.conftest import randomize_batchnorm
from tests.reference import psi as reference_psi


def _run_single_op(op: str, x: np.ndarray, out_shape, **attrs) -> np.ndarray:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], op,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("block_size", [2, 3])
def test_psi_is_exactly_onnx_space_to_depth(block_size):
    x = torch.randn(2, 5, 6 * block_size, 4 * block_size)
    ours = space_to_depth(x, block_size)
    onnx_out = _run_single_op("SpaceToDepth", x.numpy(), list(ours.shape), blocksize=block_size)
    assert np.array_equal(ours.numpy(), onnx_out), "psi must move data exactly like SpaceToDepth"
    assert torch.equal(ours, reference_psi(x, block_size)), "and like the reference psi"


@pytest.mark.parametrize("block_size", [2, 3])
def test_psi_inverse_is_exactly_onnx_depth_to_space_dcr(block_size):
    x = torch.randn(2, 4 * block_size**2, 3, 5)
    ours = depth_to_space(x, block_size)
    onnx_out = _run_single_op("DepthToSpace", x.numpy(), list(ours.shape), blocksize=block_size, mode="DCR")
    assert np.array_equal(ours.numpy(), onnx_out)
    assert torch.equal(space_to_depth(ours, block_size), x)


def test_pixel_unshuffle_is_not_psi():
    # Documents why psi is not torch's pixel_unshuffle: same values, other channel order.
    x = torch.randn(1, 3, 4, 4)
    assert not torch.equal(space_to_depth(x, 2), torch.nn.functional.pixel_unshuffle(x, 2))


def test_psi_gradients_are_the_inverse_permutation():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: space_to_depth(t, 2), (x,))
    y = torch.randn(2, 12, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: depth_to_space(t, 2), (y,))


@pytest.mark.parametrize(
    "in_ch, out_ch, stride, first",
    [(16, 8, 1, False), (16, 32, 2, False), (3, 16, 1, True), (12, 24, 2, True), (16, 12, 1, False)],
    ids=["bijective", "stride2", "injective-first", "stride2-first", "injective"],
)
def test_block_inverse_recovers_its_input(in_ch, out_ch, stride, first):
    block = randomize_batchnorm(IRevNetBlock(in_ch, out_ch, stride, first)).eval()
    x = torch.randn(3, in_ch, 8, 8)
    pair = (x[:, : in_ch // 2], x[:, in_ch // 2 :])
    with torch.no_grad():
        y = block(pair)
        x1, x2 = block.inverse(y)
    rec = torch.cat((x1, x2), 1)
    # fp32: one subtraction after F, so the error is a few ulps of |F(x2)| (~1e-7 relative)
    assert ((rec - x).norm() / x.norm()).item() <= 1e-6
