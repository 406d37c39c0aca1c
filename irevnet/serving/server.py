"""`irevnet serve`: a real `tritonserver` on this machine, for a repository of `irevnet triton`.

The binary, its libraries and its python backend come from the `nvidia-pytriton` wheel, used for
these files only (its own Python API adds a ZMQ hop per request, so it is not imported). Measured
facts the launcher is built on:
- the python backend's stub links libpython3.X: the running interpreter's LIBDIR and the wheel's
  libraries go first on LD_LIBRARY_PATH, else another copy of libpython fails with
  "'_thread.RLock' object has no attribute '_recursion_count'";
- the stub runs `python3` from PATH to find its site-packages, and it reads numpy arrays with
  numpy 1.x's layout: under numpy 2 every output fails with "output tensor shape does not match
  size of output". So the server's Python is an environment with numpy < 2 (`--python-env`, made
  once by `irevnet serve-env DIR`), which can differ from the one running irevnet;
- `--pinned-memory-pool-byte-size=0 --allow-gpu-metrics=false` keep a CPU box quiet.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import validation as check
from ..contract import MANIFEST
from ..errors import IRevNetError
from .repository import Flavour, TritonOptions, read_marker, write_repository

SERVER_WHEEL = "nvidia-pytriton==0.7.0"
ENV_PACKAGES = ["numpy<2", "onnxruntime>=1.18", "onnx>=1.16", "jsonschema>=4"]
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServeOptions:
    target: str  # a repository of `irevnet triton`, or a bundle (served from a temporary repository)
    host: str = "127.0.0.1"
    http_port: int = 8000  # 0: a free port
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int = 1  # for a bundle: model instances per model
    python_env: str | None = None  # the server's Python environment (numpy < 2); default $IREVNET_TRITON_ENV
    ready_timeout_s: float = READY_TIMEOUT_S
    verbose: bool = False  # Triton's info log

    def __post_init__(self) -> None:
        check.paths(self, "target")
        for name in ("http_port", "grpc_port", "metrics_port"):
            check.integer(name, getattr(self, name), 0, 65535)
        check.integer("instances", self.instances, 1, 64)
        check.number("ready_timeout_s", self.ready_timeout_s, 0.0, 3600.0, low_open=True)


@dataclass
class Server:
    """A running tritonserver: its URLs and process."""

    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    models: dict[str, str]
    log_path: Path

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM: Triton drains the requests in flight, then exits. Returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def server_files() -> Path:
    """The folder of the pytriton wheel's tritonserver (found without importing pytriton)."""
    spec = importlib.util.find_spec("pytriton")
    root = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if root is None or not (root / "tritonserver" / "bin" / "tritonserver").is_file():
        raise IRevNetError(f"no tritonserver here: pip install 'irevnet[serve]' && pip install --no-deps {SERVER_WHEEL} "
                           f"(its numpy<2 pin would downgrade this environment; only its server binary is used)")
    return root


def python_env(opts: ServeOptions) -> Path:
    """The server's Python environment: it must have numpy < 2 and ONNX Runtime."""
    env = opts.python_env or os.environ.get("IREVNET_TRITON_ENV")
    if env is None:
        import numpy

        if int(numpy.__version__.split(".")[0]) < 2:
            return Path(sys.prefix)
        raise IRevNetError(f"Triton's python backend needs numpy < 2 and this environment has {numpy.__version__}; "
                           f"make its environment once with `irevnet serve-env DIR`, then pass --python-env DIR")
    path = Path(env)
    python = path / "bin" / "python3"
    if not python.is_file():
        raise IRevNetError(f"--python-env {path}: no bin/python3 there; make one with `irevnet serve-env {path}`")
    probe = subprocess.run([str(python), "-c", "import numpy, onnxruntime; print(numpy.__version__)"],
                           capture_output=True, text=True, timeout=120, check=False)
    if probe.returncode != 0 or int((probe.stdout.strip() or "2").split(".")[0]) >= 2:
        raise IRevNetError(f"--python-env {path} needs numpy < 2 and onnxruntime; make it with "
                           f"`irevnet serve-env {path}`")
    return path


def make_env(path: str) -> Path:
    """A virtual environment for the server's Python: numpy < 2, ONNX Runtime, onnx, jsonschema.
    Uses the running interpreter (the stub links its libpython) and pip (network)."""
    target = Path(path)
    if target.exists() and any(target.iterdir()):
        raise IRevNetError(f"{target} exists and is not empty; give a new folder")
    venv = subprocess.run([sys.executable, "-m", "venv", str(target)], check=False)
    if venv.returncode != 0:
        raise IRevNetError(f"could not make a virtual environment in {target} (python -m venv exited "
                           f"{venv.returncode}, see above); give a writable new folder")
    pip = subprocess.run([str(target / "bin" / "python3"), "-m", "pip", "install", "-q", *ENV_PACKAGES], check=False)
    if pip.returncode != 0:
        raise IRevNetError(f"pip could not install {' '.join(ENV_PACKAGES)} into {target}; see its output above")
    return target


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def serve(opts: ServeOptions, log: Callable[[str], None] = lambda m: None) -> Iterator[Server]:
    """Starts tritonserver for opts.target, yields it once every model is ready, stops it (SIGTERM,
    requests in flight drained) and removes its temporary folders on the way out."""
    root = server_files()
    env_path = python_env(opts)
    with tempfile.TemporaryDirectory(prefix="irevnet-triton-") as scratch:
        scratch = Path(scratch)
        repository = Path(opts.target)
        if (repository / MANIFEST).is_file():  # a bundle: a repository of it, for this run only
            log("writing a temporary repository")
            write_repository(TritonOptions(bundle=opts.target, out=str(scratch / "models"), instances=opts.instances))
            repository = scratch / "models"
        record = read_marker(repository)
        if record["flavour"] != Flavour.python.value:
            raise IRevNetError(f"{repository} is of the {record['flavour']} flavour; `irevnet serve` runs the python "
                               f"flavour here (serve the others with NVIDIA's Triton container, see the README)")
        backends = scratch / "backends" / "python"
        backends.mkdir(parents=True)
        source = root / "tritonserver" / "backends" / "python"
        for f in source.iterdir():
            if f.is_file():
                shutil.copy2(f, backends / f.name)
        stub = root / "tritonserver" / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
        shutil.copy2(stub / "triton_python_backend_stub", backends / "triton_python_backend_stub")
        ports = {}
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(opts, name) or free_port(opts.host)
            if not _port_free(opts.host, port):
                raise IRevNetError(f"port {port} on {opts.host} is in use (--{name.replace('_', '-')}); choose another, "
                                   f"or 0 for a free one")
            ports[name] = port
        environ = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR"), str(root.parent / "nvidia_pytriton.libs")]
        environ["LD_LIBRARY_PATH"] = ":".join([*libs, environ.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        environ["PATH"] = f"{env_path / 'bin'}:{environ.get('PATH', '')}"
        log_path = scratch / "server.log"
        args = [
            str(root / "tritonserver" / "bin" / "tritonserver"), f"--model-repository={repository}",
            f"--backend-directory={scratch / 'backends'}", f"--http-address={opts.host}", f"--grpc-address={opts.host}",
            f"--http-port={ports['http_port']}", f"--grpc-port={ports['grpc_port']}",
            f"--metrics-address={opts.host}", f"--metrics-port={ports['metrics_port']}",
            "--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false", "--exit-timeout-secs=30",
            f"--log-info={'true' if opts.verbose else 'false'}",
        ]
        with open(log_path, "wb") as sink:
            process = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, env=environ, start_new_session=True)
        server = Server(process, opts.host, ports["http_port"], ports["grpc_port"], ports["metrics_port"],
                        record["models"], log_path)
        try:
            _wait_ready(server, opts.ready_timeout_s)
            yield server
        finally:
            server.stop()


def _wait_ready(server: Server, timeout: float) -> None:
    """Polls the HTTP health endpoint until every model is ready, the server exits, or `timeout`."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    url = f"http://{server.http_url}/v2/health/ready"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise IRevNetError(f"tritonserver exited with code {server.process.returncode} while loading; its log ends:\n"
                               f"{server.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise IRevNetError(f"tritonserver was not ready within {timeout:.0f} s; its log ends:\n{server.log_tail()}")


def wait_for_signal(server: Server, announce: Callable[[Server], None] = lambda s: None) -> int:
    """Announces the server, then blocks until SIGTERM or SIGINT (or the server exits); returns the
    server's exit code after the drain. Used by the CLI: the signals stop the server, not this
    process; the handlers are in place before the announcement (a supervisor may signal as soon
    as it reads it), and a second signal during the drain does not cut it short."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce(server)
        while not stop.is_set() and server.process.poll() is None:
            stop.wait(0.2)
        if server.process.poll() is not None and not stop.is_set():
            raise IRevNetError(f"tritonserver exited on its own with code {server.process.returncode}; its log ends:\n"
                               f"{server.log_tail()}")
        return server.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
