"""int8 bottlenecks: explicit quantization (QuantizeLinear/DequantizeLinear) of F's convolutions.

Every convolution inside a bottleneck F (nodes named `block{i}/F/...`) gets the pattern ONNX
Runtime fuses into an int8 convolution (QLinearConv) and TensorRT builds as explicit int8:

    x -> Q -> DQ --\\
    W_int8 -> DQ ---> Conv -> Q -> DQ -> (the Conv's consumers, under its old output name)
    b_int32 -> DQ -/

Weights are symmetric int8 per output channel; activations symmetric int8 per tensor (zero point
0, what TensorRT accepts) with the range measured on calibration images; biases int32 at scale
s_x * s_w. Everything outside F, the coupling stream (psi, the additions and subtractions,
padding, the range projection) and the head, stays fp32. Names and values of every inserted node
and tensor derive from the convolution's node name and the calibration, both the same in the
forward and inverse graphs, so F stays identical in both: the additive coupling then inverts the
int8 F exactly whenever F sees the same input bits in both directions.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_export import BRANCH_NODE

INT8_MAX = 127


def _is_branch_conv(node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" and BRANCH_NODE.match(node.name) is not None


def branch_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if _is_branch_conv(n)]


def calibrate(model: onnx.ModelProto, images: np.ndarray, batch: int) -> dict[str, float]:
    """max |value| at the input and output of every F convolution over `images`, keyed by
    '<conv node name>:input' and ':output', from the fp32 forward graph on ONNX Runtime (CPU).

    Args:
        model: the fp32 forward graph, weights inline.
        images: (N, C, H, W) float32 calibration images.
        batch: at most this many images per run (the graph's largest batch).
    """
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    keys: dict[str, list[str]] = {}
    for node in branch_convs(probe):
        keys.setdefault(node.input[0], []).append(f"{node.name}:input")
        keys.setdefault(node.output[0], []).append(f"{node.name}:output")
    present = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in keys if name not in present)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(keys)
    ranges = dict.fromkeys((k for ks in keys.values() for k in ks), 0.0)
    for start in range(0, len(images), batch):
        for name, value in zip(names, session.run(names, {"image": images[start:start + batch]})):
            for key in keys[name]:
                ranges[key] = max(ranges[key], float(np.abs(value).max()))
    return ranges


def quantize_branches(model: onnx.ModelProto, ranges: dict[str, float]) -> None:
    """Inserts the Q/DQ pattern above around every F convolution of `model`, in place."""
    weights = {t.name: t for t in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    dropped: set[str] = set()
    for node in model.graph.node:
        if not _is_branch_conv(node):
            nodes.append(node)
            continue
        name = node.name
        x_scale = _scale(ranges[f"{name}:input"])
        nodes += _quantize_dequantize(f"{name}/input", node.input[0], f"{name}/input/dq", x_scale, added)
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        w_scale = np.abs(w).reshape(len(w), -1).max(axis=1) / INT8_MAX
        w_scale = np.where(w_scale > 0, w_scale, 1.0).astype(np.float32)
        w_int8 = np.clip(np.rint(w / w_scale.reshape(-1, *[1] * (w.ndim - 1))), -INT8_MAX, INT8_MAX).astype(np.int8)
        nodes.append(_dequantize(f"{name}/weight", w_int8, w_scale, np.zeros(len(w), np.int8), added))
        inputs = [f"{name}/input/dq", f"{name}/weight/dq"]
        dropped.add(node.input[1])
        if len(node.input) > 2 and node.input[2]:
            b = numpy_helper.to_array(weights[node.input[2]]).astype(np.float64)
            b_scale = (np.float64(x_scale) * w_scale.astype(np.float64)).astype(np.float32)
            b_int32 = np.clip(np.rint(b / b_scale), -(2**31), 2**31 - 1).astype(np.int32)
            nodes.append(_dequantize(f"{name}/bias", b_int32, b_scale, np.zeros(len(b), np.int32), added))
            inputs.append(f"{name}/bias/dq")
            dropped.add(node.input[2])
        output = node.output[0]
        del node.input[:]
        node.input.extend(inputs)
        node.output[0] = f"{name}/output/raw"
        nodes.append(node)
        # the dequantized output takes the convolution's old name: consumers and graph outputs keep it
        nodes += _quantize_dequantize(f"{name}/output", f"{name}/output/raw", output, _scale(ranges[f"{name}:output"]), added)
    still_used = {i for n in nodes for i in n.input}
    kept = [t for t in model.graph.initializer if t.name not in dropped or t.name in still_used]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + added)


def _scale(max_abs: float) -> np.float32:
    return np.float32(max_abs / INT8_MAX if max_abs > 0 else 1.0)


def _quantize_dequantize(prefix: str, source: str, target: str, scale: np.float32, added: list) -> list[onnx.NodeProto]:
    added += [numpy_helper.from_array(np.array(scale, np.float32), f"{prefix}/scale"),
              numpy_helper.from_array(np.array(0, np.int8), f"{prefix}/zero_point")]
    params = [f"{prefix}/scale", f"{prefix}/zero_point"]
    return [
        helper.make_node("QuantizeLinear", [source, *params], [f"{prefix}/q"], name=f"{prefix}/QuantizeLinear"),
        helper.make_node("DequantizeLinear", [f"{prefix}/q", *params], [target], name=f"{prefix}/DequantizeLinear"),
    ]


def _dequantize(prefix: str, values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, added: list) -> onnx.NodeProto:
    added += [numpy_helper.from_array(values, f"{prefix}/quantized"), numpy_helper.from_array(scale, f"{prefix}/scale"),
              numpy_helper.from_array(zero_point, f"{prefix}/zero_point")]
    return helper.make_node("DequantizeLinear", [f"{prefix}/quantized", f"{prefix}/scale", f"{prefix}/zero_point"],
                            [f"{prefix}/dq"], name=f"{prefix}/DequantizeLinear", axis=0)
