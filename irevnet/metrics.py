"""The numbers every comparison is made of, numpy only (core, export and runtime share them)."""

from __future__ import annotations

import numpy as np


def rel_l2(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected|| / ||expected|| in float64; the denominator is at least 1e-30."""
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    return float(np.linalg.norm(a - e) / max(float(np.linalg.norm(e)), 1e-30))


def top1_agreement(logits_a: np.ndarray, logits_b: np.ndarray) -> float:
    """Fraction of samples whose arg-max class is the same."""
    return float(np.mean(np.argmax(logits_a, axis=1) == np.argmax(logits_b, axis=1)))


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of samples whose arg-max class is the label."""
    return float(np.mean(np.argmax(logits, axis=1) == labels) * 100)
