"""The python flavour served by a real tritonserver answers what the in-process runtime answers,
bit for bit, over HTTP and gRPC; every bad request gets its own error while the good ones batched
with it are answered; verify and bench judge and time the served models like a local runtime."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from irevnet.contract import FORWARD, IMAGE, INVERSE, LOGITS, RECONSTRUCTION, REFERENCE_IMAGES, ROUNDTRIP, Precision, Z
from irevnet.runtime import Bundle, open_backend


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


def test_served_outputs_are_the_in_process_runtimes_over_http_and_grpc(server, local):
    from tritonclient import grpc

    bundle, fwd, inv = local
    x = bundle.reference(REFERENCE_IMAGES).images
    expected = fwd.infer({IMAGE: x})
    http, client = _http(server)
    for module, c in ((http, client), (grpc, grpc.InferenceServerClient(server.grpc_url))):
        got = _infer(module, c, "digits_forward", IMAGE, x)
        assert np.array_equal(got.as_numpy(LOGITS), expected[LOGITS]) and np.array_equal(got.as_numpy(Z), expected[Z])
        back = _infer(module, c, "digits_inverse", Z, got.as_numpy(Z)).as_numpy(IMAGE)
        assert np.array_equal(back, inv.infer({Z: expected[Z]})[IMAGE])
        rel = np.linalg.norm(back - x) / np.linalg.norm(x)
        assert rel <= bundle.manifest.tolerances.round_trip


@pytest.mark.parametrize("outputs", [[RECONSTRUCTION], [LOGITS], [Z], [Z, RECONSTRUCTION], None])
def test_the_round_trip_model_answers_any_of_its_outputs(server, local, outputs):
    """A request for one output of three is the case Triton 2.51's ensembles fail ("unexpected
    deadlock"); the round trip composes the served models instead."""
    bundle, fwd, _ = local
    x = bundle.reference(REFERENCE_IMAGES).images[:3]
    http, client = _http(server)
    got = _infer(http, client, "digits_roundtrip", IMAGE, x, outputs)
    names = [o["name"] for o in got.get_response()["outputs"]]
    assert sorted(names) == sorted(outputs or [RECONSTRUCTION, LOGITS, Z]), "only what was asked for"
    if Z in names:
        assert np.array_equal(got.as_numpy(Z), fwd.infer({IMAGE: x})[Z])
    if RECONSTRUCTION in names:
        assert np.linalg.norm(got.as_numpy(RECONSTRUCTION) - x) / np.linalg.norm(x) <= bundle.manifest.tolerances.round_trip


def _raw_http(address: str, model: str, shape: list[int], payload: bytes) -> tuple[int, str]:
    """One binary-extension request whose declared shape and bytes are whatever is given."""
    import http.client

    host, port = address.rsplit(":", 1)
    header = json.dumps({"inputs": [{"name": IMAGE, "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(payload)}}]}).encode()
    c = http.client.HTTPConnection(host, int(port), timeout=60)
    c.request("POST", f"/v2/models/{model}/infer", body=header + payload,
              headers={"Inference-Header-Content-Length": str(len(header))})
    r = c.getresponse()
    return r.status, r.read(2000).decode(errors="replace")


def test_bad_requests_get_their_own_error_and_good_ones_batched_with_them_are_answered(server, local):
    """NaN, Inf, wrong dtype, and a declared shape that disagrees with the graph or with its own
    bytes in any dimension (the batch included): each gets its own 400, while 8 good requests
    sent in the same instant (one dynamic batch) are answered as if alone. Triton's HTTP front end
    answers a negative dimension with 500 from its JSON parser (its own code: still refused)."""
    bundle, fwd, _ = local
    rng = np.random.default_rng(0)
    c, h, w = bundle.config.in_shape
    good = [rng.standard_normal((1, c, h, w)).astype(np.float32) for _ in range(8)]
    one = good[0].tobytes()
    nan = good[0].copy()
    nan[0, 0, 0, 0] = np.nan
    bad = {
        "nan": ([1, c, h, w], nan.tobytes()), "inf": ([1, c, h, w], (nan * 0 + np.inf).tobytes()),
        "batch 0": ([0, c, h, w], b""), "over the batch range": ([bundle.max_batch + 1, c, h, w], one * (bundle.max_batch + 1)),
        "declares 2, carries 1": ([2, c, h, w], one), "declares 1, carries 2": ([1, c, h, w], one * 2),
        "one byte short": ([1, c, h, w], one[:-1]), "one float more": ([1, c, h, w], one + one[:4]),
        "a dimension missing": ([1, h, w], one), "a dimension more": ([1, 1, c, h, w], one),
        "negative": ([-1, c, h, w], one),
        **{f"dimension {d} off by one": ([1, *(s + (i == d) for i, s in enumerate((c, h, w)))], one) for d in range(3)},
    }
    answers: dict[str, object] = {}

    def send_good(i, x):
        http, client = _http(server)
        answers[f"good {i}"] = _infer(http, client, "digits_forward", IMAGE, x).as_numpy(Z)

    def send_bad(name, shape, payload):
        answers[name] = _raw_http(server.http_url, "digits_forward", shape, payload)

    threads = [threading.Thread(target=send_good, args=(i, x)) for i, x in enumerate(good)]
    threads += [threading.Thread(target=send_bad, args=(name, *case)) for name, case in bad.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(good):
        assert np.array_equal(answers[f"good {i}"], fwd.infer({IMAGE: x})[Z]), "a good request answered as if alone"
    for name in bad:
        status, body = answers[name]
        assert status == (500 if name == "negative" else 400), (name, status, body)
        assert "\n" not in json.loads(body)["error"], (name, body)
    assert "NaN or Inf" in answers["nan"][1] and "NaN or Inf" in answers["inf"][1]


def test_over_grpc_a_shape_that_disagrees_with_its_bytes_is_refused(server, local):
    from tritonclient import grpc
    from tritonclient.utils import InferenceServerException

    bundle, _, _ = local
    c, h, w = bundle.config.in_shape
    client = grpc.InferenceServerClient(server.grpc_url)
    one = np.zeros((1, c, h, w), np.float32).tobytes()
    for shape, payload in (([2, c, h, w], one), ([1, c, h, w], one * 2), ([1, c, h, w + 1], one), ([1, c, h, w], one[:-4])):
        tensor = grpc.InferInput(IMAGE, shape, "FP32")
        tensor._raw_content = payload  # what a hand-written client sends: tritonclient checks its own arrays
        with pytest.raises(InferenceServerException) as refused:
            client.infer("digits_forward", [tensor])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT", (shape, refused.value)


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


def test_verify_and_bench_reach_the_server_with_its_own_split_of_the_time(server, bundles):
    from irevnet.runtime.bench import BenchOptions, bench
    from irevnet.runtime.load_test import SERVER_PARTS
    from irevnet.runtime.verify import VerifyOptions, verify

    report = verify(VerifyOptions([str(bundles[Precision.fp32])], server=f"grpc://{server.grpc_url}", blocks=False))
    assert report and [p.backend for p in report.parity] == [f"triton[grpc {server.grpc_url}]"]
    timed = bench(BenchOptions([str(bundles[Precision.fp32])], server=f"http://{server.http_url}", direction=FORWARD,
                               batch_sizes=[1], iterations=3, warmup_s=0, concurrency=[1, 4], requests=5))
    assert [e.kind for e in timed.results[:2]] == ["onnxruntime", "triton"], "the in-process runtime beside the server"
    load = timed.results[2:]  # every load level: forward, inverse and the served round trip
    assert [(e.direction, e.concurrency) for e in load] == [(FORWARD, 1), (FORWARD, 4), (INVERSE, 1), (INVERSE, 4),
                                                            (ROUNDTRIP, 1), (ROUNDTRIP, 4)]
    for e in load:
        assert e.stats.iterations == 5 * e.concurrency and e.stats.images_per_s > 0, "nothing lost"
        # the server's statistics count exactly the measured requests: the warm-up ones are before
        assert e.server.requests == 5 * e.concurrency, e.server
        assert all(getattr(e.server, part) >= 0 for part in SERVER_PARTS)
        # time inside the server cannot exceed what the clients waited for, on average
        assert e.server.total_ms <= e.stats.mean_ms * 1.05 + 0.05, e.server


def test_credentials_in_the_address_are_never_shown(server, bundles, tmp_path):
    """A password in --server was printed in the table and written into --json."""
    from typer.testing import CliRunner

    from irevnet.cli import app

    out = tmp_path / "verify.json"
    result = CliRunner().invoke(app, ["verify", str(bundles[Precision.fp32]), "--no-blocks", "--json", str(out),
                                      "--server", f"http://alice:hunter2@{server.http_url}"])
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "hunter2" not in out.read_text() and "alice" not in out.read_text()
    assert f"triton[http {server.http_url}]" in out.read_text(), "the address contacted, exactly"


def test_without_the_serve_extra_the_commands_name_it(bundles, tmp_path):
    """tritonclient blocked in a fresh process: one line naming the pip extra, exit 2."""
    for args in (["triton", "{b}", "-o", "{tmp}/r"], ["verify", "{b}", "--server", "grpc://127.0.0.1:9"]):
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
