"""StyleGAN2 generator and discriminator (Karras et al., CVPR 2020) in plain PyTorch, with the reference names.

Module, parameter and buffer names, constructor arguments, the state-dict order and the forward signatures follow
rosinality/stylegan2-pytorch (`model.py`), so its checkpoints (`{'g', 'd', 'g_ema', ...}`) load with `strict=True`.
Differences from the reference, none of which changes a result:

* no compiled ops: `fused_leaky_relu` is `leaky_relu(x + b, 0.2) * sqrt(2)` and `upfirdn2d` is zero insertion, pad and
  a depthwise conv with the flipped kernel (the reference's CPU fallbacks, written as ordinary autograd ops). The same
  code runs on CPU and CUDA, supports the double backward of R1 and path-length regularisation, and exports to ONNX;
* `ModulatedConv2d.fused` picks the grouped per-sample conv (fast for training) or the non-grouped form (scale the input
  by the style, one shared conv, demodulate the output), which is the one that exports with a dynamic batch:
  `Generator.set_fused(False)` before `torch.onnx.export`. Both give the same output;
* `channel_max` caps every layer's width (default 512, the reference's widths) for small test and CPU models;
* readable ValueErrors for wrong inputs (e.g. `G(z)` instead of `G([z])`), and the discriminator's `features` /
  `head` split used by AdaptiveMix.

Images are (N, 3, size, size), nominally in [-1, 1] (the generator has no output activation, so its images are
unbounded); latents z and styles w are (N, style_dim). Losses: `i2i.nets.stylegan2_losses`; checkpoints:
`i2i.nets.stylegan2_io`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)  # keeps the activations' second moment at 1 through a leaky ReLU
BLUR_KERNEL = (1, 3, 3, 1)
DEMOD_EPS = 1e-8
STDDEV_GROUP = 4
CHANNEL_MAX = 512
SUPPORTED_SIZES = (4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _is_tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def official_channels(channel_multiplier: int = 2, channel_max: int = CHANNEL_MAX) -> dict[int, int]:
    """Feature channels per resolution: 512 up to 32 px, then 256, 128, 64, 32, 16 times channel_multiplier."""
    base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: min(c, channel_max) for res, c in base.items()}


def _check_size(size: int, what: str) -> int:
    """log2(size) for a size the channel table covers."""
    if size not in SUPPORTED_SIZES:
        raise ValueError(f"{what}: size must be a power of two in [4, 1024], got {size!r}")
    return size.bit_length() - 1


def _check_positive(value: int, name: str, what: str) -> None:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}: {name} must be a positive int, got {value!r}")


# ----------------------------------------------------------------------------------------------- plain-op kernels
def fused_leaky_relu(x: Tensor, bias: Tensor | None = None, negative_slope: float = LRELU_SLOPE,
                     scale: float = LRELU_GAIN) -> Tensor:
    """leaky_relu(x + bias, negative_slope) * scale, bias (C,) added along dim 1 of x (N, C, ...)."""
    if bias is not None:
        x = x + bias.view(1, bias.shape[0], *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, negative_slope=negative_slope) * scale


def make_kernel(k: Sequence[float] | Tensor) -> Tensor:
    """A 2-D FIR kernel normalised to sum 1; a 1-D k gives the separable outer product k k^T."""
    k = torch.as_tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: Sequence[int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, filter with `kernel` (a true convolution), keep every `down`-th sample.

    x (N, C, H, W), kernel (kh, kw); pad = (p0, p1) on both axes or (x0, x1, y0, y1), all >= 0. Output height
    (H * up + y0 + y1 - kh) // down + 1, likewise the width. Plain autograd ops: double backward and ONNX export work.
    """
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    if len(pad) != 4 or min(pad) < 0:
        raise ValueError(f"upfirdn2d: pad must be (p0, p1) or (x0, x1, y0, y1) with non-negative entries, got {pad}")
    _, channels, height, width = x.shape
    if up > 1:
        x = F.pad(x.reshape(-1, channels, height, 1, width, 1), [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(-1, channels, height * up, width * up)
    x = F.pad(x, list(pad))
    # conv2d is a correlation; flipping the kernel makes it the convolution the reference computes (it matters for
    # non-symmetric kernels). One kernel per channel: a depthwise conv.
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).expand(channels, 1, *kernel.shape)
    return F.conv2d(x, weight, stride=down, groups=channels)


# ----------------------------------------------------------------------------------------------- building blocks
class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over dim 1) + 1e-8): (N, D) -> (N, D) with unit second moment per sample."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class FusedLeakyReLU(nn.Module):
    """Bias (C,) + leaky ReLU(0.2) + gain sqrt(2) on (N, C, ...); `bias=False` drops the bias."""

    def __init__(self, channel: int, bias: bool = True) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class Upsample(nn.Module):
    """x2 FIR up-sampling of the ToRGB skip: (N, C, H, W) -> (N, C, 2H, 2W). Buffer `kernel` = make_kernel(k) * 4."""

    def __init__(self, kernel: Sequence[float] = BLUR_KERNEL, factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        # Zero insertion leaves 1 / factor**2 of the samples: the kernel gain restores the mean.
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    """FIR low-pass filter around the resampling convs (anti-aliasing): (N, C, H, W) -> (N, C, H + p0 + p1 - k + 1, ...).

    Buffer `kernel` (k, k) = make_kernel(kernel), times upsample_factor**2 after a transposed (up-sampling) conv.
    """

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        self.register_buffer("kernel", make_kernel(kernel) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class EqualConv2d(nn.Module):
    """Conv2d with equalised learning rate: weight ~ N(0, 1) stored, scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear with equalised learning rate and learning-rate multiplier lr_mul: (N, in_dim) -> (N, out_dim).

    Stored weight ~ N(0, 1) / lr_mul, used as weight * lr_mul / sqrt(in_dim); bias used as bias * lr_mul (the mapping
    network's lr_mul 0.01 slows its effective learning rate 100-fold). activation="fused_lrelu" adds the scaled leaky
    ReLU after the bias.
    """

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: str | None = None) -> None:
        super().__init__()
        if activation not in (None, "fused_lrelu"):
            raise ValueError(f"EqualLinear: activation must be None or 'fused_lrelu', got {activation!r}")
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.lr_mul if self.bias is not None else None
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv: (N, in, H, W), w (N, style_dim) -> (N, out, H', W'); H' = 2H with upsample.

    The weight is scaled per input channel by the affine style s = modulation(w) (bias init 1) and, with demodulate,
    every output channel is divided by the norm of its modulated weight, which replaces AdaIN's normalisation.
    Up-sampling is a stride-2 transposed conv followed by a [1,3,3,1] blur.

    `fused=True` (default): one grouped conv with a per-sample weight (groups = batch), fast for training.
    `fused=False`: x * s, one conv with the shared weight, output * demodulation coefficients. The same maths; ONNX
    exports it with a dynamic batch, which the grouped form does not allow.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, demodulate: bool = True,
                 upsample: bool = False, blur_kernel: Sequence[float] = BLUR_KERNEL, fused: bool = True) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate
        self.fused = fused

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        if self.fused:
            return self._grouped(x, style)
        return self._shared(x, style)

    def _grouped(self, x: Tensor, style: Tensor) -> Tensor:
        batch, in_channel, height, width = x.shape
        style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + DEMOD_EPS)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        k = self.kernel_size
        x = x.reshape(1, batch * in_channel, height, width)
        if self.upsample:
            # conv_transpose2d wants (in, out, k, k) per group
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            return self.blur(out.view(batch, self.out_channel, *out.shape[2:]))
        out = F.conv2d(x, weight.view(batch * self.out_channel, in_channel, k, k), padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, *out.shape[2:])

    def _shared(self, x: Tensor, style: Tensor) -> Tensor:
        batch = x.shape[0]
        weight = self.scale * self.weight.squeeze(0)
        style = self.modulation(style)
        x = x * style.reshape(batch, self.in_channel, 1, 1)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), padding=0, stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            modulated = weight.unsqueeze(0) * style.view(batch, 1, self.in_channel, 1, 1)
            demod = torch.rsqrt(modulated.square().sum((2, 3, 4)) + DEMOD_EPS)
            out = out * demod.view(batch, self.out_channel, 1, 1)
        return out


class NoiseInjection(nn.Module):
    """x + weight * noise, noise (N or 1, 1, H, W); fresh N(0, 1) noise when none is given. weight (1,) starts at 0."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise


class ConstantInput(nn.Module):
    """The learned 4x4 starting map `input` (1, C, 4, 4), repeated over the batch of its argument."""

    def __init__(self, channel: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, latent: Tensor) -> Tensor:
        return self.input.repeat(latent.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    """ModulatedConv2d (3x3, optional x2 up) + noise + bias and scaled leaky ReLU: (N, in, H, W) -> (N, out, H', W')."""

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, demodulate: bool = True) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel, demodulate=demodulate)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None) -> Tensor:
        return self.activate(self.noise(self.conv(x, style), noise=noise))


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB (no demodulation) + bias, plus the up-sampled RGB skip of the previous resolution.

    (N, C, H, W), w (N, style_dim)[, skip (N, 3, H/2, W/2)] -> (N, 3, H, W).
    """

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ----------------------------------------------------------------------------------------------- generator
class Generator(nn.Module):
    """G(styles, ...) -> (image (N, 3, size, size), latent (N, n_latent, style_dim) or None).

    Mapping network `style` = PixelNorm + n_mlp EqualLinear(style_dim, style_dim, lr_mul) with scaled leaky ReLU:
    z -> w. Synthesis: ConstantInput 4x4, `conv1` + `to_rgb1`, then per resolution 8..size an up-sampling StyledConv,
    a StyledConv and a ToRGB whose outputs are summed over resolutions (skip architecture). Fixed noise maps
    `noises.noise_k` (1, 1, r, r) are buffers, so `randomize_noise=False` gives deterministic images.
    """

    def __init__(self, size: int, style_dim: int, n_mlp: int, channel_multiplier: int = 2,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, lr_mlp: float = 0.01,
                 channel_max: int = CHANNEL_MAX) -> None:
        super().__init__()
        self.log_size = _check_size(size, "Generator")
        for value, name in ((style_dim, "style_dim"), (channel_multiplier, "channel_multiplier"),
                            (channel_max, "channel_max")):
            _check_positive(value, name, "Generator")
        if not isinstance(n_mlp, int) or n_mlp < 0:
            raise ValueError(f"Generator: n_mlp must be an int >= 0, got {n_mlp!r}")
        self.size = size
        self.style_dim = style_dim
        self.style = nn.Sequential(PixelNorm(), *(
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu") for _ in range(n_mlp)))
        self.channels = official_channels(channel_multiplier, channel_max)
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, res, res))
        in_channel = self.channels[4]
        for i in range(3, self.log_size + 1):
            out_channel = self.channels[2**i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel
        # w per layer: conv j takes w[j], the k-th ToRGB w[2k + 1] (shared with the next conv), the last one a w of its own
        self.n_latent = self.log_size * 2 - 2

    def set_fused(self, fused: bool) -> Generator:
        """Grouped (True, training) or non-grouped (False, ONNX export) modulated convs everywhere; returns self."""
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.fused = fused
        return self

    def fixed_noise(self) -> list[Tensor]:
        """The noise buffers noises.noise_0..noise_{num_layers-1}, (1, 1, r, r) each, in layer order."""
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def make_noise(self) -> list[Tensor]:
        """Fresh N(0, 1) noise maps shaped like the buffers (a new fixed noise for `noise=`)."""
        return [torch.randn_like(n) for n in self.fixed_noise()]

    def mean_latent(self, n_latent: int) -> Tensor:
        """The mean w (1, style_dim) of n_latent random z, the usual truncation_latent."""
        z = torch.randn(n_latent, self.style_dim, device=self.input.input.device)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z: Tensor) -> Tensor:
        """Mapping network: z (N, style_dim) -> w (N, style_dim)."""
        return self.style(z)

    def forward(self, styles: Sequence[Tensor], return_latents: bool = False, inject_index: int | None = None,
                truncation: float = 1, truncation_latent: Tensor | None = None, input_is_latent: bool = False,
                noise: Sequence[Tensor | None] | None = None,
                randomize_noise: bool = True) -> tuple[Tensor, Tensor | None]:
        """Images from a list of one or two latents (two: style mixing at inject_index, random when None).

        styles: [z] with z (N, style_dim) mapped by `style`, or w when input_is_latent; a w may also be given per layer,
        (N, n_latent, style_dim). truncation < 1 pulls w towards truncation_latent (1, style_dim).
        noise: num_layers maps (entries None = fresh noise); without it the buffers when randomize_noise is False,
        else fresh noise. Returns (image (N, 3, size, size), the per-layer w (N, n_latent, style_dim) if return_latents
        else None).
        """
        styles = self._check_styles(styles, input_is_latent)
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        if noise is None:
            noise = [None] * self.num_layers if randomize_noise else self.fixed_noise()
        elif len(noise) != self.num_layers:
            raise ValueError(f"noise: expected a list of {self.num_layers} maps (or None entries), got {len(noise)}")
        if truncation < 1:
            if truncation_latent is None:
                raise ValueError("truncation < 1 needs truncation_latent (e.g. G.mean_latent(4096))")
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) == 1:
            latent = styles[0] if styles[0].ndim == 3 else styles[0].unsqueeze(1).repeat(1, self.n_latent, 1)
        else:
            if inject_index is None:
                inject_index = int(torch.randint(1, self.n_latent, ()))
            latent = torch.cat([styles[0].unsqueeze(1).repeat(1, inject_index, 1),
                                styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)], 1)

        out = self.conv1(self.input(latent), latent[:, 0], noise=noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2],
                                                        self.to_rgbs):
            out = conv1(out, latent[:, i], noise=noise1)
            out = conv2(out, latent[:, i + 1], noise=noise2)
            skip = to_rgb(out, latent[:, i + 2], skip)
            i += 2
        return skip, (latent if return_latents else None)

    def _check_styles(self, styles: Sequence[Tensor], input_is_latent: bool) -> list[Tensor]:
        if isinstance(styles, Tensor) or not isinstance(styles, Sequence) or len(styles) not in (1, 2):
            got = f"a tensor of shape {tuple(styles.shape)}" if isinstance(styles, Tensor) else type(styles).__name__
            raise ValueError(f"styles: expected a list of one or two latents, G([z]) or G([z1, z2]), got {got}")
        for k, s in enumerate(styles):
            per_layer = input_is_latent and len(styles) == 1 and isinstance(s, Tensor) and s.ndim == 3
            if per_layer and tuple(s.shape[1:]) != (self.n_latent, self.style_dim):
                raise ValueError(f"styles[{k}]: a per-layer w must be (N, {self.n_latent}, {self.style_dim}), got "
                                 f"{tuple(s.shape)}")
            if not per_layer and (not isinstance(s, Tensor) or s.ndim != 2 or s.shape[1] != self.style_dim):
                shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                raise ValueError(f"styles[{k}]: expected shape (N, {self.style_dim}), got {shape}")
        return list(styles)


# ----------------------------------------------------------------------------------------------- discriminator
class ConvLayer(nn.Sequential):
    """[Blur] EqualConv2d [FusedLeakyReLU]: a k x k conv, stride 2 after a blur when downsample.

    The bias sits in the activation when there is one (`1.bias` or `2.bias`), else in the conv.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, downsample: bool = False,
                 blur_kernel: Sequence[float] = BLUR_KERNEL, bias: bool = True, activate: bool = True) -> None:
        layers: list[nn.Module] = []
        if downsample:
            p = (len(blur_kernel) - 2) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding, stride=stride,
                                  bias=bias and not activate))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    """conv3x3, blur + stride-2 conv3x3, plus a blurred stride-2 1x1 skip; sum / sqrt(2).

    (N, in, H, W) -> (N, out, H/2, W/2).
    """

    def __init__(self, in_channel: int, out_channel: int, blur_kernel: Sequence[float] = BLUR_KERNEL) -> None:
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3, blur_kernel=blur_kernel)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, blur_kernel=blur_kernel, activate=False,
                              bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """D(x): images (N, 3, size, size) -> real/fake logits (N, 1).

    `convs` = 1x1 ConvLayer from RGB + ResBlocks down to 4x4 (`features`), then minibatch stddev (groups of
    min(N, 4); N must be a multiple of it), final 3x3 conv, EqualLinear(C*16 -> C, lrelu), EqualLinear(C -> 1) (`head`).
    """

    def __init__(self, size: int, channel_multiplier: int = 2, blur_kernel: Sequence[float] = BLUR_KERNEL,
                 channel_max: int = CHANNEL_MAX) -> None:
        super().__init__()
        log_size = _check_size(size, "Discriminator")
        _check_positive(channel_multiplier, "channel_multiplier", "Discriminator")
        _check_positive(channel_max, "channel_max", "Discriminator")
        self.size = size
        channels = official_channels(channel_multiplier, channel_max)
        convs: list[nn.Module] = [ConvLayer(3, channels[size], 1)]
        in_channel = channels[size]
        for i in range(log_size, 2, -1):
            out_channel = channels[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)
        self.feature_dim = in_channel
        self.stddev_group = STDDEV_GROUP
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + 1, channels[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(channels[4] * 4 * 4, channels[4], activation="fused_lrelu"), EqualLinear(channels[4], 1))

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, size, size) -> the 4x4 map after the ResBlocks (N, feature_dim, 4, 4), the AdaptiveMix feature."""
        if not isinstance(x, Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (3, self.size, self.size):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Discriminator input: expected images (N, 3, {self.size}, {self.size}), got {shape}")
        return self.convs(x)

    def head(self, h: Tensor) -> Tensor:
        """Features (N, feature_dim, 4, 4) -> logits (N, 1): minibatch stddev, final conv, two linears."""
        if h.ndim != 4 or tuple(h.shape[1:]) != (self.feature_dim, 4, 4):
            raise ValueError(f"discriminator features: expected shape (N, {self.feature_dim}, 4, 4), "
                             f"got {tuple(h.shape)}")
        batch, channel, height, width = h.shape
        group = min(batch, self.stddev_group)
        if not _is_tracing() and batch % group:
            raise ValueError(f"Discriminator: the batch size {batch} must be a multiple of the minibatch-stddev group "
                             f"size min(N, {self.stddev_group}) = {group}")
        # Sample n joins subgroup n % (N / group); each subgroup's stddev, averaged over features, is one extra channel.
        stddev = h.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)
        stddev = stddev.repeat(group, 1, height, width)
        out = self.final_conv(torch.cat([h, stddev], 1))
        return self.final_linear(out.reshape(batch, -1))  # reshape: the map may be channels-last

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
