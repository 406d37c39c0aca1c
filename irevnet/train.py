"""Training and evaluation: the paper's SGD recipes, resumable, single- or multi-process.

Multi-GPU / multi-node: `torchrun --nproc-per-node N -m irevnet train ...` starts N processes;
each reads RANK / WORLD_SIZE / LOCAL_RANK from the environment, wraps the model in
DistributedDataParallel and trains on its DistributedSampler shard; rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shlex
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from . import validation as check
from .checkpoint import load_checkpoint, save_checkpoint
from .config import get_config
from .data import Datasets, load_datasets, parse_spec
from .devices import Device, resolve_device
from .errors import CheckFailed, IRevNetError, shown
from .files import atomic_output, write_json
from .model import IRevNet
from .recipes import DEFAULT_RECIPE, RECIPES, Recipe, RecipeName

log = logging.getLogger(__name__)


MAX_SEED = 2**32 - 1  # numpy's and most tools' seed range; torch's is wider

@dataclass(frozen=True)
class TrainOptions:
    """Everything a training run depends on; written to run.json beside the checkpoints."""

    model: str = "irevnet-tiny"  # preset name
    dataset: str = "digits"  # spec, see irevnet.data
    out: str = "runs/irevnet"
    recipe: str | None = None  # default by dataset (DEFAULT_RECIPE)
    epochs: int | None = None  # overrides of the recipe
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False  # fp16 autocast + grad scaling, CUDA only
    channels_last: bool | None = None  # default: on with CUDA + AMP, where tensor cores want NHWC
    workers: int = 0  # DataLoader worker processes
    resume: bool = False  # continue from OUT/last.pt
    download: bool = False  # fetch CIFAR when missing
    memory_efficient: bool = False  # backprop through block inverses (irevnet.reversible)

    def __post_init__(self) -> None:
        check.paths(self, "out")
        parse_spec(self.dataset)
        get_config(self.model)  # an unknown preset names the choices
        for name, enum in (("recipe", RecipeName), ("device", Device)):
            if getattr(self, name) is not None:  # plain strings in run.json
                object.__setattr__(self, name, check.choice(name, getattr(self, name), enum).value)
        check.integer("epochs", self.epochs, 1, 100_000, optional=True)
        check.integer("batch_size", self.batch_size, 1, 1 << 20, optional=True)
        check.number("lr", self.lr, 0.0, low_open=True, optional=True)
        check.number("weight_decay", self.weight_decay, 0.0, 1.0, optional=True)
        check.integer("seed", self.seed, 0, MAX_SEED)
        check.integer("workers", self.workers, 0, 256)

    def resolved_recipe(self) -> Recipe:
        r = RECIPES[RecipeName(self.recipe or DEFAULT_RECIPE[parse_spec(self.dataset)[0]])]
        overrides = {
            k: v for k, v in (("epochs", self.epochs), ("batch_size", self.batch_size), ("lr", self.lr),
                              ("weight_decay", self.weight_decay)) if v is not None
        }
        return dataclasses.replace(r, **overrides)


class Diverged(CheckFailed):
    """The loss became NaN or infinite: training stops before anything of that epoch is saved."""


class TrainObserver(Protocol):
    """Receives progress; the CLI shows a progress bar, the default logs one line per epoch."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, loss: float, top1: float, images_per_s: float) -> None: ...
    def epoch_end(self, metrics: dict[str, Any]) -> None: ...


class LogObserver:
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step(self, loss: float, top1: float, images_per_s: float) -> None:
        pass

    def epoch_end(self, m: dict[str, Any]) -> None:
        log.info(
            "epoch %d: loss %.4f, test top-1 %.2f%%, top-5 %.2f%%, %.0f img/s",
            m["epoch"], m["train_loss"], m["test_top1"], m["test_top5"], m["images_per_s"],
        )


# -- distributed helpers -----------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()


def _init_distributed(device: torch.device) -> Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend)
    return Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))




class _Shard(Sampler[int]):
    """Indices rank, rank + world, ...: every test image evaluated exactly once across processes."""

    def __init__(self, n: int, dist: Dist):
        self.indices = range(dist.rank, n, dist.world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# -- evaluation --------------------------------------------------------------------------------


def _topk_correct(logits: torch.Tensor, target: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    return float((logits.topk(k, dim=1).indices == target[:, None]).any(dim=1).sum())


@torch.no_grad()
def evaluate(
    model: nn.Module, dataset: Dataset, device: torch.device, *, batch_size: int = 256, workers: int = 0,
    dist: Dist | None = None, amp: bool = False,
) -> dict[str, float]:
    """Loss, top-1 and top-5 (percent) of `model` over `dataset`, sharded across processes."""
    dist = dist or Dist()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=_Shard(len(dataset), dist), num_workers=workers)
    model.eval()
    loss = top1 = top5 = n = 0.0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = model(x)[0].float()
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top1 += _topk_correct(logits, y, 1)
        top5 += _topk_correct(logits, y, 5)
        n += len(y)
    loss, top1, top5, n = dist.sum([loss, top1, top5, n], device)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n, "images": int(n)}


@dataclass(frozen=True)
class EvaluateOptions:
    checkpoint: str
    dataset: str = "digits"  # spec, see irevnet.data
    image_size: int | None = None  # for reference files that do not store it
    batch_size: int = 256
    workers: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        check.paths(self, "checkpoint")
        object.__setattr__(self, "device", check.choice("device", self.device, Device).value)
        parse_spec(self.dataset)
        check.integer("image_size", self.image_size, 1, optional=True)
        check.integer("batch_size", self.batch_size, 1, 1 << 16)
        check.integer("workers", self.workers, 0, 256)


def evaluate_checkpoint(opts: EvaluateOptions) -> dict[str, float]:
    """Loss, top-1 and top-5 of a checkpoint on a dataset's test split (the class counts must match)."""
    ckpt = load_checkpoint(opts.checkpoint, image_size=opts.image_size)
    data = load_datasets(opts.dataset, ckpt.config.in_shape, augment=False)
    if data.num_classes != ckpt.config.num_classes:
        raise IRevNetError(
            f"{opts.checkpoint} has {ckpt.config.num_classes} classes but {opts.dataset} has {data.num_classes}; "
            f"evaluate on the dataset it was trained on"
        )
    device = resolve_device(opts.device)
    return evaluate(ckpt.model.to(device), data.test, device, batch_size=opts.batch_size, workers=opts.workers)


# -- training ----------------------------------------------------------------------------------


def _epoch_seed(opts: TrainOptions, epoch: int) -> int:
    # Seeding per epoch makes a resumed run draw the same shuffles, crops and dropout masks as an
    # uninterrupted one.
    return opts.seed * 100_003 + epoch


def _seed(opts: TrainOptions, epoch: int) -> None:
    torch.manual_seed(_epoch_seed(opts, epoch))


def _train_loader(data: Datasets, opts: TrainOptions, recipe: Recipe, dist: Dist, epoch: int) -> DataLoader:
    if recipe.batch_size % dist.world:
        raise IRevNetError(f"--batch-size {recipe.batch_size} is not divisible by the {dist.world} processes")
    if dist.world > 1:
        sampler = torch.utils.data.DistributedSampler(data.train, dist.world, dist.rank, shuffle=True, seed=opts.seed)
        sampler.set_epoch(epoch)
    else:
        sampler = RandomSampler(data.train, generator=torch.Generator().manual_seed(_epoch_seed(opts, epoch)))
    return DataLoader(
        data.train, batch_size=recipe.batch_size // dist.world, sampler=sampler, num_workers=opts.workers,
        drop_last=True, pin_memory=torch.cuda.is_available(), persistent_workers=False,
    )


# Options that define what a run learns; resuming with others would mix two runs in one folder.
_RUN_IDENTITY = ("model", "dataset")


def _recorded_options(out: Path) -> dict[str, Any] | None:
    """The options in OUT/run.json, or None when the folder has no run record."""
    path = out / "run.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested without end
        record = None
    options = record.get("options") if isinstance(record, dict) else None
    if not isinstance(options, dict):
        raise IRevNetError(f"{path} is not a run record of `irevnet train`; start a new run in another --out")
    return options


def _option_type(name: str) -> tuple[type, bool]:
    """The type of a TrainOptions field and whether it may be None, from its annotation."""
    hint = typing.get_type_hints(TrainOptions)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0], type(None) in typing.get_args(hint)


def _fits(value: Any, kind: type, optional: bool) -> bool:
    """A value from run.json has the field's type (JSON has no float/int distinction for floats)."""
    if value is None:
        return optional
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def _check_training_state(path: Path, state: dict[str, Any]) -> None:
    """The resume state of last.pt, checked before any of it is applied."""
    kinds = {"epoch": int, "optimizer": dict, "scheduler": dict, "history": list, "best_top1": (int, float)}
    for key, kind in kinds.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise IRevNetError(f"{path}: resume state {key!r} is missing or malformed; start a new run in another --out")
    if state["epoch"] < 0 or not all(isinstance(m, dict) for m in state["history"]):
        raise IRevNetError(f"{path}: resume state 'epoch' or 'history' is malformed; start a new run in another --out")
    # the history is written to metrics.jsonl as strict JSON after every epoch: a NaN in it would
    # fail there, after an epoch of training, and best.pt would never be written
    for number, metrics in enumerate(state["history"], 1):
        bad = [k for k, v in metrics.items() if not isinstance(k, str) or not check.finite_number(v)]
        if bad:
            raise IRevNetError(f"{path}: resume history entry {number} holds {shown(bad[0])} = {shown(metrics[bad[0]])}, "
                               f"not a finite number; start a new run in another --out")
    if not check.finite_number(state["best_top1"]):
        raise IRevNetError(f"{path}: resume state 'best_top1' is not a finite number; start a new run in another --out")


RUN_FILES = {"run.json", "last.pt", "best.pt", "metrics.jsonl"}


def is_run_folder(path: Path) -> bool:
    """True when `path` holds a training run of irevnet's and nothing else (what `irevnet demo`
    may replace): a run.json record of `irevnet train` and its checkpoints and metrics."""
    try:
        record = json.loads((path / "run.json").read_text())
    except (OSError, ValueError, RecursionError):
        return False
    if not (isinstance(record, dict) and isinstance(record.get("options"), dict) and isinstance(record.get("command"), str)):
        return False
    return all(entry.name in RUN_FILES or entry.name.startswith(".") for entry in path.iterdir())


def resume_options(out: str | Path, **changes: Any) -> TrainOptions:
    """The options the run in `out` was started with (its run.json), with `changes` applied.

    `irevnet train -o OUT --resume` continues a run as it was started: an interrupted CIFAR run
    does not resume on the default dataset or learning rate. Flags given with --resume change
    only themselves (e.g. `--epochs 300` to train longer, `--workers 8` on another machine).
    """
    recorded = _recorded_options(Path(out))
    if recorded is None:
        raise IRevNetError(f"--resume but {Path(out) / 'run.json'} does not exist; start the run without --resume")
    fields = {f.name for f in dataclasses.fields(TrainOptions)}
    merged = {k: v for k, v in recorded.items() if k in fields}
    for key, value in merged.items():
        kind, optional = _option_type(key)
        if not _fits(value, kind, optional):
            raise IRevNetError(
                f"{Path(out) / 'run.json'}: option {key!r} is {str(value)[:40]!r}, not a {kind.__name__}"
                f"{'?' if optional else ''}; the run record is corrupt, so start a new run in another --out"
            )
    merged.update(changes, out=str(out), resume=True)
    return TrainOptions(**merged)


def train(opts: TrainOptions, observer: TrainObserver | None = None) -> dict[str, Any]:
    """Trains (or resumes) a run into `opts.out`; returns the final metrics and file paths.

    Files: last.pt (every epoch, atomic, with optimizer and scheduler state), best.pt (best test
    top-1), metrics.jsonl (one line per epoch), run.json (options, recipe, config, command).
    """
    observer = observer or LogObserver()
    out = Path(opts.out)
    recipe = opts.resolved_recipe()
    device = resolve_device(opts.device, int(os.environ.get("LOCAL_RANK", "0")))
    if opts.amp and device.type != "cuda":
        raise IRevNetError("--amp needs a CUDA device (fp16 autocast); drop --amp on CPU")
    if out.exists() and not out.is_dir():
        raise IRevNetError(f"--out {out} is a file; give a folder for the run's checkpoints and metrics")
    last = out / "last.pt"
    resumed = None
    if opts.resume:
        if not last.is_file():
            raise IRevNetError(f"--resume but {last} does not exist; start the run without --resume")
        recorded = _recorded_options(out) or {}
        for key in _RUN_IDENTITY:
            if key in recorded and recorded[key] != getattr(opts, key):
                raise IRevNetError(
                    f"the run in {out} trains {key} {recorded[key]!r}, not {getattr(opts, key)!r}; resume it with "
                    f"the same --{key} (or leave it out), or start a new run in another --out"
                )
        resumed = load_checkpoint(last)
        if resumed.training is None:
            raise IRevNetError(f"{last} has no training state to resume from")
        _check_training_state(last, resumed.training)
        done = resumed.training["epoch"]
        if recipe.epochs <= done:
            raise IRevNetError(
                f"the run in {out} has trained {done} epochs already; --epochs {recipe.epochs} leaves nothing to resume "
                f"(give more epochs)"
            )
        config = resumed.config
    else:
        if last.exists():
            raise IRevNetError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
        overrides = {"dropout": recipe.dropout} if recipe.dropout is not None else {}
        config = get_config(opts.model, **overrides)

    dist = _init_distributed(device)
    try:
        return _run(opts, recipe, config, device, dist, resumed, observer)
    finally:
        if dist.world > 1:
            torch.distributed.destroy_process_group()


def _run(opts, recipe, config, device, dist, resumed, observer) -> dict[str, Any]:
    out = Path(opts.out)
    if dist.main and opts.download:
        load_datasets(opts.dataset, config.in_shape, download=True)  # fetch once, before the others read
    dist.barrier()
    data = load_datasets(opts.dataset, config.in_shape, augment=True)
    if len(data.train) < recipe.batch_size:
        raise IRevNetError(
            f"--batch-size {recipe.batch_size} is larger than the {len(data.train)} training images of "
            f"{opts.dataset} (no full batch, so no step); use at most {len(data.train)}"
        )
    if data.num_classes != config.num_classes:
        config = config.replace(num_classes=data.num_classes)
    _seed(opts, -1)
    model = IRevNet(config).to(device)
    if resumed is not None:
        model.load_state_dict(resumed.model.state_dict())
    channels_last = opts.channels_last if opts.channels_last is not None else (device.type == "cuda" and opts.amp)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.memory_efficient = opts.memory_efficient  # irevnet.reversible; double backward is refused there
    net: nn.Module = model
    if dist.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(recipe.milestones), recipe.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=opts.amp)
    history: list[dict[str, Any]] = []
    best = -1.0
    start = 0
    if resumed is not None:
        state = resumed.training
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if opts.amp and "grad_scaler" in state:
                scaler.load_state_dict(state["grad_scaler"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError, AttributeError) as e:
            raise IRevNetError(
                f"{out / 'last.pt'}: its optimizer or scheduler state does not fit the model ({str(e)[:120]}); "
                f"start a new run in another --out"
            ) from None
        history, best, start = list(state["history"]), float(state["best_top1"]), int(state["epoch"])
    if dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "run.json", {
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "options": dataclasses.asdict(opts),
            "recipe": dataclasses.asdict(recipe),
            "config": config.to_dict(),
            "world_size": dist.world,
            "device": str(device),
            "torch": torch.__version__,
        })
    meta = {**data.normalization(), "preset": opts.model}

    for epoch in range(start, recipe.epochs):
        _seed(opts, epoch)
        loader = _train_loader(data, opts, recipe, dist, epoch)
        observer_active = observer if dist.main else None
        train_stats = _train_epoch(net, loader, optimizer, scaler, device, opts, channels_last, observer_active,
                                   epoch, recipe.epochs, dist)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        test = evaluate(net, data.test, device, workers=opts.workers, dist=dist, amp=opts.amp)
        metrics = {"epoch": epoch + 1, "lr": lr, **train_stats, **{f"test_{k}": v for k, v in test.items()}}
        if not all(math.isfinite(v) for v in metrics.values()):
            raise Diverged(f"training diverged in epoch {epoch + 1}: the test loss is {metrics['test_loss']:g}; lower "
                           f"--lr or --weight-decay; no checkpoint of this epoch was written")
        history.append(metrics)
        improved = metrics["test_top1"] > best
        best = max(best, metrics["test_top1"])
        if dist.main:
            training = {
                "epoch": epoch + 1, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "grad_scaler": scaler.state_dict(), "history": history, "best_top1": best,
                "options": dataclasses.asdict(opts),
            }
            epoch_meta = {**meta, "epoch": epoch + 1, "top1": metrics["test_top1"], "top5": metrics["test_top5"]}
            save_checkpoint(out / "last.pt", model, training=training, meta=epoch_meta)
            if improved:
                save_checkpoint(out / "best.pt", model, meta=epoch_meta)
            _write_metrics(out / "metrics.jsonl", history)
            observer.epoch_end(metrics)
        dist.barrier()
    final = history[-1] if history else {}
    return {
        "out": str(out), "best_top1": best, "final": final, "epochs": len(history),
        "world_size": dist.world, "rank": dist.rank,
    }


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    import json

    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(m, allow_nan=False) + "\n" for m in history))  # strict JSON, always


def _train_epoch(net, loader, optimizer, scaler, device, opts, channels_last, observer, epoch, epochs, dist) -> dict:
    net.train()
    if observer:
        observer.epoch_start(epoch + 1, epochs, len(loader))
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.float16, enabled=opts.amp):
            logits = net(x)[0]
            loss = nn.functional.cross_entropy(logits.float(), y)
        if not torch.isfinite(loss.detach()):
            raise Diverged(f"training diverged in epoch {epoch + 1}: the loss is {float(loss.detach()):g}; lower --lr "
                           f"(it was {optimizer.param_groups[0]['lr']:g}) or --weight-decay; no checkpoint of this epoch was written")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += float(loss.detach()) * len(y)
        correct += _topk_correct(logits.detach(), y, 1)
        seen += len(y)
        if observer:
            observer.step(loss_sum / seen, 100 * correct / seen, seen / (time.perf_counter() - start))
    elapsed = time.perf_counter() - start
    loss_sum, correct, seen = dist.sum([loss_sum, correct, seen], device)  # over all processes
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1": 100 * correct / max(seen, 1),
        "images_per_s": seen / elapsed if elapsed > 0 else 0.0,
        "epoch_seconds": elapsed,
    }
