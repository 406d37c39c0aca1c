"""`irevnet verify` and `irevnet bench`: judge and time bundles (no torch needed)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import CheckFailed
from ..runtime.bench import BenchOptions, Direction
from ..runtime.verify import VerifyOptions
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
    write_json,
)


@command
def verify(
    bundles: Annotated[list[str], typer.Argument(help="Bundle folder(s); several precisions of one model compare side by side.")],
    backends: BackendOpt = VerifyOptions.backends,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Held-out real images (read without torch); default: the "
                                 "bundle's reference samples.")
    ] = VerifyOptions.dataset,
    samples: Annotated[int, typer.Option(help="Images to check.")] = VerifyOptions.samples,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", "-c", help="Live PyTorch reference (default: the manifest's, when "
                                 "torch is installed).")
    ] = VerifyOptions.checkpoint,
    providers: ProviderOpt = VerifyOptions.providers,
    threads: ThreadsOpt = VerifyOptions.threads,
    device: DeviceOpt = VerifyOptions.device,
    blocks: Annotated[bool, typer.Option(help="Error per block from the debug graphs.")] = VerifyOptions.blocks,
    plot: Annotated[str | None, typer.Option(help="Write the error-vs-depth plot (PNG) here.")] = VerifyOptions.plot,
    rebuild: RebuildOpt = VerifyOptions.rebuild,
    server: ServerOpt = VerifyOptions.server,
    server_timeout_s: ServerTimeoutOpt = VerifyOptions.server_timeout_s,
    json: JsonOpt = None,
) -> None:
    """Check exported bundles: round trip, cross round trips, parity with PyTorch, error per block.

    Exits 1 when a check misses the bundle's tolerance. Runs without torch, against the
    reference samples stored in the bundle.

    Example: `irevnet verify bundles/fp32 bundles/mixed bundles/fp16 --plot blocks.png`
    """
    from ..runtime.verify import verify as run_verify

    opts = VerifyOptions(bundles=bundles, backends=backends, dataset=dataset, samples=samples, checkpoint=checkpoint,
                         providers=providers, threads=threads, device=device, blocks=blocks, plot=plot, rebuild=rebuild,
                         server=server, server_timeout_s=server_timeout_s)
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
    backends: BackendOpt = BenchOptions.backends,
    direction: Annotated[Direction, typer.Option(help="Which graphs to time.")] = BenchOptions.direction,
    batch_sizes: Annotated[
        str | None, typer.Option(help="Comma-separated batch sizes (default: 1 and 8, within the bundle's --max-batch).")
    ] = BenchOptions.batch_sizes,
    warmup_s: Annotated[float, typer.Option(
        help="Warm-up seconds per measurement (one call at least; 0: none).")] = BenchOptions.warmup_s,
    duration_s: Annotated[float, typer.Option(help="Measured seconds per measurement.")] = BenchOptions.duration_s,
    iterations: Annotated[
        int | None, typer.Option(help="Measure this many runs instead of --duration-s.")
    ] = BenchOptions.iterations,
    providers: ProviderOpt = BenchOptions.providers,
    threads: ThreadsOpt = BenchOptions.threads,
    device: DeviceOpt = BenchOptions.device,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", "-c", help="For --backend torch (default: the manifest's).")
    ] = BenchOptions.checkpoint,
    rebuild: RebuildOpt = BenchOptions.rebuild,
    server: ServerOpt = BenchOptions.server,
    server_timeout_s: ServerTimeoutOpt = BenchOptions.server_timeout_s,
    concurrency: Annotated[str | None, typer.Option(help="With --server: comma-separated numbers of concurrent "
                                                         "clients, e.g. 1,4,16.")] = BenchOptions.concurrency,
    requests: Annotated[
        int, typer.Option(help="With --concurrency: requests per client and level.")
    ] = BenchOptions.requests,
    json: JsonOpt = None,
) -> None:
    """Latency percentiles and throughput of the bundles' graphs, side by side per backend.

    Example: `irevnet bench bundles/fp32 bundles/int8 -b onnxruntime -b openvino --batch-sizes 1,32`
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..runtime.bench import bench as run_bench

    opts = BenchOptions(bundles=bundles, backends=backends, direction=direction,
                        batch_sizes=integers("--batch-sizes", batch_sizes), warmup_s=warmup_s, duration_s=duration_s,
                        iterations=iterations, providers=providers, threads=threads, device=device,
                        checkpoint=checkpoint, rebuild=rebuild, server=server, server_timeout_s=server_timeout_s,
                        concurrency=integers("--concurrency", concurrency), requests=requests)
    check_outputs(json)
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn(), console=render.console,
                  transient=True) as p:
        task = p.add_task("bench", total=1.0)
        result = run_bench(opts, progress=lambda what, frac: p.update(task, description=what, completed=frac))
    render.bench(result)
    write_json(json, result.to_dict())
