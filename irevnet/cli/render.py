"""Every table and line the CLI prints, from the library's result objects (and manifests).

The console parses no markup: paths and names are printed as they are (a folder called `[/]`
is text, not a style), and styles are given as styles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from ..export.bundle import ExportResult
    from ..runtime.bench import BenchReport
    from ..runtime.timing import BenchEntry
    from ..runtime.verify import BlockReport, VerifyReport
    from ..search import PlanSearch

console = Console(highlight=False, markup=False)
if not console.is_terminal:  # logs and pipes: room for the wide tables instead of 80 columns
    console.width = 140


def verdict(passed: bool) -> Text:
    return Text("pass", style="green") if passed else Text("FAIL", style="red")


def db(value: float | None) -> str:
    return "exact" if value is None else f"{value:.1f}"


def shape(dims: Any) -> str:
    return "x".join(map(str, dims))


def key_values(title: str, rows: dict[str, Any]) -> None:
    console.print(Text(title, style="bold"), soft_wrap=True)
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def heading(text: str) -> None:
    console.rule(Text(text, style="bold"))


def success(text: str) -> None:
    console.print(text, style="green")


def presets(table_rows: list[tuple[str, Any, str]]) -> None:
    t = Table("name", "type", "blocks", "channels", "input -> z", "what for")
    for name, cfg, description in table_rows:
        t.add_row(name, "injective" if cfg.injective else "bijective", "-".join(map(str, cfg.blocks)),
                  "-".join(map(str, cfg.channels)), f"{shape(cfg.in_shape)} -> {shape(cfg.z_shape)}", description)
    console.print(t)


class ProgressBar:
    """Training progress on the console: a bar per epoch, a summary line after it."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"), console=console, transient=True,
        )
        self.task = None

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
        if console.is_terminal:  # logs and pipes get the epoch lines only
            self.progress.start()
            self.task = self.progress.add_task("train", total=steps, epoch=f"{epoch}/{epochs}", stats="")

    def step(self, loss: float, top1: float, images_per_s: float) -> None:
        if self.task is not None:
            self.progress.update(self.task, advance=1, stats=f"loss {loss:.4f}  top-1 {top1:5.1f}%  {images_per_s:,.0f} img/s")

    def epoch_end(self, m: dict[str, Any]) -> None:
        if self.task is not None:
            self.progress.stop()
            self.progress.remove_task(self.task)
            self.task = None
        console.print(
            f"epoch {m['epoch']:>3}  lr {m['lr']:.4g}  loss {m['train_loss']:.4f}  train {m['train_top1']:5.1f}%  "
            f"test top-1 {m['test_top1']:5.2f}%  top-5 {m['test_top5']:6.2f}%  {m['images_per_s']:,.0f} img/s",
            soft_wrap=True,
        )


class ChunkProgress:
    """An evaluation's progress: a bar with images/s and the time left on a terminal; one line
    per chunk with --quiet (or when the output is not a terminal)."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = None if quiet or not console.is_terminal else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(), console=console, transient=True)
        self.task = None

    def __enter__(self) -> ChunkProgress:  # noqa: PYI034 - typing.Self needs Python 3.11
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()

    def update(self, what: str, done: int, total: int, seconds: float) -> None:
        rate = done / max(seconds, 1e-9)
        if self.bar is None:
            console.print(f"{what}: {done:,}/{total:,} images, {rate:,.0f} images/s", soft_wrap=True)
            return
        if self.task is None:
            self.task = self.bar.add_task("evaluating", total=total, rate="")
        self.bar.update(self.task, completed=done, rate=f"{rate:,.0f} images/s", description=what)


def evaluation(report: Any) -> None:
    """An evaluation's summary as key-value rows (the records have every image)."""
    s = report.summary
    rows: dict[str, Any] = {"images": f"{s.images:,}", "top-1": f"{s.top1:.3f}%", "top-5": f"{s.top5:.3f}%",
                            "loss": f"{s.loss:.4f}"}
    if s.round_trip:
        rows["round trip rel. L2"] = (f"median {s.round_trip['median']:.2e}, p99 {s.round_trip['p99']:.2e}, "
                                      f"max {s.round_trip['max']:.2e}")
        if s.psnr_db:
            rows["round trip PSNR"] = f"median {s.psnr_db['median']:.1f} dB, min {s.psnr_db['min']:.1f} dB"
    for u in s.unreadable:  # each once, with its path (the records and --json have them too)
        console.print(f"warning: unreadable, counted and passed over: {u['error']}", soft_wrap=True, highlight=False)
    rows["unreadable"] = str(len(s.unreadable))
    if s.agreement:
        a = s.agreement
        rows[f"against {a.against}"] = (f"top-1 agreement {a.top1:.4f} on {a.images:,} images, {len(a.changed)} changed; "
                                        f"logits drift median {a.drift['median']:.2e}, p99 {a.drift['p99']:.2e}, "
                                        f"max {a.drift['max']:.2e}")
    if s.images_per_s:
        rows["images/s"] = (f"{s.images_per_s:,.1f} ({report.chunks} chunk{'s' if report.chunks != 1 else ''} computed, "
                              f"{report.resumed} resumed)")
    if report.records:
        rows["records"] = report.records
    for note in report.skipped[:3]:
        rows.setdefault("skipped", note)
    key_values(f"{s.identity.target} {s.identity.precision} on {s.identity.backend}: {s.identity.dataset} "
               f"({s.identity.split})", rows)


def inversion(metrics: dict[str, Any], dataset: str, out: str) -> None:
    t = Table("sample", "PSNR (dB)", "max abs error (pixels, 0-1)", title=f"inverse(forward(x)) on {dataset}")
    for i, row in enumerate(metrics["per_image"]):
        t.add_row(str(i), db(row["psnr_db"]), f"{row['max_abs']:.2e}")
    t.add_row("all", db(metrics["psnr_db"]), f"{metrics['max_abs']:.2e}", style="bold")
    console.print(t)
    console.print(f"relative L2 error {metrics['rel_l2']:.2e}; grid written to {out}")


def export(result: ExportResult) -> None:
    from ..runtime.comparison import Comparison

    manifest = result.manifest
    v = manifest.verification
    graphs = Table("graph", "nodes", "ops", "export s", title=f"{result.out} ({result.precision})")
    for name, g in manifest.graphs.items():
        graphs.add_row(name, str(g.nodes), ", ".join(f"{k} {n}" for k, n in g.ops.items()), f"{g.export_seconds:.1f}")
    console.print(graphs)
    table = Table("check (vs PyTorch fp32)", "max abs", "measured", "limit", "",
                  title=f"verification: {v.samples} {v.inputs} samples, {v.backend}")
    for c in result.checks:  # comparisons (rel. L2 against a tolerance) and agreements (a share against a minimum)
        if isinstance(c, Comparison):
            table.add_row(c.name, f"{c.max_abs:.2e}", f"{c.rel_l2:.3g}", f"{c.tolerance:.0e}", verdict(bool(c)))
        else:
            table.add_row(c.name, "", f"{c.value:.3g}", f">= {c.minimum}", verdict(bool(c)))
    console.print(table)
    extra = f"round trip PSNR {db(v.round_trip_psnr_db)} dB"
    if v.top1_pytorch is not None:
        extra += f"; top-1 PyTorch {v.top1_pytorch:.1f}% vs ONNX {v.top1_onnx:.1f}%"
    console.print(extra)
    if manifest.weights is not None:
        console.print(f"{result.bytes_on_disk / 1e6:,.1f} MB on disk, of which {manifest.weights.bytes / 1e6:,.1f} MB of weights in "
                      f"{manifest.weights.file}, shared by all {len(manifest.graphs)} graphs")
    if result.search is not None:
        plan_search(result.search)
    console.print(f"bundle written to {result.out}" if result
                  else f"bundle written to {result.out} despite failed checks (--allow-mismatch)")


def plan_search(search: PlanSearch) -> None:
    """The plans a precision search tried beside the uniform ones: the blocks kept out of int8,
    agreement and logits drift on the held-out split, and the forward's median latency."""
    ranked = sorted(range(len(search.sensitivity)), key=lambda i: -search.sensitivity[i])
    if ranked:
        console.print("block sensitivity (drift added alone in int8): " + ", ".join(
            f"block{i}/F {search.sensitivity[i]:.1e}" for i in ranked[:6]) + (", ..." if len(ranked) > 6 else ""))
    else:
        console.print("block sensitivity: not measured (uniform int8 met the budget: no block had to be raised)")
    held = search.images["held_out"]["images"]
    t = Table("precision plan", "blocks not int8", "agreement", "logits p99", "median ms", "",
              title=f"precision plans on {search.backend}, batch {search.bench_batch}: agreement and logits rel. L2 "
                    f"with PyTorch fp32 on {held} held-out images")
    front = {id(c) for c in search.pareto()}
    for c in search.frontier():
        kept = ", ".join(c.kept) if len(c.kept) <= 4 else f"{len(c.kept)} blocks"
        mark = "chosen" if c is search.chosen else ("frontier" if id(c) in front else "")
        t.add_row(c.label, kept or "none", f"{c.held_out.agreement:.4f}", f"{c.held_out.logits_p99:.2e}",
                  f"{c.median_ms:.2f}", mark)
    console.print(t)
    images = search.images
    console.print(f"calibrated on {images['calibration']['images']} ({images['calibration']['from']}), searched on "
                  f"{images['search']['images']} ({images['search']['from']}), judged on {held} "
                  f"({images['held_out']['from']}); {search.evaluations} plans judged on the search images, "
                  f"{search.seconds:.0f} s")
    for note in search.notes:
        console.print(f"not picked: {note}")
    console.print(search.verdict())


def engines(section: dict[str, Any]) -> None:
    t = Table("engine", "size MB", "build s", title=f"TensorRT {section['version']} on {section['gpu']['name']} "
              f"(sm_{''.join(map(str, section['gpu']['compute_capability']))}), batch {section['profile']}")
    for e in section["engines"].values():
        t.add_row(e["file"], f"{e['bytes'] / 1e6:.1f}", f"{e['build_seconds']:.1f}")
    console.print(t)


def verification(r: VerifyReport) -> None:
    console.print(f"{r.samples} {r.inputs}; reference: {r.reference}")
    t = Table("precision", "z from", "inverted by", "rel. L2", "max abs (px)", "PSNR dB", "worst", "tol.", "",
              title="round trip inverse(forward(x)) vs x")
    for e in r.round_trip + r.cross_round_trip:
        t.add_row(e.precision, e.forward, e.inverse, f"{e.rel_l2:.2e}", f"{e.max_abs_pixels:.2e}", db(e.psnr_db),
                  str(e.worst_sample), f"{e.tolerance:.0e}", verdict(bool(e)))
    console.print(t)
    if r.parity:
        t = Table("precision", "backend", "logits rel.", "logits max abs", "z rel.", "top-1 agree", "top-1 vs PyTorch", "",
                  title="parity with PyTorch fp32")
        for e in r.parity:
            acc = f"{e.top1_backend:.2f}% vs {e.top1_pytorch:.2f}%" if e.top1_backend is not None else "(no labels)"
            t.add_row(e.precision, e.backend, f"{e.logits.rel_l2:.2e}", f"{e.logits.max_abs:.2e}", f"{e.z.rel_l2:.2e}",
                      f"{e.agreement.value:.3f}", acc, verdict(bool(e)))
        console.print(t)
    for e in r.blocks:
        _blocks(e)
    if any(e.round_trip for e in r.blocks):
        console.print("fwd drift: block input vs PyTorch fp32; inverse error: recovered block input vs this backend's "
                      "forward; F bits equal: share of F outputs identical in both graphs (without the exact coupling "
                      "only the last block is sure to see the same input in both; earlier ones inherit the recovered "
                      "input's rounding).")
    if r.plot:
        console.print(f"plot written to {r.plot}")
    skipped(r.skipped)


def skipped(pairs: list[dict[str, str]]) -> None:
    """The (bundle, backend) pairs verify or bench left out, and why."""
    for s in pairs:
        console.print(f"skipped {s['backend']} on {s['bundle']}: {s['reason']}", soft_wrap=True)


def _blocks(e: BlockReport) -> None:
    title = f"error per block: {e.precision} on {e.backend} (row i: input of block i; last row: z)"
    if e.skipped:
        console.print(f"{title}: skipped, {e.skipped}")
        return
    t = Table("i", "block i inverse gain", "fwd drift", "inverse error", "F bits equal", title=title)
    n = len(e.round_trip)
    rows = range(n) if n <= 32 else sorted(set(range(4)) | set(range(n - 4, n)) | set(
        sorted(range(n), key=lambda i: -e.round_trip[i])[:6]))
    for i in rows:
        gain = e.gain[i] if e.gain and i < len(e.gain) else None
        drift = e.forward_drift[i] if e.forward_drift else None
        same = e.f_identical_fraction[i] if i < len(e.f_identical_fraction) else None
        t.add_row(str(i), "" if gain is None else f"{gain:.3g}", "" if drift is None else f"{drift:.1e}",
                  f"{e.round_trip[i]:.1e}", "" if same is None else f"{same:.0%}")
    console.print(t)
    if n > 32:
        console.print(f"({n} block boundaries; showing the first, last and worst; all in --json)")
    for w in e.warnings:
        console.print(Text.assemble(("warning", "yellow"), f": {w}"))


def speedup(e: BenchEntry) -> str:
    """A ratio of medians with the range of its rounds; a noisy one says so instead of a headline."""
    if e.speedup is None:
        return "baseline" if e.baseline == f"{e.backend} {e.precision}" else ""
    rounds = e.speedup_rounds
    text = f"{e.speedup:.2f}x ({min(rounds):.2f}-{max(rounds):.2f})"
    return f"noisy: {text}" if e.noisy else text


def bench(r: BenchReport) -> None:
    m, settings = r.machine, r.settings
    bundles = ", ".join(f"{b['path']} ({b['precision']})" for b in r.bundles)
    t = Table("backend", "bundle", "dir", "batch", "median ms", "p90", "p99", "images/s", "GFLOP/s", "speedup (rounds)",
              title=f"{bundles}, {r.model['gflop_per_image']:.2f} GFLOP/image; min/mean/p95/max and every round in --json")
    for e in r.results:
        backend = e.backend if e.concurrency == 1 else f"{e.backend} x{e.concurrency} clients"
        s = e.stats
        t.add_row(backend, e.precision, e.direction[:3].replace("for", "fwd"), str(e.batch), f"{s.median_ms:.2f}",
                  f"{s.p90_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.images_per_s:,.1f}", f"{e.gflops:.1f}", speedup(e))
    console.print(t)
    gpus = ", ".join(m["gpus"]) or "none"
    console.print(f"{m['cpu']} ({m['cpu_count']} logical CPUs), GPU: {gpus}; numpy fp32 matmul {m['fp32_matmul_gflops']:.1f} GFLOP/s; "
                  f"speedup = baseline median / median (baseline: {r.results[0].baseline}), backends measured in "
                  f"{settings['rounds']} alternating rounds, noisy where the rounds' ratios spread over "
                  f"{settings['noisy_spread']:.0%}; allocator: {settings['allocator'] or 'as started'}", soft_wrap=True)
    served = [e for e in r.results if e.server]
    if served:
        t = Table("model", "dir", "batch", "clients", "client median ms", "queue", "compute input", "infer", "output",
                  title="inside the server, ms per request (its statistics over the measured requests)")
        for e in served:
            t.add_row(e.backend, e.direction[:3].replace("for", "fwd"), str(e.batch), str(e.concurrency),
                      f"{e.stats.median_ms:.2f}", *(f"{getattr(e.server, k):.3f}" for k in ("queue", "compute_input",
                                                                                      "compute_infer", "compute_output")))
        console.print(t)
    skipped(r.skipped)


def memory(rows: list[dict[str, Any]]) -> None:
    t = Table("preset", "batch", "input", "activations MB (std / eff)", "saving", "whole step MB (std / eff)",
              "step s (std / eff)", "time", title=f"one SGD step on {rows[0]['standard']['device']}")
    mb = lambda e, key: f"{e[key] / 2**20:,.0f}"
    for r in rows:
        std, eff = r["standard"], r["memory_efficient"]
        t.add_row(r["preset"], str(std["batch"]), str(std["image_size"]),
                  f"{mb(std, 'activation_bytes')} / {mb(eff, 'activation_bytes')}", f"{r['memory_ratio']:.1f}x",
                  f"{mb(std, 'step_bytes')} / {mb(eff, 'step_bytes')}",
                  f"{std['step_seconds']:.2f} / {eff['step_seconds']:.2f}", f"{r['time_ratio']:.2f}x")
    console.print(t)
    console.print(rows[0]["standard"]["measured_as"], soft_wrap=True)


def repository(record: Any, out: str) -> None:
    models = ", ".join(record.models.values())
    versions = ", ".join(f"{v} ({info['precision']})" for v, info in sorted(record.versions.items(), key=lambda i: int(i[0])))
    console.print(f"wrote {out}: {models} ({record.flavour} flavour, batch up to {record.max_batch}, "
                  f"version{'s' * (len(record.versions) > 1)} {versions})", soft_wrap=True)


def serving(server: Any) -> None:
    shm = "private /dev/shm" if server.private_shm else (f"no private /dev/shm here ({server.private_shm_why}): its "
                                                         f"regions are made 0600 as they appear")
    console.print(f"serving {', '.join(server.models.values())}: HTTP {server.http_url}, gRPC {server.grpc_url}, "
                  f"metrics {server.http_url.rsplit(':', 1)[0]}:{server.metrics_port}/metrics ({shm}); Ctrl-C or "
                  f"SIGTERM stops it", soft_wrap=True)


def demo_step(step: str, result: Any) -> None:
    """What each stage of `irevnet demo` shows as it finishes."""
    heading(step)
    if step == "train":
        console.print(f"trained irevnet-tiny on digits: best held-out top-1 {result.best_top1:.2f}%")
    elif step.startswith("export"):
        export(result)
    elif step == "evaluate":
        console.print(f"test split ({result['images']} images): top-1 PyTorch {result['top1_pytorch']:.2f}%, "
                      f"ONNX Runtime fp32 {result['top1_onnx']:.2f}%")
    elif step == "verify":
        verification(result)
    elif step == "invert":
        console.print(f"originals (top) and reconstructions from z by the exported graphs (bottom): {result}")
    elif step == "bench":
        bench(result)


def demo_summary(summary: dict[str, Any]) -> None:
    heading("summary")
    acc = summary["accuracy"]
    t = Table("", "PyTorch", "ONNX Runtime", title="irevnet demo: irevnet-tiny on the scikit-learn digits")
    t.add_row("test top-1", f"{acc['top1_pytorch']:.2f}%", f"{acc['top1_onnx']:.2f}% (fp32)")
    for row in summary["round_trip"]:
        cells = [f"{row[side]['rel_l2']:.1e}, {db(row[side]['psnr_db'])} dB" if side in row else ""
                 for side in ("pytorch", "onnxruntime")]
        t.add_row(f"round trip {row['precision']} (rel. L2, PSNR)", *cells)
    speed = summary["speedup_vs_pytorch"]
    t.add_row("speed, batch 32 (rounds)", "baseline", ", ".join(f"{d} {speedup(e)}" for d, e in speed.items()))
    console.print(t)
    for what, where in summary["files"].items():
        console.print(f"{what}: {', '.join(where) if isinstance(where, list) else where}")
