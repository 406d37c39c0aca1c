"""`irevnet verify` and `irevnet bench`: judge and time bundles (no torch needed)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..devices import Device
from ..errors import CheckFailed
from ..runtime.bench import Direction
from . import render
from .app import (
    BackendOpt,
    DeviceOpt,
    JsonOpt,
    ProviderOpt,
    RebuildOpt,
    ServerOpt,
    ServerTimeoutOpt,
    ThreadsOpt,
    check_outputs,
    command,
    integers,
    options,
    write_json,
)


@command
def verify(
    bundles: Annotated[list[str], typer.Argument(help="Bundle folder(s); several precisions of one model compare side by side.")],
    backends: BackendOpt = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="Held-out real images (read without torch); default: the bundle's reference samples.")] = None,
    samples: Annotated[int, typer.Option(help="Images to check.")] = 8,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", help="Live PyTorch reference (default: the manifest's, when torch is installed).")] = None,
    providers: ProviderOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = Device.auto,
    blocks: Annotated[bool, typer.Option(help="Error per block from the debug graphs.")] = True,
    plot: Annotated[str | None, typer.Option(help="Write the error-vs-depth plot (PNG) here.")] = None,
    rebuild: RebuildOpt = False,
    server: ServerOpt = None,
    server_timeout_s: ServerTimeoutOpt = 60.0,
    json: JsonOpt = None,
) -> None:
    """Check exported bundles: round trip, cross round trips, parity with PyTorch, error per block.

    Exits 1 when a check misses the bundle's tolerance. Runs without torch, against the
    reference samples stored in the bundle.

    Example: `irevnet verify bundles/fp32 bundles/mixed bundles/fp16 --plot blocks.png`
    """
    from ..runtime.verify import VerifyOptions
    from ..runtime.verify import verify as run_verify

    opts = options(VerifyOptions, locals())
    check_outputs(plot, json)
    with render.console.status("verifying") as status:
        result = run_verify(opts, log=lambda msg: status.update(msg))
    render.verification(result)
    write_json(json, result.to_dict())
    if not result:
        raise CheckFailed("verify failed: see the FAIL rows above")
    render.success("verify passed")


@command
def bench(
    bundles: Annotated[list[str], typer.Argument(help="Bundle folders of one model (say fp32, mixed, int8), side by side.")],
    backends: BackendOpt = None,
    direction: Annotated[Direction, typer.Option(help="Which graphs to time.")] = Direction.both,
    batch_sizes: Annotated[
        str | None, typer.Option(help="Comma-separated batch sizes (default: 1 and 8, within the bundle's --max-batch).")
    ] = None,
    warmup_s: Annotated[float, typer.Option(help="Warm-up seconds per measurement.")] = 1.0,
    duration_s: Annotated[float, typer.Option(help="Measured seconds per measurement.")] = 3.0,
    iterations: Annotated[int | None, typer.Option(help="Measure this many runs instead of --duration-s.")] = None,
    providers: ProviderOpt = None,
    threads: ThreadsOpt = None,
    device: DeviceOpt = Device.auto,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", "-c", help="For --backend torch (default: the manifest's).")] = None,
    rebuild: RebuildOpt = False,
    server: ServerOpt = None,
    server_timeout_s: ServerTimeoutOpt = 60.0,
    concurrency: Annotated[str | None, typer.Option(help="With --server: comma-separated numbers of concurrent "
                                                         "clients, e.g. 1,4,16.")] = None,
    requests: Annotated[int, typer.Option(help="With --concurrency: requests per client and level.")] = 200,
    json: JsonOpt = None,
) -> None:
    """Latency percentiles and throughput of the bundles' graphs, side by side per backend.

    Example: `irevnet bench bundles/fp32 bundles/int8 -b onnxruntime -b openvino --batch-sizes 1,32`
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..runtime.bench import BenchOptions
    from ..runtime.bench import bench as run_bench

    opts = options(BenchOptions, locals(), batch_sizes=integers("--batch-sizes", batch_sizes),
                   concurrency=integers("--concurrency", concurrency))
    check_outputs(json)
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn(), console=render.console,
                  transient=True) as p:
        task = p.add_task("bench", total=1.0)
        result = run_bench(opts, progress=lambda what, frac: p.update(task, description=what, completed=frac))
    render.bench(result)
    write_json(json, result.to_dict())
