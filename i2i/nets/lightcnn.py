"""LightCNN-29v2 face recognition (Wu et al., "A Light CNN for Deep Face Representation with Noisy Labels", TIFS 2018).

Module and parameter names follow AlfredXiangWu/LightCNN (`light_cnn.py`, `network_29layers_v2`), so the released
`LightCNN_29Layers_V2_checkpoint.pth.tar` loads with `strict=True` once the DataParallel `module.` prefix is removed.
The network is used twice in the NIR->VIS task: as the frozen encoder G1 of the translator (its 256-d `fc` output is
the code e that ReMix interpolates) and as the feature extractor of the recognition evaluator.

Input: (N, 1, 128, 128) grey faces in [0, 1] (the official `ToTensor()` input, no mean/std); `faces_to_lightcnn_input`
maps generator outputs (N, 3, H, W) in [-1, 1] to it. Output of `forward`: (logits (N, num_classes), feature (N, 256)).
The feature is taken before the dropout, so it is the same in train() and eval() mode; only the logits are random in
train() mode.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2i.weights import find_weights, lightcnn_checkpoint, load_weights, safe_torch_load, strip_module_prefix

INPUT_SIZE = 128
FEATURE_DIM = 256
OFFICIAL_NUM_CLASSES = 80013  # the released checkpoint's classifier (MS-Celeb-1M cleaned identities)
DROPOUT = 0.5  # F.dropout's default, which the official forward uses between fc and fc2
# ITU-R BT.601 luma, the weights of OpenCV's IMREAD_GRAYSCALE that the official extract_features.py reads faces with.
GREY_WEIGHTS = (0.299, 0.587, 0.114)
ENCODER_EXCLUDED_PREFIX = "fc2."
_SHOWN_KEYS = 5


def _max_plus_avg_pool(x: Tensor) -> Tensor:
    """The v2 down-sampling: 2x2 max pool + 2x2 average pool, (N, C, H, W) -> (N, C, H/2, W/2)."""
    return F.max_pool2d(x, 2) + F.avg_pool2d(x, 2)


# ----------------------------------------------------------------------------------------------- building blocks
class mfm(nn.Module):  # noqa: N801 - the official class names are kept so the paper's boxes are recognisable
    """Max-Feature-Map: a conv (or linear) layer with 2*out_channels outputs, then the element-wise max of the first
    and the second half (split along channels, not interleaved). (N, in, H, W) -> (N, out, H', W'), or (N, in) ->
    (N, out) when linear."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 linear: bool = False) -> None:
        super().__init__()
        self.out_channels = out_channels
        if linear:
            self.filter = nn.Linear(in_channels, 2 * out_channels)
        else:
            self.filter = nn.Conv2d(in_channels, 2 * out_channels, kernel_size=kernel_size, stride=stride,
                                    padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        first, second = torch.split(self.filter(x), self.out_channels, 1)
        return torch.max(first, second)


class group(nn.Module):  # noqa: N801
    """1x1 mfm (in -> in) then a k x k mfm (in -> out): (N, in, H, W) -> (N, out, H', W')."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv_a = mfm(in_channels, in_channels, 1, 1, 0)
        self.conv = mfm(in_channels, out_channels, kernel_size, stride, padding)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.conv_a(x))


class resblock(nn.Module):  # noqa: N801
    """x + mfm3x3(mfm3x3(x)) without normalisation: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels != out_channels:
            raise ValueError(f"resblock: the identity shortcut needs in_channels == out_channels, got "
                             f"{in_channels} and {out_channels}")
        self.conv1 = mfm(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.conv2 = mfm(in_channels, out_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x)) + x


def _blocks(num_blocks: int, channels: int) -> nn.Sequential:
    return nn.Sequential(*(resblock(channels, channels) for _ in range(num_blocks)))


# ----------------------------------------------------------------------------------------------- network
class LightCNN29v2(nn.Module):
    """LightCNN-29v2: (N, 1, 128, 128) grey faces in [0, 1] -> (logits (N, num_classes), feature (N, 256)).

    conv1 mfm 5x5 (1->48) pool | block1 1 resblock(48) | group1 48->96 pool | block2 2x resblock(96) |
    group2 96->192 pool | block3 3x resblock(192) | group3 192->128 | block4 4x resblock(128) | group4 128->128 pool |
    fc Linear(8192, 256) = the feature | dropout | fc2 Linear(256, num_classes, bias=False) = the logits.
    Each pool is max_pool2d(2) + avg_pool2d(2). The feature is unbounded (no normalisation; compare with cosine).

    `encoder_only=True` builds the network without fc2 (the frozen encoder and the evaluator need the feature only);
    its forward returns (None, feature) so `_, feature = net(x)` works for both builds, and `embed(x)` returns the
    feature alone. `width` scales every conv's channels (not official: 1.0 is the released network; the CPU demo
    trains a 0.25-wide one from scratch, 16x fewer operations, with the same depth, pools and 256-d feature).
    """

    def __init__(self, num_classes: int = OFFICIAL_NUM_CLASSES, encoder_only: bool = False,
                 width: float = 1.0) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"LightCNN29v2: num_classes must be a positive int, got {num_classes!r}")
        if not 0 < width <= 4:
            raise ValueError(f"LightCNN29v2: width must be in (0, 4], got {width!r}")
        self.num_classes = num_classes
        self.encoder_only = encoder_only
        self.width = width
        c1, c2, c3, c4 = (max(2, round(c * width)) for c in (48, 96, 192, 128))
        self.conv1 = mfm(1, c1, 5, 1, 2)
        self.block1 = _blocks(1, c1)
        self.group1 = group(c1, c2, 3, 1, 1)
        self.block2 = _blocks(2, c2)
        self.group2 = group(c2, c3, 3, 1, 1)
        self.block3 = _blocks(3, c3)
        self.group3 = group(c3, c4, 3, 1, 1)
        self.block4 = _blocks(4, c4)
        self.group4 = group(c4, c4, 3, 1, 1)
        self.fc = nn.Linear(8 * 8 * c4, FEATURE_DIM)
        if not encoder_only:
            self.fc2 = nn.Linear(FEATURE_DIM, num_classes, bias=False)

    def embed(self, x: Tensor) -> Tensor:
        """The 256-d `fc` feature (N, 256) of grey faces x (N, 1, 128, 128) in [0, 1]."""
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (1, INPUT_SIZE, INPUT_SIZE):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"LightCNN29v2 input: expected grey faces of shape (N, 1, {INPUT_SIZE}, {INPUT_SIZE}) "
                             f"in [0, 1], got {shape}; faces_to_lightcnn_input converts generator outputs")
        x = _max_plus_avg_pool(self.conv1(x))
        x = _max_plus_avg_pool(self.group1(self.block1(x)))
        x = _max_plus_avg_pool(self.group2(self.block2(x)))
        x = self.group4(self.block4(self.group3(self.block3(x))))
        x = _max_plus_avg_pool(x)
        return self.fc(x.flatten(1))

    def forward(self, x: Tensor) -> tuple[Tensor | None, Tensor]:
        """(logits (N, num_classes), feature (N, 256)); logits is None for an encoder_only network."""
        feature = self.embed(x)
        if self.encoder_only:
            return None, feature
        return self.fc2(F.dropout(feature, DROPOUT, training=self.training)), feature


def faces_to_lightcnn_input(images: Tensor) -> Tensor:
    """Generator outputs -> LightCNN input: (N, 3, S, S) RGB or (N, 1, S, S) grey in [-1, 1] -> (N, 1, 128, 128)
    in [0, 1].

    (x + 1) / 2, clamped to [0, 1] (generator outputs are unbounded; saving them as images clamps too), then grey =
    0.299 R + 0.587 G + 0.114 B, then an antialiased bilinear resize to 128x128 (skipped at 128). Every step is
    differentiable, so a loss on LightCNN features sends gradients to the images (zero where the clamp is active).
    The convex grey weights and the non-negative bilinear filter keep the result inside [0, 1].
    """
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3):
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"faces_to_lightcnn_input: expected images (N, 3, H, W) RGB or (N, 1, H, W) grey in [-1, 1], "
                         f"got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"faces_to_lightcnn_input: expected float images in [-1, 1], got dtype {images.dtype}")
    height, width = images.shape[-2:]
    if height != width:
        raise ValueError(f"faces_to_lightcnn_input: expected square face crops, got {height}x{width}; crop them first "
                         "(resizing would distort the face)")
    x = ((images + 1) / 2).clamp(0, 1)
    if x.shape[1] == 3:
        weights = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * weights).sum(1, keepdim=True)
    if height != INPUT_SIZE:
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


# ----------------------------------------------------------------------------------------------- checkpoint IO
def load_lightcnn_state(path: str | os.PathLike, *, trust: bool = False) -> dict[str, Tensor]:
    """The state dict in an official LightCNN checkpoint ({'epoch', 'arch', 'state_dict', 'prec1'}), `module.` stripped.

    Tensors-only unpickling first; the full unpickle of the old pickle only with `trust` (see
    `i2i.weights.safe_torch_load`). Tensors are loaded on the CPU.
    """
    path = Path(path)
    return lightcnn_checkpoint(safe_torch_load(path, trust=trust), path)


def _wrong_family_hint(state: Mapping[str, Tensor]) -> str:
    if "fc.filter.weight" in state or any(k.startswith("features.") for k in state):
        return (" The file looks like a LightCNN-9 or LightCNN-29 (v1) checkpoint (mfm fc layer); only "
                "LightCNN_29Layers_V2_checkpoint.pth.tar fits LightCNN29v2.")
    return ""


def load_lightcnn_into(net: LightCNN29v2, state: Mapping[str, Tensor], *,
                       source: str | os.PathLike | None = None) -> None:
    """Strict load of `state` (e.g. from `load_lightcnn_state`; `module.` prefixes are removed) into `net`; nothing
    changes on error.

    An encoder_only net drops the classifier entries (fc2.*) of the file; a full net needs them with its num_classes.
    """
    origin = f"'{source}'" if source is not None else "the given state"
    state = strip_module_prefix(state)
    if net.encoder_only:
        state = {k: v for k, v in state.items() if not k.startswith(ENCODER_EXCLUDED_PREFIX)}
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = [f"{k} {shape}" for k, shape in expected.items() if k not in state]
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    mismatched = [f"{k}: file {tuple(v.shape)} vs net {expected[k]}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]
    problems = [f"{len(keys)} {kind} (e.g. {'; '.join(keys[:_SHOWN_KEYS])})"
                for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                   ("shape mismatches", mismatched)) if keys]
    if problems:
        hint = _wrong_family_hint(state)
        if not hint and any(k.startswith("fc2.") for k in mismatched):
            hint = " Build the net with the file's num_classes, or with encoder_only=True to drop the classifier."
        raise ValueError(f"cannot load LightCNN29v2 from {origin}: " + "; ".join(problems) + "." + hint)
    net.load_state_dict(state, strict=True)


def load_lightcnn29v2(path: str | os.PathLike | None = None, *, encoder_only: bool = True, trust: bool = False,
                      num_classes: int = OFFICIAL_NUM_CLASSES) -> LightCNN29v2:
    """The pretrained LightCNN-29v2 in eval() mode with frozen parameters (requires_grad False), on the CPU.

    `path`: the checkpoint file or a folder holding it; None searches the registry folders (`python -m i2i.weights
    list`). Gradients still flow through the frozen net to its input, which the translator's losses need.
    """
    file = find_weights("lightcnn29v2", path)
    net = LightCNN29v2(num_classes=num_classes, encoder_only=encoder_only)
    load_lightcnn_into(net, load_weights("lightcnn29v2", file, trust=trust), source=file)
    return net.eval().requires_grad_(False)
