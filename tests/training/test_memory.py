"""Memory-efficient training: gradients through the block inverses equal standard backprop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import irevnet
from irevnet.model.reversible import first_recomputed_block
from tests.conftest import SMALL_FAMILIES, randomize_batchnorm


def _gradients(family, *, efficient, seed=123, image_seed=1, dtype=torch.float32, dropout=0.2):
    """Parameter and input gradients of one training step of a small member of `family`."""
    torch.manual_seed(seed)
    model = irevnet.create_model(family, dropout=dropout, **SMALL_FAMILIES[family])
    randomize_batchnorm(model).train().to(dtype)
    model.memory_efficient = efficient
    x = torch.randn(8, *model.config.in_shape, generator=torch.Generator().manual_seed(image_seed))
    x = x.to(dtype).requires_grad_(True)
    y = torch.arange(8) % model.config.num_classes
    torch.manual_seed(0)  # the same dropout masks in both runs
    torch.nn.functional.cross_entropy(model(x)[0], y).backward()
    grads = torch.cat([p.grad.flatten().double() for p in model.parameters()])
    buffers = {k: v.clone() for k, v in model.named_buffers() if "running" in k or "num_batches" in k}
    return grads, x.grad.double(), buffers


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# (model seed, image seed) pairs per family. (123, 1) without dropout and (303, 1) with it are the
# cases where a recomputed ReLU input crossed 0 on an AVX2 machine (gradients 2.3e-2 and 6.6e-3
# away before F's ReLU masks were kept); the rest widen the sweep, as such crossings are rare.
SWEEP = {
    "irevnet-tiny": [(s, i) for s in (0, 1, 2, 3, 123, 303) for i in (1, 2)],
    "irevnet-tiny-bijective": [(s, i) for s in (0, 1, 2, 3, 123, 303) for i in (1, 2)],
    "irevnet-cifar": [(s, i) for s in (0, 123) for i in (1, 2)],
    "irevnet-301": [(0, 1)],
}
# Parameter gradients of injective models are ill-conditioned near the padding: F of the padding
# block sees only zeros and the next BatchNorm sees channels that are the same for every image,
# so their batch variance is ~0 and rounding is amplified up to 1/sqrt(eps). Standard fp32
# backprop itself is measured up to 1.3e-2 from fp64 there, and 2e-5 between AVX2 and SSE4.1
# kernels for the same seed; the memory-efficient gradient was at most 4.7e-5 from standard
# over 40 seeds x 2 dropouts x both ISAs (irevnet-cifar layout), 9e-6 for irevnet-tiny.
# Bijective models and every input gradient: measured <= 6e-7 (fp32 rounding of the recomputed
# stream), so 1e-5.
PARAMETER_BOUND = {"injective": 1e-4, "bijective": 1e-5}


@pytest.mark.parametrize("family", list(SWEEP))
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_gradients_equal_standard_backprop_over_seeds(family, dropout):
    kind = "injective" if irevnet.get_config(family).injective else "bijective"
    for seed, image_seed in SWEEP[family]:
        std_p, std_x, std_buffers = _gradients(family, efficient=False, dropout=dropout, seed=seed, image_seed=image_seed)
        eff_p, eff_x, eff_buffers = _gradients(family, efficient=True, dropout=dropout, seed=seed, image_seed=image_seed)
        case = f"{family}, dropout {dropout}, seeds ({seed}, {image_seed})"
        assert _rel(eff_p, std_p) <= PARAMETER_BOUND[kind], case
        assert _rel(eff_x, std_x) <= 1e-5, case
        # BatchNorm running statistics are updated once per step, exactly as in standard training
        assert all(torch.equal(std_buffers[k], eff_buffers[k]) for k in std_buffers), case


def test_injective_cifar_layout_is_exact_in_fp64_and_close_to_standard_in_fp32():
    """irevnet-cifar's layout (padding 3 -> 32 channels, stride-2 psi blocks).

    The algorithm is exact: in fp64 the two gradients agree to 1e-12 (measured 3e-14). In fp32
    both are rounding outcomes of an ill-conditioned gradient (see PARAMETER_BOUND), so they are
    compared with each other, not by the ratio of their distances to fp64 (that ratio was
    measured between 0.9 and 1.5 over 40 seeds: two independent roundings).
    """
    truth, truth_x, _ = _gradients("irevnet-cifar", efficient=False, dtype=torch.float64, dropout=0.0)
    eff64, eff64_x, _ = _gradients("irevnet-cifar", efficient=True, dtype=torch.float64, dropout=0.0)
    assert _rel(eff64, truth) <= 1e-12 and _rel(eff64_x, truth_x) <= 1e-12
    std32, std32_x, _ = _gradients("irevnet-cifar", efficient=False, dropout=0.0)
    eff32, eff32_x, _ = _gradients("irevnet-cifar", efficient=True, dropout=0.0)
    assert _rel(eff32, std32) <= PARAMETER_BOUND["injective"]
    assert _rel(eff32_x, std32_x) <= 1e-5
    assert first_recomputed_block(irevnet.get_config("irevnet-cifar")) == 2, "blocks 0-1 keep their activations"
    assert first_recomputed_block(irevnet.get_config("irevnet-301")) == 0


def test_relu_masks_take_one_bit_per_element():
    from irevnet.model.reversible import PackedMask

    mask = torch.rand(3, 5, 7, 11, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = PackedMask(mask)
    assert packed.bytes.dtype == torch.uint8 and packed.bytes.numel() == -(-mask.numel() // 8)
    assert torch.equal(packed.unpack(torch.float32), mask.float())


def test_second_derivatives_are_refused_clearly():
    model = irevnet.create_model("irevnet-tiny-bijective").train()
    model.memory_efficient = True
    x = torch.randn(4, 1, 32, 32, requires_grad=True)
    loss = model(x)[0].square().sum()
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    # torch's own message for a function marked once_differentiable, not a generic autograd error
    with pytest.raises(RuntimeError, match="differentiate twice a function that was marked with @once_differentiable"):
        g.sum().backward()


def test_memory_efficient_training_learns_the_digits(tmp_path):
    from irevnet.training.loop import train
    from irevnet.training.options import TrainOptions

    eff = train(TrainOptions(dataset="digits", out=str(tmp_path / "eff"), epochs=6, device="cpu", memory_efficient=True))
    # Per-step gradients agree with standard backprop's to ~1e-6 (test_gradients_equal_...), but
    # SGD amplifies such differences over hundreds of steps, so the two runs of one seed diverge
    # like runs of different seeds (measured 6 epochs each: final train loss 0.045 standard vs 0.060
    # memory-efficient, best held-out top-1 98% vs 98% on one CPU, 97.2% vs 94.2% with SSE4.1
    # kernels). What must hold on any CPU: the memory-efficient run learns as a run does.
    assert eff.best_top1 >= 90.0
    assert eff.final["train_loss"] < 0.2


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
    from irevnet.training.memory import measure_in_subprocess

    std = measure_in_subprocess("irevnet-cifar", 16, False)
    eff = measure_in_subprocess("irevnet-cifar", 16, True)
    # measured at batch 32: 387 MB -> 84 MB; the saving grows with depth and image size. At
    # batch 16 standard backprop keeps ~190 MB of activations: half of it is a margin far above
    # the allocator's noise (a few MB), and the memory-efficient step must stay below it
    assert eff["activation_bytes"] * 2 < std["activation_bytes"]
