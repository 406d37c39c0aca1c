"""Which blocks a reduced precision hurts most: the drift each block's F adds when it alone is reduced.

Measured on the forward debug graph (which hands out every block's input h_i and F output f_i)
over calibration images, in one pass: the fp32 debug graph runs once per batch, and a graph made of
every block's reduced F alone runs on the very inputs the fp32 F saw. Block i's sensitivity is

    || F_i,reduced(a_i) - F_i(a_i) || / || h_{i+1} ||

over the images, a_i being F's fp32 input and h_{i+1} the block's fp32 output: the relative error
block i alone adds to the coupling stream, free of what the blocks before it did.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..contract import IMAGE, block_input, branch_output
from ..errors import IRevNetError
from ..export.plan import branch_inputs_outputs


def block_sensitivity(fp32_blocks: onnx.ModelProto, reduced_blocks: onnx.ModelProto, images: np.ndarray,
                      batch: int) -> list[float]:
    """Per block, the relative drift its reduced F adds (see the module docstring).

    Args:
        fp32_blocks: the fp32 forward debug graph (weights inline).
        reduced_blocks: the same graph with every block's F in the reduced precision (a uniform plan).
        images: (N, C, H, W) float32 calibration images.
        batch: at most this many images per run.
    """
    import onnxruntime as ort

    io = branch_inputs_outputs(fp32_blocks.graph)
    blocks = sorted(io)
    f_inputs = list(dict.fromkeys(name for i in blocks for name in io[i][0]))
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32_blocks)
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in f_inputs if n not in present)
    alone = _branches_alone(reduced_blocks, f_inputs, [branch_output(i) for i in blocks])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    full = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    reduced = ort.InferenceSession(alone.SerializeToString(), options, providers=["CPUExecutionProvider"])
    wanted = f_inputs + [branch_output(i) for i in blocks] + [block_input(i + 1) for i in blocks]
    error = np.zeros(len(blocks))
    scale = np.zeros(len(blocks))
    for start in range(0, len(images), batch):
        values = dict(zip(wanted, full.run(wanted, {IMAGE: images[start:start + batch]})))
        out = dict(zip([o.name for o in reduced.get_outputs()],
                       reduced.run(None, {i.name: values[i.name] for i in reduced.get_inputs()})))
        for k, i in enumerate(blocks):
            diff = out[branch_output(i)].astype(np.float64) - values[branch_output(i)]
            error[k] += float(np.sum(diff * diff))
            scale[k] += float(np.sum(np.square(values[block_input(i + 1)], dtype=np.float64)))
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
        raise IRevNetError(f"the debug graph's F outputs {missing[:3]} are not made inside F; this is an export bug")
    graph = helper.make_graph(
        nodes, "branches",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs if n in used],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        [t for t in model.graph.initializer if t.name in used],
    )
    alone = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return alone
