"""StarGAN v2 networks (Choi et al., CVPR 2020) with the official parameter names, plus official checkpoint IO.

Module and parameter names, constructor arguments and the order of the state dicts follow clovaai/stargan-v2
(`core/model.py`), so its checkpoints (`*_nets_ema.ckpt`, `*_nets.ckpt`) load with `strict=True`. Our additions:
`width` (channels after the first conv, instead of the fixed rule 2**14 // img_size), the content/style split of the
generator used by ReMix (`encode_content` / `decode_content`), the feature/head split of the discriminator used by
AdaptiveMix (`features` / `head`), and input checks with readable errors.

Images are (N, 3, H, W) in [-1, 1]; domain labels y are integer tensors (N,) in [0, num_domains).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from i2i.fileio import atomic_torch_save
from i2i.weights import safe_torch_load

NET_NAMES = ("generator", "mapping_network", "style_encoder", "discriminator")
LRELU_SLOPE = 0.2
MAPPING_HIDDEN = 512
# The official generator adds high-pass skips at these feature heights only; masks[0] serves 32, masks[1] the others.
HPF_SKIP_SIZES = (32, 64, 128)
_HPF_KERNEL = ((-1.0, -1.0, -1.0), (-1.0, 8.0, -1.0), (-1.0, -1.0, -1.0))
_SHOWN_KEYS = 5
_LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


# ----------------------------------------------------------------------------------------------- argument checks
def official_width(img_size: int) -> int:
    """Channels after the first conv in the official nets: 2**14 // img_size (64 at 256 px, 256 at 64 px)."""
    return 2**14 // img_size


def _octaves(img_size: int, minimum: int, what: str) -> int:
    """log2(img_size) for a power of two >= minimum."""
    if not isinstance(img_size, int) or img_size < minimum or img_size & (img_size - 1):
        raise ValueError(f"{what}: img_size must be a power of two >= {minimum}, got {img_size!r}")
    return img_size.bit_length() - 1


def _width(img_size: int, width: int | None) -> int:
    dim = official_width(img_size) if width is None else width
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"width must be a positive int (channels of the first conv), got {dim!r} for img_size {img_size}")
    return dim


def _is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _check_images(x: Tensor, what: str, *, size: int | None = None, multiple: int = 1) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected images of shape (N, 3, H, W), got {shape}")
    h, w = x.shape[-2:]
    if size is not None and (h, w) != (size, size):
        raise ValueError(f"{what}: expected {size}x{size} images (the net's img_size), got shape {tuple(x.shape)}")
    if h % multiple or w % multiple:
        raise ValueError(f"{what}: H and W must be multiples of {multiple}, got shape {tuple(x.shape)}")


def _check_vectors(v: Tensor, what: str, dim: int, batch: int | None = None) -> None:
    """v must be (batch, dim); any batch size when batch is None."""
    if not isinstance(v, Tensor) or v.ndim != 2 or v.shape[1] != dim or (batch is not None and v.shape[0] != batch):
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{what}: expected shape ({'N' if batch is None else batch}, {dim}), got {shape}")


def _check_domains(y: Tensor, batch: int, num_domains: int) -> None:
    if not isinstance(y, Tensor) or y.dtype not in _LABEL_DTYPES or tuple(y.shape) != (batch,):
        desc = f"{y.dtype} tensor of shape {tuple(y.shape)}" if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"y: expected an integer tensor of shape ({batch},) with domain labels, got {desc}")
    # Negative labels would silently pick from the end. Reading values needs a host sync, so the check runs on CPU
    # tensors only (on CUDA an index >= num_domains still fails, in the device-side assert) and not while tracing.
    if y.device.type == "cpu" and not _is_tracing() and batch and (int(y.min()) < 0 or int(y.max()) >= num_domains):
        raise ValueError(f"y: domain labels must be in [0, {num_domains}), got {y.tolist()}")


def _pick_domain(out: Tensor, y: Tensor) -> Tensor:
    """(N, K, ...) per-domain outputs -> (N, ...) the output of each sample's domain y."""
    return out[torch.arange(out.shape[0], device=out.device), y]


# ----------------------------------------------------------------------------------------------- building blocks
class ResBlk(nn.Module):
    """Pre-activation residual block: [IN] lrelu conv3x3 [avgpool] [IN] lrelu conv3x3, plus a (1x1 conv) shortcut.

    (N, dim_in, H, W) -> (N, dim_out, H', W'), H' = H/2 when downsample. The sum is divided by sqrt(2) to keep unit
    variance.
    """

    def __init__(self, dim_in: int, dim_out: int, normalize: bool = False, downsample: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.downsample = downsample
        # Registration order is the official state-dict order: conv1, conv2, norm1, norm2, conv1x1.
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        if normalize:
            self.norm1 = nn.InstanceNorm2d(dim_in, affine=True)
            self.norm2 = nn.InstanceNorm2d(dim_in, affine=True)
        self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False) if dim_in != dim_out else None

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.conv1x1 is not None:
            x = self.conv1x1(x)
        return F.avg_pool2d(x, 2) if self.downsample else x

    def _residual(self, x: Tensor) -> Tensor:
        if self.normalize:
            x = self.norm1(x)
        x = self.conv1(F.leaky_relu(x, LRELU_SLOPE))
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        if self.normalize:
            x = self.norm2(x)
        return self.conv2(F.leaky_relu(x, LRELU_SLOPE))

    def forward(self, x: Tensor) -> Tensor:
        return (self._shortcut(x) + self._residual(x)) / math.sqrt(2)


class AdaIN(nn.Module):
    """Adaptive instance norm: (1 + gamma(s)) * IN(x) + beta(s); x (N, C, H, W), s (N, style_dim)."""

    def __init__(self, style_dim: int, num_features: int) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, 2 * num_features)

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        gamma, beta = self.fc(s)[:, :, None, None].chunk(2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
    """Style-modulated residual block: AdaIN lrelu [up x2] conv3x3 AdaIN lrelu conv3x3.

    (N, dim_in, H, W), s (N, style_dim) -> (N, dim_out, H', W'), H' = 2H when upsample. With w_hpf == 0 the
    (up, 1x1 conv) shortcut is added and the sum divided by sqrt(2); with w_hpf > 0 the block returns the residual
    only (the high-pass skips of the generator carry the identity), and `conv1x1` exists but is unused.
    """

    def __init__(self, dim_in: int, dim_out: int, style_dim: int = 64, w_hpf: float = 0, upsample: bool = False) -> None:
        super().__init__()
        self.w_hpf = w_hpf
        self.upsample = upsample
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False) if dim_in != dim_out else None

    def _upsample(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.upsample else x

    def _shortcut(self, x: Tensor) -> Tensor:
        x = self._upsample(x)
        return self.conv1x1(x) if self.conv1x1 is not None else x

    def _residual(self, x: Tensor, s: Tensor) -> Tensor:
        x = self.conv1(self._upsample(F.leaky_relu(self.norm1(x, s), LRELU_SLOPE)))
        return self.conv2(F.leaky_relu(self.norm2(x, s), LRELU_SLOPE))

    def forward(self, x: Tensor, s: Tensor) -> Tensor:
        out = self._residual(x, s)
        if self.w_hpf == 0:
            out = (out + self._shortcut(x)) / math.sqrt(2)
        return out


class HighPass(nn.Module):
    """Depthwise 3x3 Laplacian-like filter (buffer `filter`, (3, 3)); (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, w_hpf: float) -> None:
        super().__init__()
        self.register_buffer("filter", self.official_filter(w_hpf))

    @staticmethod
    def official_filter(w_hpf: float, device: torch.device | str | None = None) -> Tensor:
        """[[-1,-1,-1],[-1,8,-1],[-1,-1,-1]] / w_hpf, the value every official w_hpf > 0 checkpoint holds."""
        return torch.tensor(_HPF_KERNEL, device=device) / w_hpf

    def forward(self, x: Tensor) -> Tensor:
        channels = x.shape[1]
        kernel = self.filter.expand(channels, 1, 3, 3).contiguous()
        return F.conv2d(x, kernel, padding=1, groups=channels)


# ----------------------------------------------------------------------------------------------- networks
class Generator(nn.Module):
    """G(x, s, masks=None): (N, 3, H, W) in [-1, 1], style (N, style_dim) -> (N, 3, H, W), unbounded (no tanh).

    Content encoder (from_rgb + `encode`) and style decoder (`decode` + to_rgb); see `encode_content` /
    `decode_content`. With w_hpf > 0 (the CelebA-HQ setting) face masks add high-pass skip connections.
    """

    def __init__(self, img_size: int = 256, style_dim: int = 64, max_conv_dim: int = 512, w_hpf: float = 1,
                 width: int | None = None) -> None:
        super().__init__()
        if w_hpf < 0:
            raise ValueError(f"Generator: w_hpf must be >= 0, got {w_hpf}")
        num_down = _octaves(img_size, 16 if w_hpf > 0 else 32, "Generator") - 4 + (1 if w_hpf > 0 else 0)
        self.img_size = img_size
        self.style_dim = style_dim
        self.w_hpf = w_hpf
        self.num_down = num_down
        dim_in = _width(img_size, width)
        encode: list[nn.Module] = []
        decode: list[nn.Module] = []
        dim = dim_in
        for _ in range(num_down):
            dim_out = min(2 * dim, max_conv_dim)
            encode.append(ResBlk(dim, dim_out, normalize=True, downsample=True))
            decode.insert(0, AdainResBlk(dim_out, dim, style_dim, w_hpf=w_hpf, upsample=True))
            dim = dim_out
        for _ in range(2):  # bottleneck
            encode.append(ResBlk(dim, dim, normalize=True))
            decode.insert(0, AdainResBlk(dim, dim, style_dim, w_hpf=w_hpf))
        self.content_dim = dim
        self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
        self.encode = nn.ModuleList(encode)
        self.decode = nn.ModuleList(decode)
        self.to_rgb = nn.Sequential(
            nn.InstanceNorm2d(dim_in, affine=True), nn.LeakyReLU(LRELU_SLOPE), nn.Conv2d(dim_in, 3, 1, 1, 0))
        if w_hpf > 0:
            self.hpf = HighPass(w_hpf)

    def encode_content(self, x: Tensor, masks: Sequence[Tensor] | None = None) -> Tensor | tuple[Tensor, dict[int, Tensor]]:
        """Content code h (N, content_dim, H / 2**num_down, W / 2**num_down) of images x (N, 3, H, W) in [-1, 1].

        Without masks returns h (the ReMix interpolation point). With masks (w_hpf > 0 only; two tensors
        (N, 1, h, w) in [0, 1]) returns (h, skips): skips maps a feature height in HPF_SKIP_SIZES to the high-pass
        filtered, masked encoder feature (N, C, height, width) that `decode_content` adds back.
        """
        _check_images(x, "Generator input x", multiple=2**self.num_down)
        if masks is not None:
            self._check_masks(masks, x.shape[0])
        h = self.from_rgb(x)
        features: dict[int, Tensor] = {}
        for block in self.encode:
            if masks is not None and h.shape[2] in HPF_SKIP_SIZES:
                features[h.shape[2]] = h  # a later block at the same height overwrites, as in the official code
            h = block(h)
        if masks is None:
            return h
        return h, {size: self._high_pass_skip(feature, masks) for size, feature in features.items()}

    def decode_content(self, h: Tensor, s: Tensor, skips: Mapping[int, Tensor] | None = None) -> Tensor:
        """Image (N, 3, H, W), unbounded, from content h (N, content_dim, h, w) and style s (N, style_dim).

        `skips` is the second output of `encode_content(x, masks)` (w_hpf > 0 only).
        """
        if h.ndim != 4 or h.shape[1] != self.content_dim:
            raise ValueError(f"content h: expected shape (N, {self.content_dim}, h, w), got {tuple(h.shape)}")
        _check_vectors(s, "style s", self.style_dim, batch=h.shape[0])
        if skips is not None and self.w_hpf == 0:
            raise ValueError("skips need a generator built with w_hpf > 0; this one has w_hpf=0")
        for block in self.decode:
            h = block(h, s)
            if skips is not None and h.shape[2] in skips:
                h = h + skips[h.shape[2]]
        return self.to_rgb(h)

    def forward(self, x: Tensor, s: Tensor, masks: Sequence[Tensor] | None = None) -> Tensor:
        """Translate x (N, 3, H, W) in [-1, 1] to the style s (N, style_dim); output (N, 3, H, W), unbounded."""
        if masks is None:
            return self.decode_content(self.encode_content(x), s)
        h, skips = self.encode_content(x, masks)
        return self.decode_content(h, s, skips)

    def _check_masks(self, masks: Sequence[Tensor], batch: int) -> None:
        if self.w_hpf == 0:
            raise ValueError("masks need a generator built with w_hpf > 0 (high-pass skips); this one has w_hpf=0")
        if isinstance(masks, Tensor) or len(masks) != 2:
            raise ValueError("masks: expected a pair [mask_32, mask_fine] of (N, 1, h, w) tensors")
        for i, mask in enumerate(masks):
            if not isinstance(mask, Tensor) or mask.ndim != 4 or mask.shape[:2] != (batch, 1):
                shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"masks[{i}]: expected shape ({batch}, 1, h, w), got {shape}")

    def _high_pass_skip(self, feature: Tensor, masks: Sequence[Tensor]) -> Tensor:
        mask = masks[0] if feature.shape[2] == HPF_SKIP_SIZES[0] else masks[1]
        mask = F.interpolate(mask, size=feature.shape[2:], mode="bilinear", align_corners=False)
        return self.hpf(mask * feature)


def _mlp(dims: Sequence[int], relu_last: bool) -> nn.Sequential:
    """Linear layers dims[0] -> dims[1] -> ... with a ReLU after each (but the last, unless relu_last)."""
    layers: list[nn.Module] = []
    for i, (dim_in, dim_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(dim_in, dim_out))
        if relu_last or i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MappingNetwork(nn.Module):
    """F(z, y): latent z (N, latent_dim) and domains y (N,) -> style code (N, style_dim).

    A shared 4-layer MLP (width 512) and one 4-layer head per domain.
    """

    def __init__(self, latent_dim: int = 16, style_dim: int = 64, num_domains: int = 2) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_domains = num_domains
        self.shared = _mlp([latent_dim] + [MAPPING_HIDDEN] * 4, relu_last=True)
        self.unshared = nn.ModuleList(
            _mlp([MAPPING_HIDDEN] * 4 + [style_dim], relu_last=False) for _ in range(num_domains))

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        _check_vectors(z, "latent z", self.latent_dim)
        _check_domains(y, z.shape[0], self.num_domains)
        h = self.shared(z)
        return _pick_domain(torch.stack([head(h) for head in self.unshared], dim=1), y)


def _downsampling_trunk(img_size: int, max_conv_dim: int, width: int | None, what: str) -> tuple[list[nn.Module], int]:
    """Layers shared by the style encoder and discriminator: (N, 3, S, S) -> (N, C, 1, 1); returns (layers, C)."""
    num_down = _octaves(img_size, 8, what) - 2
    dim = _width(img_size, width)
    layers: list[nn.Module] = [nn.Conv2d(3, dim, 3, 1, 1)]
    for _ in range(num_down):
        dim_out = min(2 * dim, max_conv_dim)
        layers.append(ResBlk(dim, dim_out, downsample=True))
        dim = dim_out
    layers += [nn.LeakyReLU(LRELU_SLOPE), nn.Conv2d(dim, dim, 4, 1, 0), nn.LeakyReLU(LRELU_SLOPE)]
    return layers, dim


class StyleEncoder(nn.Module):
    """E(x, y): images (N, 3, S, S) in [-1, 1] and domains y (N,) -> style code (N, style_dim)."""

    def __init__(self, img_size: int = 256, style_dim: int = 64, num_domains: int = 2, max_conv_dim: int = 512,
                 width: int | None = None) -> None:
        super().__init__()
        self.img_size = img_size
        self.num_domains = num_domains
        layers, self.feature_dim = _downsampling_trunk(img_size, max_conv_dim, width, "StyleEncoder")
        self.shared = nn.Sequential(*layers)
        self.unshared = nn.ModuleList(nn.Linear(self.feature_dim, style_dim) for _ in range(num_domains))

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N, feature_dim, 1, 1)."""
        _check_images(x, "StyleEncoder input x", size=self.img_size)
        return self.shared(x)

    def head(self, h: Tensor, y: Tensor) -> Tensor:
        """(N, feature_dim, 1, 1) features and domains (N,) -> (N, style_dim)."""
        _check_domains(y, h.shape[0], self.num_domains)
        h = h.flatten(1)
        return _pick_domain(torch.stack([head(h) for head in self.unshared], dim=1), y)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.head(self.features(x), y)


class Discriminator(nn.Module):
    """D(x, y): images (N, 3, S, S) in [-1, 1] and domains y (N,) -> real/fake logits (N,) of domain y."""

    def __init__(self, img_size: int = 256, num_domains: int = 2, max_conv_dim: int = 512,
                 width: int | None = None) -> None:
        super().__init__()
        self.img_size = img_size
        self.num_domains = num_domains
        layers, self.feature_dim = _downsampling_trunk(img_size, max_conv_dim, width, "Discriminator")
        self.main = nn.Sequential(*layers, nn.Conv2d(self.feature_dim, num_domains, 1, 1, 0))

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, S, S) in [-1, 1] -> (N, feature_dim, 1, 1): the trunk up to the 4x4 conv and its LeakyReLU."""
        _check_images(x, "Discriminator input x", size=self.img_size)
        return self.main[:-1](x)

    def head(self, h: Tensor, y: Tensor) -> Tensor:
        """Features (N, feature_dim, 1, 1) and domains y (N,) -> logits (N,): the final 1x1 conv, picked by y."""
        if h.ndim != 4 or tuple(h.shape[1:]) != (self.feature_dim, 1, 1):
            raise ValueError(f"discriminator features: expected shape (N, {self.feature_dim}, 1, 1), got {tuple(h.shape)}")
        _check_domains(y, h.shape[0], self.num_domains)
        return _pick_domain(self.main[-1](h).flatten(1), y)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.head(self.features(x), y)


def he_init(module: nn.Module) -> None:
    """Official init of the trained nets, applied per module: `net.apply(he_init)`.

    Conv2d/Linear weights ~ kaiming normal (fan_in, relu gain), biases 0; other modules are left as they are.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_nets(img_size: int, num_domains: int, style_dim: int = 64, latent_dim: int = 16, max_conv_dim: int = 512,
               w_hpf: float = 0, width: int | None = None) -> dict[str, nn.Module]:
    """The four StarGAN v2 nets under their official checkpoint names (PyTorch default init; see `he_init`)."""
    return {
        "generator": Generator(img_size, style_dim, max_conv_dim, w_hpf, width=width),
        "mapping_network": MappingNetwork(latent_dim, style_dim, num_domains),
        "style_encoder": StyleEncoder(img_size, style_dim, num_domains, max_conv_dim, width=width),
        "discriminator": Discriminator(img_size, num_domains, max_conv_dim, width=width),
    }


# ----------------------------------------------------------------------------------------------- checkpoint IO
def _unwrap(net: nn.Module) -> nn.Module:
    """The plain module inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(net, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            net = net.module
        elif isinstance(getattr(net, "_orig_mod", None), nn.Module):
            net = net._orig_mod
        else:
            return net


def _strip_module_prefix(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def load_official_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict[str, dict[str, Tensor]]:
    """{net_name: state_dict} from an official `*_nets_ema.ckpt` / `*_nets.ckpt`, `module.` prefixes stripped.

    Tensors-only unpickling unless `trust` (see `i2i.weights.safe_torch_load`); tensors are loaded on the CPU.
    """
    content = safe_torch_load(path, trust=trust)
    if not isinstance(content, Mapping):
        raise ValueError(f"'{path}' is not a StarGAN v2 nets checkpoint: expected a dict {{net_name: state_dict}}, "
                         f"got {type(content).__name__}")
    state: dict[str, dict[str, Tensor]] = {}
    for name, entry in content.items():
        if not isinstance(entry, Mapping) or not all(isinstance(v, Tensor) for v in entry.values()):
            raise ValueError(f"'{path}': entry '{name}' is not a state_dict of tensors (is this an *_optims.ckpt "
                             "file? those hold optimizer states, not network weights)")
        state[str(name)] = {_strip_module_prefix(str(k)): v for k, v in entry.items()}
    return state


def _with_hpf_filter(net: nn.Module, state: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    """Old official w_hpf > 0 checkpoints predate the `hpf.filter` buffer: add its constant value."""
    if isinstance(net, Generator) and net.w_hpf > 0 and "hpf.filter" not in state:
        return {**state, "hpf.filter": HighPass.official_filter(net.w_hpf)}
    return state


def _state_problems(net: nn.Module, state: Mapping[str, Tensor], strict: bool) -> list[str]:
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    mismatched = [f"{k}: file {tuple(v.shape)} vs net {expected[k]}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]
    missing = [f"{k} {shape}" for k, shape in expected.items() if k not in state] if strict else []
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in state.items() if k not in expected] if strict else []
    return [f"{len(keys)} {kind} (e.g. {'; '.join(keys[:_SHOWN_KEYS])})"
            for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", mismatched)) if keys]


def load_into(nets: Mapping[str, nn.Module], state: Mapping[str, Mapping[str, Tensor]], strict: bool = True, *,
              source: str | os.PathLike | None = None) -> list[str]:
    """Load `state` ({net_name: state_dict}, e.g. from `load_official_checkpoint`) into `nets`; returns loaded names.

    All nets are checked before any is changed. With strict, every net of `nets` must be in `state` with exactly
    its keys; without, absent nets and keys are skipped (shapes must still match). `source` names the file in errors.
    """
    origin = f"'{source}'" if source is not None else "the given state"
    absent = [name for name in nets if name not in state]
    if strict and absent:
        raise ValueError(f"{origin} has no weights for {absent}; it holds {sorted(state)}")
    plans = []
    for name, net in nets.items():
        if name in absent:
            continue
        net = _unwrap(net)
        net_state = _with_hpf_filter(net, state[name])
        problems = _state_problems(net, net_state, strict)
        if problems:
            raise ValueError(f"cannot load '{name}' ({type(net).__name__}) from {origin}: " + "; ".join(problems)
                             + ". Check img_size, num_domains, style_dim, max_conv_dim, w_hpf and width.")
        plans.append((name, net, net_state))
    for _, net, net_state in plans:
        net.load_state_dict(net_state, strict=strict)
    return [name for name, _, _ in plans]


def save_official_checkpoint(path: str | os.PathLike, nets: Mapping[str, nn.Module]) -> None:
    """Write {net_name: state_dict} in the official format (no `module.` prefix), atomically: a crash never leaves
    a truncated file at `path`."""
    atomic_torch_save({name: _unwrap(net).state_dict() for name, net in nets.items()}, path)


def _count(keys: Sequence[str], prefix: str, suffix: str) -> int:
    return sum(1 for k in keys if k.startswith(prefix) and k.endswith(suffix) and k[len(prefix):-len(suffix)].isdigit())


def official_architecture(state: dict[str, dict[str, Tensor]], source: str | os.PathLike = "the checkpoint") -> dict[str, int]:
    """build_nets arguments (img_size, num_domains, style_dim, latent_dim, max_conv_dim, width) read from the tensor
    shapes of a StarGAN v2 nets checkpoint ({net_name: state_dict}).

    The style encoder has log2(S) - 2 down-sampling blocks and starts at `width` channels; max_conv_dim is its widest
    block (a larger cap builds the same nets). A generator with one down-sampling block more than S implies was
    trained with w_hpf > 0 (CelebA-HQ) and needs the FAN face-mask network: refused.
    """
    try:
        mapping, style, generator = state["mapping_network"], state["style_encoder"], state["generator"]
        latent_dim = mapping["shared.0.weight"].shape[1]
        style_dim = mapping["unshared.0.6.weight"].shape[0]
        width = style["shared.0.weight"].shape[0]
    except KeyError as error:
        raise ValueError(f"'{source}' is not a StarGAN v2 nets checkpoint: it lacks {error} (it holds "
                         f"{sorted(state)})") from None
    blocks = _count(list(style), "shared.", ".conv2.weight")
    img_size = 2 ** (blocks + 2)
    if _count(list(generator), "encode.", ".conv1.weight") != blocks:  # w_hpf = 0: log2(S) - 4 down + 2 bottleneck
        raise ValueError(f"'{source}' holds a generator trained with high-pass skips (w_hpf > 0, the CelebA-HQ "
                         "setting), which need the FAN face-landmark network; the AFHQ protocol supports w_hpf = 0")
    max_conv_dim = max(style[f"shared.{i}.conv2.weight"].shape[0] for i in range(1, blocks + 1))
    return {"img_size": img_size, "num_domains": _count(list(mapping), "unshared.", ".0.weight"),
            "style_dim": int(style_dim), "latent_dim": int(latent_dim), "max_conv_dim": int(max_conv_dim),
            "width": int(width)}


def load_official_nets(path: str | os.PathLike, img_size: int | None = None, num_domains: int | None = None, *,
                       trust: bool = False) -> dict[str, nn.Module]:
    """The generator, mapping network and style encoder of an official-format `*_nets_ema.ckpt` (on the CPU).

    The architecture is read from the file (the official AFHQ file: 256 px, 3 domains); `img_size` / `num_domains`,
    when given, are checked against it. Tensors-only unpickling unless `trust`.
    """
    state = load_official_checkpoint(path, trust=trust)
    arch = official_architecture(state, path)
    for key, expected in (("img_size", img_size), ("num_domains", num_domains)):
        if expected is not None and arch[key] != expected:
            raise ValueError(f"'{path}' holds a model with {key} {arch[key]}, but {expected} was expected "
                             f"(e.g. the number of domain folders of the data)")
    nets = build_nets(**arch)
    nets = {name: nets[name] for name in ("generator", "mapping_network", "style_encoder")}
    load_into(nets, state, strict=True, source=path)
    return nets
