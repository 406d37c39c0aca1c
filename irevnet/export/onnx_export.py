"""torch -> ONNX for i-RevNet graphs, and the checks that make them fit for TensorRT.

The dynamo exporter (torch 2.9+) does the tracing, decomposition and optimisation (constant
folding, dead code removal). On top of it:
- psi / psi^-1 become single SpaceToDepth / DepthToSpace(DCR) nodes (custom translations);
- nodes inside a block's bottleneck F get canonical names `block{i}/F/...`, identical in the
  forward and inverse graphs, so that F can be compared node for node and engines built from
  both graphs share timing-cache entries;
- every graph is checked against the graph policy every reader applies (irevnet.contract's
  operators, opsets and attribute types, each operator one TensorRT's ONNX parser supports), and
  nothing that a static graph should not have (Identity, Shape/Gather chains) may remain.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import onnx
import torch
from onnx import numpy_helper

from ..contract import BATCH_DIM
from ..errors import IRevNetError
from ..runtime.graph_policy import check_graph_policy
from ..validation import MAX_BATCH
from .options import DEFAULT_OPSET

# Nodes of a block's bottleneck F are named block{i}/F/... identically in the forward and inverse graphs.
BRANCH_NODE = re.compile(r"^block(\d+)/F/")
# Nodes that a static-shape, eval-mode graph has no reason to contain.
FORBIDDEN_OPS = frozenset({"Identity", "Shape", "Gather", "Dropout", "ConstantOfShape"})


def _translations() -> dict:
    from onnxscript import opset18 as op

    def space_to_depth(x, block_size: int):
        return op.SpaceToDepth(x, blocksize=block_size)

    def depth_to_space(x, block_size: int):
        return op.DepthToSpace(x, blocksize=block_size, mode="DCR")

    import irevnet.model.layers  # noqa: F401 (registers the custom ops)

    return {
        torch.ops.irevnet.space_to_depth.default: space_to_depth,
        torch.ops.irevnet.depth_to_space.default: depth_to_space,
    }


def export_graph(module: torch.nn.Module, example: torch.Tensor, *, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Exports `module(example)` with a dynamic batch dimension N.

    The module declares `input_names` and `output_names`. The graph does not depend on a batch
    bound (the manifest states the bundle's), so N is traced over every batch a bundle may declare
    and one trace serves every --max-batch. It carries no exporter metadata: torch's stack traces
    name files of the machine that exported, and its range constraints the traced range, not the
    bundle's.
    """
    # torch.export needs a range (min < max) and an example batch inside it above 1 (it
    # specializes sizes 0 and 1)
    batch = torch.export.Dim(BATCH_DIM, min=1, max=MAX_BATCH)
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), dynamo=True, custom_translation_table=_translations(),
            dynamic_shapes=({0: batch},), input_names=list(module.input_names),
            output_names=list(module.output_names), opset_version=opset, optimize=True, verbose=False,
        )
    model = program.model_proto
    _canonical_names(model)  # from the exporter's module scopes, before they go
    graph = model.graph
    for entry in (model, graph, *graph.node, *graph.input, *graph.output, *graph.value_info, *graph.initializer):
        del entry.metadata_props[:]
    model.producer_name = "irevnet"
    return model


_F_SCOPE = re.compile(r"(?:^|\.)stack\.(\d+)\.bottleneck_block(?:\.(.+))?$")


def _scopes(node: onnx.NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            return [s.strip(" '\"") for s in prop.value.strip("[]").split(",")]
    return []


def _canonical_names(model: onnx.ModelProto) -> None:
    """Names every node inside a bottleneck F `block{i}/F/{layer path}/{OpType}[_{k}]`.

    The path comes from the exporter's module scopes, which are the same in forward and inverse
    graphs; the trailing counter disambiguates several nodes of one layer.
    """
    seen: Counter[str] = Counter()
    for node in model.graph.node:
        block, rest = None, ""
        for scope in _scopes(node):
            m = _F_SCOPE.search(scope)
            if m:
                block, rest = m.group(1), m.group(2) or rest
        if block is None:
            continue
        base = f"block{block}/F/{rest.replace('.', '/') + '/' if rest else ''}{node.op_type}"
        node.name = base if not seen[base] else f"{base}_{seen[base]}"
        seen[base] += 1


def only_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that computes only `outputs`: the nodes, initializers and value infos
    nothing of theirs needs are dropped. How the forward and inverse graphs come from their
    debug twins: one trace gives both, and the graph a bundle runs is the same with debug graphs
    or without."""
    source = model.graph
    declared = {o.name: o for o in source.output}
    if missing := [name for name in outputs if name not in declared]:
        raise IRevNetError(f"the graph has no output {missing[0]!r}; this is an export bug")
    needed, nodes = set(outputs), []
    for node in reversed(source.node):
        if needed.intersection(node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    made = {name for node in nodes for name in node.output}
    internal = [v for v in source.value_info if v.name in made]
    internal += [o for o in source.output if o.name in made and o.name not in outputs]  # outputs no more: shapes kept
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    graph = proto.graph
    for field, keep in ((graph.node, nodes[::-1]), (graph.output, [declared[name] for name in outputs]),
                        (graph.initializer, [t for t in source.initializer if t.name in needed]),
                        (graph.value_info, internal)):
        del field[:]
        field.extend(keep)  # copies of the source's messages
    return proto


def check_graph(model: onnx.ModelProto, what: str, strict: bool = True) -> None:
    """Full ONNX check (with shape inference) and the readers' graph policy (runtime/graph_policy.py).

    Args:
        strict: also refuse nodes a clean static graph has no use for (FORBIDDEN_OPS). Debug
            graphs are not strict: they return some tensors under two names, via Identity.
    Raises:
        IRevNetError: one line; what a reader would refuse is an export bug.
    """
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise IRevNetError(f"{what}: ONNX checker failed: {str(e).splitlines()[0]}") from None
    try:
        check_graph_policy(model, what)
    except IRevNetError as e:
        raise IRevNetError(f"{e} by every reader; this is an export bug") from None
    ops = Counter(n.op_type for n in model.graph.node)
    leftover = sorted(set(ops) & FORBIDDEN_OPS)
    if strict and leftover:
        raise IRevNetError(f"{what}: graph still contains {leftover}; this is an export bug")


def graph_summary(model: onnx.ModelProto) -> dict[str, Any]:
    """Node counts and the I/O contract (names, shapes with the named batch dim, dtypes)."""

    def io(values) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items())),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
    }


def branch_signatures(model: onnx.ModelProto) -> dict[int, str]:
    """sha256 per block of its F subgraph: node names, types, attributes and weights, in order.

    Equal signatures in the forward and inverse graphs mean F is the same computation on the
    same weights in both; an engine builder given the same input then has no reason to differ.
    """
    weights = {t.name: t for t in model.graph.initializer}
    digests: dict[int, Any] = {}
    for node in model.graph.node:
        m = BRANCH_NODE.match(node.name)
        if not m:
            continue
        h = digests.setdefault(int(m.group(1)), hashlib.sha256())
        h.update(f"{node.name}|{node.op_type}|".encode())
        for attr in sorted(node.attribute, key=lambda a: a.name):
            h.update(attr.SerializeToString())
        for name in node.input:
            if name in weights:
                h.update(numpy_helper.to_array(weights[name]).tobytes())
            else:
                h.update(b"<activation>")
    return {i: d.hexdigest() for i, d in sorted(digests.items())}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """The nodes that read each tensor of `graph`, by tensor name (in node order)."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers
