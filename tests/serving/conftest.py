"""Fixtures of the serving tests: the server this machine runs (its environment made on first
use, as `irevnet serve` makes it), a repository of the trained digits model, one server serving
it for the tests that only ask it things, and `irevnet serve` run as a user runs it (a process
whose children, ports and leftovers the lifecycle tests inspect).

Without the serve extra or where no server can be made (no package index), these tests skip
with the reason; they never fail for it.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from irevnet.contract import Precision
from irevnet.errors import IRevNetError

tritonclient = pytest.importorskip("tritonclient", reason="tritonclient is not installed: pip install 'irevnet[serve]'")


@pytest.fixture(scope="session")
def server_install():
    """The tritonserver and environment `irevnet serve` uses here (made on first use)."""
    from irevnet.serving.environment import find_server

    try:
        return find_server(log=lambda m: print(m, file=sys.stderr))
    except IRevNetError as e:
        pytest.skip(f"no Triton server here: {e}")


@pytest.fixture(scope="session")
def repository(bundles, tmp_path_factory):
    from irevnet.serving.repository import TritonOptions, write_repository

    out = tmp_path_factory.mktemp("triton") / "models"
    # a longer queue delay than the default, so that requests sent together meet in one batch
    write_repository(TritonOptions(bundle=str(bundles[Precision.fp32]), out=str(out), name="digits",
                                   max_queue_delay_us=20_000, threads=1))
    return out


@pytest.fixture(scope="session")
def server(repository, server_install):
    from irevnet.serving.server import ServeOptions, serve

    with serve(ServeOptions(target=str(repository), http_port=0, grpc_port=0, metrics_port=0)) as running:
        yield running


_EXEC_WITH_SIGINT = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN if sys.argv[1] == 'ignored' "
                     "else signal.SIG_DFL); os.execv(sys.argv[2], sys.argv[2:])")
_ANNOUNCE = re.compile(r"HTTP (?P<http>\S+), gRPC (?P<grpc>\S+), metrics (?P<metrics>\S+)/metrics")


class ServeProcess:
    """`irevnet serve TARGET` in a process of its own, as a user or a supervisor runs it."""

    def __init__(self, target: Path, *args: str, tmpdir: Path, env: dict[str, str] | None = None, wait: bool = True,
                 sigint: str | None = None):
        self.tmpdir = tmpdir
        tmpdir.mkdir(parents=True, exist_ok=True)
        self.shm_before = set(os.listdir("/dev/shm"))
        # sigint "ignored" (as a background job of a non-interactive shell starts it: `irevnet serve
        # ... &`) or "default", whatever this process has: set, then exec'd into serve (one process)
        setting = [sys.executable, "-c", _EXEC_WITH_SIGINT, sigint] if sigint else []
        self.proc = subprocess.Popen(
            [*setting, sys.executable, "-m", "irevnet", "serve", str(target), "--http-port", "0", "--grpc-port", "0",
             "--metrics-port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # PYTHONFAULTHANDLER: a serve that hangs is shown by its threads' stacks (`stacks`)
            env={**os.environ, "TMPDIR": str(tmpdir), "PYTHONFAULTHANDLER": "1", **(env or {})})
        self.lines: list[str] = []
        self.errors: list[str] = []
        self.stdout: queue.Queue[str | None] = queue.Queue()
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, None)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        self.http = self.grpc = None
        if wait:
            self.wait_serving()

    def _pump(self, stream, sink) -> None:
        for line in stream:
            if sink is None:
                self.errors.append(line)
            else:
                sink.put(line)
        if sink is not None:
            sink.put(None)

    def read_until(self, text: str, timeout: float) -> str:
        """Its output up to the line holding `text` (all of it, if that line never comes in time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.stdout.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                break
        return "".join(self.lines)

    def wait_serving(self, timeout: float = 120) -> None:
        out = self.read_until("serving ", timeout)
        m = _ANNOUNCE.search(self.lines[-1]) if self.lines else None
        if m is None:
            raise AssertionError(f"irevnet serve did not announce itself: {out}{''.join(self.errors)}")
        self.http, self.grpc = m["http"], m["grpc"]

    def tree(self) -> dict[str, list[int]]:
        """The pids of its supervisor, tritonserver and python backend stubs."""
        supervisors = [p for p in _children(self.proc.pid) if b"irevnet.serving.supervisor" in _cmdline(p)]
        servers = [p for s in supervisors for p in _children(s) if _cmdline(p).split(b"\0")[0].endswith(b"tritonserver")]
        stubs = [p for s in servers for p in _children(s) if b"triton_python_backend_stub" in _cmdline(p)]
        return {"supervisor": supervisors, "tritonserver": servers, "stubs": stubs}

    def finish(self, sig: int | None = signal.SIGTERM, timeout: float = 60) -> tuple[int, str, str, float]:
        """Sends `sig` (None: waits for it to end by itself); (exit code, stdout, stderr, seconds)."""
        start = time.monotonic()
        if sig is not None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"irevnet serve did not exit within {timeout:.0f} s of "
                                 f"{'its own end' if sig is None else signal.Signals(sig).name}: {self.stacks()}") from None
        seconds = time.monotonic() - start
        self.read_until("\0", 5)  # the rest of its output, to the end
        return self.proc.returncode, "".join(self.lines), "".join(self.errors), seconds

    def stacks(self) -> str:
        """What serve and its supervisor were doing, for a failure's message: their processes, every
        thread's stack (SIGABRT with PYTHONFAULTHANDLER set, which ends them), serve's output and
        the end of tritonserver's log."""
        tree = self.tree()
        for pid in [*tree["supervisor"], self.proc.pid]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.read_until("\0", 5)
        logs = [log.read_text(errors="replace")[-3000:] for log in self.tmpdir.glob("irevnet-serve.*/server.log")]
        return (f"processes {tree}; stdout: {''.join(self.lines)[-2000:]!r}; stderr, with the threads' stacks: "
                f"{''.join(self.errors)[-6000:]}; tritonserver's log: {logs}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                found.append(int(name))
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


def leftovers(serve: ServeProcess) -> list[str]:
    """What a finished serve left: files in its TMPDIR (but the .ses file onnxruntime writes on
    import, measured with `import onnxruntime` alone) and shared-memory regions."""
    files = [p.name for p in serve.tmpdir.iterdir() if p.name != ".ses"]
    regions = sorted(set(os.listdir("/dev/shm")) - serve.shm_before)
    return files + [f"/dev/shm/{r}" for r in regions]


@pytest.fixture
def serve_process(tmp_path):
    """Starts `irevnet serve` processes (ServeProcess) and kills whatever is left of them."""
    started: list[ServeProcess] = []

    def start(target, *args, **kw):
        kw.setdefault("tmpdir", tmp_path / f"tmp{len(started)}")
        started.append(ServeProcess(Path(target), *args, **kw))
        return started[-1]

    yield start
    for s in started:
        s.kill()


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_behind():
    """After the serving tests, no server, stub or supervisor of this session runs and no region
    of theirs is in /dev/shm (a green run once left two stubs, parent gone, ignoring SIGTERM).
    This session's processes are told apart by a variable they inherit (kill -9 of a serve
    leaves its children to init, so descent does not tell)."""
    import secrets

    mark = f"IREVNET_TEST_SESSION={secrets.token_hex(8)}".encode()
    os.environ["IREVNET_TEST_SESSION"] = mark.split(b"=")[1].decode()
    regions_before = set(os.listdir("/dev/shm"))
    yield

    def ours():
        found = []
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                environ = Path(f"/proc/{p}/environ").read_bytes()
            except OSError:
                continue
            if mark in environ.split(b"\0") and alive(int(p)) and any(name in _cmdline(int(p)) for name in (
                    b"triton_python_backend_stub", b"bin/tritonserver", b"irevnet.serving.supervisor")):
                found.append(int(p))
        return found

    deadline = time.monotonic() + 30
    while ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ours() == [], "serving processes left behind"
    left = [n for n in set(os.listdir("/dev/shm")) - regions_before if n.startswith("irevnet-serve.")]
    assert left == [], "shared-memory regions left behind"
