"""The model seen from one direction: the torch modules that become the ONNX graphs (forward,
inverse, and their per-block debug twins) and that the torch backend runs.

Every graph takes and returns float32 tensors whatever the precision inside, so applications
never handle fp16 buffers; fp16 and mixed graphs cast at their edges.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..contract import IMAGE, LOGITS, Precision, Z, block_input, branch_output
from .layers import merge
from .network import IRevNet


class HalfBranch(nn.Module):
    """A bottleneck branch F evaluated in fp16 inside an fp32 coupling stream.

    The cast to fp16 happens before F and the cast back after it, so forward and inverse graphs
    contain the same fp16 F subgraph: if both evaluate it to the same bits, y1 - F(x2) removes
    exactly what y1 = F(x2) + x1 added, and the round trip keeps fp32 accuracy.
    """

    def __init__(self, branch: nn.Module):
        super().__init__()
        self.f = branch.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f(x.half()).float()


def to_grid(x: torch.Tensor, k: int) -> torch.Tensor:
    """x rounded to multiples of 2^-k (half to even, as ONNX Round): the exact coupling stream of
    export/coupling.py. Scaling by powers of two is exact, so only the rounding rounds."""
    return torch.round(x * 2.0**k) * 2.0**-k


class OnGrid(nn.Module):
    """A branch F whose output is rounded to the exact coupling's grid 2^-k."""

    def __init__(self, branch: nn.Module, k: int):
        super().__init__()
        self.f, self.k = branch, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_grid(self.f(x), self.k)


def fold_batchnorm(branch: nn.Sequential) -> nn.Sequential:
    """F with every BatchNorm that follows a convolution folded into it and dropout removed.

    Eval-mode only. The leading BatchNorm of F (before its ReLU) has no convolution before it and
    stays a BatchNormalization node.
    """
    layers = [m for m in branch if not isinstance(m, nn.Dropout)]
    folded: list[nn.Module] = []
    for layer in layers:
        if isinstance(layer, nn.BatchNorm2d) and folded and isinstance(folded[-1], nn.Conv2d):
            folded[-1] = fuse_conv_bn_eval(folded[-1], layer)
        else:
            folded.append(layer)
    return nn.Sequential(*folded)


def prepare(model: IRevNet, precision: Precision | str, fold_bn: bool = True) -> IRevNet:
    """An eval-mode copy of `model` with the precision applied (and, for export, BatchNorm folded).

    Args:
        fold_bn: fold BatchNorm into the preceding convolutions and drop dropout (export); off,
            the copy computes exactly what the trained model does (PyTorch eager baseline).
    """
    precision = Precision(precision)
    net = copy.deepcopy(model).float().eval()
    if fold_bn:
        for block in net.stack:
            block.bottleneck_block = fold_batchnorm(block.bottleneck_block)
    if precision is Precision.fp16:
        net = net.half()
    elif precision is Precision.mixed:
        for block in net.stack:
            block.bottleneck_block = HalfBranch(block.bottleneck_block)
    return net


def _dtype(net: IRevNet) -> torch.dtype:
    return net.linear.weight.dtype  # fp16 only when the whole network is


class ForwardGraph(nn.Module):
    """image (N, C, H, W) -> logits (N, classes), z (N, *z_shape)."""

    input_names = (IMAGE,)
    output_names = (LOGITS, Z)

    def __init__(self, net: IRevNet):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, z = self.net(image.to(_dtype(self.net)))
        return logits.float(), z.float()


class InverseGraph(nn.Module):
    """z (N, *z_shape) -> image (N, C, H, W); range projection as configured."""

    input_names = (Z,)
    output_names = (IMAGE,)

    def __init__(self, net: IRevNet, project: bool = True):
        super().__init__()
        self.net, self.project = net, project

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.inverse(z.to(_dtype(self.net)), project=self.project).float()


class _BranchTaps:
    """Forward hooks that record each block's F output, in block order."""

    def __init__(self, net: IRevNet):
        self.outputs: dict[int, torch.Tensor] = {}
        self.handles = [block.bottleneck_block.register_forward_hook(self._hook(i)) for i, block in enumerate(net.stack)]

    def remove(self) -> None:
        """Takes the hooks off the network (which another graph module may then tap)."""
        for handle in self.handles:
            handle.remove()

    def _hook(self, i: int):
        def record(module, args, output):
            self.outputs[i] = output

        return record

    def ordered(self) -> list[torch.Tensor]:
        outs = [self.outputs[i].float() for i in sorted(self.outputs)]
        self.outputs = {}
        return outs


class ForwardBlocksGraph(nn.Module):
    """Debug forward: image -> logits, z, h0..hB (block i's input pair, merged; hB = z), f0..f{B-1}."""

    input_names = (IMAGE,)

    def __init__(self, net: IRevNet):
        super().__init__()
        self.net = net
        self.taps = _BranchTaps(net)
        b = len(net.stack)
        self.output_names = (LOGITS, Z, *[block_input(i) for i in range(b + 1)], *[branch_output(i) for i in range(b)])

    def forward(self, image: torch.Tensor):
        pairs = list(self.net.forward_pairs(image.to(_dtype(self.net))))
        z = merge(*pairs[-1])
        logits = self.net.head(z)
        return (logits.float(), z.float(), *[merge(*p).float() for p in pairs], *self.taps.ordered())


class InverseBlocksGraph(nn.Module):
    """Debug inverse: z -> image, h0..hB (recovered input pair of block i; hB = z), f0..f{B-1}."""

    input_names = (Z,)

    def __init__(self, net: IRevNet, project: bool = True):
        super().__init__()
        self.net, self.project = net, project
        self.taps = _BranchTaps(net)
        b = len(net.stack)
        self.output_names = (IMAGE, *[block_input(i) for i in range(b + 1)], *[branch_output(i) for i in range(b)])

    def forward(self, z: torch.Tensor):
        pairs = list(self.net.inverse_pairs(z.to(_dtype(self.net)), self.project))[::-1]  # block 0 first
        image = self.net.unembed(pairs[0])
        return (image.float(), *[merge(*p).float() for p in pairs], *self.taps.ordered())
