"""int8 bottlenecks: explicit quantization (QuantizeLinear/DequantizeLinear) of F's convolutions.

Every convolution inside a bottleneck F (nodes named `block{i}/F/...`) gets the pattern ONNX
Runtime fuses into an int8 convolution (QLinearConv) and TensorRT builds as explicit int8:

    x -> Q -> DQ --\\
    W_int8 -> DQ ---> Conv -> Q -> DQ -> (the Conv's consumers, under its old output name)
    b_int32 -> DQ -/

Weights are symmetric per output channel in 7 bits (see WEIGHT_MAX); activations symmetric int8
per tensor (zero point 0, what TensorRT accepts) with a range chosen from calibration images
(`Calibration`); biases int32 at scale s_x * s_w. Everything outside F, the coupling stream (psi, the additions and subtractions,
padding, the range projection) and the head, stays fp32. Names and values of every inserted node
and tensor derive from the convolution's node name and the calibration, both the same in the
forward and inverse graphs, so F stays identical in both: the additive coupling then inverts the
int8 F exactly whenever F sees the same input bits in both directions.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..contract import IMAGE, Calibration
from ..errors import IRevNetError
from .onnx_export import BRANCH_NODE, consumers

INT8_MAX = 127  # activations: symmetric int8, zero point 0
# Weights use 7 bits (-63..63), as ONNX Runtime's `reduce_range`. x86 CPUs without VNNI (AVX2
# machines) multiply int8 with vpmaddubsw, which adds pairs of u8 x s8 products in int16 with
# saturation: 2 x 255 x 127 overflows, 2 x 255 x 63 does not. With 8-bit weights a trained
# irevnet-tiny's logits were 7.6e-2 from fp32 on an AVX2 machine (ONNX Runtime and OpenVINO alike)
# and 1e-2 with VNNI; with 7 bits the integer kernels are exact everywhere, so an int8 bundle
# computes the same numbers on every CPU.
WEIGHT_MAX = 63


def _is_branch_conv(node: onnx.NodeProto) -> bool:
    return node.op_type == "Conv" and BRANCH_NODE.match(node.name) is not None


def branch_convs(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if _is_branch_conv(n)]


# |value| histograms over [0, max]; 2048 bins as ONNX Runtime's and TensorRT's histogram calibrators.
HISTOGRAM_BINS = 2048
PERCENTILE = 99.99

# What a bundle's manifest says of each method (calibration.method).
CALIBRATION_METHODS = {
    Calibration.mse: f"mse: per tensor, the range with the least squared quantization error ({HISTOGRAM_BINS}-bin |value| histograms)",
    Calibration.percentile: f"percentile: per tensor, the {PERCENTILE}th percentile of |value| ({HISTOGRAM_BINS}-bin histograms)",
    Calibration.max: "max: per tensor, max |value|",
}


def calibrate(model: onnx.ModelProto, images: np.ndarray, batch: int,
              method: Calibration = Calibration.mse) -> dict[str, float]:
    """The int8 range of the input and output of every F convolution over `images`, keyed by
    '<conv node name>:input' and ':output', from the fp32 forward graph on ONNX Runtime (CPU).

    Args:
        model: the fp32 forward graph, weights inline.
        images: (N, C, H, W) float32 calibration images.
        batch: at most this many images per run (the graph's largest batch).
        method: how a range is chosen from the measured values (`Calibration`).
    Returns:
        The largest |value| each tensor is quantized to represent (its scale is that / 127).
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

    def values():  # one pass over the images: (tensor name, its values in one batch)
        for start in range(0, len(images), batch):
            yield from zip(names, session.run(names, {IMAGE: images[start:start + batch]}))

    largest = dict.fromkeys(names, 0.0)
    for name, value in values():
        largest[name] = max(largest[name], float(np.abs(value).max()))
    for name, value in largest.items():
        if not np.isfinite(value):
            raise IRevNetError(f"calibration: F's activation {name!r} is not finite on the calibration images "
                               f"(the fp32 model overflows); check the checkpoint")
    if method is Calibration.max:
        chosen = largest
    else:
        counts = {name: np.zeros(HISTOGRAM_BINS, np.int64) for name in names}
        for name, value in values():  # a second pass: histograms over the now known ranges
            if largest[name] > 0:
                magnitude = np.abs(value).ravel()
                counts[name] += np.histogram(magnitude[magnitude > 0], HISTOGRAM_BINS, (0.0, largest[name]))[0]
        choose = mse_range if method is Calibration.mse else percentile_range
        chosen = {name: choose(counts[name], largest[name]) if largest[name] > 0 else 0.0 for name in names}
    return {key: chosen[name] for name, ks in keys.items() for key in ks}


def percentile_range(counts: np.ndarray, largest: float) -> float:
    """The upper edge of the bin where the cumulative count of nonzero |value| reaches PERCENTILE."""
    cumulative = np.cumsum(counts)
    if cumulative[-1] == 0:
        return largest
    i = int(np.searchsorted(cumulative, cumulative[-1] * PERCENTILE / 100))
    return largest * (i + 1) / HISTOGRAM_BINS


def mse_range(counts: np.ndarray, largest: float) -> float:
    """The range T that minimises the expected squared error of quantizing the histogram's values
    to the grid T/127 * {-127..127}: values above T are clipped to T, those below are rounded,
    which costs (T/127)^2 / 12 each (values spread evenly over a step). Exact zeros, which
    ReLUs make often, cost nothing and are not in `counts`."""
    width = largest / HISTOGRAM_BINS
    centers = (np.arange(HISTOGRAM_BINS) + 0.5) * width
    bins = np.arange(8, HISTOGRAM_BINS + 1)  # candidates T = bins * width, from 8 bins up to the max
    t = bins * width

    def from_bin(weights: np.ndarray) -> np.ndarray:  # [k]: sum of counts * weights over the bins k and above
        return np.append(np.cumsum((counts * weights)[::-1])[::-1], 0.0)

    # clipping: the sum over the bins above T of n (c - T)^2 = S2 - 2 T S1 + T^2 S0
    clipping = from_bin(centers**2)[bins] - 2 * t * from_bin(centers)[bins] + t**2 * from_bin(np.ones_like(centers))[bins]
    rounding = np.cumsum(counts)[bins - 1] * (t / INT8_MAX) ** 2 / 12
    return float(t[int(np.argmin(clipping + rounding))])


def _output_ranges(model: onnx.ModelProto, ranges: dict[str, float]) -> dict[str, float]:
    """The range each F convolution's output is quantized to, keyed by node name.

    A convolution whose output feeds only a ReLU that feeds the next F convolution gets that
    convolution's input range: ReLU commutes with rounding to one symmetric grid, so the Q/DQ
    pair after the ReLU then reproduces the values exactly and each activation is rounded once.
    With a range of its own (the pre-ReLU max |value|, often set by negative values that the
    ReLU discards) the same activation would be rounded twice on two different grids:
    measured on a trained irevnet-tiny, logits 7.6e-2 from fp32 instead of 0.9e-2.
    """
    readers = consumers(model.graph)
    graph_outputs = {o.name for o in model.graph.output}
    chosen = {}
    for node in branch_convs(model):
        chosen[node.name] = ranges[f"{node.name}:output"]
        after = readers.get(node.output[0], [])
        if len(after) != 1 or after[0].op_type != "Relu" or node.output[0] in graph_outputs:
            continue
        following = readers.get(after[0].output[0], [])
        if len(following) == 1 and _is_branch_conv(following[0]) and after[0].output[0] not in graph_outputs:
            chosen[node.name] = ranges[f"{following[0].name}:input"]
    return chosen


def quantize_branches(model: onnx.ModelProto, ranges: dict[str, float], blocks: set[int] | None = None) -> None:
    """Inserts the Q/DQ pattern above around every F convolution of `model` (of `blocks` only,
    when given), in place."""
    output_ranges = _output_ranges(model, ranges)
    weights = {t.name: t for t in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    added: list[onnx.TensorProto] = []
    dropped: set[str] = set()
    for node in model.graph.node:
        if not _is_branch_conv(node) or (blocks is not None and int(BRANCH_NODE.match(node.name).group(1)) not in blocks):
            nodes.append(node)
            continue
        name = node.name
        x_scale = _scale(ranges[f"{name}:input"])
        nodes += _quantize_dequantize(f"{name}/input", node.input[0], f"{name}/input/dq", x_scale, added)
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        w_scale = np.abs(w).reshape(len(w), -1).max(axis=1) / WEIGHT_MAX
        w_scale = np.where(w_scale > 0, w_scale, 1.0).astype(np.float32)
        w_int8 = np.clip(np.rint(w / w_scale.reshape(-1, *[1] * (w.ndim - 1))), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
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
        nodes += _quantize_dequantize(f"{name}/output", f"{name}/output/raw", output, _scale(output_ranges[name]), added)
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
