"""`irevnet train`: the PyTorch side (needs `irevnet[torch]`)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Annotated

import typer

from ..training.options import TrainOptions
from ..training.recipes import RecipeName
from . import render
from .app import DatasetOpt, DeviceOpt, command


@command
def train(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", "-m", help="Preset to train (irevnet presets).")
    ] = TrainOptions.model,
    dataset: DatasetOpt = TrainOptions.dataset,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Run folder: last.pt, best.pt, metrics.jsonl, run.json.")
    ] = TrainOptions.out,
    recipe: Annotated[
        RecipeName | None, typer.Option(help="The paper's SGD schedule to follow (default: by dataset).")
    ] = TrainOptions.recipe,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = TrainOptions.epochs,
    batch_size: Annotated[int | None, typer.Option(help="Override the global batch size.")] = TrainOptions.batch_size,
    lr: Annotated[float | None, typer.Option(help="Override the initial learning rate.")] = TrainOptions.lr,
    weight_decay: Annotated[float | None, typer.Option(help="Override the weight decay.")] = TrainOptions.weight_decay,
    seed: int = TrainOptions.seed,
    device: DeviceOpt = TrainOptions.device,
    amp: Annotated[bool, typer.Option(help="fp16 autocast with gradient scaling (CUDA).")] = TrainOptions.amp,
    channels_last: Annotated[
        bool | None, typer.Option(help="NHWC memory format (default: with CUDA + AMP).")
    ] = TrainOptions.channels_last,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = TrainOptions.workers,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from last.pt, with its recorded options; flags given override.")
    ] = TrainOptions.resume,
    download: Annotated[bool, typer.Option(help="Download CIFAR if the folder lacks it.")] = TrainOptions.download,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="One log line per epoch, no progress bar.")] = False,
    memory_efficient: Annotated[
        bool, typer.Option(help="Backpropagate through the block inverses: activation memory independent of depth.")
    ] = TrainOptions.memory_efficient,
) -> None:
    """Train an i-RevNet; resumable, and multi-GPU under torchrun.

    Example: `irevnet train -m irevnet-tiny -d digits -o runs/digits`

    Multi-GPU: `torchrun --nproc-per-node 8 -m irevnet train -m irevnet-301 -d imagefolder:/data/imagenet`
    """
    from ..training.loop import train as run_training
    from ..training.records import resume_options

    opts = TrainOptions(model=model, dataset=dataset, out=out, recipe=recipe, epochs=epochs, batch_size=batch_size,
                        lr=lr, weight_decay=weight_decay, seed=seed, device=device, amp=amp,
                        channels_last=channels_last, workers=workers, resume=resume, download=download,
                        memory_efficient=memory_efficient)
    if resume:  # the run's recorded options, except those given on this command line
        # by name: typer vendors its own click, so its ParameterSource is not click's
        given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        opts = resume_options(out, **{k: v for k, v in dataclasses.asdict(opts).items() if k in given - {"out", "resume"}})
    if quiet:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    result = run_training(opts, None if quiet else render.ProgressBar())
    if result.rank == 0:
        render.console.print(str(result))
