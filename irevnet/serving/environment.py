"""Where `irevnet serve` finds tritonserver and the Python its python backend runs in.

Both come from one virtual environment holding the `nvidia-pytriton` wheel with its own
dependencies (numpy < 2 among them), so the user's environment keeps its numpy: the wheel ships a
real tritonserver with the python backend, and the backend's stub reads numpy arrays with numpy
1.x's layout (under numpy 2 every output fails with "output tensor shape does not match size of
output", measured). The environment is made on first use in the machine cache, one per wheel and
Python version (`irevnet serve-env DIR` makes one ahead of time, `--python-env` or
IREVNET_TRITON_ENV names it). An older environment without the wheel still serves with the wheel
of the running interpreter (`pip install --no-deps nvidia-pytriton`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import IRevNetError
from ..io.files import machine_cache

SERVER_WHEEL = "nvidia-pytriton==0.7.0"  # tritonserver 2.51 with the python backend
ENV_PACKAGES = [SERVER_WHEEL, "numpy<2", "onnxruntime>=1.18", "onnx>=1.16", "jsonschema>=4"]
ENV_VARIABLE = "IREVNET_TRITON_ENV"
_MARKER = "irevnet-server-env.json"  # written last: an environment without it is incomplete
_PROBE = """
import importlib.util, json, sys, sysconfig
import numpy, onnxruntime
spec = importlib.util.find_spec("pytriton")
print(json.dumps({"numpy": numpy.__version__, "python": "%d.%d" % sys.version_info[:2],
                  "libdir": sysconfig.get_config_var("LIBDIR"),
                  "pytriton": list(spec.submodule_search_locations)[0] if spec else None}))
"""


@dataclass(frozen=True)
class ServerInstall:
    """A tritonserver and the Python environment its python backend runs in."""

    env: Path  # the environment whose bin/python3 the backend's stub runs (numpy < 2)
    root: Path  # the pytriton package folder: tritonserver/bin, backends, python_backend_stubs
    python: str  # the environment's Python version, "3.11": which stub, which libpython
    libdir: str  # where that libpython is

    @property
    def binary(self) -> Path:
        return self.root / "tritonserver" / "bin" / "tritonserver"

    @property
    def libraries(self) -> list[str]:
        """LD_LIBRARY_PATH for the server: the stub links libpython3.X, which must be the
        environment's (another copy fails with "'_thread.RLock' object has no attribute
        '_recursion_count'", measured), then the wheel's own libraries."""
        return [self.libdir, str(self.root.parent / "nvidia_pytriton.libs")]

    @property
    def stub(self) -> Path:
        return self.root / "tritonserver" / "python_backend_stubs" / self.python / "triton_python_backend_stub"


def default_env() -> Path:
    """The machine cache's environment for this wheel and Python version."""
    wheel = SERVER_WHEEL.replace("==", "-")
    return machine_cache() / "triton" / f"{wheel}-py{sys.version_info.major}.{sys.version_info.minor}"


def find_server(python_env: str | None = None, log: Callable[[str], None] = lambda m: None) -> ServerInstall:
    """The server to run: in `python_env` (which must exist), else in $IREVNET_TRITON_ENV or the
    machine cache's environment, made there on first use.

    Raises:
        IRevNetError: one line saying what is missing and the command that makes it.
    """
    if python_env is not None:
        env = Path(python_env)
        if not (env / "bin" / "python3").is_file():
            raise IRevNetError(f"--python-env {env}: no bin/python3 there; make the server's environment with "
                               f"`irevnet serve-env {env}`")
    else:
        env = Path(os.environ.get(ENV_VARIABLE) or default_env())
        if not (env / _MARKER).is_file() and not (env / "bin" / "python3").is_file():
            make_env(env, log)
    return _probe(env)


def _probe(env: Path) -> ServerInstall:
    python = env / "bin" / "python3"
    try:
        out = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=120, check=False)
        facts = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        facts = None
    if not isinstance(facts, dict) or int(str(facts.get("numpy", "2")).split(".")[0]) >= 2:
        raise IRevNetError(f"{env} is not a server environment (it needs numpy < 2 and onnxruntime); make one with "
                           f"`irevnet serve-env NEW_FOLDER` and pass --python-env NEW_FOLDER")
    root = Path(facts["pytriton"]) if facts.get("pytriton") else _own_pytriton()
    if root is None or not (root / "tritonserver" / "bin" / "tritonserver").is_file():
        raise IRevNetError(f"{env} has no tritonserver ({SERVER_WHEEL}); make the environment again with "
                           f"`irevnet serve-env NEW_FOLDER`, or install the wheel: pip install --no-deps {SERVER_WHEEL}")
    install = ServerInstall(env, root, str(facts["python"]), str(facts["libdir"]))
    if not install.stub.is_file():
        raise IRevNetError(f"{SERVER_WHEEL} has no python backend stub for Python {install.python}; make the "
                           f"environment with Python 3.8-3.13")
    return install


def _own_pytriton() -> Path | None:
    """The running interpreter's pytriton folder, found without importing it (its import needs zmq)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def make_env(path: str | Path, log: Callable[[str], None] = lambda m: None) -> Path:
    """Makes the server's environment at `path` (absent or an empty folder): a virtual
    environment of the running interpreter (the stub links its libpython) with ENV_PACKAGES from
    the package index. Built beside `path` and renamed into place, so an interrupted make leaves
    nothing that looks complete; two processes making the same one wait for each other."""
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        if (target / _MARKER).is_file():
            return target
        raise IRevNetError(f"{target} exists and is not empty; give a new folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = open(target.parent / f".{target.name}.lock", "w")  # noqa: SIM115 - held until the make ends
    except OSError as e:
        raise IRevNetError(f"could not make a virtual environment in {target} ({e.strerror}); give a writable new "
                           f"folder") from None
    import fcntl  # Linux and macOS; serve runs on Linux only (ServeOptions)

    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).is_file():  # made by another process while this one waited
            return target
        log(f"making the server's environment in {target} (once: {SERVER_WHEEL} and numpy < 2, about 500 MB)")
        with _scratch_beside(target) as tmp:
            venv = subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=False, capture_output=True, text=True)
            if venv.returncode != 0:
                raise IRevNetError(f"could not make a virtual environment in {target} (python -m venv exited "
                                   f"{venv.returncode}: {_last_line(venv.stderr)}); give a writable new folder")
            pip = subprocess.run([str(tmp / "bin" / "python3"), "-m", "pip", "install", "-q",
                                  "--disable-pip-version-check", *ENV_PACKAGES],
                                 check=False, capture_output=True, text=True)
            if pip.returncode != 0:
                raise IRevNetError(f"pip could not install {' '.join(ENV_PACKAGES)} ({_last_line(pip.stderr)}); "
                                   f"check the network or the package index")
            (tmp / _MARKER).write_text(json.dumps({"packages": ENV_PACKAGES, "python": sys.version.split()[0]}) + "\n")
            if target.exists():
                target.rmdir()  # the empty folder it was given
            os.replace(tmp, target)
    return target


@contextlib.contextmanager
def _scratch_beside(target: Path):
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as e:
        raise IRevNetError(f"could not make a virtual environment in {target} ({e.strerror}); give a writable new "
                           f"folder") from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no output"
