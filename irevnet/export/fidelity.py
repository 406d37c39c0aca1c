"""How exactly a model inverts: per-block error gain of the inverse and its likely causes.

A block's inverse maps its output pair back to its input pair. Rounding in the stream perturbs
that output by ~1 ulp of its typical magnitude; the gain is how much the inverse amplifies such a
perturbation. Gains of ~1 keep fp32 round trips near 1e-7; a gain of 1e3 costs three digits.
"""

from __future__ import annotations

import copy

import torch

from ..model.layers import merge, split
from ..model.network import IRevNet

GAIN_WARNING = 100.0  # gains above this are named in `irevnet verify`
LOW_VARIANCE = 1e-3  # BatchNorm running variance below this amplifies by 1/sqrt(var + eps)


@torch.no_grad()
def inverse_gains(model: IRevNet, x: torch.Tensor, *, project: bool = True, draws: int = 3, eps: float = 1e-6) -> list[float]:
    """Per-block error gain of the inverse, estimated by fp64 finite differences.

    For block i with output y, draws δ = eps * rms(y) * n with n ~ N(0, 1) in every channel (zero
    channels included: the stream's rounding reaches them through y1 - F(x2)), and returns the mean
    of ||inverse(y + δ) - inverse(y)|| / ||δ||.

    Args:
        x: a few normalised images (1 is enough).
        project: evaluate the inverse with the range projection (as exported) or without.
    """
    net = copy.deepcopy(model).double().eval()
    g = torch.Generator().manual_seed(0)
    pairs = list(net.forward_pairs(x.double()))
    gains = []
    for i, block in enumerate(net.stack):
        out = pairs[i + 1]
        k = out[0].shape[1]
        y = merge(*out)
        base = merge(*block.inverse(split(y, k), project=project))
        scale = eps * float(y.pow(2).mean().sqrt())
        total = 0.0
        for _ in range(draws):
            delta = torch.randn(y.shape, generator=g, dtype=y.dtype) * scale
            moved = merge(*block.inverse(split(y + delta, k), project=project))
            total += float((moved - base).norm() / delta.norm())
        gains.append(total / draws)
    return gains


def low_variance_channels(model: IRevNet, threshold: float = LOW_VARIANCE) -> list[int]:
    """Per block, how many BatchNorm channels in F have running variance below `threshold`."""
    counts = []
    for block in model.stack:
        n = 0
        for m in block.bottleneck_block.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_var is not None:
                n += int((m.running_var < threshold).sum())
        counts.append(n)
    return counts


def diagnose(model: IRevNet, x: torch.Tensor, project: bool) -> dict:
    """Gains with the inverse as exported (and without projection, for injective models), the
    low-variance BatchNorm channels, and one warning per block whose gain exceeds GAIN_WARNING."""
    gains = inverse_gains(model, x[:1], project=project)
    report = {"inverse_gain": gains, "low_variance_bn_channels": low_variance_channels(model)}
    if model.config.injective:
        report["inverse_gain_without_projection"] = gains if not project else inverse_gains(model, x[:1], project=False)
    report["warnings"] = gain_warnings(gains, report["low_variance_bn_channels"], model.config.injective and not project)
    return report


def gain_warnings(gains: list[float], low_var: list[int], projection_available: bool) -> list[str]:
    warnings = []
    for i, (gain, n) in enumerate(zip(gains, low_var)):
        if gain <= GAIN_WARNING:
            continue
        if n:
            cause = f"{n} BatchNorm channel(s) in its F have running variance < {LOW_VARIANCE:g}, so 1/sqrt(var + eps) amplifies"
            if projection_available:
                cause += "; they see structurally zero channels: export with the range projection (the default)"
        else:
            cause = "F has a large Lipschitz constant (no low-variance BatchNorm found)"
        warnings.append(f"block {i}: inverse error gain {gain:.3g} > {GAIN_WARNING:g}: {cause}")
    return warnings
