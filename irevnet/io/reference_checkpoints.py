"""Checkpoints of the reference code (Jacobsen et al.) and of pytorchcv, mapped to irevnet's model.

The reference CIFAR files pickle whole `nn.Module` trees, read here as inert stand-ins
(irevnet.io.safe_unpickle) whose tensors are collected under `state_dict`'s names; pytorchcv's
irevnet301 keys are renamed to the reference layout; and the architecture of any reference-layout
state dict is inferred from its tensor shapes. Nothing here builds a model: `irevnet.io.checkpoint`
checks the weights against the inferred config first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import CheckpointError, ConfigError, shown
from ..model.config import IRevNetConfig
from . import safe_unpickle


class ReferenceModel(NamedTuple):
    """What a reference CIFAR file holds: weights, scalars to show, and the architecture hints."""

    state: dict[str, torch.Tensor]
    meta: dict[str, Any]
    image_size: int | None
    in_channels: int | None
    init_ds: int | None
    dropout: float


def plain(v: Any) -> Any:
    """A scalar of a reference file's dict as shown by `info`; anything else as a short repr."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return v if isinstance(v, (int, float, str, bool)) else shown(v)



MAX_WRAPPERS = 8  # DataParallel(DataParallel(...)) levels unwrapped at most


def reference_cifar(path: Path, obj: dict, image_size: int | None) -> ReferenceModel:
    """The weights and architecture hints of CIFAR_main.py's pickled `DataParallel(iRevNet)`."""
    net = obj["model"]
    for _ in range(MAX_WRAPPERS):
        if net is None or not net.qualified_name.endswith("DataParallel"):
            break
        net = net.module("module")
    if net is None or net.qualified_name != "models.iRevNet.iRevNet":
        raise CheckpointError(f"{path}: the pickled 'model' is not a reference iRevNet; cannot map it")
    stack = net.module("stack")
    first = stack.module("0") if stack is not None else None
    first = first.module("bottleneck_block") if first is not None else None
    if first is None:
        raise CheckpointError(f"{path}: the pickled iRevNet has no stack.0.bottleneck_block; cannot map it")
    attrs = net.__dict__
    for name in ("init_ds", "in_ch", "ds"):
        if name in attrs and not (isinstance(attrs[name], int) and 0 <= attrs[name] <= 1 << 20):
            raise CheckpointError(f"{path}: the pickled iRevNet's {name} is not a small integer; the file is malformed")
    state = _collect_state(net)
    init_ds = attrs.get("init_ds", 0)
    in_channels = attrs["in_ch"] // (init_ds**2 if init_ds else 1) if "in_ch" in attrs else None
    if image_size is None and "ds" in attrs:
        # ds is z's spatial size: the image's divided by the total downsampling
        children = stack.__dict__.get("_modules", {}).values()
        strides = [c.__dict__.get("stride", 1) for c in children if isinstance(c, safe_unpickle.Pickled)]
        image_size = attrs["ds"] * (init_ds or 1) * 2 ** strides.count(2)
    layers = first.__dict__.get("_modules", {}).values()
    rates = [m.__dict__.get("p") for m in layers if isinstance(m, safe_unpickle.Pickled) and m.qualified_name.endswith("Dropout")]
    dropout = rates[0] if rates and isinstance(rates[0], float) else 0.0
    meta = {k: plain(obj[k]) for k in ("acc", "epoch") if k in obj}
    return ReferenceModel(state, meta, image_size, in_channels, init_ds, dropout)


MAX_MODULE_DEPTH = 16  # iRevNet > stack > block > bottleneck_block > layer is 5 deep


def _collect_state(obj: safe_unpickle.Pickled, prefix: str = "", depth: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of a pickled module tree, as `nn.Module.state_dict` would name it."""
    if depth > MAX_MODULE_DEPTH:
        raise CheckpointError(f"the pickled modules nest deeper than {MAX_MODULE_DEPTH} levels (at {prefix[:80]}); the file is malformed")
    attrs = obj.__dict__
    state = {}
    parameters, buffers, children = (attrs.get(k, {}) for k in ("_parameters", "_buffers", "_modules"))
    skip = attrs.get("_non_persistent_buffers_set", set())
    if not all(isinstance(d, dict) for d in (parameters, buffers, children)) or not isinstance(skip, set):
        raise CheckpointError(f"the pickled module {prefix or 'model'} has malformed attributes; the file is malformed")
    for name, p in parameters.items():
        if isinstance(p, torch.Tensor):
            state[f"{prefix}{name}"] = p
    for name, b in buffers.items():
        if isinstance(b, torch.Tensor) and name not in skip:
            state[f"{prefix}{name}"] = b
    for name, child in children.items():
        if isinstance(child, safe_unpickle.Pickled):
            state.update(_collect_state(child, f"{prefix}{name}.", depth + 1))
    return state


# -- pytorchcv (imgclsmob) ----------------------------------------------------------------------

PYTORCHCV_CLASSIFIER = "output.weight"
_PYTORCHCV_UNIT = re.compile(r"^features\.stage(\d+)\.unit(\d+)\.bottleneck\.conv([123])\.(?:(bn|conv)\.)?(\w+)$")
# Position of each pytorchcv conv block in the reference's bottleneck_block Sequential: the first
# unit's conv1 is a bare convolution (no pre-activation), every other convK is BN-ReLU-Conv.
_FIRST_UNIT = {("1", None): 0, ("2", "bn"): 1, ("2", "conv"): 3, ("3", "bn"): 5, ("3", "conv"): 7}
_OTHER_UNITS = {("1", "bn"): 0, ("1", "conv"): 2, ("2", "bn"): 3, ("2", "conv"): 5, ("3", "bn"): 7, ("3", "conv"): 9}


def from_pytorchcv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames a pytorchcv `irevnet301` state dict (imgclsmob's converted ImageNet weights) to
    the reference layout: features.stageS.unitU.bottleneck.convK.{bn,conv} -> stack.B.
    bottleneck_block.I, features.final_postactiv.bn -> bn1, output -> linear.

    pytorchcv's units are the reference's blocks in the same order (stride 2 first in every
    stage, psi with the same channel order), so the weights are used as they are.
    """
    units: dict[tuple[int, int], list[tuple[str, str | None, str, torch.Tensor]]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ConfigError(f"a pytorchcv state dict key is a {type(key).__name__}")
        m = _PYTORCHCV_UNIT.match(key)
        if m:
            stage, unit, conv, part, name = m.groups()
            units.setdefault((int(stage), int(unit)), []).append((conv, part, name, value))
        elif key.startswith("features.final_postactiv.bn."):
            out["bn1." + key.removeprefix("features.final_postactiv.bn.")] = value
        elif key in ("output.weight", "output.bias"):
            out[key.replace("output.", "linear.")] = value
        else:
            raise ConfigError(f"unexpected key {key[:120]!r} for a pytorchcv i-RevNet")
    for block, (_, entries) in enumerate(sorted(units.items())):
        positions = _FIRST_UNIT if block == 0 else _OTHER_UNITS
        for conv, part, name, value in entries:
            index = positions.get((conv, part))
            if index is None:
                raise ConfigError(f"unit {block} of the pytorchcv i-RevNet has an unexpected conv{conv} layout")
            out[f"stack.{block}.bottleneck_block.{index}.{name}"] = value
    return out


_BLOCK_KEY = re.compile(r"^stack\.(\d+)\.bottleneck_block\.(\d+)\.(\w+)$")


def infer_config(
    state: dict[str, torch.Tensor],
    *,
    image_size: int | None = None,
    in_channels: int | None = None,
    init_ds: int | None = None,
    dropout: float = 0.0,
) -> IRevNetConfig:
    """Recovers the architecture of a reference-layout state dict from its tensor shapes.

    Each block's F has three 3x3 convolutions: the first maps F's input channels f_in to
    out_ch // mult, the last maps to out_ch. A block has stride 2 iff out_ch == 4 * f_in (psi
    quadruples x1), stride 1 iff out_ch == f_in. Stages start at stride-2 blocks and channel changes.
    """
    convs: dict[int, dict[int, torch.Tensor]] = {}
    affine = True
    for key, t in state.items():
        m = _BLOCK_KEY.match(key)
        if m and m.group(3) == "weight" and t.dim() == 4:
            convs.setdefault(int(m.group(1)), {})[int(m.group(2))] = t
        if m and m.group(3) == "running_mean" and f"stack.{m.group(1)}.bottleneck_block.{m.group(2)}.weight" not in state:
            affine = False
    if not convs or sorted(convs) != list(range(len(convs))):
        raise ConfigError("no i-RevNet blocks found (expected keys like stack.0.bottleneck_block.0.weight)")
    classifier = state.get("linear.weight")
    if classifier is None or classifier.dim() != 2:
        raise ConfigError("no classifier found (expected the key linear.weight, a matrix)")
    layout = []  # (stride, out_ch, f_in, inner) per block
    for i in range(len(convs)):
        layers = [convs[i][k] for k in sorted(convs[i])]
        if len(layers) != 3 or any(tuple(w.shape[2:]) != (3, 3) for w in layers):
            raise ConfigError(f"block {i} has {len(layers)} convolutions, an i-RevNet block has three 3x3 ones")
        f_in, inner, out_ch = layers[0].shape[1], layers[0].shape[0], layers[2].shape[0]
        if out_ch == f_in:
            stride = 1
        elif out_ch == 4 * f_in:
            stride = 2
        else:
            raise ConfigError(f"block {i} maps {f_in} to {out_ch} channels, which no i-RevNet block does")
        layout.append((stride, out_ch, f_in, inner))
    blocks, strides, channels = [], [], []
    for i, (stride, out_ch, _, _) in enumerate(layout):
        if i == 0 or stride == 2 or out_ch != channels[-1]:
            blocks.append(0)
            strides.append(stride)
            channels.append(out_ch)
        blocks[-1] += 1
    num_classes, z_channels = classifier.shape
    if image_size is None:
        image_size = 224 if num_classes == 1000 else 32
    stride0, out0, f_in0, _ = layout[0]
    # The first block's input width is c * 4 after an initial psi and c without; a stride-1
    # injective first block hides it (its F sees the padded width), so prefer what fits.
    in_ch = 2 * f_in0 if stride0 == 2 else 2 * out0
    if init_ds is None:
        c = in_channels or 3
        init_ds = 2 if in_ch == 4 * c else 0
    else:
        c = in_channels or max(in_ch // (init_ds**2 if init_ds else 1), 1)
    cfg = IRevNetConfig(
        blocks=tuple(blocks), strides=tuple(strides), channels=tuple(channels), init_ds=init_ds,
        mult=_bottleneck_mult([(out_ch, inner) for _, out_ch, _, inner in layout]), num_classes=int(num_classes),
        in_shape=(c, image_size, image_size), dropout=dropout, affine_bn=affine,
    )
    if cfg.z_shape[0] != z_channels:
        raise ConfigError(f"classifier expects {z_channels} channels but the blocks produce {cfg.z_shape[0]}")
    return cfg


def _bottleneck_mult(widths: list[tuple[int, int]]) -> int:
    """The one `mult` for which out_ch // mult == inner holds in every block (the reference
    computes F's inner width as int(out_ch // mult), so 6 channels with mult 4 give 1).

    Several values fit when every block allows them; 4, the reference's default, is preferred.
    """
    low, high = 1, None
    for out_ch, inner in widths:
        if inner < 1:
            raise ConfigError(f"a block's F has {inner} inner channels; an i-RevNet block has at least one")
        # out_ch // m == inner  <=>  out_ch // (inner + 1) < m <= out_ch // inner
        low = max(low, out_ch // (inner + 1) + 1)
        high = out_ch // inner if high is None else min(high, out_ch // inner)
    if high is None or low > high:
        listed = ", ".join(f"{o} -> {i}" for o, i in dict.fromkeys(widths))
        raise ConfigError(
            f"no bottleneck mult gives every block's inner width (out_ch -> inner: {listed}); "
            f"the weights are not of one i-RevNet"
        )
    return 4 if low <= 4 <= high else low
