"""The reversible building blocks of an i-RevNet: psi, injective padding and the coupling block.

Invariant of every module here: `inverse(forward(x)) == x` up to floating-point rounding (in eval
mode for anything containing BatchNorm). tests/model/test_layers.py checks it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

Pair = tuple[torch.Tensor, torch.Tensor]


# psi, the invertible downsampling of the reference code, has exactly the channel order of ONNX
# SpaceToDepth: output channel (bh * bs + bw) * C + c holds input channel c at offset (bh, bw).
# Its inverse is ONNX DepthToSpace in DCR mode. torch's pixel_unshuffle orders channels
# c * bs * bs + bh * bs + bw instead, which would scramble reference checkpoints. Both are custom
# ops so that the ONNX exporter emits one SpaceToDepth / DepthToSpace node for each
# (irevnet/export/onnx_export.py registers the translation).
@torch.library.custom_op("irevnet::space_to_depth", mutates_args=())
def space_to_depth(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """ONNX SpaceToDepth. x: (N, C, H, W) -> (N, C * bs * bs, H / bs, W / bs)."""
    n, c, h, w = x.shape
    bs = block_size
    x = x.reshape(n, c, h // bs, bs, w // bs, bs)  # (N, C, H/bs, bh, W/bs, bw)
    x = x.permute(0, 3, 5, 1, 2, 4)  # (N, bh, bw, C, H/bs, W/bs)
    # one copy, always: a custom op's output must not alias its input (reshape alone can return
    # a view, e.g. for 2x2 -> 1x1)
    x = x.clone(memory_format=torch.contiguous_format)
    return x.view(n, bs * bs * c, h // bs, w // bs)  # channel = (bh * bs + bw) * C + c


@torch.library.custom_op("irevnet::depth_to_space", mutates_args=())
def depth_to_space(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """ONNX DepthToSpace, mode DCR. x: (N, C * bs * bs, H, W) -> (N, C, H * bs, W * bs)."""
    n, cbb, h, w = x.shape
    bs = block_size
    c = cbb // (bs * bs)
    x = x.reshape(n, bs, bs, c, h, w)  # (N, bh, bw, C, H, W)
    x = x.permute(0, 3, 4, 1, 5, 2)  # (N, C, H, bh, W, bw)
    x = x.clone(memory_format=torch.contiguous_format)  # never alias the input (see space_to_depth)
    return x.view(n, c, h * bs, w * bs)


@space_to_depth.register_fake
def _space_to_depth_fake(x: torch.Tensor, block_size: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.new_empty(n, c * block_size * block_size, h // block_size, w // block_size)


@depth_to_space.register_fake
def _depth_to_space_fake(x: torch.Tensor, block_size: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.new_empty(n, c // (block_size * block_size), h * block_size, w * block_size)


def _space_to_depth_backward(ctx, grad: torch.Tensor):
    return depth_to_space(grad, ctx.block_size), None


def _depth_to_space_backward(ctx, grad: torch.Tensor):
    return space_to_depth(grad, ctx.block_size), None


def _save_block_size(ctx, inputs, output) -> None:
    ctx.block_size = inputs[1]


space_to_depth.register_autograd(_space_to_depth_backward, setup_context=_save_block_size)
depth_to_space.register_autograd(_depth_to_space_backward, setup_context=_save_block_size)


class Psi(nn.Module):
    """Invertible downsampling (reference `psi`): SpaceToDepth forward, DepthToSpace (DCR) inverse."""

    def __init__(self, block_size: int):
        super().__init__()
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return space_to_depth(x, self.block_size)

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return depth_to_space(x, self.block_size)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}"


def split(x: torch.Tensor, n: int | None = None) -> Pair:
    """(N, C, H, W) -> first n channels (default C // 2) and the rest."""
    n = x.shape[1] // 2 if n is None else n
    return x[:, :n], x[:, n:]


def merge(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Channel concatenation; an empty half (a 1-channel image's x1) is skipped, not concatenated."""
    if x1.shape[1] == 0:
        return x2
    if x2.shape[1] == 0:
        return x1
    return torch.cat((x1, x2), dim=1)


class InjectivePad(nn.Module):
    """Appends `pad` zero channels (reference `injective_pad`); the inverse drops them."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.pad))  # (N, C + pad, H, W), ONNX Pad

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : x.shape[1] - self.pad]  # ONNX Slice

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def bottleneck(in_ch: int, out_ch: int, stride: int, first: bool, dropout: float, affine_bn: bool, mult: int) -> nn.Sequential:
    """F of a block: [BN-ReLU-]Conv3x3, BN-ReLU-Conv3x3, Dropout, BN-ReLU-Conv3x3.

    Layer indices match the reference's `bottleneck_block`, so state-dict keys are identical.
    """
    inner = out_ch // mult
    layers: list[nn.Module] = []
    if not first:
        layers += [nn.BatchNorm2d(in_ch, affine=affine_bn), nn.ReLU(inplace=True)]
    layers += [
        nn.Conv2d(in_ch, inner, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(inner, affine=affine_bn),
        nn.ReLU(inplace=True),
        nn.Conv2d(inner, inner, kernel_size=3, padding=1, bias=False),
        nn.Dropout(p=dropout),
        nn.BatchNorm2d(inner, affine=affine_bn),
        nn.ReLU(inplace=True),
        nn.Conv2d(inner, out_ch, kernel_size=3, padding=1, bias=False),
    ]
    return nn.Sequential(*layers)


class IRevNetBlock(nn.Module):
    """Additive coupling: (x1, x2) -> (x2, F(x2) + psi(x1)), with psi on x2 too when stride is 2.

    Invariant (eval mode): `inverse(forward((x1, x2))) == (x1, x2)`. An injective block first
    merges the pair, appends `pad` zero channels and splits it into halves of `out_ch`.

    Args:
        in_ch: channels of the merged input pair.
        out_ch: channels of each half of the output pair.
        stride: 1, or 2 for psi on both halves and a strided first convolution in F.
        first: the network's first block, whose F has no leading BN-ReLU.
        zero_x2: for each channel of the output's x2, whether it is structurally zero (see
            `IRevNetConfig.structural_zeros`); the inverse projects onto that range.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        first: bool = False,
        dropout: float = 0.0,
        affine_bn: bool = True,
        mult: int = 4,
        zero_x2: tuple[bool, ...] | None = None,
    ):
        super().__init__()
        self.stride = stride
        self.pad = 2 * out_ch - in_ch if stride == 1 else 0
        self.in_ch = in_ch
        self.out_ch = out_ch
        # Submodule names as in the reference code, so that its state dicts load unchanged.
        self.inj_pad = InjectivePad(self.pad)
        self.psi = Psi(stride)
        f_in = out_ch if self.pad else in_ch // 2
        self.bottleneck_block = bottleneck(f_in, out_ch, stride, first, dropout, affine_bn, mult)
        keep = None
        if zero_x2 is not None and any(zero_x2):
            keep = torch.tensor([0.0 if z else 1.0 for z in zero_x2]).reshape(1, -1, 1, 1)
        # (1, C, 1, 1) 0/1 mask of the output x2 channels that are not structurally zero.
        self.register_buffer("x2_keep", keep, persistent=False)

    @classmethod
    def from_spec(cls, spec, config, zero_x2: tuple[bool, ...] | None = None) -> IRevNetBlock:
        """The block a `config.BlockSpec` describes, with the config's dropout, BatchNorm and mult."""
        return cls(spec.in_ch, spec.out_ch, spec.stride, spec.first, config.dropout, config.affine_bn, config.mult,
                   zero_x2=zero_x2)

    def forward(self, x: Pair, branch: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Pair:
        """(x1, x2) -> (x2, F(x2) + psi(x1)).

        Args:
            x: the input pair.
            branch: evaluates F in place of `self.bottleneck_block` (the reversible backward
                passes one that records F's ReLU masks, see `irevnet.model.reversible`).
        """
        x1, x2 = x
        if self.pad:
            x1, x2 = split(self.inj_pad(merge(x1, x2)), self.out_ch)
        fx2 = (branch or self.bottleneck_block)(x2)
        if self.stride == 2:
            x1 = self.psi(x1)
            x2 = self.psi(x2)
        return x2, fx2 + x1

    def inverse(self, y: Pair, project: bool = True) -> Pair:
        """Recovers the input pair from (x2, y1): x1 = psi^-1(y1 - F(x2)).

        Args:
            y: the output pair of `forward`.
            project: set the structurally zero channels of x2 to exactly zero first. F's
                BatchNorm layers learn a running variance of 0 on those channels and would
                multiply rounding noise there by 1/sqrt(eps) ~ 316 per layer.
        Returns:
            The input pair; for an injective block split at in_ch // 2 as in the reference.
        """
        x2, y1 = y
        if project and self.x2_keep is not None:
            x2 = x2 * self.x2_keep.to(x2.dtype)
        if self.stride == 2:
            x2 = self.psi.inverse(x2)
        x1 = y1 - self.bottleneck_block(x2)
        if self.stride == 2:
            x1 = self.psi.inverse(x1)
        if self.pad:
            return split(self.inj_pad.inverse(merge(x1, x2)), self.in_ch // 2)
        return x1, x2
