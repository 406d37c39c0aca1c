"""An exact coupling stream: the additions and subtractions of the couplings on a fixed-point grid.

The inverse recovers a block's input by subtraction, and in floating point `(p + f) - f` differs
from `p` by a rounding. When F runs in reduced precision (int8, fp16, bf16) that ulp can move
one of F's inputs across a rounding boundary in the inverse, F then differs by a quantization
step, and the error propagates (1 in 360 digits with int8 F, 22 in 360 with bf16 F, injective
model). On a grid the arithmetic is exact: if p and f are multiples of 2^-k and every sum stays
below 2^(24-k) in magnitude, fp32 adds and subtracts them without rounding, so every F sees the
same input bits in both directions and the inverse reproduces the forward's input bit for bit.

The forward's input image and every F output are rounded to multiples of 2^-k (`x * 2^k`, Round,
`* 2^-k`: powers of two, so only the Round rounds). psi, padding, slicing, concatenation and the
range projection keep values on the grid. k is chosen from the largest coupling value measured on
calibration images, with a margin. The cost is the input's rounding, at most 2^-(k+1) per pixel.
The Round nodes after F are named block{i}/F/snap/..., so they are part of F and identical in
both graphs.
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_export import BRANCH_NODE, consumers

MANTISSA_BITS = 24  # fp32's significand, the implicit bit included
MARGIN = 4  # headroom over the largest coupling value measured at calibration


def grid_exponent(max_abs: float) -> int:
    """k such that values up to MARGIN * max_abs stay below 2^(24-k) on the grid 2^-k."""
    bound = max(MARGIN * max_abs, 1.0)
    return MANTISSA_BITS - math.ceil(math.log2(bound))


def snap_coupling(model: onnx.ModelProto, k: int, input_name: str | None) -> int:
    """Rounds `input_name` (the forward's image; None for inverse graphs) and every F output of
    `model` to multiples of 2^-k, in place. Returns the number of F outputs snapped."""
    scale = numpy_helper.from_array(np.array(2.0**k, np.float32), "coupling/grid/scale")
    unscale = numpy_helper.from_array(np.array(2.0**-k, np.float32), "coupling/grid/unscale")
    model.graph.initializer.extend([scale, unscale])
    producers = {o: n for n in model.graph.node for o in n.output}
    readers = consumers(model.graph)
    graph_outputs = {o.name for o in model.graph.output}

    def in_branch(node: onnx.NodeProto | None) -> re.Match | None:
        return BRANCH_NODE.match(node.name) if node is not None else None

    # F's output: a tensor made inside F and read outside it (the coupling's Add or Sub, a debug output)
    outputs = {}
    for tensor, node in producers.items():
        m = in_branch(node)
        if m and (tensor in graph_outputs or any(not in_branch(c) for c in readers.get(tensor, []))):
            outputs[tensor] = f"block{m.group(1)}/F/snap"
    snaps = [(t, prefix, producers[t]) for t, prefix in outputs.items()]
    if input_name is not None:
        snaps.append((input_name, "coupling/input/snap", None))

    added: dict[int, list[onnx.NodeProto]] = {}  # id() of the producer -> nodes to insert after it
    front: list[onnx.NodeProto] = []
    for tensor, prefix, producer in snaps:
        raw = f"{prefix}/raw"
        if producer is None:  # a graph input: its consumers read the snapped copy instead
            for c in readers.get(tensor, []):
                c.input[:] = [f"{prefix}/out" if i == tensor else i for i in c.input]
            source, target = tensor, f"{prefix}/out"
        else:  # the producer's output is renamed, the snapped tensor takes its name
            producer.output[:] = [raw if o == tensor else o for o in producer.output]
            source, target = raw, tensor
        nodes = [
            helper.make_node("Mul", [source, scale.name], [f"{prefix}/scaled"], name=f"{prefix}/Mul"),
            helper.make_node("Round", [f"{prefix}/scaled"], [f"{prefix}/rounded"], name=f"{prefix}/Round"),
            helper.make_node("Mul", [f"{prefix}/rounded", unscale.name], [target], name=f"{prefix}/Mul_1"),
        ]
        if producer is None:
            front += nodes
        else:
            added[id(producer)] = nodes
    ordered = list(front)
    for node in model.graph.node:
        ordered.append(node)
        ordered += added.get(id(node), [])
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return len(outputs)
