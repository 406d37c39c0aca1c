"""Memory-efficient training: gradients through the block inverses equal standard backprop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import irevnet
from irevnet.reversible import first_recomputed_block
from tests.conftest import randomize_batchnorm


def _gradients(family, *, efficient, dtype=torch.float32, dropout=0.2, overrides=None):
    torch.manual_seed(123)
    model = irevnet.create_model(family, dropout=dropout, **(overrides or {}))
    randomize_batchnorm(model).train().to(dtype)
    model.memory_efficient = efficient
    x = torch.randn(8, *model.config.in_shape, generator=torch.Generator().manual_seed(1)).to(dtype).requires_grad_(True)
    y = torch.arange(8) % model.config.num_classes
    torch.manual_seed(0)  # the same dropout masks in both runs
    torch.nn.functional.cross_entropy(model(x)[0], y).backward()
    grads = torch.cat([p.grad.flatten().double() for p in model.parameters()])
    buffers = {k: v.clone() for k, v in model.named_buffers() if "running" in k or "num_batches" in k}
    return grads, x.grad.double(), buffers


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("family", ["irevnet-tiny", "irevnet-tiny-bijective"])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradients_equal_standard_backprop(family, dropout):
    std_p, std_x, std_buffers = _gradients(family, efficient=False, dropout=dropout)
    eff_p, eff_x, eff_buffers = _gradients(family, efficient=True, dropout=dropout)
    # measured: parameters 1.4e-6 (injective) / 1.6e-7 (bijective), input 4e-7 -- fp32 rounding
    # of the recomputed F and of y1 - F(x2); 1e-5 as the issue asks
    assert _rel(eff_p, std_p) <= 1e-5
    assert _rel(eff_x, std_x) <= 1e-5
    # BatchNorm running statistics are updated once per step, exactly as in standard training
    assert all(torch.equal(std_buffers[k], eff_buffers[k]) for k in std_buffers)


def test_injective_cifar_layout_is_exact_in_fp64_and_no_worse_than_standard_fp32():
    """irevnet-cifar's layout (padding 3 -> 32 channels, stride-2 psi blocks, dropout).

    Its first blocks see zero / image-independent channels whose batch variance is ~0; their
    BatchNorm makes these gradients ill-conditioned: standard fp32 backprop itself is measured
    1.7e-2 away from fp64 here. So: the algorithm is exact (fp64), and in fp32 no worse than
    standard backprop.
    """
    small = {"blocks": (2, 2, 2)}
    truth, truth_x, _ = _gradients("irevnet-cifar", efficient=False, dtype=torch.float64, dropout=0.0, overrides=small)
    eff64, eff64_x, _ = _gradients("irevnet-cifar", efficient=True, dtype=torch.float64, dropout=0.0, overrides=small)
    assert _rel(eff64, truth) <= 1e-12 and _rel(eff64_x, truth_x) <= 1e-12  # measured 3e-14
    std32, std32_x, _ = _gradients("irevnet-cifar", efficient=False, dropout=0.0, overrides=small)
    eff32, eff32_x, _ = _gradients("irevnet-cifar", efficient=True, dropout=0.0, overrides=small)
    assert _rel(eff32, truth) <= 1.1 * _rel(std32, truth)
    assert _rel(eff32_x, truth_x) <= 1.1 * _rel(std32_x, truth_x)
    assert _rel(eff32_x, std32_x) <= 1e-5  # measured 5e-7 (both are ~5e-3 from fp64)
    assert first_recomputed_block(irevnet.get_config("irevnet-cifar")) == 2, "blocks 0-1 keep their activations"
    assert first_recomputed_block(irevnet.get_config("irevnet-301")) == 0


def test_second_derivatives_are_refused_clearly():
    model = irevnet.create_model("irevnet-tiny-bijective").train()
    model.memory_efficient = True
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    loss = model(x)[0].square().sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|once_differentiable|does not require grad"):
        g.sum().backward()


def test_memory_efficient_training_matches_standard_on_digits(tmp_path):
    from irevnet.train import TrainOptions, train

    std = train(TrainOptions(dataset="digits", out=str(tmp_path / "std"), epochs=6, device="cpu"))
    eff = train(TrainOptions(dataset="digits", out=str(tmp_path / "eff"), epochs=6, device="cpu", memory_efficient=True))
    # Same seed; per-step gradients agree to ~1e-6, but SGD amplifies such differences over
    # hundreds of steps, so the runs diverge in detail (measured final train loss 0.045 vs 0.060)
    # while learning equally well (measured best held-out top-1 within 1 point, ~98%).
    assert abs(eff["best_top1"] - std["best_top1"]) <= 3.0
    assert eff["best_top1"] >= 90.0 and eff["final"]["train_loss"] < 0.2


def test_memory_efficient_ddp_run(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "irevnet",
           "train", "-d", "digits", "-o", str(out), "--epochs", "2", "--device", "cpu", "--quiet", "--memory-efficient"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["options"]["memory_efficient"] is True
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert history[-1]["train_loss"] < history[0]["train_loss"], "DDP averages the recomputed gradients and learns"


def test_memory_measurement_reports_less_activation_memory():
    from irevnet.memory import measure_in_subprocess

    std = measure_in_subprocess("irevnet-cifar", 16, False)
    eff = measure_in_subprocess("irevnet-cifar", 16, True)
    # measured at batch 32: 387 MB -> 84 MB; the saving grows with depth and image size. At
    # batch 16 standard backprop keeps ~190 MB of activations: half of it is a margin far above
    # the allocator's noise (a few MB), and the memory-efficient step must stay below it
    assert eff["activation_bytes"] * 2 < std["activation_bytes"]
