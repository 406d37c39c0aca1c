"""What an ONNX graph of a bundle may contain, checked before any runtime sees it.

The rules are the contract's (irevnet.contract: GRAPH_OPERATORS, OPSETS, ATTRIBUTE_TYPES): the
exporter applies them to every graph it writes (export/onnx_export.py), and the reader to every
graph it opens (Bundle.graph_bytes, Bundle.session_inputs). A graph with another operator, another
domain or opset, a subgraph, a function or a sparse tensor is refused: control flow (Loop, If, Scan)
can run without bound, and sparse initializers and attribute subgraphs are places where tensors
could come from outside the bundle's checked bytes. Needs `onnx` only for the model it is given.
"""

from __future__ import annotations

from ..contract import ATTRIBUTE_TYPES, GRAPH_OPERATORS, OPSETS
from ..errors import BundleError


def check_graph_policy(model, where: str) -> None:
    """Refuses a graph that holds what irevnet never exports.

    Args:
        model: an onnx.ModelProto.
        where: the graph's place, first in the message (`BUNDLE: forward.onnx`).
    Raises:
        BundleError: one line naming the operator, opset or attribute.
    """
    if model.functions or len(model.graph.sparse_initializer):
        raise BundleError(f"{where} carries functions or sparse initializers, which irevnet never exports; refused")
    for opset in model.opset_import:
        if opset.domain not in ("", "ai.onnx") or opset.version not in OPSETS:
            raise BundleError(f"{where} imports opset {opset.domain or 'ai.onnx'} {opset.version}, which irevnet never "
                              f"exports (ai.onnx {OPSETS.start}-{OPSETS.stop - 1}); refused")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in GRAPH_OPERATORS:
            raise BundleError(f"{where} uses operator {(node.domain + '.' if node.domain else '') + node.op_type!r} "
                              f"(node {node.name[:60]!r}), which irevnet never exports; refused")
        for attribute in node.attribute:
            if attribute.type not in ATTRIBUTE_TYPES or attribute.ref_attr_name:
                raise BundleError(f"{where}: node {node.name[:60]!r} has a subgraph or sparse attribute "
                                  f"{attribute.name[:40]!r}, which irevnet never exports; refused")
