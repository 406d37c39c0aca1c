"""The reference i-RevNet code's semantics and file formats, re-implemented independently for tests.

`reference_forward` computes the reference forward pass with plain torch ops from a state dict;
psi is written as strided slicing (output channel (bh * bs + bw) * C + c holds x[:, c, bh::bs,
bw::bs]), not with the reshape/permute that irevnet uses. `write_reference_t7` pickles modules
under the reference's class names (models.iRevNet.iRevNet, ...) as CIFAR_main.py saved them.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import torch
from torch.nn import functional as F

from irevnet.model.config import IRevNetConfig


def psi(x: torch.Tensor, bs: int) -> torch.Tensor:
    return torch.cat([x[:, :, bh::bs, bw::bs] for bh in range(bs) for bw in range(bs)], dim=1)


def injective_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    # the reference pads the channel axis by moving it to dim 2 for ZeroPad2d
    return F.pad(x.permute(0, 2, 1, 3), (0, 0, 0, pad)).permute(0, 2, 1, 3)


def _bn(x, sd, key):
    return F.batch_norm(
        x, sd[f"{key}.running_mean"], sd[f"{key}.running_var"], sd.get(f"{key}.weight"), sd.get(f"{key}.bias"),
        training=False, eps=1e-5,
    )


def bottleneck(x, sd, prefix, first, stride):
    i = 0
    if not first:
        x = F.relu(_bn(x, sd, f"{prefix}.0"))
        i = 2
    x = F.conv2d(x, sd[f"{prefix}.{i}.weight"], stride=stride, padding=1)
    x = F.relu(_bn(x, sd, f"{prefix}.{i + 1}"))
    x = F.conv2d(x, sd[f"{prefix}.{i + 3}.weight"], padding=1)
    x = F.relu(_bn(x, sd, f"{prefix}.{i + 5}"))  # i + 4 is the dropout
    return F.conv2d(x, sd[f"{prefix}.{i + 7}.weight"], padding=1)


def reference_forward(sd: dict, nBlocks, nStrides, nChannels, init_ds: int, in_ch: int, x: torch.Tensor):
    """logits, z of the reference iRevNet.forward, from a state dict (keys without `module.`)."""
    n = in_ch // 2
    if init_ds:
        x = psi(x, init_ds)
    x1, x2 = x[:, :n], x[:, n:]
    b = 0
    for depth, stride0, out_ch in zip(nBlocks, nStrides, nChannels):
        for j in range(depth):
            stride = stride0 if j == 0 else 1
            pad = 2 * out_ch - in_ch
            if pad != 0 and stride == 1:
                merged = injective_pad(torch.cat((x1, x2), 1), pad)
                x1, x2 = merged[:, : merged.shape[1] // 2], merged[:, merged.shape[1] // 2 :]
            fx2 = bottleneck(x2, sd, f"stack.{b}.bottleneck_block", b == 0, stride)
            if stride == 2:
                x1, x2 = psi(x1, 2), psi(x2, 2)
            x1, x2 = x2, fx2 + x1
            in_ch = 2 * out_ch
            b += 1
    z = torch.cat((x1, x2), 1)
    out = F.relu(_bn(z, sd, "bn1"))
    out = F.avg_pool2d(out, z.shape[-1]).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"]), z


def reference_state_dict(model) -> dict:
    """The model's weights as the reference ImageNet script saved them: DataParallel keys, no
    num_batches_tracked (2018 PyTorch)."""
    return {f"module.{k}": v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


# Module classes under the reference's names and attributes, for pickling like CIFAR_main.py.
_MODEL_UTILS = '''
import torch.nn as nn

class psi(nn.Module):
    def __init__(self, block_size):
        super().__init__()
        self.block_size = block_size
        self.block_size_sq = block_size * block_size

class injective_pad(nn.Module):
    def __init__(self, pad_size):
        super().__init__()
        self.pad_size = pad_size
        self.pad = nn.ZeroPad2d((0, 0, 0, pad_size))
'''

_IREVNET = '''
import torch.nn as nn
from .model_utils import psi, injective_pad

class irevnet_block(nn.Module):
    def __init__(self, in_ch, out_ch, stride, first, dropout_rate, affineBN, mult):
        super().__init__()
        self.first = first
        self.pad = 2 * out_ch - in_ch
        self.stride = stride
        self.inj_pad = injective_pad(self.pad)
        self.psi = psi(stride)
        if self.pad != 0 and stride == 1:
            in_ch = out_ch * 2
        inner = out_ch // mult
        layers = [] if first else [nn.BatchNorm2d(in_ch // 2, affine=affineBN), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(in_ch // 2, inner, 3, stride=stride, padding=1, bias=False),
                   nn.BatchNorm2d(inner, affine=affineBN), nn.ReLU(inplace=True),
                   nn.Conv2d(inner, inner, 3, padding=1, bias=False), nn.Dropout(p=dropout_rate),
                   nn.BatchNorm2d(inner, affine=affineBN), nn.ReLU(inplace=True),
                   nn.Conv2d(inner, out_ch, 3, padding=1, bias=False)]
        self.bottleneck_block = nn.Sequential(*layers)

class iRevNet(nn.Module):
    def __init__(self, nBlocks, nStrides, nClasses, nChannels, init_ds, dropout_rate, affineBN, in_shape, mult):
        super().__init__()
        self.ds = in_shape[2] // 2 ** (nStrides.count(2) + init_ds // 2)
        self.init_ds = init_ds
        self.in_ch = in_shape[0] * 2 ** init_ds
        self.nBlocks = nBlocks
        self.first = True
        self.init_psi = psi(init_ds)
        self.stack = nn.ModuleList()
        in_ch = self.in_ch
        for depth, stride, ch in zip(nBlocks, nStrides, nChannels):
            for j in range(depth):
                self.stack.append(irevnet_block(in_ch, ch, stride if j == 0 else 1, self.first,
                                                dropout_rate, affineBN, mult))
                in_ch = 2 * ch
                self.first = False
        self.bn1 = nn.BatchNorm2d(nChannels[-1] * 2, momentum=0.9)
        self.linear = nn.Linear(nChannels[-1] * 2, nClasses)
'''


def write_reference_t7(path: Path, config: IRevNetConfig, state_dict: dict, legacy: bool = False) -> None:
    """Saves {'model': DataParallel(iRevNet), 'acc', 'epoch'} the way CIFAR_main.py does.

    The classes live in a throwaway `models` package that is removed from sys.modules again, so
    the loader under test cannot import them.
    """
    pkg = path.parent / "reference_code" / "models"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model_utils.py").write_text(textwrap.dedent(_MODEL_UTILS))
    (pkg / "iRevNet.py").write_text(textwrap.dedent(_IREVNET))
    sys.path.insert(0, str(pkg.parent))
    try:
        from models.iRevNet import iRevNet

        net = iRevNet(
            list(config.blocks), list(config.strides), config.num_classes, list(config.channels),
            config.init_ds, config.dropout, config.affine_bn, list(config.in_shape), config.mult,
        )
        sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
        net.load_state_dict(sd)
        wrapped = torch.nn.DataParallel(net)
        torch.save({"model": wrapped, "acc": torch.tensor(91.25), "epoch": 7}, path,
                   _use_new_zipfile_serialization=not legacy)
    finally:
        sys.path.remove(str(pkg.parent))
        for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
            del sys.modules[name]
