"""`irevnet serve` behaves like a service: SIGTERM drains and exits 0 within seconds even with idle
keep-alive clients, tritonserver dies with serve, a dead backend stub is restarted and logged,
signals while loading leave nothing behind, and a failure names its cause."""

from __future__ import annotations

import signal
import socket
import time

import numpy as np
import pytest

from irevnet.contract import IMAGE, REFERENCE_IMAGES, Z
from irevnet.errors import IRevNetError
from irevnet.serving.server import DRAIN_TIMEOUT_S

from .conftest import _cmdline, alive, leftovers, wait_gone

# SIGTERM to exit with idle keep-alive clients: Triton's shutdown sleeps a second per phase
# (connections, in-flight inferences, live models) and the python models unload in about one
# (measured: 3.4 s in all here); a Kubernetes pod gets 30 s before SIGKILL
SIGTERM_BOUND_S = 10.0


def _request(address: str, x: np.ndarray | None = None):
    from tritonclient import http

    x = np.zeros((1, 1, 16, 16), np.float32) if x is None else x
    client = http.InferenceServerClient(address)
    tensor = http.InferInput(IMAGE, list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return client, client.infer("digits_forward", [tensor]).as_numpy(Z)


def test_sigterm_drains_a_request_in_flight_then_closes_idle_keep_alive_clients_and_exits_0(
        repository, server_install, serve_process):
    """Triton 2.51 serves every open HTTP connection until its exit timeout, an idle one
    included: one client that made one request held SIGTERM for 30 s, then tritonserver was
    SIGKILLed behind an exit 0. Now idle connections are closed once nothing is in flight: while
    a model instance says it is executing (the file triton_model._Executing keeps, written here by
    hand, as a request lasting seconds would) the server keeps draining, then it exits within
    seconds."""
    from tritonclient import grpc

    serve = serve_process(repository)
    tree = serve.tree()
    http_client, _ = _request(serve.http)  # its keep-alive connection stays open, idle
    host, port = serve.http.rsplit(":", 1)
    idle = socket.create_connection((host, int(port)))  # and one that never sent a byte
    g = grpc.InferenceServerClient(serve.grpc)
    assert g.is_server_ready()  # an idle gRPC channel too
    (scratch,) = [p for p in serve.tmpdir.iterdir() if p.name.startswith("irevnet-serve.")]
    flag = scratch / "executing" / "digits_forward_0_0"
    flag.write_bytes(b"%8d" % 1)
    serve.proc.send_signal(signal.SIGTERM)
    time.sleep(2.5)  # the closer would have closed the idle connections after one second
    assert serve.proc.poll() is None, "still draining: a request is in flight"
    flag.write_bytes(b"%8d" % 0)
    code, out, err, seconds = serve.finish(sig=None)
    assert code == 0 and "Traceback" not in err, err
    assert seconds <= SIGTERM_BOUND_S, f"{seconds:.1f} s to exit once nothing was in flight"
    assert "tritonserver stopped (exit code 0)" in out and "2 idle connections closed" in out, out
    assert wait_gone([p for pids in tree.values() for p in pids], 5) == []
    assert leftovers(serve) == [], "temporary folders and shared-memory regions removed"
    idle.close()
    http_client.close()


def test_kill_9_of_serve_takes_tritonserver_and_its_files_with_it(repository, server_install, serve_process):
    """tritonserver kept serving on the port forever after kill -9 of serve, and the temporary
    repository stayed."""
    serve = serve_process(repository)
    tree = serve.tree()
    assert len(tree["tritonserver"]) == 1 and len(tree["stubs"]) == 3, tree
    serve.proc.kill()
    serve.proc.wait()
    assert wait_gone([p for pids in tree.values() for p in pids], 30) == [], "supervisor, server and stubs end"
    host, port = serve.http.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
    deadline = time.monotonic() + 10
    while leftovers(serve) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert leftovers(serve) == []


def test_kill_9_of_tritonserver_ends_serve_naming_it_and_leaves_nothing(repository, server_install, serve_process):
    serve = serve_process(repository)
    tree = serve.tree()
    signal_pid = tree["tritonserver"][0]
    import os

    os.kill(signal_pid, signal.SIGKILL)
    code, _, err, _ = serve.finish(sig=None)
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: tritonserver was killed by SIGKILL on its own"), err
    assert wait_gone(tree["stubs"], 10) == [], "its orphaned stubs are killed"
    assert leftovers(serve) == []


def test_a_dead_stub_is_logged_and_its_model_comes_back(repository, server_install, serve_process, bundles):
    """A dead stub left its model "ready" while every request failed with "Stub process ... is
    not healthy". Now serve logs it and restarts the server, and the model answers again."""
    import os

    from irevnet.contract import FORWARD, Precision
    from irevnet.runtime import Bundle, open_backend

    serve = serve_process(repository)
    stub = next(p for p in serve.tree()["stubs"] if b"digits_forward_0_0" in _cmdline(p))
    os.kill(stub, signal.SIGKILL)
    text = serve.read_until("ready again", 90)
    assert "the python backend stub of digits_forward_0_0 died" in text and "ready again" in text, text
    x = Bundle.open(bundles[Precision.fp32]).reference(REFERENCE_IMAGES).images[:2]
    with open_backend("onnxruntime", Bundle.open(bundles[Precision.fp32]), FORWARD, threads=1) as local:
        assert np.array_equal(_request(serve.http, x)[1], local.infer({IMAGE: x})[Z])
    code, _, err, _ = serve.finish(signal.SIGTERM)
    assert code == 0, err
    assert leftovers(serve) == []


@pytest.mark.parametrize("sig, code, inherited", [
    (signal.SIGTERM, 143, "default"),
    (signal.SIGINT, 130, "default"),
    # a background job of a non-interactive shell (`irevnet serve ... &`, CI's runners) starts with
    # SIGINT ignored: serve took SIGINT only once serving, so one sent while the models loaded was
    # lost and the server then served until SIGTERM (every fresh-clone CI run of the whole suite)
    (signal.SIGINT, 130, "ignored"),
])
def test_a_signal_while_the_models_load_leaves_nothing(repository, server_install, serve_process, sig, code, inherited):
    """SIGTERM or Ctrl-C while the models loaded left orphaned stubs and /dev/shm regions."""
    serve = serve_process(repository, wait=False, sigint=inherited)
    deadline = time.monotonic() + 60
    tree = {}
    while time.monotonic() < deadline:
        tree = serve.tree()
        if tree["stubs"]:  # loading: the stubs have started; each loads a runtime and warms it (a second here)
            break
        time.sleep(0.01)
    assert tree.get("stubs"), "the stubs started"
    # serve's own bound on stopping: the supervisor's answer within the drain + 30 s, then 10 s for
    # it to exit before it is killed (serving/server.py, Server.stop)
    bound = DRAIN_TIMEOUT_S + 30 + 10 + 5
    exit_code, out, err, seconds = serve.finish(sig, timeout=bound)
    assert exit_code == code and "Traceback" not in err, (seconds, err)
    assert "serving" not in out, "it was stopped before it was ready"
    assert wait_gone([p for pids in tree.values() for p in pids], 30) == []
    assert leftovers(serve) == []


def test_the_line_shown_for_a_failed_start_names_the_model_and_the_cause():
    """After a failed start the line shown was the last of Triton's log ("error: creating
    server: Internal - failed to load all models"); the model and its cause were in a log
    deleted with the temporary folder. Lines as tritonserver 2.51 writes them."""
    from irevnet.serving.server import cause_from_log

    log = (
        'E1201 23:27:35.102995 3848 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        'E1201 23:27:36.806285 3848 model_lifecycle.cc:642] "failed to load \'digits_forward\' version 1: Internal: '
        'TritonModelException: irevnet: models/weights.bin does not match its sha256 in the manifest\\n\\nAt:\\n  '
        'model.py(5): initialize\\n"\n'
        "error: creating server: Internal - failed to load all models\n"
    )
    assert cause_from_log(log) == ("digits_forward (version 1) did not load: irevnet: models/weights.bin does not match "
                                   "its sha256 in the manifest")
    assert cause_from_log('E1201 00:00:00.0 1 main.cc:1] "failed to start GRPC service: Unavailable"\n') == \
        "failed to start GRPC service: Unavailable"


def test_a_port_in_use_is_one_line(repository, server_install):
    from irevnet.serving.server import ServeOptions, serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(IRevNetError, match=f"port {port} on 127.0.0.1 is in use \\(--http-port\\)"), \
                serve(ServeOptions(target=str(repository), http_port=port, grpc_port=0, metrics_port=0)):
            pass


def test_ports_picked_for_0_are_three_ports_even_where_the_system_hands_one_out_again(monkeypatch):
    """serve refused to start, saying a port it had picked itself was in use (a suite run on
    record): each port asked as 0 was picked and released, and the system handed the same one
    out for the next. Here the system prefers one port for every pick, as it did then: the picks
    are held until all three are chosen, so they are three ports."""
    import types

    from irevnet.serving import server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        preferred = probe.getsockname()[1]

    class PrefersOnePort(socket.socket):
        def bind(self, address):
            if address[1] == 0:
                try:
                    return super().bind((address[0], preferred))
                except OSError:  # held: the system picks another
                    pass
            return super().bind(address)

    monkeypatch.setattr(server.socket, "socket", PrefersOnePort)
    ports = server._ports(types.SimpleNamespace(host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0))
    assert ports["http_port"] == preferred and len(set(ports.values())) == 3, ports
    given = server._ports(types.SimpleNamespace(host="127.0.0.1", http_port=0, grpc_port=preferred, metrics_port=0))
    assert given["grpc_port"] == preferred and len(set(given.values())) == 3, given


def _supervisors() -> set[int]:
    import os

    return {int(p) for p in os.listdir("/proc") if p.isdigit() and alive(int(p))
            and b"irevnet.serving.supervisor" in _cmdline(int(p))}


def test_a_server_not_ready_in_time_is_one_error_and_leaves_nothing(repository, server_install, tmp_path, monkeypatch):
    import os
    import tempfile

    from irevnet.serving.server import ServeOptions, serve

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    before = _supervisors()
    with pytest.raises(IRevNetError, match=r"tritonserver was not ready within 0.01 s"), \
            serve(ServeOptions(target=str(repository), http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=0.01)):
        pass
    assert [p for p in os.listdir(tmp_path) if p != ".ses"] == []
    assert _supervisors() - before == set(), "its supervisor ended"


def test_a_host_beyond_loopback_says_what_it_exposes(repository, server_install):
    from irevnet.serving.server import ServeOptions, serve

    said = []
    with pytest.raises(IRevNetError, match="not ready within"), \
            serve(ServeOptions(target=str(repository), host="0.0.0.0", http_port=0, grpc_port=0, metrics_port=0,
                               ready_timeout_s=0.01), log=said.append):
        pass
    assert any(line.startswith("listening on 0.0.0.0: inference, health, metadata") and "without TLS or authentication"
               in line for line in said), said


def test_a_model_that_does_not_load_is_named_with_its_cause(bundles, server_install, tmp_path):
    """A graph that passes every check of the bundle but that ONNX Runtime cannot build (a
    convolution's `group` made inconsistent, its hash rewritten): tritonserver refuses to start,
    and the line says which model and why, from its log (the log is in the folder the
    supervisor removes: the cause travels in its last event)."""
    import hashlib
    import json
    import shutil

    import onnx

    from irevnet.contract import FORWARD, MANIFEST, Precision, graph_file
    from irevnet.serving.repository import TritonOptions, write_repository
    from irevnet.serving.server import ServeOptions, serve

    bundle = shutil.copytree(bundles[Precision.fp32], tmp_path / "broken")
    path = bundle / graph_file(FORWARD)
    model = onnx.load(str(path), load_external_data=False)
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.attribute.append(onnx.helper.make_attribute("group", 3))
    onnx.save(model, str(path))
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"][graph_file(FORWARD)] = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    write_repository(TritonOptions(bundle=str(bundle), out=str(tmp_path / "models"), name="b"))
    with pytest.raises(IRevNetError) as refused, serve(ServeOptions(target=str(tmp_path / "models"), http_port=0,
                                                                    grpc_port=0, metrics_port=0)):
        pass
    message = str(refused.value)
    assert "b_forward (version 1) did not load: irevnet:" in message and "\n" not in message, message
