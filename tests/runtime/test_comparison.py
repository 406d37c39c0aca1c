"""The one pass rule (runtime/comparison.py) on arrays whose errors are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from irevnet.contract import LOGITS, Precision, Z
from irevnet.runtime.comparison import (
    EXACT_COUPLING_ROUND_TRIP,
    TOLERANCES,
    Parity,
    RoundTrip,
    compare,
    tolerance_for,
)
from irevnet.runtime.manifest import Normalization


def test_compare_gives_the_relative_l2_and_the_worst_element():
    expected = np.array([[3.0, 0.0], [0.0, 4.0]], np.float32)  # norm 5
    actual = expected.copy()
    actual[1, 0] = 5 / 64  # an error of norm 5/64, exact in binary: rel. L2 exactly 1/64
    c = compare("a", actual, expected, tolerance=1 / 64)
    assert c.rel_l2 == 1 / 64 and c.max_abs == 5 / 64
    assert c.worst_index == (1, 0) and c.worst_actual == 5 / 64 and c.worst_expected == 0.0
    assert c, "an error equal to the tolerance passes"
    actual[1, 0] = 5 / 64 + 1e-6
    assert not compare("a", actual, expected, tolerance=1 / 64), "just above it fails"
    assert compare("a", actual, expected), "no tolerance: reported, never failed"
    assert c.to_dict()["passed"] is True and c.to_dict()["worst_index"] == [1, 0]


def test_nan_or_inf_anywhere_fails_every_tolerance():
    expected = np.ones(4, np.float32)
    for bad in (np.nan, np.inf):
        actual = expected.copy()
        actual[2] = bad
        c = compare("b", actual, expected, tolerance=1e30)
        assert not c and math.isinf(c.rel_l2) and c.worst_index == (2,)


def test_shapes_that_differ_are_an_error_not_a_number():
    with pytest.raises(ValueError, match=r"b: shape \(2,\) != expected \(3,\)"):
        compare("b", np.zeros(2), np.zeros(3))


def test_exact_coupling_tightens_only_the_round_trip():
    base = TOLERANCES[Precision.int8]
    tight = tolerance_for(Precision.int8, exact_coupling_exponent=20)
    assert tight.round_trip == EXACT_COUPLING_ROUND_TRIP < base.round_trip
    assert (tight.logits, tight.z, tight.top1) == (base.logits, base.z, base.top1)
    assert tight.cross == base.cross, "a z made elsewhere does not see the same bits: the table's cross tolerance"
    assert "2^-20" in tight.reason


def test_parity_fails_on_any_of_its_three_checks():
    rng = np.random.default_rng(0)
    logits, z = rng.normal(size=(8, 10)), rng.normal(size=(8, 4))
    tol = TOLERANCES[Precision.fp32]
    assert Parity.measure(Precision.fp32.value, "onnxruntime", {LOGITS: logits, Z: z}, logits, z, tol)
    moved = z + 1e-3 * np.linalg.norm(z) / np.sqrt(z.size)  # rel. L2 1e-3 > 1e-4
    failed = Parity.measure(Precision.fp32.value, "onnxruntime", {LOGITS: logits, Z: moved}, logits, z, tol)
    assert not failed and failed.logits and not failed.z and failed.agreement
    swapped = logits.copy()
    swapped[0] = -swapped[0]  # one of eight samples changes class: agreement 7/8 < 1.0
    assert Parity.measure(Precision.fp32.value, "ort", {LOGITS: swapped, Z: z}, logits, z, tol).agreement.value == pytest.approx(7 / 8)


def test_round_trip_reports_pixels_and_the_worst_sample():
    x = np.zeros((3, 1, 2, 2), np.float32) + 0.5
    x_hat = x.copy()
    x_hat[2, 0, 0, 0] += 0.01  # sample 2 only
    rt = RoundTrip.measure(Precision.fp32.value, "PyTorch fp32", "onnxruntime", "onnxruntime", x_hat, x,
                           Normalization(mean=(0.5,), std=(0.25,)), tolerance=1e-5)
    assert rt.worst_sample == 2 and not rt
    assert rt.max_abs_pixels == pytest.approx(0.0025, rel=1e-4), "the error in pixels: times std"
    exact = RoundTrip.measure(Precision.fp32.value, "a", "b", "onnxruntime", x, x, Normalization(mean=(0.5,), std=(0.25,)), 1e-5)
    assert exact and exact.psnr_db is None and "exact" in str(exact)
