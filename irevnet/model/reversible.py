"""Memory-efficient training: backpropagate through the block inverses instead of stored activations.

Standard backprop keeps every block's intermediate tensors until the backward pass, so
activation memory grows with depth. An i-RevNet does not need them: each block's input can be
recomputed from its output (Gomez et al., "The Reversible Residual Network", NeurIPS 2017). The
stack runs as one autograd Function that keeps only its final output; the backward pass walks
the blocks in reverse and, per block:

1. evaluates F(x2) once, with autograd on, on x2 taken from the block's output;
2. recovers x1 = psi^-1(y1 - F(x2)), the block's input, for the next (earlier) block;
3. backpropagates the output gradients through y1 = F(x2) + psi(x1), x2' = psi(x2).

What makes the recomputed F the forward's F in train mode:
- BatchNorm normalises with batch statistics, which depend only on F's input, the same tensor;
  its running statistics are snapshotted and restored, so each step updates them once;
- dropout draws the same masks: the RNG state before each block's F is saved in the forward
  and restored for the recomputation;
- every ReLU uses the forward's mask, kept at one bit per element (1/32 of the fp32 activation
  it gates). The recovered x1 = psi^-1(y1 - F(x2)) differs from the forward's by fp32 rounding
  (~1e-7 relative per block), and a ReLU input that lies within that distance of 0 would flip
  its gradient from g to 0: one flipped element moves a batch's gradient by ~1/sqrt(elements),
  measured 2.3e-2 on irevnet-tiny. Which element sits that close to 0 depends on the CPU's
  rounding, so without the masks the error is rare, machine-dependent and large.
Gradients then match standard backprop to fp32 rounding (tests/training/test_memory.py sweeps seeds).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .layers import IRevNetBlock, Pair, merge, split


@contextlib.contextmanager
def _frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics (and counters) come back unchanged after the block."""
    saved = [
        (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    try:
        yield
    finally:
        for m, mean, var, count in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def _rng_state(device: torch.device) -> tuple:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def _replayed_rng(state: tuple | None, device: torch.device) -> Iterator[None]:
    if state is None:  # the block draws no random numbers
        yield
        return
    cpu, cuda = state
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)
        yield


class PackedMask:
    """A boolean tensor kept at one bit per element (uint8 bytes, element k in bit k % 8)."""

    _WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)

    def __init__(self, mask: torch.Tensor):
        self.shape = mask.shape
        flat = mask.reshape(-1)
        if flat.numel() % 8:
            flat = torch.cat((flat, flat.new_zeros(8 - flat.numel() % 8)))
        weights = torch.tensor(self._WEIGHTS, dtype=torch.uint8, device=mask.device)
        self.bytes = (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)

    def unpack(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as 0/1 values of `dtype`, in its original shape."""
        shifts = torch.arange(8, dtype=torch.uint8, device=self.bytes.device)
        bits = (self.bytes.unsqueeze(1) >> shifts) & 1  # (bytes, 8)
        return bits.reshape(-1)[: self.shape.numel()].view(self.shape).to(dtype)


def _recording_relu_masks(f: nn.Sequential, masks: list[PackedMask]) -> Callable[[torch.Tensor], torch.Tensor]:
    """F, layer by layer, appending each ReLU's mask (input > 0) to `masks`."""

    def branch(x: torch.Tensor) -> torch.Tensor:
        for layer in f:
            if isinstance(layer, nn.ReLU):
                masks.append(PackedMask(x > 0))
            x = layer(x)
        return x

    return branch


def _replaying_relu_masks(f: nn.Sequential, masks: list[PackedMask]) -> Callable[[torch.Tensor], torch.Tensor]:
    """F, layer by layer, each ReLU replaced by multiplication with the forward's mask: its
    gradient is then the forward's ReLU gradient whatever rounding the recomputed input carries."""

    def branch(x: torch.Tensor) -> torch.Tensor:
        recorded = iter(masks)
        for layer in f:
            x = x * next(recorded).unpack(x.dtype) if isinstance(layer, nn.ReLU) else layer(x)
        return x

    return branch


class _InvertibleStack(torch.autograd.Function):
    """(x1, x2, anchor) -> the last block's output pair; stores only that pair.

    The parameters are not inputs: their gradients are accumulated inside `backward`, block by
    block, which fires each parameter's gradient hook exactly once (DistributedDataParallel
    counts on that). `anchor`, an empty tensor that requires grad, makes autograd call
    `backward` even when the image does not require grad.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, blocks: nn.ModuleList, x1: torch.Tensor, x2: torch.Tensor, anchor: torch.Tensor):
        ctx.blocks = blocks
        ctx.device = x2.device
        ctx.rng = []
        ctx.relu_masks = []
        pair = (x1, x2)
        with torch.no_grad():
            for block in blocks:
                draws = any(isinstance(m, nn.Dropout) and m.p > 0 for m in block.bottleneck_block.modules())
                ctx.rng.append(_rng_state(x2.device) if draws else None)  # dropout masks to replay
                masks: list[PackedMask] = []
                ctx.relu_masks.append(masks)
                pair = block(pair, branch=_recording_relu_masks(block.bottleneck_block, masks))
        y1, y2 = pair
        ctx.save_for_backward(y1, y2)
        return y1, y2

    @staticmethod
    @once_differentiable  # a second derivative would need the activations this path discards
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g1: torch.Tensor, g2: torch.Tensor):
        blocks: nn.ModuleList = ctx.blocks
        out = tuple(t.detach() for t in ctx.saved_tensors)
        grads = (g1, g2)
        for i in reversed(range(len(blocks))):
            masks, ctx.relu_masks[i] = ctx.relu_masks[i], None  # freed block by block
            out, grads = _block_backward(blocks[i], out, grads, ctx.rng[i], masks, ctx.device)
        # Parameter gradients went into .grad block by block; returning them instead would hold a
        # second copy of every gradient (500 MB for irevnet-301) until the whole stack is done.
        return None, grads[0], grads[1], None


def _block_backward(
    block: IRevNetBlock, out: Pair, grads: Pair, rng: tuple | None, relu_masks: list[PackedMask], device: torch.device
) -> tuple[Pair, Pair]:
    """One block: recover its input from `out`, accumulate its parameters' gradients, and return
    the input and the gradient with respect to it. `relu_masks` are F's, recorded in the forward."""
    o1, o2 = out
    g1, g2 = grads
    psi = block.psi if block.stride == 2 else None
    params = [p for p in block.parameters() if p.requires_grad]
    # running statistics are restored only after the gradient: autograd checks that the tensors
    # batch_norm saved were not modified in between
    with _frozen_running_stats(block):
        with torch.enable_grad():
            x2 = (psi.inverse(o1) if psi else o1).detach().requires_grad_(True)
            with _replayed_rng(rng, device):
                fx2 = _replaying_relu_masks(block.bottleneck_block, relu_masks)(x2)
        with torch.no_grad():
            x1 = o2 - fx2.to(o2.dtype)
            x1 = psi.inverse(x1) if psi else x1
        # y1 = F(x2) + psi(x1): dL/dF = g2, dL/dx1 = psi^-1(g2) (psi permutes, so its adjoint is its inverse)
        # x2' = psi(x2): x2 also receives psi^-1(g1)
        torch.autograd.backward(fx2, g2.to(fx2.dtype), inputs=[x2, *params])
    gx2 = x2.grad + (psi.inverse(g1) if psi else g1)
    gx1 = psi.inverse(g2) if psi else g2
    x2 = x2.detach()
    if block.pad:  # undo merge -> pad -> split: drop the padded channels, split as the input was
        half = block.in_ch // 2
        return split(block.inj_pad.inverse(merge(x1, x2)), half), split(block.inj_pad.inverse(merge(gx1, gx2)), half)
    return (x1, x2), (gx1, gx2)


def first_recomputed_block(config) -> int:
    """Index of the first block that is recomputed; the blocks before it keep their activations.

    Injective padding makes the last padding block's F see zero channels and the next block's F
    see channels that are the same for every image (F(0) plus zero). In training their batch
    variance is ~0, so BatchNorm would amplify the rounding noise of a recomputed input into
    the gradients (measured: 4% gradient error on a CIFAR-shaped model). Those blocks run with
    ordinary autograd: 2 of 54 blocks for irevnet-cifar, none for bijective models.
    """
    padded = [i for i, spec in enumerate(config.block_specs()) if spec.pad]
    return min(padded[-1] + 2, config.num_blocks) if padded else 0


def invertible_stack(blocks: nn.ModuleList, pair: Pair) -> Pair:
    """Runs `blocks` on `pair` keeping only the output for the backward pass."""
    x1, x2 = pair
    anchor = torch.empty(0, device=x2.device, requires_grad=True)
    return _InvertibleStack.apply(blocks, x1, x2, anchor)
