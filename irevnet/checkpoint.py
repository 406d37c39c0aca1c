"""Reading and writing checkpoints: irevnet's own format and the reference code's files.

Every file is read by irevnet.safe_unpickle, which executes no code from the file and changes no
object of the process. The reference CIFAR files pickle whole `nn.Module` objects; their classes
are allowlisted under their original names but mapped onto inert stand-ins that only collect the
pickled attributes, so neither the reference code nor torch.nn constructors run.

Formats:
  irevnet            {"format": "irevnet-checkpoint", "format_version", "config", "state_dict",
                      "training" (optional), "meta"}
  reference-imagenet ILSVRC_main.py: {"state_dict" (keys "module."...), "epoch", "best_prec1", ...}
  reference-cifar    CIFAR_main.py .t7: {"model": DataParallel(iRevNet), "acc", "epoch"}
  pytorchcv          pytorchcv's irevnet301 state dict (imgclsmob's converted ImageNet weights):
                     features.stageS.unitU.bottleneck.convK.{bn,conv}.*, output.*
  state-dict         a bare state dict in the reference's key layout
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import safe_unpickle
from .config import IRevNetConfig
from .errors import CheckpointError, ConfigError, shown
from .files import atomic_output, sha256_file
from .model import IRevNet, state_shapes
from .validation import finite_number

FORMAT_NAME = "irevnet-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode) and what the file said about itself."""

    model: IRevNet
    format: str  # "irevnet", "reference-imagenet", "reference-cifar" or "state-dict"
    path: Path
    meta: dict[str, Any] = field(default_factory=dict)  # epoch, accuracy, ... as stored
    training: dict[str, Any] | None = None  # optimizer/scheduler state for resuming (irevnet only)

    @property
    def config(self) -> IRevNetConfig:
        return self.model.config

    def summary(self) -> dict[str, Any]:
        """What `irevnet info` shows: format, architecture, sizes, and the scalar facts of `meta`."""
        cfg = self.config
        return {
            "format": self.format,
            "type": "injective i-RevNet (a)" if cfg.injective else "bijective i-RevNet (b)",
            "depth": cfg.depth,
            "parameters": self.model.num_parameters(),
            "input shape": list(cfg.in_shape),
            "z shape": list(cfg.z_shape),
            "blocks": list(cfg.blocks),
            "strides": list(cfg.strides),
            "channels": list(cfg.channels),
            "init_ds": cfg.init_ds,
            "classes": cfg.num_classes,
            **{f"meta.{k}": v for k, v in self.meta.items() if isinstance(v, (int, float, str))},
        }


# -- writing ---------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    model: IRevNet,
    *,
    training: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Writes the model (and optional training state) atomically: a crash keeps the old file.

    Args:
        training: optimizer, scheduler, epoch, ... for `--resume`; plain types and tensors only.
        meta: small facts shown by `irevnet info` (metrics, dataset, command line).
    """
    from ._version import __version__

    model = model.module if hasattr(model, "module") else model  # unwrap DDP
    state = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "irevnet_version": __version__,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    if training is not None:
        state["training"] = training
    path = Path(path)
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return path


# -- reading ---------------------------------------------------------------------------------


def read_bytes(path: str | Path, *, sha256: str | None = None) -> bytes:
    """The bytes of a checkpoint file, checked against `sha256` when given.

    The file is read once: what was hashed is what gets parsed. Only regular files are read
    (a device or a pipe could never end).

    Raises:
        CheckpointError: missing, not a regular file, or not the recorded bytes.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file in it (e.g. {path / 'best.pt'})")
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file; give a checkpoint file")
    mismatch = CheckpointError(
        f"{path} is not the checkpoint the bundle was exported from (its sha256 differs from the manifest's); "
        f"pass --checkpoint with the exported file"
    )
    # hashed as a stream first: a manifest may name any large file, which is then not read into memory
    if sha256 is not None and sha256_file(path) != sha256:
        raise mismatch
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:  # changed since: these bytes are parsed
        raise mismatch
    return data


def _unpickle(path: Path, data: bytes) -> Any:
    """Parses torch.save bytes with irevnet's restricted unpickler (see irevnet.safe_unpickle)."""
    try:
        return safe_unpickle.loads(data)
    except safe_unpickle.Refused as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e))
        if refused:
            raise CheckpointError(
                f"{path}: refused to load, it names {refused.group(1)}, which is not a tensor or a "
                f"known i-RevNet/torch.nn class (loading never runs code from a file); "
                f"if you trust it, re-save its state_dict with the code that made it"
            ) from None
        raise CheckpointError(f"{path}: refused to load ({shown(e)}); the file is malformed or hostile") from None
    except Exception as e:  # noqa: BLE001 - corrupt bytes make an unpickler raise almost anything
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({shown(e)}); re-download or re-save it"
        ) from None


def load_checkpoint(
    path: str | Path,
    *,
    image_size: int | None = None,
    in_channels: int | None = None,
    sha256: str | None = None,
) -> Checkpoint:
    """Loads any supported checkpoint into an `IRevNet` in eval mode.

    Nothing in the file is executed, and no object of the process is changed: see
    irevnet.safe_unpickle. The architecture is checked against the tensors' shapes before any
    model is allocated.

    Args:
        path: a checkpoint file (see the module docstring for the formats).
        image_size: input height and width. Reference ImageNet files, pytorchcv files and bare
            state dicts do not store it (default 224 for 1000 classes, else 32); irevnet files
            do, and this overrides.
        in_channels: image channels for a reference state dict of an injective model, whose
            weights do not show it (default 3).
        sha256: the file's expected digest (a bundle's record); another file is refused.
    Raises:
        CheckpointError: missing, corrupt, malicious or unrecognised file; the message says why.
    """
    path = Path(path)
    obj = _unpickle(path, read_bytes(path, sha256=sha256))
    try:
        if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
            return _from_irevnet(path, obj, image_size)
        if isinstance(obj, dict) and isinstance(obj.get("model"), safe_unpickle.Pickled):
            return _from_reference_cifar(path, obj, image_size)
        if isinstance(obj, dict) and "state_dict" in obj:
            meta = {k: _plain(v) for k, v in obj.items() if k in ("epoch", "best_prec1", "arch")}
            state = _tensors(path, obj["state_dict"], "state_dict")
            return _from_state_dict(path, state, "reference-imagenet", meta, image_size, in_channels)
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            if PYTORCHCV_CLASSIFIER in obj:
                state = from_pytorchcv(obj)
                return _from_state_dict(path, state, "pytorchcv", {}, image_size, in_channels, init_ds=2)
            return _from_state_dict(path, _tensors(path, obj, "the file"), "state-dict", {}, image_size, in_channels)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    keys = shown(sorted(k for k in obj if isinstance(k, str))[:6]) if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"{path}: unknown checkpoint layout ({keys}); expected an irevnet checkpoint, a reference "
        f"ImageNet file with 'state_dict', a reference CIFAR .t7 with 'model', a pytorchcv i-RevNet "
        f"state dict, or a bare state dict"
    )


def _plain(v: Any) -> Any:
    """A scalar of a reference file's dict as shown by `info`; anything else as a short repr."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    return v if isinstance(v, (int, float, str, bool)) else shown(v)


def _tensors(path: Path, state: Any, what: str) -> dict[str, torch.Tensor]:
    """A state dict from a file: a dict of names to tensors, or a one-line error."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {what} is a {type(state).__name__}, not a dict of tensors; the file is malformed")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {what} holds {shown(key)}, which is not a named tensor; the file is malformed")
    return state


def _from_irevnet(path: Path, obj: dict, image_size: int | None) -> Checkpoint:
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: format_version is {shown(version)}, not a positive integer; the file is malformed")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this irevnet reads "
            f"({FORMAT_VERSION}); upgrade irevnet"
        )
    if "config" not in obj:
        raise CheckpointError(f"{path}: the checkpoint has no config; the file is malformed")
    state = _tensors(path, obj.get("state_dict"), "state_dict")
    raw = obj["config"]
    if isinstance(raw, dict) and isinstance(raw.get("blocks"), (list, tuple)):
        _check_block_count(path, raw["blocks"], state)  # before the config iterates its blocks
    config = IRevNetConfig.from_dict(raw)
    if image_size is not None:
        config = config.replace(in_shape=(config.in_shape[0], image_size, image_size))
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta is a {type(meta).__name__}, not a dict; the file is malformed")
    _check_normalization(path, meta, config.in_shape[0])
    training = obj.get("training")
    if training is not None and not isinstance(training, dict):
        raise CheckpointError(f"{path}: training is a {type(training).__name__}, not a dict; the file is malformed")
    model = _build(path, config, state)
    return Checkpoint(model, "irevnet", path, dict(meta), training)


def _check_block_count(path: Path, blocks: list, state: dict[str, torch.Tensor]) -> None:
    stored = {key.split(".")[1] for key in state if key.startswith("stack.")}
    declared = sum(b for b in blocks if isinstance(b, int)) if len(blocks) <= 64 else -1
    if declared != len(stored):
        raise CheckpointError(
            f"{path}: the config declares {declared} blocks, the weights hold {len(stored)}; the file is malformed"
        )


def _check_normalization(path: Path, meta: dict[str, Any], channels: int) -> None:
    """mean/std in meta become the bundle's normalisation: finite, per channel, std > 0; its
    dataset name, a short string (checked here, before an export does any work)."""
    dataset = meta.get("dataset")
    if dataset is not None and not (isinstance(dataset, str) and len(dataset) <= MAX_DATASET_NAME):
        raise CheckpointError(
            f"{path}: meta.dataset is {shown(dataset)}, not a name of at most {MAX_DATASET_NAME} characters; "
            f"the file is malformed (re-save it)"
        )
    if "mean" not in meta and "std" not in meta:
        return
    for name in ("mean", "std"):
        values = meta.get(name)
        ok = isinstance(values, (list, tuple)) and len(values) == channels and all(map(finite_number, values))
        if not ok or (name == "std" and min(values) <= 0):
            raise CheckpointError(
                f"{path}: meta.{name} must be {channels} finite numbers{' above 0' if name == 'std' else ''}; "
                f"the file is malformed (re-save it, or export with --dataset to take them from the data)"
            )


MAX_DATASET_NAME = 256  # meta.dataset: the dataset's name ("cifar10"), the manifest's normalization.dataset

MAX_WRAPPERS = 8  # DataParallel(DataParallel(...)) levels unwrapped at most


def _from_reference_cifar(path: Path, obj: dict, image_size: int | None) -> Checkpoint:
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
    meta = {k: _plain(obj[k]) for k in ("acc", "epoch") if k in obj}
    return _from_state_dict(path, state, "reference-cifar", meta, image_size, in_channels, init_ds, dropout)


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


def _from_state_dict(
    path: Path,
    state: dict[str, torch.Tensor],
    fmt: str,
    meta: dict[str, Any],
    image_size: int | None,
    in_channels: int | None,
    init_ds: int | None = None,
    dropout: float = 0.0,
) -> Checkpoint:
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config = infer_config(state, image_size=image_size, in_channels=in_channels, init_ds=init_ds, dropout=dropout)
    return Checkpoint(_build(path, config, state), fmt, path, meta)


def _build(path: Path, config: IRevNetConfig, state: dict[str, torch.Tensor]) -> IRevNet:
    """The model of `config` with the file's weights, after checking every key and shape.

    The check runs on `state_shapes(config)` before the model exists, so a config that asks
    for more than the file holds costs nothing.
    """
    expected = state_shapes(config)
    # Files from 2018 PyTorch have no BatchNorm `num_batches_tracked`; it only matters for
    # momentum=None, which no i-RevNet uses, so a missing one is filled with 0.
    state = dict(state)
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            f"the file is not an i-RevNet of this layout"
        )
    for key, t in state.items():
        if tuple(t.shape) != expected[key]:
            raise CheckpointError(f"{path}: {key} has shape {tuple(t.shape)}, the config needs {expected[key]}")
        if not (t.is_floating_point() or key.endswith("num_batches_tracked")):
            raise CheckpointError(f"{path}: {key} holds {t.dtype} values, not floating point; the file is malformed")
    model = IRevNet(config)
    model.load_state_dict(state)
    return model.eval()
