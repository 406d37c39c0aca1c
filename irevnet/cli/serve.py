"""`irevnet triton` and `irevnet serve`: a bundle as a Triton model repository, served here."""

from __future__ import annotations

from typing import Annotated

import typer

from ..errors import CheckFailed
from ..serving.repository import Flavour, InstanceKind
from . import render
from .app import command, options


@command
def triton(
    ctx: typer.Context,
    bundle: Annotated[str, typer.Argument(help="Bundle folder from `irevnet export`.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Repository folder to write (replaced whole on success).")],
    flavour: Annotated[Flavour, typer.Option(help="python (irevnet.runtime in Triton's python backend) | onnxruntime | "
                                                  "openvino | tensorrt (Triton's native backends).")] = Flavour.python,
    name: Annotated[str | None, typer.Option(help="Model name prefix (default: the bundle folder's name).")] = None,
    backend: Annotated[str, typer.Option("--backend", "-b", help="python flavour: onnxruntime | openvino.")] = "onnxruntime",
    instances: Annotated[int, typer.Option(help="Model instances per model.")] = 1,
    instance_kind: Annotated[InstanceKind, typer.Option(help="Where the instances run.")] = InstanceKind.cpu,
    dynamic_batching: Annotated[bool, typer.Option(help="Merge queued requests into one batch.")] = True,
    max_queue_delay_us: Annotated[int, typer.Option(help="Dynamic batching: longest wait for a fuller batch.")] = 0,
    threads: Annotated[int | None, typer.Option(help="python flavour: intra-op threads per instance.")] = None,
    version: Annotated[int | None, typer.Option(help="Add the bundle as this model version beside the repository's "
                                                     "others (default: version 1, alone).")] = None,
) -> None:
    """Write a Triton model repository: NAME_forward, NAME_inverse and NAME_roundtrip.

    Example: `irevnet triton bundles/digits -o models && irevnet serve models`
    """
    from ..serving.repository import CONFIG_OPTIONS, TritonOptions, write_repository

    # with --version, what was not given on this command line is the repository's (by name: typer
    # vendors its own click, so its ParameterSource is not click's)
    inherit = tuple(n for n in CONFIG_OPTIONS if getattr(ctx.get_parameter_source(n), "name", "") != "COMMANDLINE")
    with render.console.status("writing the repository") as status:
        record = write_repository(options(TritonOptions, ctx.params, inherit=inherit), log=status.update)
    render.repository(record, out)


@command
def serve(
    target: Annotated[str, typer.Argument(help="A repository of `irevnet triton`, or a bundle (served from a temporary one).")],
    host: Annotated[str, typer.Option(help="Address to listen on. Beyond loopback, inference, health, metadata, "
                                           "configs and statistics are open to every host that reaches it, without "
                                           "TLS or authentication: put a proxy in front.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (0: a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: a free one).")] = 8002,
    instances: Annotated[int, typer.Option(help="For a bundle: model instances per model.")] = 1,
    python_env: Annotated[str | None, typer.Option(help="The server's environment (default: $IREVNET_TRITON_ENV, "
                                                         "else one made on first use in the cache).")] = None,
    ready_timeout_s: Annotated[float, typer.Option(help="Give up when the models are not ready by then.")] = 120.0,
    drain_timeout_s: Annotated[float, typer.Option(help="After SIGTERM, how long requests in flight may take.")] = 20.0,
    restarts: Annotated[int, typer.Option(help="Restarts after a backend stub dies (within 10 minutes).")] = 3,
    log: Annotated[str | None, typer.Option(help="Keep tritonserver's whole log in this file.")] = None,
    verbose: Annotated[bool, typer.Option(help="Triton's info log.")] = False,
) -> None:
    """Serve a repository with a real tritonserver until SIGTERM or Ctrl-C (requests in flight drain).

    Example: `irevnet serve models --http-port 8000 --log triton.log`
    """
    from ..serving.server import ServeOptions, stop_report, wait_for_signal
    from ..serving.server import serve as run_server

    opts = options(ServeOptions, locals())
    with run_server(opts, log=render.console.print) as server:
        wait_for_signal(server, announce=render.serving, log=render.console.print, ready_timeout_s=opts.ready_timeout_s)
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
