"""`irevnet triton` and `irevnet serve`: a bundle as a Triton model repository, served here."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from ..errors import CheckFailed
from ..serving.repository import CONFIG_OPTIONS, Flavour, InstanceKind, TritonOptions
from ..serving.server import ServeOptions
from . import render
from .app import command


@command
def triton(
    ctx: typer.Context,
    bundle: Annotated[str, typer.Argument(help="Bundle folder from `irevnet export`.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Repository folder to write (replaced whole on success).")],
    flavour: Annotated[
        Flavour, typer.Option(help="python (irevnet.runtime in Triton's python backend) | onnxruntime | openvino | "
                              "tensorrt (Triton's native backends).")
    ] = TritonOptions.flavour,
    name: Annotated[
        str | None, typer.Option(help="Model name prefix (default: the bundle folder's name).")
    ] = TritonOptions.name,
    backend: Annotated[
        str, typer.Option("--backend", "-b", help="python flavour: onnxruntime | openvino.")
    ] = TritonOptions.backend,
    instances: Annotated[int, typer.Option(help="Model instances per model.")] = TritonOptions.instances,
    instance_kind: Annotated[
        InstanceKind, typer.Option(help="Where the instances run.")
    ] = TritonOptions.instance_kind,
    dynamic_batching: Annotated[
        bool, typer.Option(help="Merge queued requests into one batch.")
    ] = TritonOptions.dynamic_batching,
    max_queue_delay_us: Annotated[
        int, typer.Option(help="Dynamic batching: longest wait for a fuller batch.")
    ] = TritonOptions.max_queue_delay_us,
    threads: Annotated[
        int | None, typer.Option(help="python flavour: intra-op threads per instance.")
    ] = TritonOptions.threads,
    version: Annotated[int | None, typer.Option(help="Add the bundle as this model version beside the repository's "
                                                     "others (default: version 1, alone).")] = TritonOptions.version,
) -> None:
    """Write a Triton model repository: NAME_forward, NAME_inverse and NAME_roundtrip.

    Example: `irevnet triton bundles/digits -o models && irevnet serve models`
    """
    from ..serving.repository import write_repository

    # with --version, what was not given on this command line is the repository's (by name: typer
    # vendors its own click, so its ParameterSource is not click's)
    inherit = tuple(n for n in CONFIG_OPTIONS if getattr(ctx.get_parameter_source(n), "name", "") != "COMMANDLINE")
    opts = TritonOptions(bundle=bundle, out=out, flavour=flavour, name=name, backend=backend, instances=instances,
                         instance_kind=instance_kind, dynamic_batching=dynamic_batching,
                         max_queue_delay_us=max_queue_delay_us, threads=threads, version=version, inherit=inherit)
    with render.console.status("writing the repository") as status:
        record = write_repository(opts, log=status.update)
    render.repository(record, out)


@command
def serve(
    target: Annotated[str, typer.Argument(help="A repository of `irevnet triton`, or a bundle (served from a temporary one).")],
    host: Annotated[str, typer.Option(help="Address to listen on. Beyond loopback, inference, health, metadata, "
                                           "configs and statistics are open to every host that reaches it, without "
                                           "TLS or authentication: put a proxy in front.")] = ServeOptions.host,
    http_port: Annotated[int, typer.Option(help="HTTP port (0: a free one).")] = ServeOptions.http_port,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: a free one).")] = ServeOptions.grpc_port,
    metrics_port: Annotated[
        int, typer.Option(help="Prometheus metrics port (0: a free one).")
    ] = ServeOptions.metrics_port,
    instances: Annotated[int, typer.Option(help="For a bundle: model instances per model.")] = ServeOptions.instances,
    python_env: Annotated[
        str | None, typer.Option(help="The server's environment (default: $IREVNET_TRITON_ENV, else one made on first "
                                 "use in the cache).")
    ] = ServeOptions.python_env,
    ready_timeout_s: Annotated[
        float, typer.Option(help="Give up when the models are not ready by then.")
    ] = ServeOptions.ready_timeout_s,
    drain_timeout_s: Annotated[
        float, typer.Option(help="After SIGTERM, how long requests in flight may take.")
    ] = ServeOptions.drain_timeout_s,
    restarts: Annotated[
        int, typer.Option(help="Restarts after a backend stub dies (within 10 minutes).")
    ] = ServeOptions.restarts,
    log: Annotated[str | None, typer.Option(help="Keep tritonserver's whole log in this file.")] = ServeOptions.log,
    verbose: Annotated[bool, typer.Option(help="Triton's info log.")] = ServeOptions.verbose,
) -> None:
    """Serve a repository with a real tritonserver until SIGTERM or Ctrl-C (requests in flight drain).

    Example: `irevnet serve models --http-port 8000 --log triton.log`
    """
    from ..serving.server import serve as run_server
    from ..serving.server import stop_report, wait_for_signal

    opts = ServeOptions(target=target, host=host, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port,
                        instances=instances, python_env=python_env, ready_timeout_s=ready_timeout_s,
                        drain_timeout_s=drain_timeout_s, restarts=restarts, log=log, verbose=verbose)
    # Ctrl-C stops serve in every phase, as SIGTERM does, also where serve was started with SIGINT
    # ignored (a background job of a non-interactive shell, `irevnet serve ... &`, inherits that):
    # once serving, wait_for_signal takes SIGINT whatever was inherited, and a SIGINT while the
    # models loaded was lost, the server then serving until SIGTERM
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with run_server(opts, log=render.console.print) as server:
            wait_for_signal(server, announce=render.serving, log=render.console.print,
                            ready_timeout_s=opts.ready_timeout_s)
    finally:
        signal.signal(signal.SIGINT, previous)
    report = stop_report(server)
    if not report:
        raise CheckFailed(str(report))
    render.console.print(str(report))


@command
def serve_env(
    folder: Annotated[str, typer.Argument(help="A new folder for the environment.")],
) -> None:
    """Make the server's environment ahead of time: tritonserver and the Python its python backend runs in.

    `irevnet serve` makes one on first use in the cache; this makes one where you choose.
    Example: `irevnet serve-env ~/triton-env && export IREVNET_TRITON_ENV=~/triton-env`
    """
    from ..serving.environment import make_env

    render.success(f"made {make_env(folder, log=render.console.print)}; pass --python-env {folder} or set "
                   f"IREVNET_TRITON_ENV")
