"""Which blocks a reduced precision hurts most: the drift each block's F adds when it alone is reduced.

Measured on the forward graph itself, opened as a debug view (every block's F input a_i, its
output f_i and the coupling's sum y1_i = f_i + psi(x1) made graph outputs: no second trace), over
calibration images in one pass: the fp32 view runs once per batch, and a graph made of every
block's reduced F alone runs on the very inputs the fp32 F saw. Block i's sensitivity is

    || F_i,reduced(a_i) - F_i(a_i) || / || h_{i+1} ||

over the images, h_{i+1} = (psi(a_i), y1_i) being the block's fp32 output pair (psi permutes,
so ||h_{i+1}||^2 = ||a_i||^2 + ||y1_i||^2): the relative error block i alone adds to the coupling
stream, free of what the blocks before it did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..contract import IMAGE
from ..errors import IRevNetError
from ..export.plan import branch_inputs_outputs


@dataclass(frozen=True)
class BlockTaps:
    """Per block (in block order), the names in a forward graph of F's input, F's output and the
    coupling's sum."""

    f_input: list[str]
    f_output: list[str]
    coupled: list[str]

    def names(self) -> list[str]:
        """Every tapped tensor, once."""
        return list(dict.fromkeys([*self.f_input, *self.f_output, *self.coupled]))


def block_taps(graph: onnx.GraphProto) -> BlockTaps:
    """Where each block's F reads and writes in `graph`, and the Add that couples its output.

    Raises:
        IRevNetError: an F that does not read one tensor and hand back one to one Add (an export bug).
    """
    from ..export.onnx_export import consumers

    io = branch_inputs_outputs(graph)
    readers = consumers(graph)
    taps = BlockTaps([], [], [])
    for i in sorted(io):
        ins, outs = io[i]
        adds = [n for n in readers.get(outs[0], []) if n.op_type == "Add"] if len(outs) == 1 else []
        if len(ins) != 1 or len(adds) != 1:
            raise IRevNetError(f"block{i}/F reads {len(ins)} tensors and hands {len(outs)} to the coupling in the "
                               f"forward graph (one each, to one Add, expected); this is an export bug")
        taps.f_input.append(ins[0])
        taps.f_output.append(outs[0])
        taps.coupled.append(adds[0].output[0])
    return taps


def debug_view(forward: onnx.ModelProto, taps: BlockTaps) -> onnx.ModelProto:
    """A copy of the forward graph whose outputs also hand out every block's taps."""
    view = onnx.ModelProto()
    view.CopyFrom(forward)
    present = {o.name for o in view.graph.output}
    view.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in taps.names() if n not in present)
    return view


def block_sensitivity(fp32_forward: onnx.ModelProto, reduced_forward: onnx.ModelProto, images: np.ndarray,
                      batch: int) -> list[float]:
    """Per block, the relative drift its reduced F adds (see the module docstring).

    Args:
        fp32_forward: the fp32 forward graph (weights inline).
        reduced_forward: the same graph with every block's F in the reduced precision (a uniform plan).
        images: (N, C, H, W) float32 calibration images.
        batch: at most this many images per run.
    """
    import onnxruntime as ort

    taps = block_taps(fp32_forward.graph)
    reduced_taps = block_taps(reduced_forward.graph)
    if reduced_taps.f_input != taps.f_input:
        raise IRevNetError("the reduced forward graph's F read other tensors than the fp32 one's; this is an export bug")
    alone = _branches_alone(reduced_forward, taps.f_input, reduced_taps.f_output)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    full = ort.InferenceSession(debug_view(fp32_forward, taps).SerializeToString(), options,
                                providers=["CPUExecutionProvider"])
    reduced = ort.InferenceSession(alone.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = taps.names()
    blocks = len(taps.f_input)
    error = np.zeros(blocks)
    scale = np.zeros(blocks)
    for start in range(0, len(images), batch):
        values = dict(zip(wanted, full.run(wanted, {IMAGE: images[start:start + batch]})))
        out = dict(zip(reduced_taps.f_output,
                       reduced.run(reduced_taps.f_output, {i.name: values[i.name] for i in reduced.get_inputs()})))
        for k in range(blocks):
            diff = out[reduced_taps.f_output[k]].astype(np.float64) - values[taps.f_output[k]]
            error[k] += float(np.sum(diff * diff))
            scale[k] += float(np.sum(np.square(values[taps.f_input[k]], dtype=np.float64))
                              + np.sum(np.square(values[taps.coupled[k]], dtype=np.float64)))
    if not np.all(np.isfinite(error)):
        raise IRevNetError("a reduced F is not finite on the calibration images; check the checkpoint")
    return [float(np.sqrt(e / s)) if s > 0 else 0.0 for e, s in zip(error, scale)]


def _branches_alone(model: onnx.ModelProto, inputs: list[str], outputs: list[str]) -> onnx.ModelProto:
    """Every block's F of `model` and nothing else: F's coupling-stream inputs become graph inputs."""
    from ..export.onnx_export import BRANCH_NODE

    nodes = [n for n in model.graph.node if BRANCH_NODE.match(n.name)]
    used = {name for n in nodes for name in n.input}
    made = {o for n in nodes for o in n.output}
    missing = [o for o in outputs if o not in made]
    if missing:
        raise IRevNetError(f"the F outputs {missing[:3]} are not made inside F; this is an export bug")
    graph = helper.make_graph(
        nodes, "branches",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in dict.fromkeys(inputs) if n in used],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [t for t in model.graph.initializer if t.name in used],
    )
    return helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
