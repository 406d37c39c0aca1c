"""Whole-dataset evaluation, measured (a command, not a test): images/s and peak RSS of
`irevnet evaluate` over a generated image folder at two sizes, one process against Ray, how
throughput scales with the decoding threads, and the pipeline against the backend's own speed.

    python tools/eval_bench.py WORKDIR [--images 20000] [--small 2000] [--json results.json]
    python tools/eval_bench.py WORKDIR --r301 [--r301-images 200]   # irevnet-301 at batch 8

Every run is a fresh `irevnet evaluate` process, its peak resident memory read from
/proc/self/status (VmHWM) when it ends. The folder is 1,000 class folders of JPEGs of 40-56 pixels
a side (seeded); the models have random weights, exported for 32x32 (what matters here is the
pipeline's cost, not the accuracy). Sizes and Ray run irevnet-cifar's forward graph
(`--no-round-trip`: the inverse doubles the time and changes nothing in memory or scheduling);
the decoding threads are measured on irevnet-tiny at 3x32x32, where decoding, not the model,
bounds the rate.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from irevnet.contract import FORWARD, INVERSE, MANIFEST

CLASSES = 1000  # ImageNet's: every record holds 1,000 logits, what a whole split's records weigh

PEAK = ("import runpy, sys\nsys.argv = ['irevnet', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('irevnet', run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
        "print('PEAK', int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024, "
        "file=sys.stderr)\n")


def make_folder(root: Path, images: int, size: tuple[int, int] = (40, 56), classes: int = CLASSES) -> Path:
    """imagefolder:ROOT with `images` JPEGs in val/ (`classes` class folders) and one per class in train/."""
    from PIL import Image

    if (root / "val").is_dir() and sum(1 for _ in (root / "val").rglob("*.jpg")) == images:
        return root
    rng = np.random.default_rng(0)
    for split, n in (("train", classes), ("val", images)):
        for i in range(n):
            folder = root / split / f"n{i % classes:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def export(workdir: Path, preset: str, in_shape: tuple[int, int, int], max_batch: int, classes: int = CLASSES) -> Path:
    out = workdir / f"{preset}-{classes}-bundle"
    if (out / MANIFEST).is_file():
        return out
    import irevnet
    from irevnet.export.bundle import ExportOptions, export_bundle
    from irevnet.io.checkpoint import save_checkpoint

    model = irevnet.create_model(preset, num_classes=classes, in_shape=in_shape).eval()
    ckpt = save_checkpoint(workdir / f"{preset}-{classes}.pt", model)
    export_bundle(ExportOptions(checkpoint=str(ckpt), out=str(out), max_batch=max_batch, samples=1, debug_graphs=False))
    return out


def run(args: list[str]) -> dict:
    """One `irevnet evaluate` in a fresh process: its --json summary, wall seconds and peak RSS."""
    out = Path(args[args.index("--json") + 1])
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", PEAK, "evaluate", *args, "-q"], capture_output=True, text=True,
                          check=False)
    wall = time.monotonic() - start
    peak = next((int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK")), None)
    if proc.returncode != 0 or peak is None:
        raise SystemExit(f"irevnet evaluate {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads(out.read_text())
    return {"images": summary["images"], "images_per_s": summary["images_per_s"], "wall_s": wall,
            "peak_rss_mib": peak / 2**20, "top1": summary["top1"], "round_trip_max": (summary["round_trip"] or {}).get("max")}


def decode_alone(spec: str, images: int, threads: int) -> dict:
    """The split's decoding and preprocessing with no model: what the decoding threads can give."""
    from concurrent.futures import ThreadPoolExecutor

    from irevnet.io.splits import open_split

    split = open_split(spec, "val", (3, 32, 32), images)
    start = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(split.decode, split.items):
            pass
    return {"images": images, "images_per_s": images / (time.monotonic() - start)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--r301", action="store_true", help="irevnet-301 at batch 8 instead: pipeline vs bench")
    parser.add_argument("--r301-images", type=int, default=200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if args.r301:
        results = r301(work, args.r301_images)
    else:
        folder = make_folder(work / "folder-1000", args.images)
        spec = f"imagefolder:{folder}"
        tiny = export(work, "irevnet-tiny", (3, 32, 32), 64)
        common = [str(tiny), "-d", spec, "--batch-size", "32", "--chunk-size", "512", "--limit", str(args.small)]
        for workers in (0, 1, 2, 4):
            results[f"irevnet-tiny, decode threads {workers}, {args.small} images"] = run(
                [*common, "--workers", str(workers), "--json", str(work / f"w{workers}.json")])
        for threads in (1, 2):
            results[f"decoding alone, {threads} threads, {args.small} images"] = decode_alone(spec, args.small, threads)
        cifar = export(work, "irevnet-cifar", (3, 32, 32), 64)
        common = [str(cifar), "-d", spec, "--batch-size", "32", "--chunk-size", "512", "--no-round-trip"]
        for n in (args.small, args.images):
            results[f"irevnet-cifar, one process, {n} images"] = run(
                [*common, "--limit", str(n), "--json", str(work / f"one-{n}.json")])
        results[f"irevnet-cifar, ray, 2 workers, {args.images} images"] = run(
            [*common, "--limit", str(args.images), "--ray", "--ray-workers", "2", "--workers", "1",
             "--json", str(work / "ray.json")])
    width = max(len(k) for k in results)
    for key, r in results.items():
        print(f"{key:<{width}}  " + "  ".join(f"{k} {v:,.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def r301(work: Path, images: int) -> dict:
    """irevnet-301 (random weights) at batch 8 on ONNX Runtime: `evaluate` over a folder of
    224x224 crops against `bench` on the same batch, forward alone and with the inverse."""
    from irevnet.runtime.bench import BenchOptions, bench

    folder = make_folder(work / "folder-224", images, (256, 320), classes=10)
    bundle = export(work, "irevnet-301", (3, 224, 224), 8, classes=10)
    results = {}
    timed = bench(BenchOptions([str(bundle)], batch_sizes=[8], warmup_s=2, duration_s=20, rounds=2))
    per = {e.direction: e.stats.median_ms for e in timed.results}
    results["bench forward, batch 8"] = {"images_per_s": 8000 / per[FORWARD], "median_ms": per[FORWARD]}
    results["bench forward + inverse, batch 8"] = {"images_per_s": 8000 / (per[FORWARD] + per[INVERSE])}
    common = [str(bundle), "-d", f"imagefolder:{folder}", "--batch-size", "8", "--chunk-size", "64"]
    results["evaluate, forward only"] = run([*common, "--no-round-trip", "--json", str(work / "r301-fwd.json")])
    results["evaluate, round trip"] = run([*common, "--json", str(work / "r301-rt.json")])
    results["ratio, forward"] = {"pipeline_over_bench": results["evaluate, forward only"]["images_per_s"]
                                 / results["bench forward, batch 8"]["images_per_s"]}
    results["ratio, round trip"] = {"pipeline_over_bench": results["evaluate, round trip"]["images_per_s"]
                                    / results["bench forward + inverse, batch 8"]["images_per_s"]}
    return results


if __name__ == "__main__":
    sys.exit(main())
