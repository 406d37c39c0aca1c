"""The typer app, the error handling every command shares, and the shared option types.

Exit codes: 0 success, 1 a check that ran and failed, 2 bad usage or bad input (one line on
stderr, no traceback), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer

from .._version import __version__
from ..devices import Device
from ..errors import CheckFailed, IRevNetError, Terminated
from ..io import files
from ..io.datasets import SPEC_HELP
from ..runtime.backends import BACKENDS
from . import render

app = typer.Typer(
    name="irevnet",
    help="i-RevNets: train, invert, export forward/inverse ONNX graphs and TensorRT engines, verify, bench.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# The extra that installs each optional package (pyproject.toml): a runtime-only install has
# numpy, onnx and the CLI, and training/export need `irevnet[torch]`.
_EXTRA_OF = {
    "torch": "torch", "torchvision": "torch", "onnxscript": "torch", "sklearn": "torch", "PIL": "torch",
    "onnxruntime": "ort", "tensorrt": "tensorrt", "cuda": "tensorrt", "tritonclient": "serve", "ray": "ray",
}


_debug_flag = False  # --debug of the running invocation (set by the app's callback)


def _debugging() -> bool:
    """`irevnet --debug ...` or IREVNET_DEBUG=1: show the traceback behind a one-line error."""
    return _debug_flag or os.environ.get("IREVNET_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int) -> None:
    if _debugging() and sys.exc_info()[1] is not None:
        _print_chain(sys.exc_info()[1])
    # plain, unwrapped line: one line however narrow the terminal
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _print_chain(error: BaseException) -> None:
    """The error's traceback and every exception it was raised from or during, including those a
    `raise ... from None` hides (the cause of a "corrupt file" line is often there)."""
    import traceback

    chain = []
    while error is not None and error not in chain and len(chain) < 16:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for e in reversed(chain):
        sys.stderr.write("".join(traceback.format_exception(type(e), e, e.__traceback__, chain=False)))


def _one_line(e: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker (whose message carries the
    worker's traceback), its last line without the class name."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    if len(lines) <= 1:
        return str(e).strip()
    return re.sub(r"^[\w.]+Error: ", "", lines[-1].strip())


_terminating = False


# what to do about the OSErrors a user can fix; any other is named as the system names it
_OS_FIXES = {
    errno.ENOSPC: "free space on its device", errno.EDQUOT: "free space within your quota",
    errno.EFBIG: "the file size limit (ulimit -f) is too small for it", errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions", errno.EROFS: "it is on a read-only file system; choose another path",
    errno.ENOENT: "check the path", errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder; give a file", errno.ENAMETOOLONG: "give a shorter path",
}


def _os_error(e: OSError) -> str:
    """One line for an OSError: the file, what the system said, and the fix where there is one."""
    what = e.strerror or str(e) or type(e).__name__
    where = f"{e.filename}: " if e.filename else ""
    fix = _OS_FIXES.get(e.errno)
    if fix:
        return f"{where}{what}; {fix}"
    return f"{where}{what} (errno {e.errno}); `irevnet --debug` shows where it happened"


def _on_sigterm(signum: int, frame: Any) -> None:
    global _terminating
    if not _terminating:  # once: a second SIGTERM must not interrupt the cleanup of the first
        _terminating = True
        raise Terminated


def _watch_for_sigterm(read_fd: int) -> None:
    """Runs in a thread: Python handles a signal only between bytecodes of the main thread, so
    while that thread is inside ONNX Runtime a SIGTERM would wait for the run to end (a hostile
    graph can make that hours). The signal's byte on the wakeup fd asks every run in flight to
    stop now; the main thread then raises Terminated as soon as the runtime returns."""
    try:
        while data := os.read(read_fd, 64):  # empty once the command closed the write end
            if signal.SIGTERM in data:
                from ..runtime.backends.base import interrupt_runs

                interrupt_runs()
    finally:
        os.close(read_fd)


@contextlib.contextmanager
def _sigterm_as_exception():
    global _terminating
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _terminating = False
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=_watch_for_sigterm, args=(read_fd,), daemon=True, name="irevnet-sigterm").start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGTERM, previous)
        os.close(write_fd)  # the watcher's read returns empty; it closes its end and ends


def _terminated_whatever_it_became(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """fn(...), with an error raised after a SIGTERM reported as the termination it is: a library
    may turn the Terminated raised inside it into an error of its own (ONNX Runtime's import turns
    any exception into ImportError('import numpy failed'), which read as "onnxruntime is not
    installed", exit 2)."""
    try:
        return fn(*args, **kwargs)
    except Exception:
        # the flag is this command's only on the main thread (elsewhere no handler was installed)
        if _terminating and threading.current_thread() is threading.main_thread():
            raise Terminated from None
        raise


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Registers a CLI command whose library errors become one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with _sigterm_as_exception():
                return _terminated_whatever_it_became(fn, *args, **kwargs)
        except IRevNetError as e:
            _fail(_one_line(e), 2)
        except CheckFailed as e:
            _fail(str(e), 1)
        except ModuleNotFoundError as e:
            extra = _EXTRA_OF.get((e.name or "").split(".")[0])
            if extra is None:
                raise
            _fail(f"`irevnet {fn.__name__}` needs {e.name}, which is not installed; pip install 'irevnet[{extra}]'", 2)
        except OSError as e:  # an output folder that cannot be created, a full disk, no permission
            _fail(_os_error(e), 2)
        except KeyboardInterrupt:
            _fail("interrupted; files already written are complete (writes are atomic)", 130)
        except Terminated:
            _fail("terminated (SIGTERM); temporary files removed, files already written are complete", 143)

    return app.command()(wrapper)


def integers(option: str, text: str | None) -> list[int] | None:
    """A comma-separated list of integers from the command line (None when not given)."""
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise IRevNetError(f"{option} must be integers separated by commas, got {text!r}") from None


def check_outputs(*paths: str | None) -> None:
    """Refuses output files that cannot be written before the command does its work."""
    for path in paths:
        if path is not None:
            files.check_writable(path)


def write_json(path: str | None, data: Any) -> None:
    """--json: the command's result as JSON (atomically), and a line saying where."""
    if path is not None:
        try:
            files.write_json(path, data)
        except OSError as e:  # a write into a device or FIFO names no file: this one
            e.filename = e.filename or path
            raise
        render.console.print(f"wrote {path}")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"irevnet {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Print the traceback behind a one-line error (also IREVNET_DEBUG=1).")
    ] = False,
) -> None:
    """i-RevNets (Jacobsen, Smeulders, Oyallon, ICLR 2018): deep networks invertible up to the
    final linear classifier. `irevnet demo` runs the whole pipeline on bundled digits."""
    global _debug_flag
    _debug_flag = debug


# -- shared option types (paths are text: an empty one is refused, not taken for ".") -------------

CheckpointOpt = Annotated[
    str, typer.Option("--checkpoint", "-c", help="Checkpoint: irevnet .pt, reference .pth.tar/.t7, pytorchcv .pth.")
]
ImageSizeOpt = Annotated[
    int | None,
    typer.Option("--image-size", help="Input height = width (reference ImageNet files do not store it; default 224)."),
]
JsonOpt = Annotated[str | None, typer.Option("--json", help="Also write the results to this JSON file.")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help=f"{SPEC_HELP}.")]
DeviceOpt = Annotated[Device, typer.Option("--device", help="auto picks cuda when torch sees a GPU.")]
BackendOpt = Annotated[
    list[str] | None,
    typer.Option("--backend", "-b", help=f"{' | '.join(BACKENDS)} (openvino-bf16: F in bf16, mixed bundles); repeat for "
                 f"several (default: onnxruntime)."),
]
ProviderOpt = Annotated[
    list[str] | None, typer.Option("--provider", help="ONNX Runtime providers in order: tensorrt, cuda, cpu (default: all available).")
]
ThreadsOpt = Annotated[int | None, typer.Option(help="Intra-op threads (ONNX Runtime, OpenVINO, torch).")]
ServerOpt = Annotated[str | None, typer.Option(
    help="A live Triton server (http://HOST:PORT, grpc://HOST:PORT, https://, grpcs://) serving a repository of "
         "`irevnet triton`: its models run as the triton backend.")]
ServerTimeoutOpt = Annotated[float, typer.Option(help="With --server: the deadline of each call, over its whole answer.")]
RebuildOpt = Annotated[bool, typer.Option(help="Rebuild TensorRT engines made for another GPU or TensorRT version.")]


# click's base exception class, whether typer vendors click (0.2x) or depends on it.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main() -> None:
    """Console-script entry point. Usage errors (unknown option, bad choice) are one line too,
    like the library's errors, instead of typer's framed panel."""
    try:
        code = typer.main.get_command(app).main(prog_name="irevnet", standalone_mode=False)
    except _UsageError as e:
        message = e.format_message().strip().rstrip(".")
        if message:  # empty after `irevnet` alone: the help was printed
            ctx = getattr(e, "ctx", None)
            hint = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
            typer.echo(f"error: {message}{hint}", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
