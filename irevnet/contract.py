"""The contract between the exporter and every reader of a bundle: each name written once.

Tensor names, the batch axis, file and folder names, graph names, the members of the reference
samples, precision names and what a graph may contain (operators, opsets, attribute types),
imported by the graphs, the exporter, the engine builder, the runtime, the C++ app's tests and the
test suite; the manifest's JSON Schema (runtime/manifest.schema.json) states the same values, and a
test checks that it does (tests/test_contract.py), as it checks that no other module spells them out.
Pure Python: imported on deployment boxes without torch.
"""

from __future__ import annotations

from enum import Enum

# 1: every graph holds its weights inline. 2: graphs keep their weights in one shared file
# (WEIGHTS, the manifest's `weights`), each tensor once. Both are read.
SCHEMA_VERSION = 2

# -- files and folders of a bundle ----------------------------------------------------------------
MANIFEST = "manifest.json"
WEIGHTS = "weights.bin"  # every graph's initializers, each distinct tensor once (export/weights.py)
REFERENCE = "reference.npz"  # the verification inputs and PyTorch fp32 outputs, stored at export
SAMPLE_Z = "sample_z.npy"  # one z the C++ app inverts when given none
TIMING_CACHE = "timing.cache"  # TensorRT's, shared by every engine of the bundle
DEBUG = "debug"  # the per-block debug engines

# -- graphs: (N, C, H, W) float32 in and out, whatever the precision inside ----------------------
FORWARD = "forward"  # IMAGE -> LOGITS, Z
INVERSE = "inverse"  # Z -> IMAGE
FORWARD_BLOCKS = "forward_blocks"  # IMAGE -> LOGITS, Z, every block_input(i), every branch_output(i)
INVERSE_BLOCKS = "inverse_blocks"  # Z -> IMAGE, every block_input(i) recovered, every branch_output(i)
GRAPHS = (FORWARD, INVERSE, FORWARD_BLOCKS, INVERSE_BLOCKS)
ROUNDTRIP = "roundtrip"  # IMAGE -> RECONSTRUCTION, LOGITS, Z: served as NAME_roundtrip (irevnet.serving)
ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIX = ".engine"


# -- what a graph may contain --------------------------------------------------------------------
# The operators irevnet's exporter writes (default ONNX domain), over every preset and precision,
# debug graphs and int8 Q/DQ included; each one is in TensorRT 10's ONNX parser's supported set
# (onnx-tensorrt docs/operators.md). Export refuses a graph with any other (export/onnx_export.py),
# and so does every reader before a runtime sees it (runtime/graph_policy.py): control flow (Loop,
# If, Scan) could run without bound. Identity: the debug graphs return a tensor under two names.
GRAPH_OPERATORS = frozenset({
    "Add", "BatchNormalization", "Cast", "Concat", "Conv", "DepthToSpace", "DequantizeLinear", "Gemm", "Identity",
    "Mul", "Pad", "QuantizeLinear", "ReduceMean", "Relu", "Reshape", "Round", "Slice", "SpaceToDepth", "Sub",
})
# ai.onnx opsets a graph may import: 18 is the dynamo exporter's floor, 20 TensorRT 10's ceiling
OPSETS = range(18, 21)
# ONNX AttributeProto types a node may carry: FLOAT 1, INT 2, STRING 3, TENSOR 4, FLOATS 6, INTS 7,
# STRINGS 8; never GRAPH(S) or SPARSE_TENSOR(S) (tensors from outside the bundle's checked bytes),
# TENSORS or TYPE_PROTO(S)
ATTRIBUTE_TYPES = frozenset({1, 2, 3, 4, 6, 7, 8})


def graph_file(graph: str) -> str:
    """The ONNX file of a graph, relative to the bundle."""
    return graph + ONNX_SUFFIX


def engine_file(graph: str) -> str:
    """The TensorRT engine of a graph, relative to the bundle (debug engines in their folder)."""
    return graph + ENGINE_SUFFIX if graph in (FORWARD, INVERSE) else f"{DEBUG}/{graph}{ENGINE_SUFFIX}"


# -- tensors ----------------------------------------------------------------------------------------
IMAGE = "image"  # the normalised image, (N, C, H, W)
Z = "z"  # the last representation, from which the image is recovered
LOGITS = "logits"  # (N, classes), the linear classifier on z
RECONSTRUCTION = "reconstruction"  # the image recovered from z: reference.npz, the round-trip ensemble
BATCH_DIM = "N"  # the dynamic batch axis of every input and output
# Triton's names of the dtypes the graphs take and give (KServe v2 protocol; config.pbtxt writes TYPE_ before them)
TRITON_DATATYPES = {"float32": "FP32", "float16": "FP16"}
LAYOUT = "NCHW"


# -- reference.npz: the verification inputs and PyTorch fp32 outputs (runtime/reference.py) -------
# besides LOGITS, Z, RECONSTRUCTION and block_input(i) (h0..hB, for as many samples as fit 64 MB)
REFERENCE_IMAGES = "images"  # the normalised inputs, (N, C, H, W) float32
REFERENCE_LABELS = "labels"  # their classes, (N,) integers: with --dataset only


def block_input(i: int) -> str:
    """The debug graphs' name of the coupling pair entering block i, merged (h0 .. hB)."""
    return f"h{i}"


def branch_output(i: int) -> str:
    """The debug graphs' name of block i's F output, the same tensor in both directions."""
    return f"f{i}"


# -- precisions ---------------------------------------------------------------------------------------


class Precision(str, Enum):
    """Where the graphs compute in reduced precision (TensorRT 10.12+/11 builds exactly these types)."""

    fp32 = "fp32"  # everything fp32
    fp16 = "fp16"  # weights and activations fp16; fp32 inputs and outputs
    mixed = "mixed"  # the bottleneck branches F in fp16, the coupling stream (adds, psi, padding) fp32
    int8 = "int8"  # F's convolutions int8 (explicit Q/DQ, export/quantize.py), everything else fp32
    plan = "plan"  # each block's F in the precision its precision_plan names, the coupling stream fp32

    def __str__(self) -> str:  # the name, in messages and f-strings (3.11 formats enums as Precision.fp32)
        return self.value

    __format__ = str.__format__


class BlockPrecision(str, Enum):
    """The precision of one block's F in a precision plan (export/plan.py)."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


# the bundle precision each uniform plan is: every block's F in that precision (an fp16 bundle has
# no plan: its coupling stream is fp16 too)
UNIFORM_PLANS = {BlockPrecision.fp32: Precision.fp32, BlockPrecision.fp16: Precision.mixed,
                 BlockPrecision.int8: Precision.int8}


def plan_precision(blocks) -> Precision:
    """The bundle precision of a plan's blocks: a uniform plan's name, else `plan`."""
    kinds = set(blocks)
    return UNIFORM_PLANS[kinds.pop()] if len(kinds) == 1 else Precision.plan


def judging_precision(blocks) -> Precision:
    """The precision whose tolerances judge a plan: its least precise block's."""
    kinds = set(blocks)
    return next((UNIFORM_PLANS[b] for b in (BlockPrecision.int8, BlockPrecision.fp16) if b in kinds), Precision.fp32)


class Calibration(str, Enum):
    """How an int8 activation's range (symmetric, zero point 0, per tensor) is chosen from the
    values the calibration images produce there (export/quantize.py); recorded in the manifest."""

    mse = "mse"  # the range that minimises the squared error of quantizing those values (default)
    percentile = "percentile"  # the 99.99th percentile of |value|
    max = "max"  # max |value|: nothing clipped, but one outlier stretches the step for every value
