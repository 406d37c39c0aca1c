"""The i-RevNet: a stack of reversible blocks, invertible up to the final linear classifier."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .config import IRevNetConfig, get_config
from .layers import IRevNetBlock, Pair, Psi, merge, split


class IRevNet(nn.Module):
    """i-RevNet (Jacobsen, Smeulders, Oyallon, ICLR 2018).

    forward: image (N, C, H, W) -> (logits (N, classes), z (N, *config.z_shape)).
    inverse: z -> image. Invariant in eval mode: `inverse(forward(x)[1]) == x`, and for bijective
    models also `forward(inverse(z))[1] == z`.

    Parameter names follow the reference code (`stack.N.bottleneck_block.K`, `bn1`, `linear`) so
    that its state dicts load as they are.
    """

    def __init__(self, config: IRevNetConfig):
        super().__init__()
        self.config = config
        self.init_psi = Psi(config.init_ds) if config.init_ds else None
        zeros = config.structural_zeros()
        self.stack = nn.ModuleList(
            IRevNetBlock.from_spec(spec, config, zeros[i]) for i, spec in enumerate(config.block_specs())
        )
        z_channels = config.z_shape[0]
        # The reference's head BatchNorm uses momentum 0.9 (its running stats follow the last
        # batches closely); kept so that training matches it.
        self.bn1 = nn.BatchNorm2d(z_channels, momentum=0.9)
        self.linear = nn.Linear(z_channels, config.num_classes)
        # Train by backpropagating through the block inverses instead of stored activations
        # (irevnet.model.reversible): per block only one bit per ReLU input of F is kept, not its activations.
        self.memory_efficient = False

    # -- the invertible part -----------------------------------------------------------------

    def embed(self, x: torch.Tensor) -> Pair:
        """Image -> the first block's input pair (after the initial psi)."""
        if self.init_psi is not None:
            x = self.init_psi(x)  # (N, 4C, H/2, W/2)
        return split(x, self.config.in_channels // 2)

    def unembed(self, pair: Pair) -> torch.Tensor:
        x = merge(*pair)
        return self.init_psi.inverse(x) if self.init_psi is not None else x

    def forward_pairs(self, x: torch.Tensor) -> Iterator[Pair]:
        """Image -> block 0's input pair, then every block's output pair, in order."""
        pair = self.embed(x)
        yield pair
        for block in self.stack:
            pair = block(pair)
            yield pair

    def inverse_pairs(self, z: torch.Tensor, project: bool = True) -> Iterator[Pair]:
        """z -> its pair, then the recovered input pair of every block, last block first."""
        pair = split(z)
        yield pair
        for block in reversed(self.stack):
            pair = block.inverse(pair, project=project)
            yield pair

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> z, the last block's output pair merged: (N, *config.z_shape)."""
        if self.memory_efficient and self.training and torch.is_grad_enabled():
            from .reversible import first_recomputed_block, invertible_stack

            k = first_recomputed_block(self.config)
            pair = self.embed(x)
            for block in self.stack[:k]:  # ill-conditioned to recompute: keep their activations
                pair = block(pair)
            return merge(*invertible_stack(self.stack[k:], pair))
        *_, pair = self.forward_pairs(x)
        return merge(*pair)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """z -> logits: BN, ReLU, global average pool, linear (the non-invertible part)."""
        out = F.relu(self.bn1(z))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (N, C): the reference's avg_pool2d over all of z
        return self.linear(out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.features(x)
        return self.head(z), z

    def inverse(self, z: torch.Tensor, project: bool = True) -> torch.Tensor:
        """Reconstructs the image from z: (N, *config.z_shape) -> (N, *config.in_shape).

        Args:
            z: the final representation, as returned by `forward`.
            project: for injective models, set the channels that the architecture makes zero to
                exactly zero inside every block (range projection). Without it, trained injective
                models lose ~5 orders of magnitude of round-trip accuracy in fp32; see
                `IRevNetBlock.inverse`.
        """
        if self.training:
            raise RuntimeError(
                "IRevNet.inverse needs eval mode: BatchNorm must use its running statistics, "
                "not the batch's; call model.eval() first"
            )
        *_, pair = self.inverse_pairs(z, project)
        return self.unembed(pair)

    # -- helpers -----------------------------------------------------------------------------

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def state_shapes(config: IRevNetConfig) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and tensor shapes of `IRevNet(config)`, without building it.

    Checkpoint loading compares a file's tensors with these before it allocates a model, so a
    config that asks for huge layers is refused at the cost of a dictionary. Mirrors
    `layers.bottleneck` layer by layer; tests/model/test_model.py checks it against the real module.
    """
    shapes: dict[str, tuple[int, ...]] = {}

    def batchnorm(key: str, channels: int, affine: bool) -> None:
        if affine:
            shapes[f"{key}.weight"] = shapes[f"{key}.bias"] = (channels,)
        shapes[f"{key}.running_mean"] = shapes[f"{key}.running_var"] = (channels,)
        shapes[f"{key}.num_batches_tracked"] = ()

    affine = config.affine_bn
    for b, spec in enumerate(config.block_specs()):
        key = f"stack.{b}.bottleneck_block"
        f_in, inner = spec.f_in, spec.out_ch // config.mult
        i = 0
        if not spec.first:  # BN-ReLU before the first convolution
            batchnorm(f"{key}.0", f_in, affine)
            i = 2
        shapes[f"{key}.{i}.weight"] = (inner, f_in, 3, 3)
        batchnorm(f"{key}.{i + 1}", inner, affine)
        shapes[f"{key}.{i + 3}.weight"] = (inner, inner, 3, 3)  # i + 4 is the dropout
        batchnorm(f"{key}.{i + 5}", inner, affine)
        shapes[f"{key}.{i + 7}.weight"] = (spec.out_ch, inner, 3, 3)
    z_channels = config.z_shape[0]
    batchnorm("bn1", z_channels, True)
    shapes["linear.weight"] = (config.num_classes, z_channels)
    shapes["linear.bias"] = (config.num_classes,)
    return shapes


def create_model(name: str, **overrides: Any) -> IRevNet:
    """Builds a preset (see `irevnet.list_presets()`), with config fields replaced by `overrides`."""
    return IRevNet(get_config(name, **overrides))
