"""The training loop: the paper's SGD recipes, resumable, single- or multi-process.

Multi-GPU / multi-node: `torchrun --nproc-per-node N -m irevnet train ...` starts N processes;
each reads RANK / WORLD_SIZE / LOCAL_RANK from the environment, wraps the model in
DistributedDataParallel and trains on its DistributedSampler shard; rank 0 writes the files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ..devices import resolve_device
from ..errors import CheckFailed, IRevNetError
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.files import write_json
from ..model.config import get_config
from ..model.network import IRevNet
from .data import Datasets, load_datasets
from .distributed import Dist, init_distributed
from .evaluate import evaluate, topk_correct
from .options import TrainOptions
from .recipes import Recipe
from .records import RUN_IDENTITY, check_training_state, recorded_options, write_metrics

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class TrainResult:
    """A finished run: where its files are, its best held-out top-1 and the last epoch's metrics."""

    out: str
    best_top1: float  # percent, of the epoch best.pt holds
    final: dict[str, Any]  # the last epoch's row of metrics.jsonl
    epochs: int
    world_size: int
    rank: int  # this process's: only rank 0 reports

    def __str__(self) -> str:
        return f"best test top-1 {self.best_top1:.2f}% after {self.epochs} epochs; files in {self.out}/"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(opts: TrainOptions, observer: TrainObserver | None = None) -> TrainResult:
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
        recorded = recorded_options(out) or {}
        for key in RUN_IDENTITY:
            if key in recorded and recorded[key] != getattr(opts, key):
                raise IRevNetError(
                    f"the run in {out} trains {key} {recorded[key]!r}, not {getattr(opts, key)!r}; resume it with "
                    f"the same --{key} (or leave it out), or start a new run in another --out"
                )
        resumed = load_checkpoint(last)
        if resumed.training is None:
            raise IRevNetError(f"{last} has no training state to resume from")
        check_training_state(last, resumed.training)
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

    dist = init_distributed(device)
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
    model.memory_efficient = opts.memory_efficient  # irevnet.model.reversible; double backward is refused there
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
            write_metrics(out / "metrics.jsonl", history)
            observer.epoch_end(metrics)
        dist.barrier()
    final = history[-1] if history else {}
    return TrainResult(out=str(out), best_top1=best, final=final, epochs=len(history), world_size=dist.world,
                       rank=dist.rank)


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
        if not dist.all_true(bool(torch.isfinite(loss.detach())), device):  # every rank stops at the same step
            where = " on another process" if torch.isfinite(loss.detach()) else f": the loss is {float(loss.detach()):g}"
            raise Diverged(f"training diverged in epoch {epoch + 1}{where}; lower --lr "
                           f"(it was {optimizer.param_groups[0]['lr']:g}) or --weight-decay; no checkpoint of this epoch was written")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss_sum += float(loss.detach()) * len(y)
        correct += topk_correct(logits.detach(), y, 1)
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
