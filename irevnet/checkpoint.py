"""Reading and writing checkpoints: irevnet's own format and the reference code's files.

Every file is read with `torch.load(weights_only=True)`, which executes no code from the file.
The reference CIFAR files pickle whole `nn.Module` objects; their classes are allowlisted under
their original names but mapped onto inert stand-ins that only collect the pickled attributes, so
neither the reference code nor torch.nn constructors run.

Formats:
  irevnet            {"format": "irevnet-checkpoint", "format_version", "config", "state_dict",
                      "training" (optional), "meta"}
  reference-imagenet ILSVRC_main.py: {"state_dict" (keys "module."...), "epoch", "best_prec1", ...}
  reference-cifar    CIFAR_main.py .t7: {"model": DataParallel(iRevNet), "acc", "epoch"}
  state-dict         a bare state dict in the reference's key layout
"""

from __future__ import annotations

import _compat_pickle
import pickle
import re
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import IRevNetConfig
from .errors import CheckpointError, ConfigError
from .files import atomic_output
from .model import IRevNet

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
    from . import __version__

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


class _Pickled:
    """Inert stand-in for a class named in a reference pickle; holds the pickled attributes."""

    qualified_name = ""
    dump_patches = False  # read by torch's legacy loader when it compares saved module sources

    def module(self, name: str) -> _Pickled | None:
        return self.__dict__.get("_modules", {}).get(name)


def _no_backend() -> None:
    """Stand-in for torch<=0.4's `_get_thnn_function_backend`, pickled into old nn.Modules."""


_REFERENCE_CLASSES = [
    "models.iRevNet.iRevNet",
    "models.iRevNet.irevnet_block",
    "models.model_utils.psi",
    "models.model_utils.injective_pad",
    "torch.nn.parallel.data_parallel.DataParallel",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.conv.Conv2d",
    "torch.nn.modules.batchnorm.BatchNorm2d",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.dropout.Dropout",
    "torch.nn.modules.linear.Linear",
    "torch.nn.modules.padding.ZeroPad2d",
]
_STAND_INS: dict[str, Any] = {
    name: type(name.rsplit(".", 1)[1], (_Pickled,), {"qualified_name": name}) for name in _REFERENCE_CLASSES
}
_STAND_INS["torch.nn.backends.thnn._get_thnn_function_backend"] = _no_backend


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only torch's weights-only allowlist (tensors, storages, dtypes, OrderedDict, ...)
    and the inert stand-ins; any other global is refused before anything is called."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol-2 pickles say __builtin__.set), mapped as pickle's own
        # find_class does; no Python 3 module has these names, so the mapping only renames.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        allowed = _STAND_INS.get(full) or _weights_only_allowlist().get(full)
        if allowed is None:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full}")
        return allowed


def _weights_only_allowlist() -> dict[str, Any]:
    from torch import _weights_only_unpickler

    return _weights_only_unpickler._get_allowed_globals()


def _restricted_load(file, **kwargs) -> Any:
    return _RestrictedUnpickler(file, **kwargs).load()


# What torch.load needs of a `pickle_module`.
_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler, load=_restricted_load, UnpicklingError=pickle.UnpicklingError, __name__="restricted"
)


def _torch_load(path: Path) -> Any:
    """torch.load that never executes code from the file.

    weights_only=True reads irevnet files, reference ImageNet files and zip-format .t7 files.
    Legacy-format (pre-1.6) files that pickle nn.Modules also record each module class's source
    as a persistent id, which the weights-only loader refuses; those are read through
    `_RestrictedUnpickler`, which resolves globals from the same allowlist plus the stand-ins.
    """
    try:
        try:
            with torch.serialization.safe_globals([(cls, name) for name, cls in _STAND_INS.items()]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            if "Only persistent_load of storage is allowed" not in str(e):
                raise
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "couldn't retrieve source code for container ..."
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(r"unrecognized function (\S+)", str(e))
        if refused:
            raise CheckpointError(
                f"{path}: refused to load, it names {refused.group(1)}, which is not a tensor or a "
                f"known i-RevNet/torch.nn class (loading never runs code from a file); "
                f"if you trust it, re-save its state_dict with the code that made it"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({_first_line(e)}); check the file") from None
    except Exception as e:  # noqa: BLE001 - corrupt bytes make the unpickler raise almost anything
        raise CheckpointError(
            f"{path}: truncated or corrupt checkpoint ({_first_line(e)}); re-download or re-save it"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def load_checkpoint(path: str | Path, *, image_size: int | None = None, in_channels: int | None = None) -> Checkpoint:
    """Loads any supported checkpoint into an `IRevNet` in eval mode.

    Args:
        path: a checkpoint file (see the module docstring for the formats).
        image_size: input height and width. Reference ImageNet files and bare state dicts do not
            store it (default 224 for 1000 classes, else 32); irevnet files do, and this overrides.
        in_channels: image channels for a reference state dict of an injective model, whose
            weights do not show it (default 3).
    Raises:
        CheckpointError: missing, corrupt, malicious or unrecognised file; the message says why.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file in it (e.g. {path / 'best.pt'})")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    obj = _torch_load(path)
    try:
        if isinstance(obj, dict) and obj.get("format") == FORMAT_NAME:
            return _from_irevnet(path, obj, image_size)
        if isinstance(obj, dict) and isinstance(obj.get("model"), _Pickled):
            return _from_reference_cifar(path, obj, image_size)
        if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            meta = {k: _plain(v) for k, v in obj.items() if k in ("epoch", "best_prec1", "arch")}
            return _from_state_dict(path, obj["state_dict"], "reference-imagenet", meta, image_size, in_channels)
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return _from_state_dict(path, obj, "state-dict", {}, image_size, in_channels)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    keys = sorted(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(
        f"{path}: unknown checkpoint layout ({keys}); expected an irevnet checkpoint, a reference "
        f"ImageNet file with 'state_dict', a reference CIFAR .t7 with 'model', or a bare state dict"
    )


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v


def _from_irevnet(path: Path, obj: dict, image_size: int | None) -> Checkpoint:
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this irevnet reads "
            f"({FORMAT_VERSION}); upgrade irevnet"
        )
    config = IRevNetConfig.from_dict(obj["config"])
    if image_size is not None:
        config = config.replace(in_shape=(config.in_shape[0], image_size, image_size))
    model = _build(path, config, obj["state_dict"])
    return Checkpoint(model, "irevnet", path, dict(obj.get("meta") or {}), obj.get("training"))


def _from_reference_cifar(path: Path, obj: dict, image_size: int | None) -> Checkpoint:
    net = obj["model"]
    while net.qualified_name.endswith("DataParallel"):
        net = net.module("module")
    if net is None or net.qualified_name != "models.iRevNet.iRevNet":
        raise CheckpointError(f"{path}: the pickled 'model' is not a reference iRevNet; cannot map it")
    state = _collect_state(net)
    attrs = net.__dict__
    init_ds = int(attrs.get("init_ds", 0))
    in_channels = int(attrs["in_ch"]) // (init_ds**2 if init_ds else 1) if "in_ch" in attrs else None
    if image_size is None and "ds" in attrs:
        # ds is z's spatial size: the image's divided by the total downsampling
        strides = [getattr(b, "stride", 1) for b in net.module("stack").__dict__["_modules"].values()]
        image_size = int(attrs["ds"]) * (init_ds or 1) * 2 ** strides.count(2)
    first = net.module("stack").module("0").module("bottleneck_block")
    dropout = next((float(m.p) for m in first.__dict__["_modules"].values() if m.qualified_name.endswith("Dropout")), 0.0)
    meta = {k: _plain(obj[k]) for k in ("acc", "epoch") if k in obj}
    return _from_state_dict(path, state, "reference-cifar", meta, image_size, in_channels, init_ds, dropout)


def _collect_state(obj: _Pickled, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a pickled module tree, as `nn.Module.state_dict` would name it."""
    attrs = obj.__dict__
    state = {}
    for name, p in attrs.get("_parameters", {}).items():
        if p is not None:
            state[prefix + name] = p.detach() if isinstance(p, torch.Tensor) else p
    skip = attrs.get("_non_persistent_buffers_set", set())
    for name, b in attrs.get("_buffers", {}).items():
        if b is not None and name not in skip:
            state[prefix + name] = b
    for name, child in attrs.get("_modules", {}).items():
        if isinstance(child, _Pickled):
            state.update(_collect_state(child, f"{prefix}{name}."))
    return state


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
    if "linear.weight" not in state:
        raise ConfigError("no classifier found (expected the key linear.weight)")
    layout = []  # (stride, out_ch, f_in, mult) per block
    for i in range(len(convs)):
        layers = [convs[i][k] for k in sorted(convs[i])]
        if len(layers) != 3:
            raise ConfigError(f"block {i} has {len(layers)} convolutions, an i-RevNet block has 3")
        f_in, inner, out_ch = layers[0].shape[1], layers[0].shape[0], layers[2].shape[0]
        if out_ch == f_in:
            stride = 1
        elif out_ch == 4 * f_in:
            stride = 2
        else:
            raise ConfigError(f"block {i} maps {f_in} to {out_ch} channels, which no i-RevNet block does")
        layout.append((stride, out_ch, f_in, out_ch // inner))
    blocks, strides, channels = [], [], []
    for i, (stride, out_ch, _, _) in enumerate(layout):
        if i == 0 or stride == 2 or out_ch != channels[-1]:
            blocks.append(0)
            strides.append(stride)
            channels.append(out_ch)
        blocks[-1] += 1
    num_classes, z_channels = state["linear.weight"].shape
    if image_size is None:
        image_size = 224 if num_classes == 1000 else 32
    stride0, out0, f_in0, _ = layout[0]
    c = in_channels or 3
    if init_ds is None:
        # The first block's input width is c * 4 after an initial psi and c without; a stride-1
        # injective first block hides it (its F sees the padded width), so prefer what fits.
        in_ch = 2 * f_in0 if stride0 == 2 else 2 * out0
        init_ds = 2 if in_ch == 4 * c else 0
    cfg = IRevNetConfig(
        blocks=tuple(blocks), strides=tuple(strides), channels=tuple(channels), init_ds=init_ds,
        mult=layout[0][3], num_classes=int(num_classes), in_shape=(c, image_size, image_size),
        dropout=dropout, affine_bn=affine,
    )
    if cfg.z_shape[0] != z_channels:
        raise ConfigError(f"classifier expects {z_channels} channels but the blocks produce {cfg.z_shape[0]}")
    return cfg


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
    model = IRevNet(config)
    # Files from 2018 PyTorch have no BatchNorm `num_batches_tracked`; it only matters for
    # momentum=None, which no i-RevNet uses, so a missing one is filled with 0.
    expected = model.state_dict()
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
        if t.shape != expected[key].shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(t.shape)}, the config needs {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state)
    return model.eval()
