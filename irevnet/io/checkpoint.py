"""Reading and writing checkpoints: irevnet's own format, and the entry point for every format.

Every file is read by irevnet.io.safe_unpickle, which executes no code from the file and changes no
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

from ..errors import CheckpointError, ConfigError, shown
from ..model.config import IRevNetConfig
from ..model.network import IRevNet, state_shapes
from ..validation import finite_number
from . import safe_unpickle
from .files import atomic_output, sha256_file
from .reference_checkpoints import PYTORCHCV_CLASSIFIER, from_pytorchcv, infer_config, plain, reference_cifar

FORMAT_NAME = "irevnet-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model (eval mode) and what the file said about itself."""

    model: IRevNet
    format: str  # "irevnet", "reference-imagenet", "reference-cifar", "pytorchcv" or "state-dict"
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
    from .._version import __version__

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
    """Parses torch.save bytes with irevnet's restricted unpickler (see irevnet.io.safe_unpickle)."""
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
    irevnet.io.safe_unpickle. The architecture is checked against the tensors' shapes before any
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
            ref = reference_cifar(path, obj, image_size)
            return _from_state_dict(path, ref.state, "reference-cifar", ref.meta, ref.image_size, ref.in_channels,
                                    ref.init_ds, ref.dropout)
        if isinstance(obj, dict) and "state_dict" in obj:
            meta = {k: plain(v) for k, v in obj.items() if k in ("epoch", "best_prec1", "arch")}
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


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's weights (every state_dict tensor by its sorted key): what identifies
    the model in a bundle's manifest and an evaluation's records, whatever file it came from."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
