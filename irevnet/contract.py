"""The precisions of a bundle. Pure Python: the CLI, the runtime and the manifest use the names."""

from __future__ import annotations

from enum import Enum


class Precision(str, Enum):
    """Where the graphs compute in reduced precision (TensorRT 10.12+/11 builds exactly these types)."""

    fp32 = "fp32"  # everything fp32
    fp16 = "fp16"  # weights and activations fp16; fp32 inputs and outputs
    mixed = "mixed"  # the bottleneck branches F in fp16, the coupling stream (adds, psi, padding) fp32
    int8 = "int8"  # F's convolutions int8 (explicit Q/DQ, export/quantize.py), everything else fp32


class Calibration(str, Enum):
    """How an int8 activation's range (symmetric, zero point 0, per tensor) is chosen from the
    values the calibration images produce there (export/quantize.py)."""

    mse = "mse"  # the range that minimises the squared error of quantizing those values (default)
    percentile = "percentile"  # the 99.99th percentile of |value|
    max = "max"  # max |value|: nothing clipped, but one outlier stretches the step for every value
