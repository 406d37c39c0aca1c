"""Serving with Triton: repositories of every flavour parse as Triton's ModelConfig, and the python
flavour served by a real tritonserver answers what the in-process runtime answers.

Needs the `serve` extra (tritonclient), the server binary (`pip install --no-deps nvidia-pytriton`)
and a server Python with numpy < 2 (IREVNET_TRITON_ENV, made by `irevnet serve-env`); .ci/run
installs all three.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from irevnet.contract import FORWARD, IMAGE, INVERSE, LOGITS, RECONSTRUCTION, ROUNDTRIP, WEIGHTS, Precision, Z
from irevnet.errors import IRevNetError
from irevnet.runtime import Bundle, open_backend

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is None,
                                reason="tritonclient is not installed: pip install 'irevnet[serve]'")


def _server_missing() -> str | None:
    from irevnet.serving.server import ServeOptions, python_env, server_files

    try:
        server_files()
        python_env(ServeOptions(target="."))
    except IRevNetError as e:
        return str(e)
    return None


needs_server = pytest.mark.skipif(importlib.util.find_spec("tritonclient") is not None and _server_missing() is not None,
                                  reason=f"no Triton server here: {_server_missing() if importlib.util.find_spec('tritonclient') else ''}")


@pytest.fixture(scope="module")
def repository(bundles, tmp_path_factory):
    from irevnet.serving.repository import TritonOptions, write_repository

    out = tmp_path_factory.mktemp("triton") / "models"
    # a longer queue delay than the default, so that requests sent together meet in one batch
    write_repository(TritonOptions(bundle=str(bundles[Precision.fp32]), out=str(out), name="digits",
                                   max_queue_delay_us=20_000, threads=1))
    return out


@pytest.fixture(scope="module")
def server(repository):
    from irevnet.serving.server import ServeOptions, serve

    with serve(ServeOptions(target=str(repository), http_port=0, grpc_port=0, metrics_port=0)) as running:
        yield running


@pytest.fixture(scope="module")
def local(bundles):
    """What the in-process runtime answers, for comparison."""
    bundle = Bundle.open(bundles[Precision.fp32])
    with open_backend("onnxruntime", bundle, FORWARD, threads=1) as fwd, \
            open_backend("onnxruntime", bundle, INVERSE, threads=1) as inv:
        yield bundle, fwd, inv


def _http(server):
    from tritonclient import http

    return http, http.InferenceServerClient(server.http_url)


def _infer(module, client, model, name, x, outputs=None):
    tensor = module.InferInput(name, list(x.shape), "FP32" if x.dtype == np.float32 else "FP64")
    tensor.set_data_from_numpy(x)
    asked = [module.InferRequestedOutput(o) for o in outputs] if outputs else None
    return client.infer(model, [tensor], outputs=asked)


# -- repositories ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["python", "onnxruntime", "openvino", "tensorrt"])
def test_every_flavour_parses_as_triton_model_config_and_matches_the_graphs(bundles, tmp_path, flavour, fake_trt):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from irevnet.serving.repository import TritonOptions, write_repository

    source = bundles[Precision.fp32]
    if flavour == "tensorrt":
        with pytest.raises(IRevNetError, match="has no TensorRT engines; build them with `irevnet build"):
            write_repository(TritonOptions(bundle=str(source), out=str(tmp_path / "no-engines"), flavour=flavour))
        from irevnet.runtime.trt_build import BuildOptions, build_engines

        fake_trt("10.13.0.35")
        source = shutil.copytree(source, tmp_path / "b")
        build_engines(BuildOptions(bundle=str(source)))
    record = write_repository(TritonOptions(bundle=str(source), out=str(tmp_path / "repo"), flavour=flavour, name="d"))
    bundle = Bundle.open(source)
    configs = {}
    for model in record["models"].values():
        configs[model] = text_format.Parse((tmp_path / "repo" / model / "config.pbtxt").read_text(),
                                           model_config_pb2.ModelConfig())
        assert configs[model].max_batch_size == bundle.max_batch
    fwd = configs["d_forward"]
    assert [(t.name, list(t.dims)) for t in fwd.input] == [(IMAGE, list(bundle.config.in_shape))]
    assert [(t.name, list(t.dims)) for t in fwd.output] == [(LOGITS, [bundle.config.num_classes]), (Z, list(bundle.config.z_shape))]
    assert [(t.name, list(t.dims)) for t in configs["d_inverse"].input] == [(Z, list(bundle.config.z_shape))]
    assert [t.name for t in configs["d_roundtrip"].output] == [RECONSTRUCTION, LOGITS, Z]
    assert fwd.HasField("dynamic_batching") and fwd.dynamic_batching.max_queue_delay_microseconds == 0
    version = tmp_path / "repo" / "d_forward" / "1"
    expected = {"python": ["model.py"], "onnxruntime": ["model.onnx"], "openvino": ["model.onnx", WEIGHTS],
                "tensorrt": ["model.plan"]}[flavour]
    assert sorted(p.name for p in version.iterdir()) == expected
    if flavour == "onnxruntime":  # the directory form: the graph beside the weights its external data names
        assert sorted(p.name for p in (version / "model.onnx").iterdir()) == ["model.onnx", WEIGHTS]
    if flavour == "python":  # self-contained: the bundle and irevnet's runtime, once, no absolute path
        shared = tmp_path / "repo" / "d_forward" / "shared"
        assert (shared / "bundle" / WEIGHTS).is_file() and (shared / "irevnet" / "runtime" / "bundle.py").is_file()
        assert str(tmp_path) not in "".join(p.read_text() for p in (tmp_path / "repo").rglob("config.pbtxt"))


def test_a_folder_that_is_not_a_repository_of_irevnet_is_refused(tmp_path):
    from irevnet.serving.server import ServeOptions, serve

    (tmp_path / "models" / "m").mkdir(parents=True)
    with pytest.raises(IRevNetError, match="is not a Triton repository written by `irevnet triton`"), \
            serve(ServeOptions(target=str(tmp_path / "models"))):
        pass


# -- a served repository -----------------------------------------------------------------------------


@needs_server
def test_served_outputs_are_the_in_process_runtimes_over_http_and_grpc(server, local):
    from tritonclient import grpc

    bundle, fwd, inv = local
    x = bundle.reference("images")["images"]
    expected = fwd.infer({IMAGE: x})
    http, client = _http(server)
    for module, c in ((http, client), (grpc, grpc.InferenceServerClient(server.grpc_url))):
        got = _infer(module, c, "digits_forward", IMAGE, x)
        assert np.array_equal(got.as_numpy(LOGITS), expected[LOGITS]) and np.array_equal(got.as_numpy(Z), expected[Z])
        back = _infer(module, c, "digits_inverse", Z, got.as_numpy(Z)).as_numpy(IMAGE)
        assert np.array_equal(back, inv.infer({Z: expected[Z]})[IMAGE])
        rel = np.linalg.norm(back - x) / np.linalg.norm(x)
        assert rel <= bundle.manifest["tolerances"]["round_trip"]


@needs_server
@pytest.mark.parametrize("outputs", [[RECONSTRUCTION], [LOGITS], [Z], [Z, RECONSTRUCTION], None])
def test_the_round_trip_model_answers_any_of_its_outputs(server, local, outputs):
    """A request for one output of three is the case Triton 2.51's ensembles fail ("unexpected
    deadlock"); the round trip composes the served models instead."""
    bundle, fwd, _ = local
    x = bundle.reference("images")["images"][:3]
    http, client = _http(server)
    got = _infer(http, client, "digits_roundtrip", IMAGE, x, outputs)
    names = [o["name"] for o in got.get_response()["outputs"]]
    assert sorted(names) == sorted(outputs or [RECONSTRUCTION, LOGITS, Z]), "only what was asked for"
    if Z in names:
        assert np.array_equal(got.as_numpy(Z), fwd.infer({IMAGE: x})[Z])
    if RECONSTRUCTION in names:
        assert np.linalg.norm(got.as_numpy(RECONSTRUCTION) - x) / np.linalg.norm(x) <= bundle.manifest["tolerances"]["round_trip"]


@needs_server
def test_bad_requests_get_their_own_400_and_good_ones_batched_with_them_are_answered(server, local):
    from tritonclient.utils import InferenceServerException

    bundle, fwd, _ = local
    rng = np.random.default_rng(0)
    good = [rng.standard_normal((1, *bundle.config.in_shape)).astype(np.float32) for _ in range(8)]
    nan = good[0].copy()
    nan[0, 0, 0, 0] = np.nan
    cases = [("good", x) for x in good] + [("nan", nan), ("inf", nan * 0 + np.inf),
                                          ("shape", np.zeros((1, 1, 15, 16), np.float32)),
                                          ("dtype", np.zeros((1, *bundle.config.in_shape), np.float64)),
                                          ("batch", np.zeros((bundle.max_batch + 1, *bundle.config.in_shape), np.float32))]
    answers: dict[int, object] = {}

    def send(i, x):
        http, client = _http(server)
        try:
            answers[i] = _infer(http, client, "digits_forward", IMAGE, x).as_numpy(Z)
        except InferenceServerException as e:
            answers[i] = e

    threads = [threading.Thread(target=send, args=(i, x)) for i, (_, x) in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (kind, x) in enumerate(cases):
        if kind == "good":
            assert np.array_equal(answers[i], fwd.infer({IMAGE: x})[Z]), "a good request answered as if alone"
        else:
            assert isinstance(answers[i], InferenceServerException) and answers[i].status() == "400", (kind, answers[i])
            assert "\n" not in answers[i].message()
    assert "NaN or Inf" in answers[8].message() and "NaN or Inf" in answers[9].message()


@needs_server
def test_sixteen_clients_lose_nothing_and_the_server_survives(server, local):
    """16 concurrent clients x 25 requests, each request a distinct input: every answer is its
    own request's (z compared with the in-process runtime's), none is lost."""
    bundle, fwd, _ = local
    rng = np.random.default_rng(1)
    pool = [rng.standard_normal((1 + k % 3, *bundle.config.in_shape)).astype(np.float32) for k in range(32)]
    expected = [fwd.infer({IMAGE: x})[Z] for x in pool]
    failures: list[str] = []
    answered = [0]
    lock = threading.Lock()

    def client(seed):
        http, c = _http(server)
        for k in range(25):
            j = (seed * 7 + k) % len(pool)
            z = _infer(http, c, "digits_forward", IMAGE, pool[j]).as_numpy(Z)
            with lock:
                answered[0] += 1
                if not np.array_equal(z, expected[j]):
                    failures.append(f"client {seed} request {k}")

    threads = [threading.Thread(target=client, args=(s,)) for s in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and answered[0] == 16 * 25
    assert _http(server)[1].is_server_ready()


@needs_server
def test_verify_and_bench_reach_the_server(server, bundles):
    from irevnet.runtime.bench import BenchOptions, bench
    from irevnet.runtime.verify import VerifyOptions, verify

    report = verify(VerifyOptions([str(bundles[Precision.fp32])], server=f"grpc://{server.grpc_url}", blocks=False))
    assert report and [p.backend for p in report.parity] == [f"triton[grpc {server.grpc_url}]"]
    timed = bench(BenchOptions([str(bundles[Precision.fp32])], server=f"http://{server.http_url}", direction=FORWARD,
                               batch_sizes=[1], iterations=3, warmup_s=0, concurrency=[1, 4], requests=5))
    assert [e.kind for e in timed.results[:2]] == ["onnxruntime", "triton"], "the in-process runtime beside the server"
    load = timed.results[2:]  # every load level: forward, inverse and the served round trip
    assert [(e.direction, e.concurrency) for e in load] == [(FORWARD, 1), (FORWARD, 4), (INVERSE, 1), (INVERSE, 4),
                                                            (ROUNDTRIP, 1), (ROUNDTRIP, 4)]
    assert all(e.stats["iterations"] == 5 * e.concurrency and e.images_per_s > 0 for e in load), "nothing lost"


@needs_server
def test_a_moved_repository_serves_and_a_tampered_one_refuses_to_load(repository, tmp_path):
    from irevnet.serving.server import ServeOptions, serve

    moved = shutil.copytree(repository, tmp_path / "elsewhere" / "models")
    with serve(ServeOptions(target=str(moved), http_port=0, grpc_port=0, metrics_port=0)) as running:
        assert _http(running)[1].is_model_ready("digits_inverse")
    weights = moved / "digits_forward" / "shared" / "bundle" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(IRevNetError) as refused, \
            serve(ServeOptions(target=str(moved), http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=60)):
        pass
    assert f"{WEIGHTS} does not match its sha256" in str(refused.value), str(refused.value)


@needs_server
def test_serve_exits_0_on_sigterm_and_leaves_nothing_behind(repository, tmp_path):
    before = set(os.listdir("/dev/shm"))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "irevnet", "serve", str(repository), "--http-port", "0",
                             "--grpc-port", "0", "--metrics-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "TMPDIR": str(scratch)})
    deadline = time.monotonic() + 60
    line = ""
    while time.monotonic() < deadline and "serving" not in line:
        line = proc.stdout.readline()
    assert "serving digits_forward" in line, proc.stderr.read() if proc.poll() is not None else line
    assert list(scratch.iterdir()), "the backend folder and the log live in a temporary folder while it serves"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "tritonserver stopped (exit code 0)" in out and "Traceback" not in err
    # onnxruntime writes TMPDIR/.ses whenever it is imported (measured: `import onnxruntime` alone)
    assert [p.name for p in scratch.iterdir() if p.name != ".ses"] == [], "temporary folders removed"
    assert set(os.listdir("/dev/shm")) - before == set(), "no shared-memory region left"


def test_serve_says_what_is_missing_in_one_line(tmp_path, bundles):
    from typer.testing import CliRunner

    from irevnet.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(bundles[Precision.fp32]), "--server", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and result.output.startswith("error: no Triton server answers at http://127.0.0.1:9")
    result = runner.invoke(app, ["triton", str(bundles[Precision.fp32]), "-o", str(tmp_path / "r"), "--backend", "tensorrt"])
    assert result.exit_code == 2 and "the python flavour runs onnxruntime or openvino" in result.output


@needs_server
def test_a_port_in_use_is_one_line(repository):
    import socket

    from irevnet.serving.server import ServeOptions, serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(IRevNetError, match=f"port {port} on 127.0.0.1 is in use \\(--http-port\\)"), \
                serve(ServeOptions(target=str(repository), http_port=port, grpc_port=0, metrics_port=0)):
            pass


@needs_server
def test_a_server_not_ready_in_time_is_one_error_with_its_log(repository):
    from irevnet.serving.server import ServeOptions, serve

    with pytest.raises(IRevNetError, match=r"tritonserver was not ready within 0 s; its log ends:"), \
            serve(ServeOptions(target=str(repository), http_port=0, grpc_port=0, metrics_port=0, ready_timeout_s=0.01)):
        pass


@pytest.mark.parametrize("args", [["triton", "{b}", "-o", "{tmp}/r"], ["verify", "{b}", "--server", "http://127.0.0.1:9"]])
def test_without_the_serve_extra_the_commands_name_it(bundles, tmp_path, args):
    """tritonclient blocked in a fresh process: one line naming the pip extra, exit 2."""
    code = ("import sys; sys.modules['tritonclient'] = None\n"
            "sys.argv = ['irevnet', *sys.argv[1:]]\n"
            "from irevnet.cli import main; main()\n")
    argv = [a.format(b=bundles[Precision.fp32], tmp=tmp_path) for a in args]
    out = subprocess.run([sys.executable, "-c", code, *argv], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1].endswith("pip install 'irevnet[serve]'"), out.stderr
    assert not (tmp_path / "r").exists()


def test_serve_env_where_no_environment_can_be_made_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from irevnet.cli import app

    result = CliRunner().invoke(app, ["serve-env", "/proc/irevnet-env"])  # /proc takes no new folder
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: could not make a virtual environment in /proc/irevnet-env")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("mine")
    result = CliRunner().invoke(app, ["serve-env", str(tmp_path / "taken")])
    assert result.exit_code == 2 and "exists and is not empty; give a new folder" in result.output
    assert (tmp_path / "taken" / "mine.txt").read_text() == "mine"
