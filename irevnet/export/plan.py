"""Precision per block: which bottleneck F of each block runs in int8, fp16 or fp32.

A plan names one precision per block; the coupling stream (psi, the additions and subtractions,
padding, the range projection) and the head stay fp32, and with the exact coupling the inverse
recovers every block's input bit for bit whatever precision its F has. A plan is applied to the
fp32 ONNX graphs (traced once), so the forward, the inverse and the debug graphs carry the same F,
and a search derives every candidate from one trace and one calibration:

- int8: F's convolutions get explicit Q/DQ (export/quantize.py), with the calibration's ranges;
- fp16: F's inputs are cast to fp16 at F's entry, its weights stored in fp16, its outputs cast
  back to fp32 (what `--precision mixed` does to every block);
- fp32: F as traced.

The uniform plans are the bundle precisions: every block fp32 is `fp32`, every block fp16 is
`mixed`, every block int8 is `int8`. bf16 has no plan entry: ONNX's Conv takes bfloat16 only from
opset 22, beyond the opsets the graph policy allows (TensorRT 10 parses up to 20); OpenVINO runs a
mixed bundle's F in bf16 at run time (`-b openvino-bf16`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import TensorProto, helper, numpy_helper

from ..contract import UNIFORM_PLANS, BlockPrecision, Precision, judging_precision, plan_precision
from ..errors import IRevNetError
from .onnx_export import BRANCH_NODE
from .quantize import quantize_branches

MAX_PLAN_BYTES = 1 << 16  # a plan file: one short word per block (irevnet-301 has 100 blocks)


@dataclass(frozen=True)
class PrecisionPlan:
    """One precision per block, block 0 first."""

    blocks: tuple[BlockPrecision, ...]

    @classmethod
    def uniform(cls, precision: BlockPrecision | str, num_blocks: int) -> PrecisionPlan:
        return cls((BlockPrecision(precision),) * num_blocks)

    @classmethod
    def for_precision(cls, precision: Precision, num_blocks: int) -> PrecisionPlan | None:
        """The uniform plan a bundle precision is (None for fp16: its coupling stream is fp16 too)."""
        for block, bundle in UNIFORM_PLANS.items():
            if bundle is precision:
                return cls.uniform(block, num_blocks)
        return None

    @classmethod
    def parse(cls, text: str, num_blocks: int, option: str = "--precision-plan") -> PrecisionPlan:
        """A plan from the command line: a JSON list (`["int8", "fp32", ...]`), or words separated
        by commas or spaces (`int8,int8,fp32`), inline or in a file of at most 64 KiB.

        Raises:
            IRevNetError: one line naming what is wrong (a length other than `num_blocks`, an
                unknown precision, an unreadable file).
        """
        source = text
        if text.lstrip()[:1] not in ("[", "{") and "," not in text and _is_file(text):
            try:
                with open(text, "rb") as f:
                    data = f.read(MAX_PLAN_BYTES + 1)  # no more than that, however large it is or grows
                if len(data) > MAX_PLAN_BYTES:
                    raise IRevNetError(f"{option} {text}: the file is over {MAX_PLAN_BYTES // 1024} KiB; a plan is one "
                                       f"word per block")
                source = data.decode("utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise IRevNetError(f"{option} {text}: cannot read it ({e.__class__.__name__}); give a readable text or JSON "
                                   f"file") from None
        elif len(text) > MAX_PLAN_BYTES:
            raise IRevNetError(f"{option} is over {MAX_PLAN_BYTES // 1024} KiB; a plan is one word per block")
        if source.lstrip()[:1] in ("[", "{"):
            try:
                words = json.loads(source)
            except (ValueError, RecursionError):
                raise IRevNetError(f"{option}: not a JSON list of precisions; write it as [\"int8\", \"fp32\", ...]") from None
            if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
                raise IRevNetError(f"{option}: a JSON plan is a list of precision names, one per block")
        elif "," in source:
            words = [w.strip() for w in source.split(",")]
            if "" in words:
                raise IRevNetError(f"{option}: entry {words.index('')} is empty; give one precision per block")
        else:
            words = source.split()
        if len(words) != num_blocks:
            raise IRevNetError(f"{option} names {len(words)} precisions, but the model has {num_blocks} blocks; give one "
                               f"per block (block 0 first)")
        return cls(tuple(_block_precision(w, i, option) for i, w in enumerate(words)))

    def blocks_in(self, precision: BlockPrecision) -> set[int]:
        return {i for i, p in enumerate(self.blocks) if p is precision}

    @property
    def precision(self) -> Precision:
        """The bundle precision of this plan: the uniform ones' name, else `plan`."""
        return plan_precision(self.blocks)

    @property
    def tolerance_precision(self) -> Precision:
        """The bundle precision whose tolerances judge this plan: its least precise block's."""
        return judging_precision(self.blocks)

    def __str__(self) -> str:
        """Run lengths, e.g. `int8 x4, fp32, int8 x2`."""
        runs: list[list] = []
        for p in self.blocks:
            if runs and runs[-1][0] is p:
                runs[-1][1] += 1
            else:
                runs.append([p, 1])
        return ", ".join(f"{p.value} x{n}" if n > 1 else p.value for p, n in runs)

    def to_list(self) -> list[str]:
        return [p.value for p in self.blocks]


def _is_file(text: str) -> bool:
    """Whether `text` names a regular file (a long plan of words is no file name)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _block_precision(word: str, block: int, option: str) -> BlockPrecision:
    if word == "bf16":
        raise IRevNetError(f"{option}: block {block} is bf16, which a plan cannot hold: ONNX's Conv takes bfloat16 from "
                           f"opset 22, beyond the 18-20 TensorRT 10 parses; use fp16 (or run a mixed bundle with "
                           f"-b openvino-bf16)")
    try:
        return BlockPrecision(word)
    except ValueError:
        choices = ", ".join(p.value for p in BlockPrecision)
        raise IRevNetError(f"{option}: block {block} is {word[:20]!r}; each entry is one of {choices}") from None


def apply_plan(model: onnx.ModelProto, plan: PrecisionPlan, ranges: dict[str, float] | None) -> None:
    """Gives each block's F of the fp32 graph `model` its plan's precision, in place.

    Args:
        ranges: the calibration's activation ranges (quantize.calibrate), needed when a block is int8.
    """
    if plan.blocks_in(BlockPrecision.int8):
        if ranges is None:
            raise IRevNetError("an int8 block needs the calibration's activation ranges; this is an export bug")
        quantize_branches(model, ranges, plan.blocks_in(BlockPrecision.int8))
    if plan.blocks_in(BlockPrecision.fp16):
        cast_branches(model, plan.blocks_in(BlockPrecision.fp16), TensorProto.FLOAT16)


def branch_nodes(graph: onnx.GraphProto) -> dict[int, list[onnx.NodeProto]]:
    """The nodes of each block's F, by block, in graph order."""
    nodes: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        if m := BRANCH_NODE.match(node.name):
            nodes[int(m.group(1))].append(node)
    return nodes


def cast_branches(model: onnx.ModelProto, blocks: set[int], elem_type: int) -> None:
    """Runs F of `blocks` in `elem_type` (fp16), in place: a Cast at each of F's inputs, F's
    floating-point weights converted, a Cast back to fp32 at each output F hands to the coupling.

    The inserted nodes are named `block{i}/F/cast/...` by their position in F, and the converted
    weights after the fp32 ones, so F stays identical in the forward, inverse and debug graphs.
    """
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    suffix = helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.").lower()
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    in_f = branch_nodes(graph)
    inside = {id(n) for i in blocks for n in in_f.get(i, [])}
    readers_outside: set[str] = {name for n in graph.node if id(n) not in inside for name in n.input}
    before: dict[int, list[onnx.NodeProto]] = defaultdict(list)  # id() of a node -> casts to insert before it
    after: dict[int, list[onnx.NodeProto]] = defaultdict(list)
    converted: dict[str, str] = {}
    added: list[onnx.TensorProto] = []
    for i in sorted(blocks):
        nodes = in_f.get(i, [])
        if not nodes:
            raise IRevNetError(f"block {i} has no F nodes in {graph.name or 'the graph'}; this is an export bug")
        made = {o for n in nodes for o in n.output}
        entries: dict[str, str] = {}
        for node in nodes:
            for k, name in enumerate(node.input):
                if not name or name in made:
                    continue
                if name in weights:
                    w = weights[name]
                    if w.data_type == TensorProto.FLOAT:
                        if name not in converted:
                            converted[name] = f"{name}/{suffix}"
                            added.append(numpy_helper.from_array(numpy_helper.to_array(w).astype(dtype), converted[name]))
                        node.input[k] = converted[name]
                    continue
                if name not in entries:  # an activation from the coupling stream: cast once, at F's entry
                    entries[name] = f"block{i}/F/cast/in{len(entries)}"
                    before[id(node)].append(helper.make_node("Cast", [name], [entries[name]], name=f"{entries[name]}/Cast",
                                                             to=elem_type))
                node.input[k] = entries[name]
        exits = 0
        for node in nodes:
            for k, name in enumerate(node.output):
                if name in readers_outside or name in graph_outputs:  # handed to the coupling (or a debug output)
                    raw = f"block{i}/F/cast/out{exits}"
                    exits += 1
                    node.output[k] = raw
                    after[id(node)].append(helper.make_node("Cast", [raw], [name], name=f"{raw}/Cast", to=TensorProto.FLOAT))
                    for reader in nodes:  # F's own readers keep the reduced precision
                        reader.input[:] = [raw if x == name else x for x in reader.input]
    # the exporter annotated F's intermediate tensors as fp32: those annotations no longer hold
    retyped = {o for i in blocks for n in in_f.get(i, []) for o in n.output}
    kept_info = [v for v in graph.value_info if v.name not in retyped]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered += before.get(id(node), []) + [node] + after.get(id(node), [])
    del graph.node[:]
    graph.node.extend(ordered)
    still_used = {name for n in graph.node for name in n.input}
    kept = [t for t in graph.initializer if t.name in still_used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)


def branch_inputs_outputs(graph: onnx.GraphProto) -> dict[int, tuple[list[str], list[str]]]:
    """Per block, the activations F reads from the coupling stream and those it hands back."""
    weights = {t.name for t in graph.initializer}
    in_f = branch_nodes(graph)
    members = {id(n): i for i, nodes in in_f.items() for n in nodes}
    read_by_others: dict[str, set[int]] = defaultdict(set)
    for n in graph.node:
        for name in n.input:
            read_by_others[name].add(members.get(id(n), -1))
    outputs = {o.name for o in graph.output}
    result = {}
    for i, nodes in sorted(in_f.items()):
        made = {o for n in nodes for o in n.output}
        ins = list(dict.fromkeys(x for n in nodes for x in n.input if x and x not in made and x not in weights))
        outs = [o for n in nodes for o in n.output if (read_by_others[o] - {i}) or o in outputs]
        result[i] = (ins, outs)
    return result
