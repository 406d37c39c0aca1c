"""The search under a budget, on a trained irevnet-tiny and the real digits."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from irevnet.cli import app
from irevnet.contract import BlockPrecision, Precision
from irevnet.errors import IRevNetError
from irevnet.export.plan import PrecisionPlan
from irevnet.runtime import Bundle
from irevnet.search import Budget
from irevnet.search.search import climb

runner = CliRunner()
# Measured on the held-out digits (p99 of the logits' rel. L2 to PyTorch fp32): uniform int8 3.9e-2, int8
# with the 2 or 4 most sensitive blocks in fp32 2.4e-2 and 1.8e-2, with 5 (block 0, which int8 leaves
# exact, alone in int8) or all 6 in fp32 1.7e-6. Whichever of those is fastest on a machine, a plan that
# meets this budget on the search images meets it on the held-out ones by three orders of magnitude.
BUDGET = "logits<=0.005"
SMALL = {"calibration": 64, "search_images": 96, "held_out": 120, "search_bench_s": 0.3, "max_batch": 8}


TIMED_TOGETHER: list[int] = []  # the searched fixture's groups of plans timed side by side


@pytest.fixture(scope="module")
def searched(trained_tiny, tmp_path_factory):
    """The search under BUDGET, with at most 3 plans' sessions open at once (OPEN_AT_ONCE is 8)."""
    from _pytest.monkeypatch import MonkeyPatch

    from irevnet.export.options import ExportOptions
    from irevnet.search import export_searched
    from irevnet.search import search as search_module

    out = tmp_path_factory.mktemp("search") / "auto"
    opts = ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(out), dataset="digits", precision="auto",
                         budget=BUDGET, debug_graphs=False, **SMALL)
    time = search_module._Context.time

    def counted(context):
        TIMED_TOGETHER.append(len(context.graphs))
        time(context)

    with MonkeyPatch.context() as patch:
        patch.setattr(search_module, "OPEN_AT_ONCE", 3)
        patch.setattr(search_module._Context, "time", counted)
        return export_searched(opts), out, opts


def test_the_search_meets_a_budget_that_uniform_int8_misses_and_names_the_blocks_it_kept(searched):
    result, out, _ = searched
    search = result.search
    int8 = next(c for c in search.uniform if c.label == Precision.int8.value)
    assert int8.held_out.logits_p99 > 0.005 and not search.budget.met(int8.search.agreement, int8.search.logits_p99), \
        "the budget must be one that uniform int8 misses"
    assert search and search.judged.logits_p99 <= 0.005 and search.judged.images == 120
    assert search.chosen.kept and all(k.startswith("block") and "/F (" in k for k in search.chosen.kept)
    # the fastest of the plans that met the budget on the search images
    meeting = [c for c in search.tried if search.budget.met(c.search.agreement, c.search.logits_p99)]
    assert search.chosen.median_ms == min(c.median_ms for c in meeting)
    assert search.evaluations <= 6 + 2, "at most B + 2 plans judged for B = 6 blocks"
    bundle = Bundle.open(out)
    assert tuple(bundle.manifest.precision_plan) == search.chosen.plan.blocks


def test_every_plan_tried_inverts_at_the_inputs_rounding(searched):
    """The exact coupling holds whatever precision F has: for every plan the search tried, its
    forward and inverse graphs, derived from one trace as the export derives them, take held-out
    digits to z and back at the grid's rounding (<= 1e-6 rel. L2), and the chosen bundle's own
    verified round trip is there too."""
    import dataclasses

    import numpy as np
    import onnxruntime as ort
    import torch

    from irevnet.contract import FORWARD, IMAGE, INVERSE, REFERENCE_IMAGES, Z
    from irevnet.export.bundle import Samples, lower, measure_lowering, trace
    from irevnet.io.checkpoint import load_checkpoint
    from irevnet.metrics import rel_l2

    result, out, opts = searched
    search = result.search
    assert len(search.tried) >= 2
    round_trip = next(c for c in result.checks if c.name == "round trip")
    assert round_trip and round_trip.rel_l2 <= 1e-6
    x = Bundle.open(out).reference(REFERENCE_IMAGES).images
    ckpt = load_checkpoint(opts.checkpoint)
    # the graphs and the int8 ranges as the search had them (the same calibration images), without
    # the debug graph the search ranks blocks on
    uniform = dataclasses.replace(opts, precision=Precision.int8.value, budget=None)
    traced = trace(ckpt, uniform)
    lowering = measure_lowering(ckpt, uniform, traced, Samples(torch.from_numpy(x), None, {}),
                                PrecisionPlan.uniform(BlockPrecision.int8, ckpt.config.num_blocks))
    for c in [*search.tried, *search.uniform]:
        forward, inverse = (ort.InferenceSession(lower(traced, name, c.plan, lowering).SerializeToString(),
                                                 providers=["CPUExecutionProvider"]) for name in (FORWARD, INVERSE))
        z = forward.run([Z], {IMAGE: x})[0]
        back = inverse.run([IMAGE], {Z: z})[0]
        assert np.isfinite(back).all() and rel_l2(back, x) <= 1e-6, (c.label, rel_l2(back, x))


def test_plans_are_timed_side_by_side_a_bounded_number_at_a_time(searched):
    """Each plan's session holds its weights until it is timed: at most OPEN_AT_ONCE are open, then
    they are timed together and closed; every plan shown gets its time."""
    search = searched[0].search
    shown = {id(c) for c in [*search.tried, *search.uniform]}
    groups = [n for n in TIMED_TOGETHER if n]
    assert len(groups) >= 2 and max(groups) <= 3 and sum(groups) == len(shown), TIMED_TOGETHER
    assert all(c.median_ms is not None and c.median_ms > 0 for c in [*search.tried, *search.uniform])


def test_the_images_that_calibrate_search_and_judge_are_disjoint(searched):
    """The export calibrates on the training split's first 64 images; the search decides on 96
    others of it, drawn from every class; the held-out split judges, 120 of it, every class too."""
    from irevnet.io.splits import open_split

    images = searched[0].search.images
    assert images["calibration"]["images"] == 64 and "training split" in images["calibration"]["from"]
    search, held = images["search"]["indices"], images["held_out"]["indices"]
    assert len(set(search)) == 96 and min(search) >= 64, "no search image is a calibration image"
    assert len(set(held)) == 120 and "val" in images["held_out"]["from"]
    train = open_split("digits", "train", (1, 16, 16))
    assert len({train.items[i].label for i in search}) == 10, "a sample over every class, not the listing's first"


def test_the_report_shows_the_frontier_as_a_table_and_a_png(searched, tmp_path):
    from irevnet.search.frontier import plot_frontier

    search = searched[0].search
    labels = [c.label for c in search.frontier()]
    assert {Precision.fp32.value, Precision.mixed.value, Precision.int8.value} <= set(labels), labels
    assert [c.median_ms for c in search.frontier()] == sorted(c.median_ms for c in search.frontier())
    png = plot_frontier(search, tmp_path / "frontier.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    d = searched[0].to_dict()["search"]
    assert d["met"] and d["chosen"]["precision_plan"] == search.chosen.plan.to_list()


def test_a_budget_no_plan_can_meet_is_one_line_naming_the_best_agreement(trained_tiny, tmp_path):
    out = tmp_path / "never"
    result = runner.invoke(app, ["export", "-c", str(trained_tiny / "best.pt"), "-o", str(out), "-d", "digits",
                                 "--precision", "auto", "--budget", "agreement>=1,logits<=1e-12", "--no-debug",
                                 "--calibration", "32", "--search-images", "32", "--held-out", "32",
                                 "--search-bench-s", "0.2", "--max-batch", "8"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: no plan meets --budget") and "the best reached agreement" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--precision", "auto"], "give --budget"),
    (["--precision", "auto", "--budget", "agreement>=0.99"], "give --dataset"),
    (["--budget", "agreement>=0.99"], "--budget bounds the search of --precision auto"),
    (["--precision", "auto", "-d", "digits", "--budget", "agreement=0.99"], "--budget 'agreement=0.99'"),
    (["--precision", Precision.int8.value, "--precision-plan", "fp32,int8"], "give it without --precision int8"),
    (["--frontier", "f.png"], "--frontier draws the plans a search tried"),
    (["--precision", "auto", "-d", "digits", "--budget", "agreement>=0.99", "--search-backend", "tflite"],
     "choose onnxruntime, openvino or tensorrt"),
    (["--precision", "auto", "-d", "digits", "--budget", "agreement>=" + "9" * 5000], "characters long"),
])
def test_search_options_are_checked_before_any_work(trained_tiny, tmp_path, args, message):
    result = runner.invoke(app, ["export", "-c", str(trained_tiny / "best.pt"), "-o", str(tmp_path / "b"), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


@pytest.mark.parametrize("blocks", [*range(1, 41), 63, 64, 65, 100, 127, 128])  # irevnet-301 has 100
def test_the_climb_finds_the_fewest_blocks_to_raise_within_b_plus_2_plans(blocks):
    """For a budget met once the t most sensitive blocks are raised (any t) and any guess of t,
    the climb ends on the plan with exactly t and never judges more than B + 1 plans (the search
    adds the fp32 plan: B + 2). Where the margins fall on a line in the count, it judges at most
    4 (3 where the guess is t: uniform int8, t and t - 1); where only their signs are right (random
    sizes), at most 4 ceil(log2 B) + 2 however wrong the guess."""
    order = list(range(blocks))[::-1]
    log_bound = 4 * math.ceil(math.log2(blocks)) + 2 if blocks > 1 else 2
    rng = np.random.default_rng(blocks)
    for t in range(blocks + 1):
        sizes = rng.uniform(1e-3, 1e3, blocks + 1)
        on_a_line = [t - 0.5 - k for k in range(blocks + 1)]
        random_sizes = [sizes[k] * (1 if k < t else -1) for k in range(blocks + 1)]
        for margins in (on_a_line, random_sizes):
            for guess in sorted({1, max(t, 1), blocks, max(t - 5, 1), min(t + 5, blocks), (t + blocks) // 2 + 1}):
                judged: list[int] = []
                ranked: list[bool] = []

                def judge(plan: PrecisionPlan, label: str, judged=judged, margins=margins) -> float:
                    k = sum(p is BlockPrecision.fp32 for p in plan.blocks)
                    assert set(plan.blocks_in(BlockPrecision.fp32)) == set(order[:k]), "the most sensitive ones first"
                    judged.append(k)
                    return margins[k]

                climb(blocks, lambda ranked=ranked: ranked.append(True) or order, judge, lambda order, g=guess: g)
                assert len(judged) == len(set(judged)) <= min(blocks + 1, log_bound + 1), (t, guess, judged)
                if margins is on_a_line:
                    assert len(judged) <= (3 if guess == t else 4), (t, guess, judged)
                assert ranked == ([True] if t else []), "the blocks are ranked once, and only when uniform int8 misses"
                assert min(k for k in judged if k >= t) == t and (t == 0 or t - 1 in judged), (t, guess, judged)


def test_the_predicted_count_scales_int8s_drift_by_the_squared_drifts_left():
    """Four blocks drifting 4, 3, 2, 1 alone (squares 16, 9, 4, 1 of 30), uniform int8 drifting
    1e-2 (p99): a bound of 6e-3 leaves 0.36 of the squares, 10.8 of 30, so raising the two most
    sensitive (5 left) is the first count under it; an agreement bound scales 1 - agreement alike."""
    from irevnet.search.search import Measured, predicted

    sensitivity = [2.0, 4.0, 1.0, 3.0]
    order = [1, 3, 0, 2]
    int8 = Measured(100, 0.98, 5e-3, 1e-2)
    assert predicted(order, sensitivity, int8, Budget(logits=6e-3)) == 2
    assert predicted(order, sensitivity, int8, Budget(logits=9.9e-3)) == 1
    assert predicted(order, sensitivity, int8, Budget(logits=1e-9)) == 4
    # 1 - agreement: 0.02 for int8; 0.01 allowed: (0.5)^2 = 0.25 of 30 = 7.5: two raised (5 left)
    assert predicted(order, sensitivity, int8, Budget(agreement=0.99)) == 2
    assert predicted(order, sensitivity, int8, Budget(agreement=0.99, logits=1e-9)) == 4


def test_a_margin_is_at_most_zero_exactly_where_the_budget_is_met():
    """The climb interpolates margins: past each bound relative to it, the largest over the bounds,
    and on the right side of 0 whenever met() says so, even at the bound itself."""
    both = Budget(agreement=0.99, logits=1e-2)
    assert both.margin(0.98, 5e-3, 100) == pytest.approx(1.0), "2 flips in 100 where 1 is allowed"
    assert both.margin(1.0, 2e-2, 100) == pytest.approx(1.0), "twice the logits bound"
    assert both.margin(1.0, 5e-3, 100) == pytest.approx(-0.5), "met: the nearer bound's room (logits, half)"
    assert Budget(agreement=1.0).margin(0.99, 0.0, 200) == pytest.approx(2.0), "2 images flip where none may: 2 units"
    for budget, agreement, logits in ((Budget(logits=3e-3), 1.0, 3e-3), (Budget(agreement=0.9), 0.9, 1.0)):
        m = budget.margin(agreement, logits, 10)
        assert (m <= 0) == budget.met(agreement, logits)
    missed = Budget(logits=0.1)
    assert missed.margin(1.0, np.nextafter(0.1, 1.0), 10) > 0, "missed by one rounding step: still above 0"


def test_a_budget_parses_and_bad_ones_say_how_to_write_it():
    assert Budget.parse("agreement>=0.999") == Budget(agreement=0.999)
    assert Budget.parse(" logits <= 2e-2 , agreement>=0.99").met(0.995, 0.01)
    assert not Budget.parse("agreement>=0.999,logits<=0.02").met(1.0, 0.03)
    for bad in ["agreement<=1", "accuracy>=0.9", "", "agreement>=1.5", "logits<=1,logits<=2"]:
        with pytest.raises(IRevNetError):
            Budget.parse(bad)


def test_the_search_builds_judges_and_times_each_plan_on_tensorrt(trained_tiny, tmp_path, fake_trt):
    """--search-backend tensorrt: each plan's forward graph becomes an engine (strongly typed, TF32
    off, the profile up to the bundle's batch, one timing cache for every plan: the F layers they
    share are timed once), judged and timed as on the CPU backends, and the chosen bundle's own
    forward graph is compiled the same way to be judged. Through the test double, whose engines run
    the graph with ONNX Runtime on the CPU: this checks the plumbing, not TensorRT's arithmetic
    (tests/test_gpu.py runs the real thing)."""
    from irevnet.export.options import ExportOptions
    from irevnet.search import export_searched

    trt = fake_trt("10.13.0.35")
    out = tmp_path / "auto"
    opts = ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(out), dataset="digits", precision="auto",
                         budget=BUDGET, debug_graphs=False, search_backend="tensorrt", **SMALL)
    search = export_searched(opts).search
    assert search and search.backend == "tensorrt" and search.judged.images == 120
    plans = {id(c) for c in [*search.tried, *search.uniform]}
    assert len(trt.calls) == len(plans) + 1, "one engine per plan, and one of the written bundle's forward graph"
    assert len({id(call["config"].cache) for call in trt.calls}) == 1, "one timing cache for every engine"
    assert all(trt.BuilderFlag.TF32 not in call["config"].flags for call in trt.calls)
    assert {call["shapes"][2][0] for call in trt.calls} == {8} and {call["shapes"][1][0] for call in trt.calls} == {8}
    assert all(c.median_ms > 0 for c in [*search.tried, *search.uniform])
    assert any(note.startswith("fp16:") and "GPU" in note for note in search.notes)
    assert Bundle.open(out).manifest.tensorrt is None, "the bundle is written without engines: irevnet build makes them"
    # the climb raises blocks to fp16 there (native on a GPU): every plan it tried beyond uniform
    # int8 and fp32 keeps its raised blocks in fp16 (this budget is met by fp16 blocks: tiny's
    # mixed bundle drifts about 1e-3)
    climbed = [c for c in search.tried if c.plan.precision not in (Precision.int8, Precision.fp32)]
    assert climbed and all(set(c.plan.blocks) <= {BlockPrecision.int8, BlockPrecision.fp16} for c in climbed), \
        [str(c.plan) for c in search.tried]
    assert all(k.endswith("(fp16)") for c in climbed for k in c.kept)


def test_a_second_climb_to_fp32_where_fp16_blocks_cannot_meet_the_budget():
    """On TensorRT the climb raises to fp16, then, where even every block in fp16 misses, to fp32
    from uniform int8 again, each plan judged once."""
    from irevnet.search.search import climb, rungs

    order = [2, 0, 1]
    judged: list[tuple] = []

    def judge(plan: PrecisionPlan, label: str) -> float:  # fp16 blocks never meet it; two fp32 blocks do
        judged.append(plan.blocks)
        return -1.0 if sum(p is BlockPrecision.fp32 for p in plan.blocks) >= 2 else 1.0

    assert rungs("tensorrt") == (BlockPrecision.fp16, BlockPrecision.fp32) and rungs("openvino") == (BlockPrecision.fp32,)
    for rung in rungs("tensorrt"):
        climb(3, lambda: order, judge, lambda order: 1, rung)
    assert (BlockPrecision.fp16,) * 3 in judged, "the fp16 climb went up to every block"
    assert (BlockPrecision.fp32, BlockPrecision.int8, BlockPrecision.fp32) in judged, "the two most sensitive in fp32"


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_a_tensorrt_search_without_tensorrt_is_one_line_before_any_work(trained_tiny, tmp_path):
    """Here TensorRT is not installed: the export says so before it traces anything."""
    result = runner.invoke(app, ["export", "-c", str(trained_tiny / "best.pt"), "-o", str(tmp_path / "b"), "-d", "digits",
                                 "--precision", "auto", "--budget", "agreement>=0.99", "--search-backend", "tensorrt"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "TensorRT is not installed" in lines[0], result.output
    assert not (tmp_path / "b").exists() and not list(tmp_path.iterdir())


def test_a_search_that_fails_early_leaves_nothing_beside_the_bundle(trained_tiny, tmp_path, monkeypatch):
    """The search's scratch folder (PyTorch fp32's records, beside --out) goes whatever fails, also
    a failure while the search is still being set up (PyTorch fp32's first records here)."""
    from irevnet.export.options import ExportOptions
    from irevnet.search import export_searched
    from irevnet.search import search as search_module

    def failing(self, *args, **kwargs):
        raise IRevNetError("the dataset went away")

    monkeypatch.setattr(search_module._Context, "_records", failing)
    opts = ExportOptions(checkpoint=str(trained_tiny / "best.pt"), out=str(tmp_path / "auto"), dataset="digits",
                         precision="auto", budget=BUDGET, debug_graphs=False, **SMALL)
    with pytest.raises(IRevNetError, match="the dataset went away"):
        export_searched(opts)
    assert list(tmp_path.iterdir()) == []
