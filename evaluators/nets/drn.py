"""Dilated Residual Networks (arch 'D') and the DRNSeg segmenter that scores SPADE's Cityscapes outputs.

Written from the architecture description of fyu/drn (BSD-3; `drn.py`, `segment.py`); module and parameter names equal
the official ones, so the released `drn-d-105_ms_cityscapes.pth` loads with strict=True:

- `DRN` arch 'D': layer0 = Conv7x7(3 -> c0) + BN + ReLU; layer1/layer2 = Conv3x3 + BN + ReLU (layer2 stride 2);
  layer3/layer4 residual blocks (stride 2 each); layer5 (dilation 2) and layer6 (dilation 4) residual blocks at stride 1;
  layer7 (dilation 2) and layer8 (dilation 1) plain Conv3x3 + BN + ReLU. Convolutions have no bias; output stride 8.
- `DRNSeg`: `base` = Sequential(layer0..layer8) (`base.0`..`base.8`), `seg` = Conv1x1(out_dim -> classes) with bias,
  `up` = ConvTranspose2d(classes, classes, 16, stride 8, padding 4, groups=classes, bias=False) holding a fixed bilinear
  kernel (a frozen parameter, so `up.weight` is in the state dict). `forward(x)` returns the reference's tuple
  `(log_softmax(up(logits)) at the input resolution, logits at 1/8 resolution)`.

Inputs are RGB in [0, 1] normalised with the Cityscapes statistics `CITYSCAPES_MEAN` / `CITYSCAPES_STD` (fyu/drn's
`datasets/cityscapes/info.json`); `normalize` applies them.

    net = load_drn_d_105_cityscapes()                  # registry "drn_d_105_cityscapes"; MissingWeightsError says where
    log_probs, logits = net(normalize(images01))       # (N, 19, H, W), (N, 19, H/8, W/8)

`width` scales every channel count (not the Bottleneck expansion): `DRNSeg("drn_d_22", 19, width=0.25)` is a
~1M-parameter segmenter that trains on a CPU in minutes at 64-128 px (evaluators.proxy_segmenter.train_segmenter).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from i2i.weights import WeightFormatError, find_weights, load_weights

__all__ = [
    "BasicBlock", "Bottleneck", "DRN", "DRNSeg", "ARCHS", "drn_d_22", "drn_d_38", "drn_d_54", "drn_d_105",
    "CITYSCAPES_MEAN", "CITYSCAPES_STD", "normalize", "bilinear_up_kernel", "load_drnseg_state_dict",
    "load_drn_d_105_cityscapes", "WEIGHTS_ENTRY", "NUM_CLASSES",
]

# fyu/drn datasets/cityscapes/info.json (RGB in [0, 1]).
CITYSCAPES_MEAN = (0.29010095242892997, 0.32808144844279574, 0.28696394422942517)
CITYSCAPES_STD = (0.1829540508368939, 0.18656561047509476, 0.18447508988480435)
DEFAULT_CHANNELS = (16, 32, 64, 128, 256, 512, 512, 512)
NUM_CLASSES = 19
WEIGHTS_ENTRY = "drn_d_105_cityscapes"


def normalize(images01: torch.Tensor, mean: Sequence[float] = CITYSCAPES_MEAN,
              std: Sequence[float] = CITYSCAPES_STD) -> torch.Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (x - mean) / std per channel (the DRN input)."""
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got shape {tuple(images01.shape)}")
    mean_t = torch.as_tensor(mean, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    return (images01 - mean_t) / std_t


# ----------------------------------------------------------------------------------------------------------------------
# Blocks


def _conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """conv3x3(dil d0, stride s) -> BN -> ReLU -> conv3x3(dil d1) -> BN, (+ shortcut), ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: tuple[int, int] = (1, 1), residual: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        if self.residual:
            out = out + (self.downsample(x) if self.downsample is not None else x)
        return self.relu(out)


class Bottleneck(nn.Module):
    """conv1x1 -> BN -> ReLU -> conv3x3(stride s, dilation d1) -> BN -> ReLU -> conv1x1 (x4) -> BN, + shortcut, ReLU.

    As in the reference, only the second dilation entry is used and the block is always residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 dilation: tuple[int, int] = (1, 1), residual: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=dilation[1], dilation=dilation[1], bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


# ----------------------------------------------------------------------------------------------------------------------
# DRN


class DRN(nn.Module):
    """DRN arch 'D' (`layer0`..`layer8`, then `avgpool` + 1x1-conv `fc` when num_classes > 0).

    `layers`: blocks per stage (8 entries; layer6/7/8 are omitted when 0). `channels`: per-stage widths (before the
    block expansion). `forward`: (N, 3, H, W) normalised RGB -> (N, num_classes) (avg-pooled, `pool_size`), or the
    (N, num_classes, H/8, W/8) map with `out_map=True`, or the (N, out_dim, H/8, W/8) features when num_classes == 0;
    with `out_middle=True` also the list of every stage's output.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], num_classes: int = 1000,
                 channels: Sequence[int] = DEFAULT_CHANNELS, out_map: bool = False, out_middle: bool = False,
                 pool_size: int = 28, arch: str = "D") -> None:
        super().__init__()
        if arch != "D":
            raise ValueError(f"only DRN arch 'D' is implemented, got arch {arch!r}")
        if len(layers) != 8 or len(channels) != 8:
            raise ValueError(f"DRN needs 8 stage depths and 8 channel counts, got {list(layers)} and {list(channels)}")
        self.inplanes = channels[0]
        self.out_map = out_map
        self.out_middle = out_middle
        self.out_dim = channels[-1]
        self.arch = arch
        self.layer0 = nn.Sequential(nn.Conv2d(3, channels[0], 7, padding=3, bias=False), nn.BatchNorm2d(channels[0]),
                                    nn.ReLU(inplace=True))
        self.layer1 = self._conv_layers(channels[0], layers[0], stride=1)
        self.layer2 = self._conv_layers(channels[1], layers[1], stride=2)
        self.layer3 = self._residual_layer(block, channels[2], layers[2], stride=2)
        self.layer4 = self._residual_layer(block, channels[3], layers[3], stride=2)
        self.layer5 = self._residual_layer(block, channels[4], layers[4], dilation=2, new_level=False)
        self.layer6 = (self._residual_layer(block, channels[5], layers[5], dilation=4, new_level=False)
                       if layers[5] else None)
        self.layer7 = self._conv_layers(channels[6], layers[6], dilation=2) if layers[6] else None
        self.layer8 = self._conv_layers(channels[7], layers[7], dilation=1) if layers[7] else None
        if self.layer8 is None:  # the output width is that of the last stage present
            self.out_dim = self.inplanes
        if num_classes > 0:
            self.avgpool = nn.AvgPool2d(pool_size)
            self.fc = nn.Conv2d(self.out_dim, num_classes, 1, bias=True)
        self.num_classes = num_classes
        self._init_weights()

    def _init_weights(self) -> None:
        """The reference's init: convs N(0, sqrt(2 / (k*k*out))), BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _residual_layer(self, block, planes: int, blocks: int, stride: int = 1, dilation: int = 1,
                        new_level: bool = True) -> nn.Sequential:
        if dilation != 1 and dilation % 2:
            raise ValueError(f"dilation must be 1 or even, got {dilation}")
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        first_dilation = (1, 1) if dilation == 1 else (dilation // 2 if new_level else dilation, dilation)
        modules = [block(self.inplanes, planes, stride, downsample, dilation=first_dilation)]
        self.inplanes = planes * block.expansion
        modules += [block(self.inplanes, planes, dilation=(dilation, dilation)) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def _conv_layers(self, channels: int, convs: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        modules: list[nn.Module] = []
        for i in range(convs):
            modules += [_conv3x3(self.inplanes, channels, stride if i == 0 else 1, dilation), nn.BatchNorm2d(channels),
                        nn.ReLU(inplace=True)]
            self.inplanes = channels
        return nn.Sequential(*modules)

    def stages(self) -> list[nn.Module]:
        """layer0..layer8 in order, without the absent ones (these are DRNSeg's `base.0`, `base.1`, ...)."""
        names = [f"layer{i}" for i in range(9)]
        return [getattr(self, n) for n in names if getattr(self, n) is not None]

    def forward(self, x: torch.Tensor):
        middle = []
        x = self.layer0(x)
        for stage in self.stages()[1:]:
            x = stage(x)
            middle.append(x)
        if self.num_classes > 0:
            x = self.fc(x) if self.out_map else self.fc(self.avgpool(x)).flatten(1)
        return (x, middle) if self.out_middle else x


def _scaled(width: float) -> tuple[int, ...]:
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return tuple(max(1, int(round(c * width))) for c in DEFAULT_CHANNELS)


def drn_d_22(width: float = 1.0, **kwargs) -> DRN:
    """DRN-D-22: BasicBlocks [1, 1, 2, 2, 2, 2, 1, 1]; `width` scales the channels (16..512 at 1.0)."""
    return DRN(BasicBlock, [1, 1, 2, 2, 2, 2, 1, 1], channels=_scaled(width), arch="D", **kwargs)


def drn_d_38(width: float = 1.0, **kwargs) -> DRN:
    """DRN-D-38: BasicBlocks [1, 1, 3, 4, 6, 3, 1, 1]."""
    return DRN(BasicBlock, [1, 1, 3, 4, 6, 3, 1, 1], channels=_scaled(width), arch="D", **kwargs)


def drn_d_54(width: float = 1.0, **kwargs) -> DRN:
    """DRN-D-54: Bottlenecks [1, 1, 3, 4, 6, 3, 1, 1]."""
    return DRN(Bottleneck, [1, 1, 3, 4, 6, 3, 1, 1], channels=_scaled(width), arch="D", **kwargs)


def drn_d_105(width: float = 1.0, **kwargs) -> DRN:
    """DRN-D-105: Bottlenecks [1, 1, 3, 4, 23, 3, 1, 1] (the Cityscapes scorer's trunk)."""
    return DRN(Bottleneck, [1, 1, 3, 4, 23, 3, 1, 1], channels=_scaled(width), arch="D", **kwargs)


ARCHS = {"drn_d_22": drn_d_22, "drn_d_38": drn_d_38, "drn_d_54": drn_d_54, "drn_d_105": drn_d_105}


# ----------------------------------------------------------------------------------------------------------------------
# DRNSeg


def bilinear_up_kernel(channels: int, kernel_size: int = 16) -> torch.Tensor:
    """(channels, 1, k, k) bilinear interpolation kernel of the reference's `fill_up_weights` (same for every channel)."""
    f = math.ceil(kernel_size / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    ramp = 1 - (torch.arange(kernel_size, dtype=torch.float64) / f - c).abs()
    return torch.outer(ramp, ramp).to(torch.float32).expand(channels, 1, kernel_size, kernel_size).clone()


class DRNSeg(nn.Module):
    """DRN trunk + 1x1 classifier + frozen bilinear x8 transposed-conv upsampling (fyu/drn `segment.DRNSeg`).

    `forward(x)`: x (N, 3, H, W) normalised RGB (see `normalize`) -> `(log_probs, logits)`: log_probs (N, classes, H', W')
    = log_softmax over classes of `up(logits)`, where H' = 8 * ceil(H / 8) (H' = H when H is a multiple of 8);
    logits (N, classes, ceil(H/8), ceil(W/8)). Argmax of log_probs over dim 1 is the prediction.
    `width` scales the trunk's channels (1.0 for the official networks).
    """

    def __init__(self, arch: str = "drn_d_105", classes: int = NUM_CLASSES, width: float = 1.0) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown DRN arch {arch!r}; expected one of {sorted(ARCHS)}")
        trunk = ARCHS[arch](width=width, num_classes=0)
        self.arch, self.classes, self.width = arch, classes, width
        self.base = nn.Sequential(*trunk.stages())
        self.seg = nn.Conv2d(trunk.out_dim, classes, 1, bias=True)
        nn.init.normal_(self.seg.weight, 0.0, math.sqrt(2.0 / classes))
        nn.init.zeros_(self.seg.bias)
        self.up = nn.ConvTranspose2d(classes, classes, 16, stride=8, padding=4, groups=classes, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(bilinear_up_kernel(classes))
        self.up.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.seg(self.base(x))
        return torch.log_softmax(self.up(logits), dim=1), logits

    def trainable_parameters(self) -> list[nn.Parameter]:
        """base + seg parameters (the reference's `optim_parameters`; `up` stays fixed)."""
        return [*self.base.parameters(), *self.seg.parameters()]


# ----------------------------------------------------------------------------------------------------------------------
# Official weights


def _same_shape(given: torch.Tensor, expected: torch.Tensor) -> bool:
    # torch's load_state_dict also accepts a one-element 1-D tensor for a 0-D entry (old-style num_batches_tracked).
    return tuple(given.shape) == tuple(expected.shape) or (expected.ndim == 0 and tuple(given.shape) == (1,))


def load_drnseg_state_dict(model: DRNSeg, state: Mapping[str, torch.Tensor], source: str | Path = "state dict") -> DRNSeg:
    """Loads an official DRNSeg state dict strictly into `model`; BN `num_batches_tracked` entries that old files lack
    are filled with 0 (eval-mode results do not depend on them). Anything else missing, unexpected or of another shape
    raises WeightFormatError naming `source`."""
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    own = model.state_dict()
    if not any(k.startswith("base.") for k in state) and any(k.startswith(("layer0.", "fc.")) for k in state):
        raise WeightFormatError(f"'{source}' holds a DRN classifier (keys layer0.*, fc.*: e.g. the ImageNet "
                                f"drn_d_105-12b40979.pth), not a DRNSeg segmentation state dict (base.*, seg.*, up.*)")
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise WeightFormatError(
            f"'{source}' is not a {model.arch} DRNSeg state dict ({model.classes} classes): {len(missing)} missing "
            f"entries (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if k in state and not _same_shape(state[k], v)]
    if wrong:
        raise WeightFormatError(f"'{source}' does not fit {model.arch} DRNSeg ({model.classes} classes): "
                                f"{len(wrong)} shape mismatches, e.g. {wrong[:3]}")
    full = dict(state)
    for k, v in own.items():
        if k not in full:  # only num_batches_tracked can be missing here
            full[k] = torch.zeros_like(v)
    model.load_state_dict(full, strict=True)
    return model


def load_drn_d_105_cityscapes(path: str | Path | None = None, *, trust: bool = False,
                              device: str | torch.device | None = None) -> DRNSeg:
    """The official DRN-D-105 Cityscapes segmenter (`drn-d-105_ms_cityscapes.pth`, 19 trainId classes), eval mode,
    frozen. `path` overrides the registry search (`i2i.weights`); MissingWeightsError tells where to get the file."""
    file = find_weights(WEIGHTS_ENTRY, path)
    state = load_weights(WEIGHTS_ENTRY, file, trust=trust)
    model = load_drnseg_state_dict(DRNSeg("drn_d_105", NUM_CLASSES), state, source=file)
    model = model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model
