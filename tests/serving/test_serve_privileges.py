"""A client gets no more than inference from the server: its shared-memory, logging, trace and
model-control APIs are off, its shared memory is invisible to other users, and what it writes is
private. Where the tests run as root, the client is a second, unprivileged local user (nobody),
running the system's Python with the standard library only."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

import pytest

NOBODY = 65534
# /root is 0700, so the unprivileged user cannot run this session's interpreter: the system's
SYSTEM_PYTHON = "/usr/bin/python3"

_CLIENT = r"""
import json, http.client, os, re, socket, struct, sys
host, port = sys.argv[1].rsplit(":", 1)
grpc_port = int(sys.argv[3].rsplit(":", 1)[1])
results = {}
def call(name, method, path, body=None, headers=None):
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    c.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers or {})
    r = c.getresponse()
    results[name] = [r.status, r.read(300).decode(errors="replace")]
secret = sys.argv[2]
call("register", "POST", "/v2/systemsharedmemory/region/stolen/register",
     {"key": secret, "offset": 0, "byte_size": 64})
call("shm status", "GET", "/v2/systemsharedmemory/status")
call("logging", "POST", "/v2/logging", {"log_verbose_level": 1, "log_info": True})
call("trace", "POST", "/v2/trace/setting", {"trace_level": ["TIMESTAMPS"], "trace_rate": "1"})
call("index", "POST", "/v2/repository/index", {})
call("unload", "POST", "/v2/repository/models/digits_forward/unload", {})
call("load", "POST", "/v2/repository/models/digits_forward/load",
     {"parameters": {"file:1/model.py": "aW1wb3J0IG9z"}})
# the restriction's header, read from tritonserver's command line as any local user can
key = value = None
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    for a in argv:
        if a.startswith(b"--grpc-restricted-protocol="):
            key, _, value = a.split(b":", 1)[1].partition(b"=")
results["saw the key"] = key is not None
# over HTTP/1.1, written by hand (http.client refuses such a header name): the value's first line
s = socket.create_connection((host, int(port)), timeout=30)
s.sendall(b"POST /v2/repository/models/digits_forward/unload HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + key
          + b": " + value.split(b"\n")[0] + b"\r\n\r\n{}")
results["unload with the visible key"] = s.recv(200).split(b"\r\n")[0].decode()
s.close()
# over HTTP/2, as raw frames: HPACK carries any byte of a value, line breaks included
def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload
def literal(name, v):
    def n(x):
        return bytes([len(x)]) + x if len(x) < 127 else b"\x7f" + bytes([len(x) - 127]) + x
    return b"\x00" + n(name) + n(v)
def grpc(name):
    headers = b"".join(literal(k, v) for k, v in ((b":method", b"POST"), (b":scheme", b"http"),
        (b":path", b"/inference.GRPCInferenceService/RepositoryIndex"), (b":authority", b"x"),
        (b"content-type", b"application/grpc"), (b"te", b"trailers"), (name, value)))
    c = socket.create_connection((host, grpc_port), timeout=10)
    c.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 4, 1, headers)
              + frame(0, 1, 1, b"\x00\x00\x00\x00\x00"))
    data = b""
    try:  # until the stream's trailers (grpc-status), a listing, or the server closes
        while b"grpc-status" not in data and b"digits_forward" not in data:
            d = c.recv(65536)
            if not d:
                break
            data += d
    except OSError:
        pass
    c.close()
    return data.decode("latin-1")
results["grpc index, exact key"] = grpc(b"triton-grpc-protocol-" + key)
results["grpc index, lowercase key"] = grpc(b"triton-grpc-protocol-" + key.lower().replace(b" ", b"-"))
call("inference", "POST", "/v2/models/digits_forward/infer",
     {"inputs": [{"name": "image", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": [0.0] * 256}]})
results["shm"] = sorted(os.listdir("/dev/shm"))
print(json.dumps(results))
"""


def _as_another_user(script: str, *args: str) -> dict:
    """Runs `script` as nobody (when the tests run as root) or as this user; its JSON answer."""
    if os.geteuid() == 0:
        if not Path(SYSTEM_PYTHON).is_file():
            pytest.skip(f"no {SYSTEM_PYTHON} for the unprivileged user to run")
        cmd, kw = [SYSTEM_PYTHON, "-I", "-c", script, *args], {"user": NOBODY, "group": NOBODY, "extra_groups": [],
                                                              "cwd": "/"}
    else:
        cmd, kw = [sys.executable, "-I", "-c", script, *args], {}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def secret_region():
    """A root-only 0600 shared-memory object, like the one the issue's attacker had the server overwrite."""
    name = f"irevnet-test-secret-{secrets.token_hex(4)}"
    path = Path("/dev/shm") / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"root's secret".ljust(64, b"."))
    os.close(fd)
    yield path
    path.unlink(missing_ok=True)


def test_a_local_user_gets_inference_and_nothing_else(server, secret_region):
    """Each restricted API over HTTP, and over both protocols with the restriction's header read
    from tritonserver's command line and sent byte for byte (over raw HTTP/2, whose HPACK carries
    the value's line break: a Triton restricted to a lowercase key gave a local user model
    control, and with it code run as the server's user)."""
    got = _as_another_user(_CLIENT, server.http_url, f"/{secret_region.name}", server.grpc_url)
    for name in ("register", "shm status", "logging", "trace", "index", "unload", "load"):
        status, body = got[name]
        assert status == 403 and "restricted" in body, (name, got[name])
    assert got["saw the key"], "the restriction's key is on tritonserver's command line, readable by anyone"
    assert got["unload with the visible key"].split()[1] in ("400", "403"), got["unload with the visible key"]
    assert "digits_forward" not in got["grpc index, exact key"], "HTTP/2 refuses the header name: the stream is rejected"
    assert "This protocol is restricted" in got["grpc index, lowercase key"], got["grpc index, lowercase key"]
    assert got["inference"][0] == 200, "what a client is for still works"
    assert secret_region.read_bytes() == b"root's secret".ljust(64, b"."), "nothing written into it"
    assert not [n for n in got["shm"] if n.startswith(server.scratch.name)], "the server's regions are invisible"
    from tritonclient import http

    assert http.InferenceServerClient(server.http_url).is_model_ready("digits_forward")


def test_over_grpc_the_same_apis_are_off(server, secret_region):
    from tritonclient import grpc
    from tritonclient.utils import InferenceServerException

    client = grpc.InferenceServerClient(server.grpc_url)
    calls = {
        "register": lambda: client.register_system_shared_memory("stolen", f"/{secret_region.name}", 64),
        "shm status": lambda: client.get_system_shared_memory_status(),
        "logging": lambda: client.update_log_settings({"log_verbose_level": 1}),
        "trace": lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
        "index": lambda: client.get_model_repository_index(),
        "unload": lambda: client.unload_model("digits_forward"),
    }
    for call in calls.values():
        with pytest.raises(InferenceServerException, match="restricted"):
            call()
    assert client.is_model_ready("digits_forward") and secret_region.read_bytes().startswith(b"root's secret")


def test_the_servers_shared_memory_lives_in_a_private_dev_shm(server):
    """The python backend creates its regions 0644 whatever the umask (measured): every local
    user could read every request's tensors. In its own /dev/shm, no one else sees them."""
    if not server.private_shm:
        pytest.skip(f"this kernel refuses a private mount namespace here ({server.private_shm_why}); the fallback "
                    f"is tested below")
    with open(f"/proc/{server.pid}/mountinfo") as f:
        mounts = [line.split() for line in f]
    shm = [m for m in mounts if m[4] == "/dev/shm"]
    assert shm and "tmpfs" in shm[-1], "tritonserver sees a tmpfs of its own at /dev/shm"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(server.scratch.name)], "none in the host's"


def test_without_a_private_dev_shm_the_regions_are_the_servers_alone(repository, server_install, tmp_path):
    """Where the kernel refuses a private mount namespace, the regions are made 0600 as they
    appear (and unlinked at the end): another user cannot open them."""
    from irevnet.serving.server import ServeOptions, serve

    log = tmp_path / "server.log"
    with serve(ServeOptions(target=str(repository), http_port=0, grpc_port=0, metrics_port=0, private_shm=False,
                            log=str(log))) as running:
        assert not running.private_shm
        prefix = running.scratch.name
        import time

        deadline = time.monotonic() + 5
        regions = []
        while time.monotonic() < deadline:  # the supervisor protects them within its watch period
            regions = [Path("/dev/shm") / n for n in os.listdir("/dev/shm") if n.startswith(running.scratch.name)]
            if regions and all(stat.S_IMODE(r.stat().st_mode) == 0o600 for r in regions):
                break
            time.sleep(0.1)
        assert len(regions) == 3 and all(stat.S_IMODE(r.stat().st_mode) == 0o600 for r in regions), regions
        script = ("import json, sys\nout = {}\nfor p in sys.argv[1:]:\n    try:\n        open(p, 'rb').read(1)\n"
                  "        out[p] = 'read'\n    except PermissionError:\n        out[p] = 'refused'\nprint(json.dumps(out))")
        if os.geteuid() == 0:
            assert set(_as_another_user(script, *map(str, regions)).values()) == {"refused"}
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, "the log is private too (umask 077)"
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)], "unlinked at the end"
    assert "Signal (15) received" in log.read_text(), "--log keeps the log to the end of the run"
