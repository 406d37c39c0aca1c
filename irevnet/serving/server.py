"""`irevnet serve`: a real `tritonserver` on this machine, for a repository of `irevnet triton`.

What runs is what was recorded: the repository is checked against its record (every file's
sha256, nothing added, this irevnet's own code, the configs irevnet writes) and copied from the
checked bytes into a private scratch folder, which is what the server loads, with only the
recorded models (`--model-control-mode=explicit`). The APIs a client could use to read or write
the server's files or memory, or to fill its disk, are off: shared memory, logging, trace and
model control are restricted to a header no client can send (its name holds a space and
capitals, its value a line break).

The server runs under a supervisor process (supervisor.py): in a private /dev/shm, restarted when
a python backend stub dies, drained on SIGTERM with idle keep-alive connections closed, and
removed with everything it made when serve ends, however it ends.

Measured facts the launcher is built on (Triton 2.51 of the nvidia-pytriton wheel):
- the python backend's stub links libpython3.X: the environment's LIBDIR and the wheel's
  libraries go first on LD_LIBRARY_PATH (environment.py);
- the stub is started with its model's path as one of several arguments split on spaces, so a
  path with a space fails ("what(): stol"): the scratch folder's path is plain ASCII;
- `--pinned-memory-pool-byte-size=0 --allow-gpu-metrics=false` keep a CPU box quiet.
"""

from __future__ import annotations

import ipaddress
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import validation as check
from ..contract import FORWARD, MANIFEST, RECONSTRUCTION, ROUNDTRIP
from ..errors import IRevNetError
from ..runtime.bundle import Bundle
from .environment import ServerInstall, find_server
from .record import Record, read_record

READY_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 20.0  # in-flight requests get this long after SIGTERM (a Kubernetes pod gets 30 s)
# Off for every client: restricted to a header no client can send (_arguments)
RESTRICTED = "shared-memory,logging,trace,model-repository"
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9/._-]+$")
_SCRATCH = re.compile(r"^irevnet-serve\.(?P<pid>\d+)\.[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class ServeOptions:
    target: str  # a repository of `irevnet triton`, or a bundle (served from a temporary repository)
    host: str = "127.0.0.1"
    http_port: int = 8000  # 0: a free port
    grpc_port: int = 8001
    metrics_port: int = 8002
    instances: int = 1  # for a bundle: model instances per model
    python_env: str | None = None  # the server's environment (default: $IREVNET_TRITON_ENV or the machine cache's)
    ready_timeout_s: float = READY_TIMEOUT_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    restarts: int = 3  # restarts after a python backend stub dies, within 10 minutes; then serve stops
    log: str | None = None  # keep tritonserver's whole log in this file (default: a temporary one)
    verbose: bool = False  # Triton's info log
    private_shm: bool | None = None  # a private /dev/shm: None where the kernel allows one, True required

    def __post_init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise IRevNetError(f"`irevnet serve` runs on Linux (the wheel's tritonserver is a Linux binary), not "
                               f"{sys.platform}; serve the repository with NVIDIA's Triton container")
        check.paths(self, "target")
        for name in ("http_port", "grpc_port", "metrics_port"):
            check.integer(name, getattr(self, name), 0, 65535)
        check.integer("instances", self.instances, 1, 64)
        check.integer("restarts", self.restarts, 0, 100)
        check.number("ready_timeout_s", self.ready_timeout_s, 0.0, 3600.0, low_open=True)
        check.number("drain_timeout_s", self.drain_timeout_s, 0.0, 3600.0, low_open=True)
        if self.log is not None:
            check.paths(self, "log")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise IRevNetError(f"--host {self.host[:80]!r} is not an IP address; give 127.0.0.1 (this machine only), "
                               f"0.0.0.0 (every interface) or one interface's address") from None

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback


@dataclass
class Server:
    """A running tritonserver: its URLs, the supervisor that runs it and what it reports."""

    supervisor: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    models: dict[str, str]
    log_path: Path
    private_shm: bool
    pid: int  # tritonserver's
    scratch: Path  # the private folder the server runs from (its copy of the repository)
    drain_s: float = DRAIN_TIMEOUT_S
    private_shm_why: str = ""  # why there is no private /dev/shm, where there is none
    events: queue.Queue = field(default_factory=queue.Queue, repr=False)
    result: dict[str, Any] | None = None  # the supervisor's last word: stopped or exited
    stop_s: float | None = None  # how long the last stop took
    warm: Callable[[], None] = field(default=lambda: None, repr=False)  # the round trips' first call

    @property
    def http_url(self) -> str:
        return f"{_url_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{_url_host(self.host)}:{self.grpc_port}"

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def say_ready(self) -> None:
        """Tells the supervisor the models are ready: from now on a stub that dies is a failure."""
        with suppress(OSError, ValueError):
            self.supervisor.stdin.write(b"ready\n")
            self.supervisor.stdin.flush()

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def stop(self) -> int | None:
        """Asks the supervisor to drain and stop the server; returns tritonserver's exit code
        (None when it had already exited on its own, or the supervisor had to be killed)."""
        timeout = self.drain_s + 30.0  # the supervisor's own bound is drain_s + 5
        start = time.monotonic()
        if self.result is None:
            with suppress(OSError, ValueError):
                self.supervisor.stdin.write(b"stop\n")
                self.supervisor.stdin.close()
            deadline = time.monotonic() + timeout
            while self.result is None and time.monotonic() < deadline:
                event = self.next_event(0.2)
                if event and event["event"] in ("stopped", "exited"):
                    self.result = event
                elif event is None and self.supervisor.poll() is not None and self.events.empty():
                    self.result = {"event": "exited", "code": None, "reason": "the supervisor ended"}
        try:
            self.supervisor.wait(10)
        except subprocess.TimeoutExpired:  # it is stuck: killing it kills the server (parent-death signal)
            self.supervisor.kill()
            self.supervisor.wait()
        if self.stop_s is None:
            self.stop_s = time.monotonic() - start
        return (self.result or {}).get("code")


@dataclass(frozen=True)
class StopReport:
    """How a served run ended: tritonserver's exit code after the drain."""

    code: int | None
    seconds: float
    closed_idle: int  # idle keep-alive connections closed during the drain

    def __bool__(self) -> bool:
        return self.code == 0

    def __str__(self) -> str:
        idle = f"; {self.closed_idle} idle connection{'s' * (self.closed_idle != 1)} closed" if self.closed_idle else ""
        if self:
            return f"tritonserver stopped (exit code 0) in {self.seconds:.1f} s{idle}"
        return (f"tritonserver did not stop cleanly ({_exit_words(self.code)} after {self.seconds:.1f} s{idle}): requests "
                f"in flight may have been cut")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "seconds": self.seconds, "closed_idle": self.closed_idle}


def stop_report(server: Server) -> StopReport:
    """How the server's run ended, from the supervisor's last word."""
    result = server.result or {}
    return StopReport(result.get("code"), server.stop_s or 0.0, int(result.get("closed_idle") or 0))


@contextmanager
def serve(opts: ServeOptions, log: Callable[[str], None] = lambda m: None) -> Iterator[Server]:
    """Starts tritonserver for opts.target, yields it once every model is ready, and stops it
    (drained) on the way out; nothing it made stays behind.

    Raises:
        IRevNetError: the target is not a servable repository (naming the file that is not what
            irevnet wrote), no server can be found or made, a port is taken, or the server did
            not become ready (naming the model and the cause from its log).
    """
    target = Path(opts.target)
    is_bundle = (target / MANIFEST).is_file()
    record = None if is_bundle else _servable(read_record(target), target)
    install = find_server(opts.python_env, log)
    ports = _ports(opts)
    _remove_leftovers()
    scratch = Path(tempfile.mkdtemp(prefix=f"irevnet-serve.{os.getpid()}.", dir=_plain_temp()))
    supervisor = None
    try:
        models = scratch / "models"
        if is_bundle:
            from .repository import TritonOptions, write_repository

            log("writing a temporary repository")
            record = write_repository(TritonOptions(bundle=opts.target, out=str(models), instances=opts.instances))
        else:
            log(f"checking {target} against its record")
            record.stage(target, models)
        bundle = _check_staged(record, models, models if is_bundle else target)
        backends = scratch / "backends" / "python"
        backends.mkdir(parents=True)
        for f in (install.root / "tritonserver" / "backends" / "python").iterdir():
            if f.is_file():
                shutil.copy2(f, backends / f.name)
        shutil.copy2(install.stub, backends / install.stub.name)
        log_path = Path(opts.log) if opts.log else scratch / "server.log"
        (scratch / "executing").mkdir(mode=0o700)
        settings = {
            "argv": _arguments(opts, install, scratch, models, record, ports),
            "env": _environment(install) | {"IREVNET_EXECUTING_DIR": str(scratch / "executing")},
            "log": str(log_path), "scratch": str(scratch), "drain_s": opts.drain_timeout_s,
            "restarts": opts.restarts, "shm_prefix": f"{scratch.name}_",
            "http_port": ports["http_port"], "metrics_port": ports["metrics_port"],
            "executing_dir": str(scratch / "executing"),
            **dict(zip(("private_shm", "private_shm_why"), _private_shm_setting(opts, install))),
            "metrics_host": _url_host(_loopback_of(opts.host)),
        }
        if not opts.loopback:
            log(f"listening on {opts.host}: inference, health, metadata, model configs, statistics and Prometheus "
                f"metrics of {', '.join(record.models.values())} are open to every host that reaches it, without TLS or "
                f"authentication (shared memory, logging, trace and model control are off); put a proxy with TLS, "
                f"authentication and a request size limit in front of it")
        supervisor = _start_supervisor(settings)
        server = Server(supervisor, opts.host, ports["http_port"], ports["grpc_port"], ports["metrics_port"],
                        record.models, log_path, private_shm=False, pid=0, scratch=scratch, drain_s=opts.drain_timeout_s)
        threading.Thread(target=_read_events, args=(supervisor, server.events), daemon=True,
                         name="irevnet-supervisor").start()
        server.warm = lambda: warm_round_trips(server, record, bundle, record.options["instances"])
        try:
            _wait_started(server)
            wait_ready(server, opts.ready_timeout_s)
            server.warm()
            server.say_ready()
            yield server
        finally:
            server.stop()
    finally:
        if supervisor is None or supervisor.poll() is not None:
            shutil.rmtree(scratch, ignore_errors=True)  # the supervisor removes it when it ran


def _servable(record: Record, target: Path) -> Record:
    """The record of a repository serve can run here (the python flavour), or a one-line error."""
    if record.flavour != "python":
        raise IRevNetError(f"{target} is of the {record.flavour} flavour; `irevnet serve` runs the python flavour "
                           f"here (serve the others with NVIDIA's Triton container, see docs)")
    return record


def _check_staged(record: Record, models: Path, shown: Path) -> Bundle:
    """The staged copy runs this irevnet's code, with configs irevnet writes and bundles that
    check; returns the highest version's bundle. Messages name files under `shown`."""
    from .repository import check_configs

    record.check_code(shown)  # from the record alone: the staged files are the recorded ones
    return check_configs(models, record, shown)


def _ports(opts: ServeOptions) -> dict[str, int]:
    """The server's ports: those given, checked free, then for each 0 one the system picks. A
    port picked stays bound until all three are chosen, so two picks are never the same port
    (released at once, the system may hand one out again), and a pick is never a port given."""
    names = ("http_port", "grpc_port", "metrics_port")
    given = {name: getattr(opts, name) for name in names if getattr(opts, name)}
    ports: dict[str, int] = {}
    for name, port in given.items():
        if port in ports.values() or not _port_free(opts.host, port):
            raise IRevNetError(f"port {port} on {opts.host} is in use (--{name.replace('_', '-')}); choose another, "
                               f"or 0 for a free one")
        ports[name] = port
    with ExitStack() as held:
        for name in (n for n in names if n not in given):
            port = 0
            while not port or port in ports.values():
                picked = held.enter_context(socket.socket(socket.AF_INET6 if ":" in opts.host else socket.AF_INET))
                picked.bind((opts.host, 0))
                port = picked.getsockname()[1]
            ports[name] = port
    return {name: ports[name] for name in names}


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _plain_temp() -> str:
    """A temporary folder whose path the stub's argument splitting survives (no spaces, ASCII),
    outside /dev/shm (which the server's private mount namespace replaces)."""
    for folder in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        if _PLAIN_PATH.match(folder) and not _under_dev_shm(folder) and os.access(folder, os.W_OK | os.X_OK):
            return folder
    raise IRevNetError(f"no temporary folder with a plain path (TMPDIR={tempfile.gettempdir()!r}): tritonserver's "
                       f"python backend cannot start from a path with spaces; set TMPDIR to one such as /tmp")


def _under_dev_shm(path: str | Path) -> bool:
    resolved = Path(os.path.realpath(path))
    return resolved == Path("/dev/shm") or Path("/dev/shm") in resolved.parents


def _private_shm_setting(opts: ServeOptions, install: ServerInstall) -> tuple[bool | None, str]:
    """The supervisor's private_shm and why it is off: off where the server's own files are
    under /dev/shm, which a private one would hide (an error where one was required)."""
    hidden = [str(p) for p in (install.env, install.root) if _under_dev_shm(p)]
    if not hidden:
        return opts.private_shm, "not asked for"
    if opts.private_shm:
        raise IRevNetError(f"{hidden[0]} is under /dev/shm, which a private /dev/shm would hide from the server; "
                           f"move it, or serve without a private one")
    return False, f"the server's environment {hidden[0]} is under /dev/shm"


def _remove_leftovers() -> None:
    """Scratch folders of serve runs that ended before they could remove them (their supervisor
    killed too): this user's, whose supervisor no longer holds the folder's lock, or, where none
    started, whose serve's pid is gone. A supervisor still draining after its serve was killed
    holds its lock: its folder stays."""
    import fcntl

    folder = Path(_plain_temp())
    with suppress(OSError):
        for entry in folder.iterdir():
            m = _SCRATCH.match(entry.name)
            if not (m and entry.is_dir() and not entry.is_symlink() and entry.stat().st_uid == os.getuid()):
                continue
            lock = entry / ".lock"
            if lock.is_file():
                with suppress(OSError), open(lock) as held:
                    try:
                        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its supervisor lives
                    shutil.rmtree(entry, ignore_errors=True)
                continue
            try:
                os.kill(int(m["pid"]), 0)
            except ProcessLookupError:
                shutil.rmtree(entry, ignore_errors=True)
            except (PermissionError, OverflowError):
                pass


def _arguments(opts: ServeOptions, install: ServerInstall, scratch: Path, models: Path, record: Record,
               ports: dict[str, int]) -> list[str]:
    # The key and value are on the command line, which every local user can read, so they must be
    # unsendable, not secret (Triton's flags take a key, not "off"): a header name with a space and
    # capitals, which neither HTTP/1.1 (a token) nor HTTP/2 (lowercase; gRPC refuses the stream,
    # measured) carries, and a value with a line break (which HPACK would carry: measured too)
    key, value = f"Irevnet Key_{secrets.token_hex(8)}", f"{secrets.token_hex(16)}\n{secrets.token_hex(16)}"
    return [
        str(install.binary), f"--model-repository={models}", f"--backend-directory={scratch / 'backends'}",
        "--model-control-mode=explicit", *[f"--load-model={m}" for m in record.models.values()],
        "--disable-auto-complete-config", "--strict-readiness=true", "--exit-on-error=true",
        f"--http-address={opts.host}", f"--grpc-address={opts.host}", f"--metrics-address={opts.host}",
        f"--http-port={ports['http_port']}", f"--grpc-port={ports['grpc_port']}", f"--metrics-port={ports['metrics_port']}",
        f"--http-restricted-api={RESTRICTED}:{key}={value}", f"--grpc-restricted-protocol={RESTRICTED}:{key}={value}",
        f"--backend-config=python,shm-region-prefix-name={scratch.name}_",
        "--pinned-memory-pool-byte-size=0", "--allow-gpu-metrics=false",
        f"--exit-timeout-secs={max(1, round(opts.drain_timeout_s))}",
        f"--log-info={'true' if opts.verbose else 'false'}",
    ]


def _environment(install: ServerInstall) -> dict[str, str]:
    environ = dict(os.environ)
    environ["LD_LIBRARY_PATH"] = ":".join([*install.libraries, environ.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    environ["PATH"] = f"{install.env / 'bin'}:{environ.get('PATH', '')}"
    environ["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing written beside the models' code
    environ.pop("PYTHONPATH", None)  # the stub imports the repository's own irevnet, nothing of the caller's
    return environ


def _start_supervisor(settings: dict[str, Any]) -> subprocess.Popen:
    import json

    process = subprocess.Popen([sys.executable, "-m", "irevnet.serving.supervisor"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, start_new_session=True, close_fds=True)
    process.stdin.write(json.dumps(settings).encode() + b"\n")
    process.stdin.flush()
    return process


def _read_events(supervisor: subprocess.Popen, events: queue.Queue) -> None:
    import json

    for line in supervisor.stdout:
        with suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and isinstance(event.get("event"), str):
                events.put(event)


def _wait_started(server: Server) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        event = server.next_event(0.2)
        if event is None:
            if server.supervisor.poll() is not None and server.events.empty():
                raise IRevNetError("the server's supervisor ended before starting tritonserver; run with --debug")
            continue
        if event["event"] == "namespace":
            server.private_shm = bool(event["private_shm"])
            server.private_shm_why = str(event.get("why") or "")
        elif event["event"] == "started":
            server.pid = int(event["pid"])
            return
        elif event["event"] == "exited":
            server.result = event
            raise IRevNetError(f"tritonserver did not start: {event.get('reason')}")
    raise IRevNetError("tritonserver did not start within 30 s")


def wait_ready(server: Server, timeout: float, stop: threading.Event | None = None) -> bool:
    """Polls the HTTP health endpoint until every model is ready (True), or `stop` is set
    (False); a server that exits first, or is not ready by `timeout`, is one error naming the
    cause found in its log."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # local: never through $http_proxy
    deadline = time.monotonic() + timeout
    url = f"http://{_url_host(_loopback_of(server.host))}:{server.http_port}/v2/health/ready"
    while time.monotonic() < deadline:
        if stop is not None and stop.is_set():
            return False
        event = server.next_event(0.0) if not server.events.empty() else None
        if event is not None and event["event"] == "exited":
            server.result = event
            raise IRevNetError(f"tritonserver {_exit_words(event.get('code'))} while loading: "
                               f"{event.get('reason') or cause_from_log(event.get('log_tail') or server.log_tail(400))}")
        try:
            with opener.open(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise IRevNetError(f"tritonserver was not ready within {timeout:g} s: {cause_from_log(server.log_tail(400))}")


def warm_round_trips(server: Server, record: Record, bundle: Bundle, instances: int) -> None:
    """One zero-filled request of batch 1 to each version of NAME_roundtrip, per instance, once
    the server is ready: its first call to the two models it composes costs some 90 ms of the
    python backend's own setup (measured: 89.5 ms against a 6.2 ms median), and a config's
    model_warmup cannot pay it (at load its calls fail with "Server not ready", measured)."""
    from ..runtime.backends.triton_client import HttpClient, ServerAddress, TensorSpec, answer_bound

    image = bundle.graphs[FORWARD].inputs[0]
    outputs = [TensorSpec(RECONSTRUCTION, "FP32", tuple(image.shape[1:]))]
    address = ServerAddress("http", _loopback_of(server.host), server.http_port)
    x = np.zeros((1, *image.shape[1:]), np.float32)
    errors = []

    def one(version: str) -> None:
        client = HttpClient(address, 60.0, answer_bound(outputs, 1))
        try:
            client.infer(record.models[ROUNDTRIP], {image.name: x}, outputs, version)
        except IRevNetError as e:
            errors.append(str(e))
        finally:
            client.close()

    threads = [threading.Thread(target=one, args=(v,)) for v in record.versions for _ in range(instances)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise IRevNetError(f"the round trip did not answer its first request: {errors[0]}")


def _loopback_of(host: str) -> str:
    address = ipaddress.ip_address(host)
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host


_LOAD_FAILED = re.compile(r"failed to load '(?P<model>[^']+)' version (?P<version>\d+): (?P<why>.*)")
_BENIGN = ("CudaDriverHelper has not been initialized", "failed to load all models")


def cause_from_log(text: str) -> str:
    """The line of Triton's log that names why it failed: the first model that did not load
    (with irevnet's own message where the model raised one), else its first error line, else its
    last line."""
    errors = []
    for line in text.splitlines():
        m = _LOAD_FAILED.search(line)
        if m:
            why = m["why"].strip().strip('"').replace("\\n", "\n").split("\n")[0]
            why = re.sub(r"^(Internal|Invalid argument|Unavailable): (TritonModelException: )?", "", why)
            return f"{m['model']} (version {m['version']}) did not load: {why}"
        if re.match(r"^E\d{4} ", line) and not any(b in line for b in _BENIGN):
            errors.append(line.split("] ", 1)[-1].strip().strip('"'))
    if errors:
        return errors[0]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "its log is empty"


def _exit_words(code: int | None) -> str:
    if code is None:
        return "ended"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with code {code}"


def wait_for_signal(server: Server, announce: Callable[[Server], None] = lambda s: None,
                    log: Callable[[str], None] = lambda m: None, ready_timeout_s: float = READY_TIMEOUT_S) -> int | None:
    """Announces the server, then serves until SIGTERM or SIGINT: logs a stub that died and the
    restart that follows, and raises when the server ends on its own. Returns tritonserver's
    exit code after the drain. The handlers are in place before the announcement (a supervisor
    may signal as soon as it reads it); a second signal does not cut the drain short."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        announce(server)
        while not stop.is_set():
            event = server.next_event(0.2)
            if event is None:
                if server.supervisor.poll() is not None and server.events.empty():
                    server.result = {"event": "exited", "code": None}
                    raise IRevNetError(f"the server's supervisor {_exit_words(server.supervisor.returncode)}, and "
                                       f"tritonserver ended with it (a parent-death signal)")
                continue
            kind = event["event"]
            if kind == "stub-died":
                log(f"the python backend stub of {', '.join(event['instances'])} died; its model cannot answer")
            elif kind == "restarting":
                log("restarting tritonserver (requests in flight drain first)")
            elif kind == "started":
                server.pid = int(event["pid"])
                if wait_ready(server, ready_timeout_s, stop):
                    server.warm()
                    server.say_ready()
                    log("ready again")
            elif kind == "exited":
                server.result = event
                if event.get("reason"):
                    raise IRevNetError(event["reason"])
                raise IRevNetError(f"tritonserver {_exit_words(event.get('code'))} on its own: "
                                   f"{cause_from_log(event.get('log_tail') or server.log_tail(400))}")
        return server.stop()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
