"""`irevnet memory`: activation memory and time of one training step, standard backprop vs
memory-efficient (irevnet.model.reversible), each measured in a fresh process."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..allocator import exact_rss
from ..errors import IRevNetError
from .options import MemoryOptions


def _status_bytes(field: str) -> int | None:
    """VmRSS / VmHWM of this process from /proc (Linux), in bytes."""
    try:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) * 1024  # reported in kB


def _reset_peak_rss() -> bool:
    """Resets the peak resident set size (VmHWM) to the current one (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_before_step() -> int:
    """The baseline: resident memory now, with the peak reset so that the step's peak is its own.

    (getrusage's ru_maxrss cannot serve: Linux carries it across fork and exec, so a child of a
    large process starts with its parent's peak.)"""
    if _reset_peak_rss() and _status_bytes("VmRSS") is not None:
        return _status_bytes("VmRSS")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_peak() -> int:
    return _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure_step(preset: str, batch: int, memory_efficient: bool, device: str = "cpu", image_size: int | None = None) -> dict[str, Any]:
    """Memory and time of one SGD training step, as a user's training loop pays them.

    Run it in a fresh process (`measure_in_subprocess`). The step is a loop's iteration: the batch
    is created inside it, `zero_grad()` frees the gradients (PyTorch's default) and backward
    allocates them again, then SGD with momentum steps. Two steps at the measured batch size come
    first (lazy state such as momentum buffers exists after them; the second is timed), then the
    measured one. On the CPU: its peak resident memory (VmHWM, reset right before it) minus the
    resident memory before it, with malloc made to return freed memory (`allocator.exact_rss`); on CUDA:
    torch's max allocated minus allocated before. `step_bytes` is that total; `activation_bytes`
    is what is left of it after the gradients and the batch, which both modes need alike.
    """
    from ..devices import resolve_device
    from ..model.config import get_config
    from ..model.network import IRevNet

    dev = resolve_device(device)
    config = get_config(preset)
    if image_size:
        config = config.replace(in_shape=(config.in_shape[0], image_size, image_size))
    model = IRevNet(config).to(dev).train()
    model.memory_efficient = memory_efficient
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    shape = model.config.in_shape

    def step() -> None:
        x = torch.randn(batch, *shape, device=dev)
        y = torch.randint(0, model.config.num_classes, (batch,), device=dev)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x)[0], y).backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # lazy state: momentum buffers, first-use caches
    start = time.perf_counter()
    step()
    seconds = time.perf_counter() - start
    opt.zero_grad()  # at rest between iterations: parameters and momentum, no gradients
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        exact = exact_rss()
        before = _cpu_before_step()
    step()
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else _cpu_peak()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    batch_bytes = batch * int(torch.Size(shape).numel()) * 4 + batch * 8
    step_bytes = max(peak - before, 0)
    how = ("CUDA max allocated during the step minus allocated before it" if dev.type == "cuda" else
           f"peak resident memory during the step minus resident memory before it"
           f"{' (malloc returning freed memory)' if exact else ''}")
    return {
        "preset": preset, "batch": batch, "image_size": shape[1], "device": str(dev),
        "memory_efficient": memory_efficient,
        "step_bytes": step_bytes,
        "gradient_bytes": params,
        "batch_bytes": batch_bytes,
        "activation_bytes": max(step_bytes - params - batch_bytes, 0),
        "parameter_bytes": params,
        "step_seconds": seconds,
        "measured_as": f"{how}; a training-loop step: batch created inside, gradients freed by zero_grad() and "
                       f"allocated by backward; activations = step - gradients - batch",
    }


def compare_memory(opts: MemoryOptions, progress: Callable[[str], None] = lambda what: None) -> list[dict[str, Any]]:
    """Standard vs memory-efficient step for every preset: both measurements and their ratios."""
    rows = []
    for name in opts.presets:
        pair = {}
        for efficient in (False, True):
            progress(f"{name}, batch {opts.batch_size}, {'memory-efficient' if efficient else 'standard'}")
            pair[efficient] = measure_in_subprocess(name, opts.batch_size, efficient, opts.device, opts.image_size)
        rows.append({
            "preset": name, "standard": pair[False], "memory_efficient": pair[True],
            "memory_ratio": pair[False]["activation_bytes"] / max(pair[True]["activation_bytes"], 1),
            "time_ratio": pair[True]["step_seconds"] / pair[False]["step_seconds"],
        })
    return rows


def measure_in_subprocess(preset: str, batch: int, memory_efficient: bool, device: str = "cpu",
                          image_size: int | None = None) -> dict[str, Any]:
    """`measure_step` in a fresh Python process, so that earlier peaks do not hide this one."""
    args = [sys.executable, "-m", "irevnet.training.memory", preset, str(batch), "1" if memory_efficient else "0", device,
            str(image_size or 0)]
    proc = subprocess.run(args, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise IRevNetError(f"the memory measurement failed ({tail})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # the child of measure_in_subprocess
    _preset, _batch, _efficient, _device, _size = sys.argv[1:6]
    print(json.dumps(measure_step(_preset, int(_batch), _efficient == "1", _device, int(_size) or None)))
