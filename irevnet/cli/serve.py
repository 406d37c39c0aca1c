"""`irevnet triton` and `irevnet serve`: a bundle as a Triton model repository, served here."""

from __future__ import annotations

from typing import Annotated

import typer

from ..serving.repository import Flavour, InstanceKind
from . import render
from .app import command, options


@command
def triton(
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
) -> None:
    """Write a Triton model repository: NAME_forward, NAME_inverse and NAME_roundtrip.

    Example: `irevnet triton bundles/digits -o models && irevnet serve models`
    """
    from ..serving.repository import TritonOptions, write_repository

    with render.console.status("writing the repository") as status:
        record = write_repository(options(TritonOptions, locals()), log=status.update)
    render.repository(record, out)


@command
def serve(
    target: Annotated[str, typer.Argument(help="A repository of `irevnet triton`, or a bundle (served from a temporary one).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port (0: a free one).")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (0: a free one).")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port (0: a free one).")] = 8002,
    instances: Annotated[int, typer.Option(help="For a bundle: model instances per model.")] = 1,
    python_env: Annotated[str | None, typer.Option(help="The server's Python environment, with numpy < 2 "
                                                         "(default: $IREVNET_TRITON_ENV).")] = None,
    ready_timeout_s: Annotated[float, typer.Option(help="Give up when the models are not ready by then.")] = 60.0,
    verbose: Annotated[bool, typer.Option(help="Triton's info log.")] = False,
) -> None:
    """Serve a repository with a real tritonserver until SIGTERM or Ctrl-C (requests in flight drain).

    Example: `irevnet serve models --http-port 8000 --python-env ~/.irevnet-triton-env`
    """
    from ..serving.server import ServeOptions, wait_for_signal
    from ..serving.server import serve as run_server

    with run_server(options(ServeOptions, locals()), log=render.console.print) as server:
        code = wait_for_signal(server, announce=render.serving)
    render.console.print(f"tritonserver stopped (exit code {code})")


@command
def serve_env(
    folder: Annotated[str, typer.Argument(help="A new folder for the environment.")],
) -> None:
    """Make the Python environment Triton's python backend runs irevnet in (numpy < 2, ONNX Runtime).

    Example: `irevnet serve-env ~/.irevnet-triton-env && export IREVNET_TRITON_ENV=~/.irevnet-triton-env`
    """
    from ..serving.server import make_env

    render.success(f"made {make_env(folder)}; pass --python-env {folder} or set IREVNET_TRITON_ENV")
