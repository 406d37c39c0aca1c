"""PyTorch backend: the model itself, eager, as the reference side of every comparison.

The only backend that needs torch; it is imported when this backend is opened, never by
`irevnet.runtime` itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...contract import BATCH_DIM, FORWARD, FORWARD_BLOCKS, IMAGE, INVERSE, INVERSE_BLOCKS, Precision
from ...errors import BundleError, IRevNetError
from ..bundle import Bundle
from .base import Backend, BackendOptions, unsupported


class TorchBackend(Backend):
    """Runs one of a bundle's graphs with the PyTorch model from its checkpoint.

    The model computes as trained (BatchNorm unfolded) in the bundle's precision: fp32 is the
    plain model, fp16 the model in half, mixed the F branches in half.

    Args:
        checkpoint: the checkpoint file (default: the one the manifest names).
        graph: forward | inverse | forward_blocks | inverse_blocks.
        precision, projection, image_size: as the bundle was exported.
        grid: the bundle's exact-coupling exponent k (manifest `exact_coupling`), None when off.
        device: cpu | cuda | auto.
        threads: torch intra-op threads.
        sha256: the checkpoint's digest in the manifest; another file is refused before loading.
        model: the checkpoint's model, loaded from it already (by the caller, who hashed it): run
            instead of loading the file again.
    """

    name = "torch"
    takes = frozenset({"checkpoint", "device", "threads"})

    @classmethod
    def for_bundle(cls, bundle: Bundle, graph: str, options: BackendOptions) -> TorchBackend:
        """The checkpoint the bundle was exported from (or `options.checkpoint`), run as the bundle
        was exported, on `options.device` with `options.threads`."""
        checkpoint, device, threads = options.checkpoint, options.device, options.threads
        ckpt = checkpoint or bundle.manifest.checkpoint.path
        if checkpoint is None and not Path(ckpt).is_file():
            raise BundleError(
                f"the torch backend runs the checkpoint the bundle was exported from, {ckpt}, which is not "
                f"there (moved to another machine?); pass --checkpoint PATH"
            )
        return cls(
            ckpt, graph, precision=bundle.precision, projection=bundle.manifest.range_projection,
            image_size=bundle.config.in_shape[1], device=device, threads=threads, max_batch=bundle.max_batch,
            sha256=bundle.manifest.checkpoint.sha256,
            grid=bundle.manifest.exact_coupling.exponent if bundle.manifest.exact_coupling else None,
        )

    def __init__(
        self,
        checkpoint: str | Path,
        graph: str,
        *,
        precision: str = Precision.fp32,
        projection: bool = True,
        image_size: int | None = None,
        device: str = "auto",
        threads: int | None = None,
        max_batch: int | None = None,
        sha256: str | None = None,
        grid: int | None = None,
        model: Any = None,
    ):
        try:
            import torch
        except ImportError:
            raise IRevNetError("the torch backend needs PyTorch; pip install 'irevnet[torch]'") from None
        from ...devices import resolve_device
        from ...io.checkpoint import load_checkpoint
        from ...model import graphs as g

        if reason := unsupported("torch", precision):
            raise IRevNetError(reason)
        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        self.device = resolve_device(device)
        if model is None:
            model = load_checkpoint(checkpoint, image_size=image_size, sha256=sha256).model
        net = g.prepare(model, precision, fold_bn=False)
        self.grid, self.to_grid = grid, g.to_grid
        if grid is not None:  # the bundle's exact coupling: F's outputs (and below, the input image) on its grid
            for block in net.stack:
                block.bottleneck_block = g.OnGrid(block.bottleneck_block, grid)
        module = {
            FORWARD: lambda: g.ForwardGraph(net),
            INVERSE: lambda: g.InverseGraph(net, projection),
            FORWARD_BLOCKS: lambda: g.ForwardBlocksGraph(net),
            INVERSE_BLOCKS: lambda: g.InverseBlocksGraph(net, projection),
        }[graph]()
        self.module = module.to(self.device).eval()
        cfg = model.config
        shape = [BATCH_DIM, *(cfg.in_shape if graph.startswith(FORWARD) else cfg.z_shape)]
        self.inputs = [{"name": module.input_names[0], "shape": shape, "dtype": "float32"}]
        self.outputs = [{"name": n} for n in module.output_names]
        self.max_batch = max_batch
        self.name = f"torch[{self.device.type}]"

    def _infer(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        torch = self.torch
        (x,) = feeds.values()
        cuda = self.device.type == "cuda"
        with torch.inference_mode():
            t = torch.from_numpy(x).to(self.device)
            if self.grid is not None and self.inputs[0]["name"] == IMAGE:
                t = self.to_grid(t, self.grid)
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            result = self.module(t)
            if cuda:
                end.record()
                end.synchronize()
                self.last_device_ms = start.elapsed_time(end)
            result = result if isinstance(result, tuple) else (result,)
            named: dict[str, Any] = dict(zip(self.module.output_names, result))
            wanted = outputs or list(named)
            return {k: named[k].float().cpu().numpy() for k in wanted}

    def close(self) -> None:
        self.module = None


