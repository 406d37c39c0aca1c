"""What bench's numbers were measured on: the CPU, the GPUs, the runtimes' versions and numpy's
fp32 matmul rate. Versions come from the installed distributions' metadata: a package is never
imported to be named (importing torch to print its version costs seconds and hundreds of MB).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import platform
import subprocess
from typing import Any

import numpy as np

from .timing import timed

VERSIONS_OF = ("onnxruntime", "openvino", "tensorrt", "torch", "numpy")  # the modules whose versions a report names


def machine_info() -> dict[str, Any]:
    """The CPU's model and count, the platform, the GPUs (nvidia-smi) and the runtimes' versions."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        gpus = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        info["gpus"] = [g.strip() for g in gpus.splitlines() if g.strip()]
    except (OSError, subprocess.SubprocessError):
        info["gpus"] = []
    info["versions"] = versions(VERSIONS_OF)
    return info


def versions(modules: tuple[str, ...]) -> dict[str, str]:
    """module -> the version of the distribution that installs it, for those of `modules` that are
    installed; none of them is imported. A module may come from a distribution of another name
    (onnxruntime from onnxruntime-gpu, tensorrt from tensorrt-cu12-bindings)."""
    found: dict[str, str] = {}
    distributions: dict[str, list[str]] = {}  # module -> the distributions installing it, read where needed
    for module in modules:
        if not _installed(module):
            continue
        try:
            found[module] = importlib.metadata.version(module)
        except importlib.metadata.PackageNotFoundError:
            distributions = distributions or importlib.metadata.packages_distributions()
            for name in distributions.get(module, []):
                with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                    found[module] = importlib.metadata.version(name)
                    break
    return found


def _installed(module: str) -> bool:
    """Whether a top-level module can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # blocked, or a broken installation
        return False


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """The machine's fp32 matrix-multiply rate through numpy's BLAS (best of `repeats`)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9
