"""How long an export's tracing takes: `irevnet.export.bundle.trace` of a preset (random weights)
in this fresh process, with or without the debug graphs, and each graph's bytes without weights.

    python tools/trace_bench.py                      # irevnet-301, debug graphs included
    python tools/trace_bench.py --preset irevnet-tiny --no-debug

The first trace of a process includes torch.onnx's start-up, as every `irevnet export` does.
Prints one JSON object: the machine's CPU, the seconds, and per graph its nodes and bytes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from search_bench import cpu  # tools/, this script's folder

from irevnet.model.config import list_presets  # torch-free


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="irevnet-301", choices=list_presets())
    parser.add_argument("--no-debug", dest="debug", action="store_false")
    args = parser.parse_args()

    import torch

    import irevnet
    from irevnet.export.bundle import ExportOptions, trace
    from irevnet.io.checkpoint import Checkpoint

    torch.manual_seed(0)
    model = irevnet.create_model(args.preset).eval()
    ckpt = Checkpoint(model=model, format="irevnet", path=Path("-"))
    opts = ExportOptions(checkpoint="-", out="-", max_batch=8, debug_graphs=args.debug)
    start = time.perf_counter()
    traced = trace(ckpt, opts)
    seconds = time.perf_counter() - start
    graphs = {}
    for name in traced.graphs:
        proto = traced.copy(name)
        for tensor in proto.graph.initializer:
            tensor.ClearField("raw_data")
        graphs[name] = {"nodes": len(proto.graph.node), "bytes_without_weights": proto.ByteSize()}
    print(json.dumps({"cpu": cpu(), "irevnet": str(Path(irevnet.__file__).parent), "preset": args.preset,
                      "debug_graphs": args.debug, "trace_seconds": round(seconds, 1), "graphs": graphs}, indent=1))


if __name__ == "__main__":
    main()
