"""bench: its FLOP count against the convolutions PyTorch actually runs, its rounds, its
baseline, and the machine facts it reads without importing what it names."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import irevnet
from irevnet.contract import BATCH_DIM, FORWARD, IMAGE, Precision
from irevnet.runtime.timing import conv_flops
from tests.conftest import SMALL_FAMILIES


@pytest.mark.parametrize("family", sorted(SMALL_FAMILIES))
def test_conv_flops_match_the_convolutions_a_forward_runs(family):
    model = irevnet.create_model(family, **SMALL_FAMILIES[family]).eval()
    counted = []

    def count(module, args, output):  # 2 x multiply-adds of a convolution: 2 * out elements * k*k*in
        counted.append(2 * output[0].numel() * module.weight[0].numel())

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, *model.config.in_shape))
    # exact: the same shapes counted two ways (the head, <0.1%, is left out of both)
    assert conv_flops(model.config) == sum(counted)


def test_backends_alternate_in_rounds_and_every_round_is_reported(bundles, monkeypatch):
    """Two backends measured side by side: each round runs both, in rotating order, so that a
    slow phase of the machine hits both; --json carries every round."""
    from irevnet.runtime import bench as bench_module
    from irevnet.runtime.backends.base import Backend

    calls = []

    class Recorder(Backend):
        def __init__(self, kind):
            self.name, self.kind = f"{kind}[fake]", kind
            self.inputs = [{"name": IMAGE, "shape": [BATCH_DIM, 1, 16, 16], "dtype": "float32"}]
            self.outputs = []

        @classmethod
        def for_bundle(cls, bundle, graph, options):
            raise AssertionError("made by the patched open_backend")

        def _infer(self, feeds, outputs):
            calls.append(self.kind)
            return {}

    monkeypatch.setattr(bench_module, "open_backend", lambda kind, *a, **k: Recorder(kind))
    r = bench_module.bench(bench_module.BenchOptions(
        bundles=[str(bundles[Precision.fp32])], backends=["onnxruntime", "torch"], direction=FORWARD, batch_sizes=[2],
        warmup_s=0, iterations=6, rounds=3)).to_dict()
    # no warm-up with --warmup 0 (as trtexec's --warmUp=0), then 3 rounds of 2 runs each, the
    # first backend rotating
    measured = calls
    assert measured == ["onnxruntime"] * 2 + ["torch"] * 2 + ["torch"] * 2 + ["onnxruntime"] * 2 + \
        ["onnxruntime"] * 2 + ["torch"] * 2
    for e in r["results"]:
        assert [round_["runs"] for round_ in e["rounds"]] == [2, 2, 2] and e["iterations"] == 6
    # onnxruntime against the torch baseline: one ratio per round; the baseline has none of its own
    assert [None if e["speedup_rounds"] is None else len(e["speedup_rounds"]) for e in r["results"]] == [3, None]
    assert r["settings"]["rounds"] == 3


def test_a_ratio_whose_rounds_disagree_is_marked_noisy():
    from irevnet.runtime.bench import NOISY_SPREAD, compare_with_baseline
    from irevnet.runtime.timing import BenchEntry, LatencyStats, Round

    def entry(kind, medians):  # one run per round: the entry's median is the rounds' median
        stats = LatencyStats.of([m / 1e3 for m in medians], 1)
        rounds = [Round.of([m / 1e3]) for m in medians]
        return BenchEntry(kind, kind, "b", Precision.fp32, FORWARD, 1, stats, 1.0, rounds)

    steady = [entry("torch", [200, 202, 198]), entry("onnxruntime", [100, 101, 99])]
    compare_with_baseline(steady)
    assert steady[1].speedup == 2.0 and not steady[1].noisy  # rounds 1.98-2.02: spread 2%
    # the case: PyTorch caught in a slow state in one round only
    swinging = [entry("torch", [230, 350, 235]), entry("onnxruntime", [151, 150, 152])]
    compare_with_baseline(swinging)
    ratios = swinging[1].speedup_rounds
    assert (max(ratios) - min(ratios)) / swinging[1].speedup > NOISY_SPREAD and swinging[1].noisy
    assert swinging[0].speedup is None and swinging[0].baseline == "torch fp32", "the baseline is not its own ratio"


def test_bundles_of_one_model_are_benched_side_by_side(bundles, int8_bundle, color_bundle):
    """fp32 and int8 exports of one model alternate in the same rounds; the speedup of each is
    against PyTorch on the first bundle, the rows say which bundle they timed, and the pair no
    backend can run (torch on int8) is skipped with its reason, by bench and by verify."""
    from irevnet.errors import IRevNetError
    from irevnet.runtime import bench as bench_module
    from irevnet.runtime.verify import VerifyOptions, verify

    int8 = int8_bundle
    r = bench_module.bench(bench_module.BenchOptions(bundles=[str(bundles[Precision.fp32]), str(int8)], backends=["onnxruntime", "torch"],
                                                     direction=FORWARD, batch_sizes=[1], warmup_s=0, iterations=2)).to_dict()
    assert [b["precision"] for b in r["bundles"]] == [Precision.fp32, Precision.int8]
    assert [(e["precision"], e["kind"]) for e in r["results"]] == [(Precision.fp32, "onnxruntime"), (Precision.fp32, "torch"), (Precision.int8, "onnxruntime")]
    assert [(s["bundle"], s["backend"]) for s in r["skipped"]] == [(str(int8), "torch")], "torch has no int8 path: skipped"
    assert all(e["baseline"] == "torch[cpu] fp32" for e in r["results"]) and r["results"][1]["speedup"] is None

    verified = verify(VerifyOptions([str(bundles[Precision.fp32]), str(int8)], backends=["onnxruntime", "torch"],
                                    blocks=False)).to_dict()
    assert [(s["bundle"], s["backend"]) for s in verified["skipped"]] == [(str(int8), "torch")]
    assert len(verified["round_trip"]) == 3 and verified["passed"]

    with pytest.raises(IRevNetError, match="different models"):  # the digits model and a 3-channel one
        bench_module.bench(bench_module.BenchOptions(bundles=[str(bundles[Precision.fp32]), str(color_bundle)],
                                                     iterations=1))


def test_machine_facts_name_versions_without_importing_the_packages():
    """bench imported torch and tensorrt only to print their versions (seconds and hundreds of MB
    where torch is installed): the versions come from the installed distributions' metadata, also
    where the distribution's name is not the module's (Pillow installs PIL)."""
    code = textwrap.dedent("""
        import importlib.metadata, json, sys
        from irevnet.runtime.machine import machine_info, versions
        info = machine_info()
        print(json.dumps({"versions": info["versions"], "pil": versions(("PIL",)),
                          "torch": importlib.metadata.version("torch"), "pillow": importlib.metadata.version("pillow"),
                          "imported": sorted(m for m in ("torch", "onnxruntime", "openvino", "tensorrt", "PIL")
                                             if m in sys.modules)}))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    facts = json.loads(out.stdout)
    assert facts["imported"] == [], "a package named by its version was imported"
    assert facts["versions"]["torch"] == facts["torch"] and "numpy" in facts["versions"]
    assert facts["pil"] == {"PIL": facts["pillow"]}
