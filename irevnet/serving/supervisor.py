"""The process between `irevnet serve` and tritonserver (`python -m irevnet.serving.supervisor`).

It exists because the server must not outlive serve, and nothing it made may stay behind, however
serve ends (kill -9 included), and because Triton 2.51 leaves three things to whoever starts it:
- its python backend's shared-memory regions are created mode 0644 whatever the umask (measured),
  so any local user could read every request's tensors: the server runs in a private mount
  namespace with its own /dev/shm (mode 0700, gone with the last process in it); where the kernel
  refuses one, the regions are made 0600 as they appear and unlinked at the end;
- a python backend stub that dies leaves its model "ready" while every request fails with "Stub
  process is not healthy" (measured): the stubs are watched, and the server is restarted (at most
  `restarts` times) with a line saying which model's stub died;
- on SIGTERM it keeps serving every open HTTP connection until its exit timeout, an idle keep-alive
  one included (measured: 30 s for one client that made one request, then the in-flight requests
  get no time at all): once nothing is in flight, connections on which nothing moves are shut
  down from here (pidfd_getfd), so an idle client costs a fraction of a second.

Protocol: serve writes one JSON line of settings to stdin, then "ready" once the models are (the
stubs are watched from then on), and "stop" (or closes stdin, or dies); the supervisor answers with JSON lines on stdout (started, stub-died, restarting, exited,
stopped). Standard library only: it starts in tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

STUB = "triton_python_backend_stub"
_LIBC = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
_SYS_PIDFD_GETFD = 438  # the same number on every architecture Linux assigns it
_SIOCINQ, _SIOCOUTQ = 0x541B, 0x5411
_TCP_INFO = 11
_RESTART_WINDOW_S = 600.0
_POLL_S = 0.1  # while draining
QUIET_LOOKS = 2  # a connection on which nothing moved for this many looks (0.2 s) is idle
RESTART_DRAIN_S = 3.0  # a restart for a dead stub: what requests in flight on the other models get
_WATCH_S = 0.5  # while serving: how soon a dead stub is seen (each look reads a few /proc files)
_PENDING = re.compile(r"^nv_inference_pending_request_count\{[^}]*\}\s+([0-9.eE+-]+)$", re.MULTILINE)


def main() -> int:
    # serve sends "stop"; a SIGTERM sent here directly stops the same way (through `finally`)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    commands = _Commands()
    settings = json.loads(commands.line(None) or "{}")
    # opened before the private mount namespace hides it (a log under /dev/shm is the host's)
    log = os.open(settings["log"], os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    events = _Events()
    private, why = _private_shm() if settings["private_shm"] is not False else (False, settings["private_shm_why"])
    if settings["private_shm"] is True and not private:
        events.emit("exited", code=None, reason=f"no private /dev/shm could be made here ({why})", log_tail="")
        shutil.rmtree(settings["scratch"], ignore_errors=True)
        return 1
    _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # orphaned stubs come to this process, not to init
    events.emit("namespace", private_shm=private, why=why)
    # held while this process lives: a later serve removes the scratch folder only once it is free
    lock = open(os.path.join(settings["scratch"], ".lock"), "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    supervisor = Supervisor(settings, events, private, commands, log)
    try:
        return supervisor.run()
    finally:
        supervisor.cleanup()
        lock.close()


class _Commands:
    """Lines from serve on stdin, read from the descriptor itself (a buffered reader could hold a
    second line where select() no longer sees it)."""

    def __init__(self):
        self.buffer = b""
        self.closed = False

    def line(self, timeout: float | None) -> str | None:
        """The next line ("" once stdin is closed), or None when none came within `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer and not self.closed:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready, _, _ = select.select([0], [], [], wait)
            if not ready:
                return None
            data = os.read(0, 65536)
            self.buffer += data
            self.closed = not data
        if b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            return line.decode(errors="replace").strip()
        return ""


class _Events:
    def emit(self, event: str, **fields: Any) -> None:
        try:
            sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, OSError):
            pass  # serve is gone: the run ends by the stdin EOF


class Supervisor:
    def __init__(self, settings: dict[str, Any], events: _Events, private: bool, commands: _Commands, log: int):
        self.settings, self.events, self.private, self.commands, self.log = settings, events, private, commands, log
        self.process: subprocess.Popen | None = None
        self.stubs: dict[int, str] = {}
        self.watching = False  # stubs are watched once serve says the models are ready (a failed load ends its own)
        self.restarts: deque[float] = deque()
        self.protected: set[str] = set()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        self.start()
        while True:
            command = self.commands.line(_WATCH_S)
            if command in ("stop", ""):  # "" is EOF: serve closed stdin or died
                code, closed = self.stop()
                self.events.emit("stopped", code=code, closed_idle=closed)
                return 0 if code == 0 else 1
            if command == "ready":
                self.watching = True
                self.stubs = dict(_children(self.process.pid))
            if self.process.poll() is not None:
                self._reap_orphans()
                self.events.emit("exited", code=self.process.returncode, reason=None, log_tail=self._log_tail())
                return 1
            if not self.private:
                self._protect_regions()
            dead = self._dead_stubs()
            if dead:
                self.events.emit("stub-died", instances=sorted(dead.values()), pids=sorted(dead))
                now = time.monotonic()
                while self.restarts and now - self.restarts[0] > _RESTART_WINDOW_S:
                    self.restarts.popleft()
                if len(self.restarts) >= self.settings["restarts"]:
                    code, _ = self.stop()
                    self.events.emit("exited", code=code, log_tail=self._log_tail(),
                                     reason=f"a python backend stub died again after {len(self.restarts)} restart"
                                            f"{'s' * (len(self.restarts) != 1)} in {_RESTART_WINDOW_S:.0f} s; "
                                            f"tritonserver was stopped (--restarts)")
                    return 1
                self.restarts.append(now)
                self.events.emit("restarting")
                self.stop(min(self.settings["drain_s"], RESTART_DRAIN_S))  # the dead model's clients wait meanwhile
                self.start()

    def _log_tail(self, limit: int = 64 << 10) -> str:
        """The end of the server's log, for the message that names why it ended (the log itself
        may be in the scratch folder, removed when this process ends)."""
        try:
            size = os.fstat(self.log).st_size
            return os.pread(self.log, limit, max(size - limit, 0)).decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self) -> None:
        # a restart starts clean: no executing count of a stub that died mid-request, and every
        # new region of the server (same names again) protected anew
        executing = Path(self.settings["executing_dir"])
        for entry in executing.iterdir() if executing.is_dir() else []:
            with contextlib.suppress(OSError):
                entry.unlink()
        self.protected.clear()
        self.process = subprocess.Popen(
            self.settings["argv"], env=self.settings["env"], stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True, umask=0o077,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 - this process runs no thread of its own
        self.stubs, self.watching = {}, False
        self.events.emit("started", pid=self.process.pid)

    def stop(self, drain_s: float | None = None) -> tuple[int | None, int]:
        """SIGTERM, then Triton drains (at most `drain_s`, default the run's); idle connections
        are closed once nothing is in flight. Returns (tritonserver's exit code, idle connections
        closed)."""
        process, closed = self.process, 0
        drain_s = self.settings["drain_s"] if drain_s is None else drain_s
        if process is None:
            return None, 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            closer = _IdleCloser(process.pid, self.settings)
            # Triton's own exit timeout is the run's drain_s; then the models unload (about a second
            # each, in parallel). A shorter drain (a restart) ends in SIGKILL of the group.
            deadline = time.monotonic() + drain_s + (5.0 if drain_s == self.settings["drain_s"] else 0.0)
            while process.poll() is None and time.monotonic() < deadline:
                closed += closer.poll()
                try:
                    process.wait(_POLL_S)
                except subprocess.TimeoutExpired:
                    pass
            closer.close()
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of its group is left (stubs included)
        self._reap_orphans()
        self._remove_regions()
        return process.returncode, closed

    def cleanup(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()
        self._reap_orphans()
        self._remove_regions()
        shutil.rmtree(self.settings["scratch"], ignore_errors=True)

    # -- processes -----------------------------------------------------------------------------

    def _dead_stubs(self) -> dict[int, str]:
        """Stubs that were running at the last look and are gone while the server runs."""
        if not self.watching:
            return {}
        now = {pid: instance for pid, instance in _children(self.process.pid)}
        dead = {pid: instance for pid, instance in self.stubs.items() if pid not in now}
        self.stubs = now
        return dead

    def _reap_orphans(self) -> None:
        """Kills and reaps every process that became this one's child (stubs whose server died)."""
        me = os.getpid()
        server = self.process.pid if self.process else None
        for pid, ppid in _processes():
            if ppid == me and pid != server:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)

    # -- shared memory where no private /dev/shm could be made ---------------------------------

    def _regions(self) -> list[Path]:
        prefix = self.settings["shm_prefix"]
        try:
            return [Path("/dev/shm") / n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
        except OSError:
            return []

    def _protect_regions(self) -> None:
        for path in self._regions():
            if path.name not in self.protected:
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o600)
                    self.protected.add(path.name)

    def _remove_regions(self) -> None:
        if not self.private:
            for path in self._regions():
                with contextlib.suppress(OSError):
                    path.unlink()


class _IdleCloser:
    """During the drain: shuts down the server's HTTP connections on which nothing moves while
    nothing is in flight (no request queued, from Triton's metrics, nor executing, from the
    files each model instance keeps in `executing_dir`, triton_model._Executing). A connection is quiet when its queues are empty and its byte
    counters did not change since the previous look; it is closed once QUIET_LOOKS looks in a row
    (0.2 s) found it quiet with nothing in flight, so a client that sends a request every half
    second is closed between two of them. The price: a client that sends one request slower than
    a byte in 0.2 s is cut, as a server's body timeout would cut it. Does nothing where
    pidfd_getfd is refused."""

    def __init__(self, pid: int, settings: dict[str, Any]):
        self.pid, self.port = pid, settings["http_port"]
        self.metrics = f"http://{settings['metrics_host']}:{settings['metrics_port']}/metrics"
        self.executing = Path(settings["executing_dir"])
        self.seen: dict[int, tuple[socket.socket, tuple[int, int], int]] = {}  # inode -> (dup, counters, quiet looks)
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd = None

    def poll(self) -> int:
        if self.pidfd is None:
            return 0
        idle = _pending(self.metrics) == 0 and _executing(self.executing) == 0
        closed = 0
        for inode, fd in _connections(self.pid, self.port):
            if inode not in self.seen:
                dup = _LIBC.syscall(_SYS_PIDFD_GETFD, self.pidfd, fd, 0)
                if dup < 0:
                    continue
                self.seen[inode] = (socket.socket(fileno=dup), (-1, -1), 0)
            sock, counters, looks = self.seen[inode]
            now = _counters(sock)
            quiet = now is not None and now == counters and _queues_empty(sock)
            looks = looks + 1 if quiet and idle else 0
            if looks >= QUIET_LOOKS:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                del self.seen[inode]
                closed += 1
            else:
                self.seen[inode] = (sock, now or (-1, -1), looks)
        return closed

    def close(self) -> None:
        for sock, _, _ in self.seen.values():
            sock.close()
        if self.pidfd is not None:
            os.close(self.pidfd)


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the server is local: never via $http_proxy


def _pending(url: str) -> float | None:
    """Requests queued on the server, from its metrics (None when unreadable)."""
    try:
        with _NO_PROXY.open(url, timeout=1.0) as response:
            text = response.read(8 << 20).decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    return sum(float(v) for v in _PENDING.findall(text))


def _executing(folder: Path) -> int | None:
    """Requests the model instances are executing (None when a file cannot be read)."""
    total = 0
    try:
        for entry in os.scandir(folder):
            with open(entry.path, "rb") as f:
                total += int(f.read(16).strip() or 0)
    except (OSError, ValueError):
        return None
    return total


def _counters(sock: socket.socket) -> tuple[int, int] | None:
    """(bytes acknowledged by the peer, bytes received) of a TCP socket (struct tcp_info)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 256)
    except OSError:
        return None
    if len(info) < 136:  # bytes_acked and bytes_received: Linux 4.1 and 4.2
        return None
    return struct.unpack_from("=QQ", info, 120)


def _queues_empty(sock: socket.socket) -> bool:
    import fcntl

    try:
        inq = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCINQ, b"\0" * 4))[0]
        outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), _SIOCOUTQ, b"\0" * 4))[0]
    except OSError:
        return False
    return inq == 0 and outq == 0


def _connections(pid: int, port: int) -> list[tuple[int, int]]:
    """(socket inode, fd number in `pid`) of its established TCP connections on local `port`."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(int(fields[9]))
    found = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                found.append((int(target[8:-1]), int(fd)))
    return found


def _processes() -> list[tuple[int, int]]:
    """(pid, parent pid) of every process this one can see."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{name}/stat").read_text()
                out.append((int(name), int(stat[stat.rindex(")") + 2:].split()[1])))
    return out


def _children(server: int) -> list[tuple[int, str]]:
    """(pid, model instance) of the server's python backend stubs; the instance is the stub's
    argument after the IPC handle, e.g. digits_forward_0_0."""
    found = []
    for pid in _child_pids(server):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv and os.path.basename(argv[0].decode(errors="replace")) == STUB:
                found.append((pid, argv[8].decode(errors="replace") if len(argv) > 8 else "?"))
    return found


def _child_pids(pid: int) -> list[int]:
    """The children of `pid`, from each of its threads' `children` file (Linux 3.5+ with
    CONFIG_PROC_CHILDREN), else from a scan of every process."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    try:
        for task in tasks:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
                children += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    except OSError:
        return [child for child, parent in _processes() if parent == pid]
    return children


def _die_with_parent() -> None:
    """In tritonserver's process before exec: killed when the supervisor dies, however."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _private_shm() -> tuple[bool, str]:
    """A mount namespace of this process's own with a fresh /dev/shm (tmpfs, mode 0700); for a
    user other than root, inside a user namespace that maps the user to itself. (True, "") or
    (False, why not)."""
    uid, gid = os.getuid(), os.getgid()
    flags = _CLONE_NEWNS if uid == 0 else _CLONE_NEWNS | _CLONE_NEWUSER
    if _LIBC.unshare(flags) != 0:
        return False, f"unshare: {os.strerror(ctypes.get_errno())}"
    try:
        if uid != 0:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError as e:
        return False, f"user namespace: {e.strerror}"
    if _LIBC.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False, f"mount --make-rprivate /: {os.strerror(ctypes.get_errno())}"
    if _LIBC.mount(b"tmpfs", b"/dev/shm", b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"mode=0700") != 0:
        return False, f"mount tmpfs /dev/shm: {os.strerror(ctypes.get_errno())}"
    return True, ""


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as e:
        if e.errno != errno.EPIPE:  # serve is gone and its pipe with it: the run already ended
            raise
