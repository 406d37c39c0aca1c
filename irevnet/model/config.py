"""Architecture description of an i-RevNet and the table of named presets.

Pure Python (no torch): the runtime reads configs from bundle manifests on machines without a
training framework.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..errors import ConfigError

# Bounds on what a config may ask for, so that a config read from a file cannot make irevnet
# allocate without bound (an (N, C, H, W) example batch is made from in_shape at export).
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_CHANNELS = 64


class BlockSpec(NamedTuple):
    """Layout of one reversible block, as the reference `irevnet_block` derives it."""

    in_ch: int  # channels of the merged input pair (x1, x2) before injective padding
    out_ch: int  # channels of each half of the output pair
    stride: int  # 2: psi (SpaceToDepth) on both halves and a strided first conv in F
    first: bool  # the very first block skips F's leading BN-ReLU
    pad: int  # zero channels appended by the injective padding (0 for bijective blocks)

    @property
    def f_in(self) -> int:
        """Channels F sees: x2 after the padding (out_ch) or half the input pair."""
        return self.out_ch if self.pad else self.in_ch // 2


@dataclass(frozen=True)
class IRevNetConfig:
    """An i-RevNet architecture (Jacobsen et al., ICLR 2018), field for field the reference's.

    Frozen because it is written into checkpoints and bundle manifests and must round-trip.
    """

    blocks: tuple[int, ...]  # reversible blocks per stage
    strides: tuple[int, ...]  # stride of each stage's first block (1 or 2)
    channels: tuple[int, ...]  # channels of each half of a stage's output pair
    init_ds: int = 0  # initial invertible downsampling block size: 0 (none) or 2
    mult: int = 4  # bottleneck divisor: F's inner width is channels // mult
    num_classes: int = 10  # width of the linear classifier
    in_shape: tuple[int, int, int] = (3, 32, 32)  # (C, H, W) of the input image
    dropout: float = 0.0  # dropout between F's second and third convolution
    affine_bn: bool = True  # BatchNorm layers inside F learn a scale and shift

    def __post_init__(self) -> None:
        for name in ("blocks", "strides", "channels", "in_shape"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        n = len(self.blocks)
        if n == 0 or len(self.strides) != n or len(self.channels) != n:
            raise ConfigError(
                f"blocks, strides and channels need one entry per stage and the same length, "
                f"got {len(self.blocks)}, {len(self.strides)}, {len(self.channels)}"
            )
        if any(b < 1 for b in self.blocks):
            raise ConfigError(f"every stage needs at least one block, got blocks={self.blocks}")
        if any(s not in (1, 2) for s in self.strides):
            raise ConfigError(f"strides must be 1 or 2, got {self.strides}")
        if self.init_ds not in (0, 2):
            raise ConfigError(f"init_ds must be 0 or 2 (as in the reference code), got {self.init_ds}")
        if len(self.in_shape) != 3 or min(self.in_shape) < 1:
            raise ConfigError(f"in_shape must be (C, H, W) with positive sizes, got {self.in_shape}")
        if max(self.in_shape[1:]) > MAX_IMAGE_SIDE or self.in_shape[0] > MAX_IMAGE_CHANNELS:
            raise ConfigError(
                f"in_shape {self.in_shape} exceeds {MAX_IMAGE_CHANNELS} channels or {MAX_IMAGE_SIDE} pixels a side; "
                f"an i-RevNet keeps every activation at full resolution, so split larger images into tiles"
            )
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be positive, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        _, h, w = self.in_shape
        ds = self.downsampling
        if h % ds or w % ds:
            raise ConfigError(
                f"input {h}x{w} is not divisible by the total downsampling {ds} "
                f"(init_ds {self.init_ds} and {self.strides.count(2)} stride-2 stages); "
                f"use an image size that is a multiple of {ds}"
            )
        if self.mult < 1:
            raise ConfigError(f"mult must be at least 1, got {self.mult}")
        for i, spec in enumerate(self.block_specs()):
            where = f"block {i} (stage {self.stage_of(i)})"
            if spec.out_ch // self.mult < 1:  # the reference's int(out_ch // mult): no divisibility needed
                raise ConfigError(
                    f"{where}: {spec.out_ch} channels leave F no inner channels with the bottleneck mult "
                    f"{self.mult} ({spec.out_ch} // {self.mult} = 0); use more channels or a smaller mult"
                )
            if spec.stride == 2 and spec.out_ch != 2 * spec.in_ch:
                raise ConfigError(
                    f"{where}: a stride-2 block maps {spec.in_ch} input channels to "
                    f"{2 * spec.in_ch} per half (psi quadruples x1), but the config asks for {spec.out_ch}; "
                    f"set that stage's channels to {2 * spec.in_ch}"
                )
            if spec.stride == 1 and spec.pad < 0:
                raise ConfigError(
                    f"{where}: {spec.out_ch} channels per half cannot hold a {spec.in_ch}-channel input "
                    f"(neither bijective, {spec.in_ch // 2}, nor injective, more); "
                    f"use at least {(spec.in_ch + 1) // 2} channels"
                )
            if spec.stride == 1 and spec.pad == 0 and spec.in_ch % 2:
                raise ConfigError(f"{where}: a bijective block needs an even channel count, got {spec.in_ch}")
            if spec.stride == 2 and spec.in_ch % 2:
                raise ConfigError(
                    f"{where}: a stride-2 block needs an even channel count, got {spec.in_ch}; "
                    f"make the first stage injective (stride 1, more channels) or use init_ds 2"
                )

    # -- derived quantities ------------------------------------------------------------------

    @property
    def in_channels(self) -> int:
        """Channels entering the first block: the image's, times 4 after the initial psi."""
        return self.in_shape[0] * (self.init_ds**2 if self.init_ds else 1)

    @property
    def downsampling(self) -> int:
        """Total spatial reduction from image to z."""
        return (self.init_ds or 1) * 2 ** self.strides.count(2)

    @property
    def num_blocks(self) -> int:
        return sum(self.blocks)

    @property
    def depth(self) -> int:
        """Layer count in the paper's naming: 3 convolutions per block plus the classifier."""
        return 3 * self.num_blocks + 1

    @property
    def z_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the final representation z = merge(x1, x2) of the last block."""
        _, h, w = self.in_shape
        ds = self.downsampling
        return (2 * self.channels[-1], h // ds, w // ds)

    @property
    def injective(self) -> bool:
        """True for i-RevNet (a): some block zero-pads channels, so z is larger than the image."""
        return any(spec.pad for spec in self.block_specs())

    def stage_of(self, block: int) -> int:
        for stage, end in enumerate(_cumsum(self.blocks)):
            if block < end:
                return stage
        raise IndexError(block)

    def block_specs(self) -> list[BlockSpec]:
        """Per-block layout, derived exactly as the reference `iRevNet.irevnet_stack` does."""
        specs = []
        in_ch = self.in_channels
        for depth, stride, out_ch in zip(self.blocks, self.strides, self.channels):
            for j in range(depth):
                s = stride if j == 0 else 1
                pad = 2 * out_ch - in_ch if s == 1 else 0
                specs.append(BlockSpec(in_ch, out_ch, s, not specs, pad))
                in_ch = 2 * out_ch
        return specs

    def structural_zeros(self) -> list[tuple[bool, ...]]:
        """For each block, which channels of x2 in its output pair (x2, y1) are exactly zero.

        Injective padding appends zero channels that the split hands on as (part of) x2; the
        coupling passes x2 through unchanged (psi only replicates the pattern 4 times), while y1 =
        F(x2) + psi(x1) is never structurally zero. The inverse sets these channels to exactly zero
        (range projection), see `IRevNetBlock.inverse`.
        """
        zeros: list[tuple[bool, ...]] = []
        carried = (False,) * self.in_channels  # zero pattern of the merged input pair
        for spec in self.block_specs():
            if spec.pad:  # merge, append `pad` zero channels, split into two halves of out_ch
                x2 = (carried + (True,) * spec.pad)[spec.out_ch :]
            else:
                x2 = carried[spec.in_ch // 2 :]
            if spec.stride == 2:
                x2 = x2 * 4  # SpaceToDepth: output channel (bh*2 + bw)*C + c copies channel c
            zeros.append(x2)
            carried = x2 + (False,) * spec.out_ch
        return zeros

    # -- serialization -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IRevNetConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config is a mapping of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - names))
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known: {sorted(names)}")
        missing = sorted(n for n in ("blocks", "strides", "channels") if n not in data)
        if missing:
            raise ConfigError(f"config lacks required field(s) {missing}")
        for name, value in data.items():
            _check_field_type(name, value)
        return cls(**data)

    def replace(self, **overrides: Any) -> IRevNetConfig:
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known: {sorted(names)}")
        return dataclasses.replace(self, **overrides)


# What each field may be in a config read from a file (JSON lists for tuples).
_SEQUENCE_FIELDS = {"blocks": 64, "strides": 64, "channels": 64, "in_shape": 3}  # longest accepted
_INT_FIELDS = ("init_ds", "mult", "num_classes")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_field_type(name: str, value: Any) -> None:
    """Refuses a config value of the wrong type (a file's config must not reach int() or <)."""
    if name in _SEQUENCE_FIELDS:
        ok = isinstance(value, (list, tuple)) and len(value) <= _SEQUENCE_FIELDS[name] and all(map(_is_int, value))
        kind = f"a list of at most {_SEQUENCE_FIELDS[name]} integers"
    elif name in _INT_FIELDS:
        ok, kind = _is_int(value), "an integer"
    elif name == "dropout":
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    else:  # affine_bn
        ok, kind = isinstance(value, bool), "true or false"
    if not ok:
        raise ConfigError(f"config field {name!r} must be {kind}, got {type(value).__name__}")


def _cumsum(values: tuple[int, ...]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


class Preset(NamedTuple):
    config: IRevNetConfig
    description: str


# The paper's models and small ones for tests and the bundled digits demo.
PRESETS: dict[str, Preset] = {
    "irevnet-cifar": Preset(
        IRevNetConfig(
            blocks=(18, 18, 18), strides=(1, 2, 2), channels=(16, 64, 256), init_ds=0,
            num_classes=10, in_shape=(3, 32, 32), dropout=0.1,
        ),
        "paper's CIFAR-10 model (94.5% reported)",
    ),
    "irevnet-301": Preset(
        IRevNetConfig(
            blocks=(6, 16, 72, 6), strides=(2, 2, 2, 2), channels=(24, 96, 384, 1536), init_ds=2,
            num_classes=1000, in_shape=(3, 224, 224), dropout=0.0,
        ),
        "paper's ImageNet i-RevNet-301 (74.0%)",
    ),
    "irevnet-tiny": Preset(
        IRevNetConfig(
            blocks=(2, 2, 2), strides=(1, 2, 2), channels=(8, 32, 128), init_ds=0,
            num_classes=10, in_shape=(1, 16, 16), dropout=0.0,
        ),
        "digits 16x16: demo and tests",
    ),
    "irevnet-tiny-bijective": Preset(
        IRevNetConfig(
            blocks=(2, 2, 2), strides=(2, 2, 2), channels=(8, 32, 128), init_ds=2,
            num_classes=10, in_shape=(1, 32, 32), dropout=0.0,
        ),
        "digits 32x32: tests",
    ),
}


def list_presets() -> list[str]:
    """Names accepted by `irevnet.create_model`."""
    return sorted(PRESETS)


def get_config(name: str, **overrides: Any) -> IRevNetConfig:
    """The preset's config with fields replaced by `overrides`."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(list_presets())}")
    return PRESETS[name].config.replace(**overrides) if overrides else PRESETS[name].config
