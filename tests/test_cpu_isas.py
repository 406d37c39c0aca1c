"""The numeric tests again, with PyTorch's convolutions rounding as other CPUs' do.

oneDNN, which runs PyTorch's CPU convolutions, honours ONEDNN_MAX_CPU_ISA: under AVX2 or SSE41 it
picks the kernels (and so the summation order and rounding) of a CPU of that class, whatever this
machine has (its verbose log names them: jit:avx2, jit:sse41). A bound that holds here only
because of this CPU's rounding fails in these runs.
"""

import os
import subprocess
import sys

import pytest

from tests.conftest import TRAINED_RUNS

NUMERIC_TESTS = [
    "tests/training/test_memory.py::test_gradients_equal_standard_backprop_over_seeds",
    "tests/training/test_memory.py::test_injective_cifar_layout_is_exact_in_fp64_and_close_to_standard_in_fp32",
    "tests/model/test_model.py",
    "tests/model/test_layers.py",
    "tests/export/test_fidelity.py",
]
# needs three exported bundles (a minute of fixtures): ONNX Runtime, not oneDNN, runs their graphs
SKIPPED = ["tests/export/test_fidelity.py::test_exported_inverse_reproduces_the_projected_pytorch_inverse"]


def _lowered_isas() -> list[str]:
    """The ISAs below this CPU's: AVX2 where it has AVX-512 (the main run already is the AVX2 run
    on an AVX2-only CPU), SSE4.1 everywhere."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "").split()
    except OSError:
        flags = ["avx512f"]
    return ["AVX2", "SSE41"] if "avx512f" in flags else ["SSE41"]


@pytest.mark.skipif("ONEDNN_MAX_CPU_ISA" in os.environ, reason="this run is already under a lowered ISA")
@pytest.mark.parametrize("isa", _lowered_isas())
def test_numeric_tests_hold_with_other_cpus_rounding(isa, trained_tiny, trained_tiny_bijective):
    """The trained models are this session's (trained here, as a user's are trained on their
    machine); what runs under the lowered ISA is every test's own arithmetic on them."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *NUMERIC_TESTS,
           *(f"--deselect={test}" for test in SKIPPED)]
    runs = f"irevnet-tiny={trained_tiny},irevnet-tiny-bijective={trained_tiny_bijective}"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, TRAINED_RUNS: runs}
    root = os.path.dirname(os.path.dirname(__file__))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_onednn_takes_the_lowered_isa():
    """The variable reaches oneDNN: its verbose log names an SSE4.1 convolution kernel."""
    code = "import torch; torch.nn.Conv2d(8, 8, 3)(torch.randn(2, 8, 16, 16))"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "SSE41", "ONEDNN_VERBOSE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0 and "jit:sse41" in proc.stdout, proc.stdout[-2000:]
