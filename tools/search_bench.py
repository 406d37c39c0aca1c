"""The precision search against one int8 export: wall time, and the frontier it found.

    python tools/search_bench.py WORKDIR --digits RUN          # a trained irevnet-tiny run folder
    python tools/search_bench.py WORKDIR --r301                # irevnet-301, random weights, synthetic images

Each export runs in a fresh process (`irevnet export ... --json`), one after the other: first the
uniform int8 export, then `--precision auto` with the same calibration, so the ratio of their wall
times is what the search costs over the export it replaces. Prints one JSON object: the machine's
CPU, both wall times, their ratio, and every plan of the frontier (label, blocks kept out of int8,
held-out agreement and logits drift, median latency).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from irevnet.contract import Precision


def cpu() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "avx_vnni") if f in flags]
    return {"model": model, "isa": isa}


def export(args: list[str]) -> tuple[float, dict]:
    out = Path(args[args.index("--json") + 1])
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "irevnet", "export", *args], capture_output=True, text=True, check=False)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"irevnet export {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, json.loads(out.read_text())


def r301_checkpoint(work: Path) -> Path:
    import irevnet
    from irevnet.io.checkpoint import save_checkpoint

    path = work / "irevnet-301-random.pt"
    if not path.is_file():
        model = irevnet.create_model("irevnet-301", num_classes=10, in_shape=(3, 224, 224)).eval()
        save_checkpoint(path, model)
    return path


def kept(candidate: dict) -> list[str] | str:
    """The blocks a plan keeps out of int8, or how many when that is every one of them."""
    blocks = candidate["kept"]
    if blocks and len(blocks) == len(candidate["precision_plan"]):
        return f"all {len(blocks)} ({', '.join(sorted(set(candidate['precision_plan'])))})"
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--digits", type=Path, help="a trained irevnet-tiny run folder (best.pt)")
    which.add_argument("--r301", action="store_true", help="irevnet-301 with random weights on synthetic images")
    parser.add_argument("--budget", default=None, help="default: logits<=0.02 (digits), agreement>=0.9 (irevnet-301)")
    parser.add_argument("--calibration", type=int, default=None, help="default: 256 (digits), 32 (irevnet-301)")
    parser.add_argument("--search-images", type=int, default=None, help="default: 256 (digits), 16 (irevnet-301)")
    parser.add_argument("--held-out", type=int, default=None, help="default: all 360 (digits), 16 (irevnet-301)")
    parser.add_argument("--search-backend", default="onnxruntime", help="onnxruntime, openvino or tensorrt")
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    if args.digits:
        ckpt, dataset, batch = args.digits / "best.pt", "digits", 8
        budget, calibration, search, held = args.budget or "logits<=0.02", args.calibration or 256, args.search_images or 256, args.held_out
    else:
        ckpt, dataset, batch = r301_checkpoint(work), "synthetic", 8
        budget, calibration, search, held = (args.budget or "agreement>=0.9", args.calibration or 32,
                                             args.search_images or 16, args.held_out or 16)
    common = ["-c", str(ckpt), "-d", dataset, "--max-batch", str(batch), "--calibration", str(calibration), "--no-debug"]
    int8 = Precision.int8.value
    int8_s, _ = export([*common, "-o", str(work / int8), "--precision", int8, "--json", str(work / f"{int8}.json")])
    print(f"int8 export: {int8_s:.1f} s", file=sys.stderr, flush=True)
    # --allow-mismatch: a chosen plan that misses the budget on the held-out images is reported
    # (judged.met false) instead of ending the run
    searched = ["--precision", "auto", "--budget", budget, "--search-images", str(search), "--search-batch", str(batch),
                "--search-backend", args.search_backend, "--allow-mismatch",
                "--frontier", str(work / "frontier.png")]
    if held:
        searched += ["--held-out", str(held)]
    search_s, result = export([*common, "-o", str(work / "auto"), *searched, "--json", str(work / "auto.json")])
    s = result["search"]
    plans = {json.dumps(c["precision_plan"]): c for c in [*s["uniform"], *s["tried"]]}.values()
    frontier = sorted(plans, key=lambda c: c["median_ms"])
    print(json.dumps({
        "cpu": cpu(), "model": str(ckpt), "dataset": dataset, "budget": budget, "backend": s["backend"],
        "images": s["images"],
        "int8_export_s": round(int8_s, 1), "search_s": round(search_s, 1), "ratio": round(search_s / int8_s, 2),
        "plans_judged": s["evaluations"], "chosen": s["chosen"]["label"], "judged": s["judged"], "met": s["met"],
        "frontier": [{"label": c["label"], "kept": kept(c), "agreement": c["held_out"]["agreement"],
                      "logits_p99": c["held_out"]["logits_p99"], "median_ms": c["median_ms"]} for c in frontier],
    }, indent=2))


if __name__ == "__main__":
    main()
