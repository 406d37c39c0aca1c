"""`irevnet train`: the PyTorch side (needs `irevnet[torch]`)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Annotated

import typer

from ..devices import Device
from ..training.recipes import RecipeName
from . import render
from .app import (
    DatasetOpt,
    DeviceOpt,
    command,
    options,
)


@command
def train(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="Preset to train (irevnet presets).")] = "irevnet-tiny",
    dataset: DatasetOpt = "digits",
    out: Annotated[str, typer.Option("--out", "-o", help="Run folder: last.pt, best.pt, metrics.jsonl, run.json.")] = "runs/irevnet",
    recipe: Annotated[RecipeName | None, typer.Option(help="The paper's SGD schedule to follow (default: by dataset).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Override the recipe's epochs.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Override the global batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Override the initial learning rate.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Override the weight decay.")] = None,
    seed: int = 0,
    device: DeviceOpt = Device.auto,
    amp: Annotated[bool, typer.Option(help="fp16 autocast with gradient scaling (CUDA).")] = False,
    channels_last: Annotated[bool | None, typer.Option(help="NHWC memory format (default: with CUDA + AMP).")] = None,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    resume: Annotated[
        bool, typer.Option(help="Continue the run in --out from last.pt, with its recorded options; flags given override.")
    ] = False,
    download: Annotated[bool, typer.Option(help="Download CIFAR if the folder lacks it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="One log line per epoch, no progress bar.")] = False,
    memory_efficient: Annotated[
        bool, typer.Option(help="Backpropagate through the block inverses: activation memory independent of depth.")
    ] = False,
) -> None:
    """Train an i-RevNet; resumable, and multi-GPU under torchrun.

    Example: `irevnet train -m irevnet-tiny -d digits -o runs/digits`

    Multi-GPU: `torchrun --nproc-per-node 8 -m irevnet train -m irevnet-301 -d imagefolder:/data/imagenet`
    """
    from ..training.loop import train as run_training
    from ..training.options import TrainOptions
    from ..training.records import resume_options

    opts = options(TrainOptions, ctx.params)
    if resume:  # the run's recorded options, except those given on this command line
        # by name: typer vendors its own click, so its ParameterSource is not click's
        given = {name for name in ctx.params if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
        opts = resume_options(out, **{k: v for k, v in dataclasses.asdict(opts).items() if k in given - {"out", "resume"}})
    if quiet:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    result = run_training(opts, None if quiet else render.ProgressBar())
    if result.rank == 0:
        render.console.print(str(result))
