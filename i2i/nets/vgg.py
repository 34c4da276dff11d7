"""VGG19 perceptual network: SPADE's VGG loss (torchvision vgg19 `features` up to relu5_1, frozen).

The trunk is torchvision's vgg19 `features[0:30]` cut into SPADE's five slices [0:2], [2:7], [7:12], [12:21],
[21:30] (outputs relu1_1, relu2_1, relu3_1, relu4_1, relu5_1). Module names follow SPADE's `VGG19`
(`slice{k}.{torchvision index}`); the weights come from torchvision's `vgg19-dcbb9e9d.pth` (registry entry `vgg19`).

Input: the raw image (N, 3, H, W) in [-1, 1], with NO ImageNet mean/std normalisation, as the official SPADE code
feeds it (the features are therefore not the ImageNet-calibrated ones; this reproduces SPADE's loss values).

    vgg = load_vgg19()                                         # MissingWeightsError names the file and where to get it
    d = vgg_distance(vgg(fake), vgg(real))                     # (N,) per-sample weighted L1
    loss = lambda_vgg * d.mean()                               # == lambda_vgg * SPADE's VGGLoss(fake, real)
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from i2i.weights import MissingWeightsError, WeightFormatError, load_weights

LAYER_NAMES = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)
SLICES = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
# torchvision's cfg 'E' (vgg19) up to conv5_1: conv widths, "M" = 2x2 max pool.
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)
_RANDOM_SEED = 0


def _torchvision_init(layers: list[nn.Module]) -> None:
    """torchvision's VGG init: conv weights kaiming normal (fan_out, relu), biases 0."""
    for module in layers:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)


def _layers() -> list[nn.Module]:
    """torchvision vgg19 `features[0:30]`: conv3x3 + ReLU pairs and max pools, with torchvision's indices."""
    layers: list[nn.Module] = []
    channels = 3
    for item in _CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            # In place is safe: each ReLU's input is a fresh conv output that nothing else reads.
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = item
    return layers


class VGG19Features(nn.Module):
    """Frozen VGG19 trunk: (N, 3, H, W) in [-1, 1] -> [relu1_1 .. relu5_1] maps (N, C_k, H / 2**k, W / 2**k), C_k
    = 64, 128, 256, 512, 512 (k = 0..4, floor division by the max pools).

    Always eval, requires_grad False: gradients flow to the input, never to the weights. `calibrated` is False when
    the weights are random (`load_vgg19(allow_random=True)`): numbers computed with it must be labelled uncalibrated.
    """

    def __init__(self, state: Mapping[str, Tensor] | None = None) -> None:
        super().__init__()
        # Seeded and forked: the random weights are reproducible, and building never moves the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_SEED)
            layers = _layers()
            if state is None:
                _torchvision_init(layers)
        for k, (start, stop) in enumerate(SLICES, start=1):
            self.add_module(f"slice{k}", nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(start, stop))))
        if state is not None:
            self.load_torchvision_state(state)
        self.calibrated = state is not None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGG19Features":
        """Always eval: a frozen loss network does not follow the trainer's train()/eval() calls."""
        return super().train(False)

    def load_torchvision_state(self, state: Mapping[str, Tensor]) -> None:
        """Load a torchvision VGG19 state dict (`features.{i}.weight|bias`, `classifier.*`).

        Only `features.0..28` are used; the later convs and the classifier are ignored. Any other key, a missing key
        or a wrong shape raises WeightFormatError.
        """
        own = self.state_dict()
        mapped = {name: f"features.{name.split('.', 1)[1]}" for name in own}  # slice{k}.{i}.X <- features.{i}.X
        used = set(mapped.values())
        missing = [src for src in mapped.values() if src not in state]
        foreign = [k for k in state if k not in used and not _ignored_torchvision_key(k)]
        wrong = [f"{src}: file {tuple(state[src].shape)} vs net {tuple(own[name].shape)}"
                 for name, src in mapped.items() if src in state and state[src].shape != own[name].shape]
        if missing or foreign or wrong:
            problems = [f"{kind} {keys[:5]}" for kind, keys in
                        (("missing", missing), ("unexpected", foreign), ("shape mismatches", wrong)) if keys]
            raise WeightFormatError("not a torchvision VGG19 state dict: " + "; ".join(problems))
        self.load_state_dict({name: state[src] for name, src in mapped.items()}, strict=True)

    def forward(self, x: Tensor) -> list[Tensor]:
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"VGG19Features: expected float images (N, 3, H, W) in [-1, 1], got {desc}")
        if min(x.shape[2:]) < 2 ** (len(SLICES) - 1):
            raise ValueError(f"VGG19Features: H and W must be >= {2 ** (len(SLICES) - 1)} (four 2x2 max pools before "
                             f"relu5_1), got shape {tuple(x.shape)}")
        outputs = []
        for k in range(1, len(SLICES) + 1):
            x = getattr(self, f"slice{k}")(x)
            outputs.append(x)
        return outputs


def _ignored_torchvision_key(key: str) -> bool:
    """classifier.* and features.{30..}: parts of the torchvision file after relu5_1."""
    parts = key.split(".")
    if parts[0] == "classifier":
        return True
    return parts[0] == "features" and parts[1].isdigit() and int(parts[1]) >= SLICES[-1][1]


def load_vgg19(weights_path: str | os.PathLike | None = None, *, allow_random: bool = False, trust: bool = False,
               device: str | torch.device | None = None) -> VGG19Features:
    """VGG19Features with torchvision's `vgg19-dcbb9e9d.pth` (registry `vgg19`; `weights_path` overrides the search;
    sha256 prefix checked).

    `allow_random=True` (tests/demos only) falls back to seeded random weights when the file is missing from the
    searched folders (never for an explicit missing `weights_path`); the result has `calibrated=False`.
    """
    try:
        state = load_weights("vgg19", weights_path, trust=trust)
    except MissingWeightsError:
        if not allow_random or weights_path is not None:
            raise
        state = None
    model = VGG19Features(state)
    return model.to(device) if device is not None else model


def vgg_distance(features_a: Sequence[Tensor], features_b: Sequence[Tensor]) -> Tensor:
    """Per-sample SPADE VGG distance: sum_k LAYER_WEIGHTS[k] * mean_{C,H,W} |a_k - b_k| -> (N,).

    `features_*` are the 5 maps of `VGG19Features`. Every sample has the same number of elements per layer, so
    `.mean()` of the result equals SPADE's VGGLoss (L1Loss means over N, C, H, W). Nothing is detached here: detach
    the target's features (or compute them under no_grad) as SPADE does.
    """
    if len(features_a) != len(LAYER_WEIGHTS) or len(features_b) != len(LAYER_WEIGHTS):
        raise ValueError(f"vgg_distance: expected {len(LAYER_WEIGHTS)} feature maps each ({', '.join(LAYER_NAMES)}), "
                         f"got {len(features_a)} and {len(features_b)}")
    total = None
    for name, weight, a, b in zip(LAYER_NAMES, LAYER_WEIGHTS, features_a, features_b):
        if a.shape != b.shape or a.ndim != 4:
            raise ValueError(f"vgg_distance: {name} maps must be (N, C, H, W) of equal shape, got {tuple(a.shape)} "
                             f"and {tuple(b.shape)}")
        term = weight * (a - b).abs().mean(dim=(1, 2, 3))
        total = term if total is None else total + term
    return total


class VGGLoss(nn.Module):
    """SPADE's VGG perceptual loss on a given `VGG19Features` (unweighted: multiply by lambda_vgg = 10 outside).

    `forward(fake, real)` -> 0-d, `per_sample(fake, real)` -> (N,); images (N, 3, H, W) in [-1, 1]. The real image's
    features are computed without gradient (SPADE detaches them); the fake's carry gradient to `fake`.
    """

    def __init__(self, vgg: VGG19Features) -> None:
        super().__init__()
        self.vgg = vgg

    def per_sample(self, fake: Tensor, real: Tensor) -> Tensor:
        if fake.shape != real.shape:
            raise ValueError(f"VGGLoss: fake and real must have the same shape, got {tuple(fake.shape)} and "
                             f"{tuple(real.shape)}")
        with torch.no_grad():
            target = self.vgg(real)
        return vgg_distance(self.vgg(fake), target)

    def forward(self, fake: Tensor, real: Tensor) -> Tensor:
        return self.per_sample(fake, real).mean()
