"""`irevnet memory` (training-step memory, standard vs memory-efficient) and `irevnet demo`."""

from __future__ import annotations

from typing import Annotated

import typer

from ..demo import DemoOptions
from ..errors import CheckFailed
from ..training.options import MemoryOptions
from . import render
from .app import DeviceOpt, ImageSizeOpt, JsonOpt, check_outputs, command, write_json


@command
def memory(
    presets: Annotated[
        list[str], typer.Option("--model", "-m", help="Presets to measure (repeatable).", show_default=False)
    ] = MemoryOptions.presets,
    batch_size: Annotated[int, typer.Option(help="Batch of the measured training step.")] = MemoryOptions.batch_size,
    image_size: ImageSizeOpt = MemoryOptions.image_size,
    device: DeviceOpt = MemoryOptions.device,
    json: JsonOpt = None,
) -> None:
    """Activation memory and time of one training step: standard backprop vs --memory-efficient.

    Each measurement runs in a fresh process. On the CPU, activation memory is the peak resident
    memory during the step minus the resident memory before it (parameters, gradients and
    momentum already allocated); on CUDA, max allocated minus allocated before.

    Example: `irevnet memory -m irevnet-301 -m irevnet-cifar --batch-size 32`
    """
    from ..training.memory import compare_memory

    opts = MemoryOptions(presets=presets, batch_size=batch_size, image_size=image_size, device=device)
    check_outputs(json)
    with render.console.status("measuring") as status:
        rows = compare_memory(opts, progress=status.update)
    render.memory(rows)
    write_json(json, {"results": rows})


@command
def demo(
    out: Annotated[
        str, typer.Option("--out", "-o", help="Folder for the run, bundles and pictures.")
    ] = DemoOptions.out,
    fast: Annotated[
        bool, typer.Option(help="Under a minute: 6 epochs, fp32 only, a shorter bench.")
    ] = DemoOptions.fast,
) -> None:
    """The whole pipeline on the bundled real digits, no download: train, evaluate, export,
    verify, invert, bench.

    Example: `irevnet demo --out demo-out`
    """
    from ..demo import run_demo

    summary = run_demo(DemoOptions(out=out, fast=fast), render.demo_step, render.ProgressBar())
    render.demo_summary(summary)
    if not summary["verify_passed"]:
        raise CheckFailed("the demo's verification failed; see the tables above")
