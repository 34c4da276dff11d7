"""SPADE networks (Park et al., CVPR 2019) with the official parameter names, plus official checkpoint IO and export.

Module and parameter names, constructor options and the state-dict order follow NVlabs/SPADE (`models/networks/`), so
its checkpoints (`latest_net_G.pth`, `{epoch}_net_D.pth`: flat state dicts) load with `strict=True`. The official
`opt` namespace is replaced by explicit constructor arguments with the official option names; `CITYSCAPES_GENERATOR`
and `CITYSCAPES_DISCRIMINATOR` are the options of the released Cityscapes model.

Tensors: semantics (N, semantic_nc, H, W) float, one-hot labels (+ instance-edge channel), values in [0, 1] (mixed
maps in between are fine); images (N, 3, H, W) in [-1, 1]; the discriminator input is cat([semantics, image], 1).

Our additions: the feature/head split of the discriminator used by AdaptiveMix (per scale, see
`MultiscaleDiscriminator.scale_split`), input checks with readable errors, `bake_spectral_norm` and
`revert_sync_batchnorm` for export, and a spectral norm whose backward reads the weight fewer times (`spectral_norm`,
same hooks and state-dict keys as torch.nn.utils.spectral_norm). use_vae: only the generator's branch (z -> Linear)
is implemented, and no fixture covers it; the image encoder (`ConvEncoder`: mu, logvar) and the KLD loss are not (no official keys to check against).

Batch norm: `norm_G` '...spadesyncbatch...' builds plain `nn.BatchNorm2d` (identical names, identical eval math);
under DDP convert with `nn.SyncBatchNorm.convert_sync_batchnorm(net)` (keeps every state-dict key) and back with
`revert_sync_batchnorm(net)` for export.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import remove_spectral_norm
from torch.nn.utils.spectral_norm import SpectralNorm

from i2i.fileio import atomic_torch_save
from i2i.weights import load_weights, plain_state_dict, safe_torch_load

LRELU_SLOPE = 0.2
SPADE_HIDDEN = 128  # hard-coded in the official SPADE module
NUM_UPSAMPLING = {"normal": 5, "more": 6, "most": 7}
PARAM_FREE_NORMS = ("batch", "syncbatch", "instance")
D_NORMS = ("spectralinstance", "spectralbatch", "spectralsync_batch", "spectralnone", "spectral")
D_KERNEL, D_PADDING, D_MAX_CHANNELS = 4, 2, 512
INIT_GAIN = 0.02  # official --init_variance

# The released Cityscapes model (`--dataset_mode cityscapes`): 35 labels + instance edges, 512x256, 'more'.
CITYSCAPES_GENERATOR = {"semantic_nc": 36, "ngf": 64, "num_upsampling_layers": "more", "crop_size": 512,
                        "aspect_ratio": 2.0, "norm_G": "spectralspadesyncbatch3x3"}
CITYSCAPES_DISCRIMINATOR = {"input_nc": 36 + 3, "ndf": 64, "n_layers_D": 4, "num_D": 2, "norm_D": "spectralinstance"}

_NORM_G = re.compile(r"(spectral)?spade(batch|syncbatch|instance)(\d)x(\d)")
_SHOWN_KEYS = 5


# ------------------------------------------------------------------------------------------------- spectral norm
class _DivideBySigma(torch.autograd.Function):
    """weight / sigma, with a backward of two passes over the weight where autograd's DivBackward makes five
    (g / sigma, -g, * weight, / sigma**2, the sum); measured: a few per cent of a SPADE iteration at ngf 64 on a CPU.
    Differentiable again (double backward works); the same values up to round-off."""

    @staticmethod
    def forward(ctx, weight: Tensor, sigma: Tensor) -> Tensor:
        ctx.save_for_backward(weight, sigma)
        return weight / sigma

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        weight, sigma = ctx.saved_tensors
        grad_weight = grad / sigma
        # d(w / sigma) / d sigma = -w / sigma**2
        return grad_weight, -(grad_weight * weight).sum() / sigma


class LeanSpectralNorm(SpectralNorm):
    """torch's SpectralNorm hook (the same power iteration, buffers and state-dict hooks) dividing by sigma with
    `_DivideBySigma`."""

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> Tensor:
        weight = getattr(module, self.name + "_orig")
        u, v = getattr(module, self.name + "_u"), getattr(module, self.name + "_v")
        weight_mat = self.reshape_weight_to_matrix(weight)
        if do_power_iteration:
            with torch.no_grad():
                for _ in range(self.n_power_iterations):
                    # in place (out=): the buffers themselves advance, as in torch's hook
                    v = F.normalize(torch.mv(weight_mat.t(), u), dim=0, eps=self.eps, out=v)
                    u = F.normalize(torch.mv(weight_mat, v), dim=0, eps=self.eps, out=u)
                if self.n_power_iterations > 0:
                    # a later forward's in-place update must not change what this forward's backward reads
                    u = u.clone(memory_format=torch.contiguous_format)
                    v = v.clone(memory_format=torch.contiguous_format)
        sigma = torch.dot(u, torch.mv(weight_mat, v))
        return _DivideBySigma.apply(weight, sigma)


def spectral_norm(module: nn.Module) -> nn.Module:
    """torch.nn.utils.spectral_norm(module) (weight_orig, weight_u, weight_v; one power iteration per train-mode
    forward) with the lean backward of `LeanSpectralNorm`."""
    torch.nn.utils.spectral_norm(module)
    for hook in module._forward_pre_hooks.values():
        if type(hook) is SpectralNorm:
            # torch registers its state-dict hooks on this very object, so it changes class rather than being replaced
            hook.__class__ = LeanSpectralNorm
    return module


# ----------------------------------------------------------------------------------------------- argument checks
def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def parse_norm_G(norm_G: str) -> tuple[bool, str, int]:
    """'[spectral]spade{batch|syncbatch|instance}{k}x{k}' -> (spectral, param-free norm, SPADE kernel size k)."""
    match = _NORM_G.fullmatch(norm_G) if isinstance(norm_G, str) else None
    if match is None or match[3] != match[4] or int(match[3]) % 2 == 0:
        raise ValueError(f"norm_G must be '[spectral]spade{{{'|'.join(PARAM_FREE_NORMS)}}}{{k}}x{{k}}' with an odd k "
                         f"(e.g. 'spectralspadebatch3x3'), got {norm_G!r}")
    return match[1] is not None, match[2], int(match[3])


def _check_map(x: Tensor, what: str, channels: int, size: tuple[int, int] | None = None) -> None:
    """x must be a float (N, channels, H, W) tensor, of spatial size `size` when given."""
    if torch.jit.is_tracing():  # export traces one example input; shape reads would only raise TracerWarnings
        return
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != channels or not x.is_floating_point():
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what}: expected a float tensor (N, {channels}, H, W), got {desc}")
    if size is not None and tuple(x.shape[2:]) != size:
        raise ValueError(f"{what}: expected spatial size {size[0]}x{size[1]} (H x W), got shape {tuple(x.shape)}")


# ----------------------------------------------------------------------------------------------- generator
class SPADE(nn.Module):
    """Spatially-adaptive normalization: norm(x) * (1 + gamma(seg)) + beta(seg).

    x (N, norm_nc, H, W), segmap (N, label_nc, h, w) (resized to H x W, nearest) -> (N, norm_nc, H, W).
    The param-free norm is BatchNorm2d(affine=False) with running stats ('batch'; also for 'syncbatch', see the module
    docstring) or InstanceNorm2d(affine=False) ('instance'); gamma and beta come from a shared conv + ReLU (128
    channels officially; `hidden` is our option for small CPU models) and one conv each, all k x k.
    """

    def __init__(self, norm_nc: int, label_nc: int, param_free_norm: str = "batch", kernel_size: int = 3,
                 hidden: int = SPADE_HIDDEN) -> None:
        super().__init__()
        if param_free_norm not in PARAM_FREE_NORMS:
            raise ValueError(f"SPADE param_free_norm must be one of {PARAM_FREE_NORMS}, got {param_free_norm!r}")
        self.norm_nc = _positive_int(norm_nc, "SPADE norm_nc")
        self.label_nc = _positive_int(label_nc, "SPADE label_nc")
        if param_free_norm == "instance":
            self.param_free_norm: nn.Module = nn.InstanceNorm2d(norm_nc, affine=False)
        else:
            self.param_free_norm = nn.BatchNorm2d(norm_nc, affine=False)
        padding = kernel_size // 2
        hidden = _positive_int(hidden, "SPADE hidden")
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, kernel_size, padding=padding), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, kernel_size, padding=padding)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, kernel_size, padding=padding)

    def forward(self, x: Tensor, segmap: Tensor) -> Tensor:
        _check_map(x, "SPADE input x", self.norm_nc)
        _check_map(segmap, "SPADE segmap", self.label_nc)
        normalized = self.param_free_norm(x)
        actv = self.mlp_shared(F.interpolate(segmap, size=x.shape[2:], mode="nearest"))
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResnetBlock(nn.Module):
    """x_s + conv_1(lrelu(norm_1(conv_0(lrelu(norm_0(x, seg))), seg))); (N, fin, H, W), seg -> (N, fout, H, W).

    The shortcut x_s is conv_s(norm_s(x, seg)) (1x1, no bias, no activation) when fin != fout, else x. With
    'spectral' in norm_G, conv_0, conv_1 and conv_s carry torch.nn.utils.spectral_norm hooks (weight_orig/_u/_v).
    """

    def __init__(self, fin: int, fout: int, semantic_nc: int, norm_G: str = "spectralspadebatch3x3",
                 spade_hidden: int = SPADE_HIDDEN) -> None:
        super().__init__()
        spectral, param_free_norm, kernel_size = parse_norm_G(norm_G)
        self.fin, self.fout = _positive_int(fin, "fin"), _positive_int(fout, "fout")
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        sn: Callable[[nn.Module], nn.Module] = spectral_norm if spectral else (lambda conv: conv)
        # Registration order is the official state-dict order: conv_0, conv_1, conv_s, norm_0, norm_1, norm_s.
        self.conv_0 = sn(nn.Conv2d(fin, fmiddle, 3, padding=1))
        self.conv_1 = sn(nn.Conv2d(fmiddle, fout, 3, padding=1))
        if self.learned_shortcut:
            self.conv_s = sn(nn.Conv2d(fin, fout, 1, bias=False))
        self.norm_0 = SPADE(fin, semantic_nc, param_free_norm, kernel_size, spade_hidden)
        self.norm_1 = SPADE(fmiddle, semantic_nc, param_free_norm, kernel_size, spade_hidden)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, semantic_nc, param_free_norm, kernel_size, spade_hidden)

    def shortcut(self, x: Tensor, seg: Tensor) -> Tensor:
        return self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x

    def forward(self, x: Tensor, seg: Tensor) -> Tensor:
        x_s = self.shortcut(x, seg)
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LRELU_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LRELU_SLOPE))
        return x_s + dx


def latent_grid(crop_size: int, aspect_ratio: float, num_upsampling_layers: str) -> tuple[int, int]:
    """(sh, sw) of the generator's first feature map: sw = crop_size // 2**n_up, sh = round(sw / aspect_ratio); the
    output is (sh, sw) * 2**n_up. ValueError for an empty grid."""
    if num_upsampling_layers not in NUM_UPSAMPLING:
        raise ValueError(f"num_upsampling_layers must be one of {tuple(NUM_UPSAMPLING)}, got {num_upsampling_layers!r}")
    num_up = NUM_UPSAMPLING[num_upsampling_layers]
    sw = _positive_int(crop_size, "crop_size") // 2**num_up
    sh = round(sw / aspect_ratio) if aspect_ratio > 0 else 0
    if sw < 1 or sh < 1:
        raise ValueError(f"the latent grid sh x sw = {sh}x{sw} is empty: crop_size {crop_size} must be "
                         f">= {2**num_up} for '{num_upsampling_layers}' and aspect_ratio (> 0, got "
                         f"{aspect_ratio}) small enough that round(sw / aspect_ratio) >= 1")
    return sh, sw


def output_size(crop_size: int, aspect_ratio: float, num_upsampling_layers: str) -> tuple[int, int]:
    """(H, W) of a SPADEGenerator's images for these options (no network built)."""
    sh, sw = latent_grid(crop_size, aspect_ratio, num_upsampling_layers)
    return sh * 2 ** NUM_UPSAMPLING[num_upsampling_layers], sw * 2 ** NUM_UPSAMPLING[num_upsampling_layers]


class SPADEGenerator(nn.Module):
    """G(semantics, z=None): (N, semantic_nc, H, W) -> images (N, 3, H, W) in [-1, 1] (tanh).

    (H, W) = `output_size` = (sh, sw) * 2**n_up with n_up = 5 / 6 / 7 for num_upsampling_layers 'normal' / 'more' /
    'most', sw = crop_size // 2**n_up and sh = round(sw / aspect_ratio) (Cityscapes: 'more', 512, 2 -> 4x8 -> 256x512).
    Without use_vae, `fc` (3x3 conv) starts from the semantics resized (nearest) to sh x sw. With use_vae, `fc` is
    Linear(z_dim -> 16 ngf sh sw) on z (N, z_dim); z=None draws z ~ N(0, I) from the global RNG, as the official code.
    PyTorch default init; the official init is `net.apply(xavier_init)`.
    """

    def __init__(self, semantic_nc: int, ngf: int = 64, num_upsampling_layers: str = "normal", crop_size: int = 256,
                 aspect_ratio: float = 1.0, norm_G: str = "spectralspadebatch3x3", use_vae: bool = False,
                 z_dim: int = 256, spade_hidden: int = SPADE_HIDDEN) -> None:
        super().__init__()
        if num_upsampling_layers not in NUM_UPSAMPLING:
            raise ValueError(f"num_upsampling_layers must be one of {tuple(NUM_UPSAMPLING)}, "
                             f"got {num_upsampling_layers!r}")
        parse_norm_G(norm_G)
        self.semantic_nc = _positive_int(semantic_nc, "semantic_nc")
        nf = _positive_int(ngf, "ngf")
        if num_upsampling_layers == "most" and ngf < 2:
            raise ValueError(f"num_upsampling_layers 'most' needs ngf >= 2 (its last block has ngf // 2 channels), "
                             f"got {ngf}")
        self.num_up = NUM_UPSAMPLING[num_upsampling_layers]
        self.sh, self.sw = latent_grid(crop_size, aspect_ratio, num_upsampling_layers)
        self.options = {"semantic_nc": semantic_nc, "ngf": ngf, "num_upsampling_layers": num_upsampling_layers,
                        "crop_size": crop_size, "aspect_ratio": aspect_ratio, "norm_G": norm_G, "use_vae": use_vae,
                        "z_dim": z_dim, "spade_hidden": spade_hidden}
        self.output_size = (self.sh * 2**self.num_up, self.sw * 2**self.num_up)
        self.ngf = nf
        self.use_vae = bool(use_vae)
        self.z_dim = _positive_int(z_dim, "z_dim")
        if self.use_vae:
            self.fc: nn.Module = nn.Linear(z_dim, 16 * nf * self.sh * self.sw)
        else:
            self.fc = nn.Conv2d(semantic_nc, 16 * nf, 3, padding=1)

        def block(fin: int, fout: int) -> SPADEResnetBlock:
            return SPADEResnetBlock(fin, fout, semantic_nc, norm_G, spade_hidden)

        self.head_0 = block(16 * nf, 16 * nf)
        self.G_middle_0 = block(16 * nf, 16 * nf)
        self.G_middle_1 = block(16 * nf, 16 * nf)
        self.up_0 = block(16 * nf, 8 * nf)
        self.up_1 = block(8 * nf, 4 * nf)
        self.up_2 = block(4 * nf, 2 * nf)
        self.up_3 = block(2 * nf, nf)
        final_nc = nf
        if num_upsampling_layers == "most":
            self.up_4 = block(nf, nf // 2)
            final_nc = nf // 2
        self.conv_img = nn.Conv2d(final_nc, 3, 3, padding=1)

    @staticmethod
    def up(x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def _initial(self, semantics: Tensor, z: Tensor | None) -> Tensor:
        """(N, 16 ngf, sh, sw): fc of the downsampled semantics, or (use_vae) of z."""
        if not self.use_vae:
            if z is not None:
                raise ValueError("z is only used by a generator built with use_vae=True; this one has use_vae=False")
            return self.fc(F.interpolate(semantics, size=(self.sh, self.sw), mode="nearest"))
        batch = semantics.shape[0]
        if z is None:
            z = torch.randn(batch, self.z_dim, device=semantics.device, dtype=semantics.dtype)
        elif not isinstance(z, Tensor) or tuple(z.shape) != (batch, self.z_dim):
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z: expected shape ({batch}, {self.z_dim}), got {shape}")
        return self.fc(z).view(batch, 16 * self.ngf, self.sh, self.sw)

    def forward(self, semantics: Tensor, z: Tensor | None = None) -> Tensor:
        """semantics (N, semantic_nc, *output_size) -> images (N, 3, *output_size) in [-1, 1]."""
        _check_map(semantics, "SPADEGenerator semantics", self.semantic_nc, self.output_size)
        x = self.head_0(self._initial(semantics, z), semantics)
        x = self.G_middle_0(self.up(x), semantics)
        if self.num_up >= NUM_UPSAMPLING["more"]:
            x = self.up(x)
        x = self.G_middle_1(x, semantics)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = block(self.up(x), semantics)
        if self.num_up == NUM_UPSAMPLING["most"]:
            x = self.up_4(self.up(x), semantics)
        return torch.tanh(self.conv_img(F.leaky_relu(x, LRELU_SLOPE)))


# ----------------------------------------------------------------------------------------------- discriminator
def _d_layer(in_nc: int, out_nc: int, stride: int, norm_D: str) -> nn.Module:
    """A spectral-norm 4x4 conv, then the norm of norm_D ('spectral' + instance | batch | sync_batch | none | '').

    With a norm the conv loses its bias (it has no effect after normalisation) and the pair is a Sequential, hence the
    official `model{n}.0.0.weight_orig` names; without one the conv keeps its bias (`model{n}.0.weight_orig`).
    """
    subnorm = norm_D[len("spectral"):] or "none"
    conv = spectral_norm(nn.Conv2d(in_nc, out_nc, D_KERNEL, stride, D_PADDING, bias=subnorm == "none"))
    if subnorm == "none":
        return conv
    if subnorm == "instance":
        return nn.Sequential(conv, nn.InstanceNorm2d(out_nc, affine=False))
    return nn.Sequential(conv, nn.BatchNorm2d(out_nc, affine=True))  # 'batch' and 'sync_batch' (convert for DDP)


class NLayerDiscriminator(nn.Module):
    """PatchGAN: x (N, input_nc, H, W) -> [model0(x), model1(.), ..., model{n_layers_D}(.)] (all intermediate outputs).

    model0: 4x4 conv s2 + LReLU (no norm); model1..model{n-1}: spectral 4x4 conv (s2, ..., the last s1; channels
    min(2 nf, 512)) + norm + LReLU; model{n}: 4x4 conv s1 -> 1 channel, the patch logits (unbounded). Padding 2, so
    each stride-2 layer maps H to H // 2 + 1 and each stride-1 layer to H + 1.
    Split for AdaptiveMix: `features(x)` = model{n-1}'s output (N, C, h, w), `head(h)` = model{n}(h).
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers_D: int = 4, norm_D: str = "spectralinstance") -> None:
        super().__init__()
        if norm_D not in D_NORMS:
            raise ValueError(f"norm_D must be one of {D_NORMS} (the official code needs the 'spectral' prefix), "
                             f"got {norm_D!r}")
        self.input_nc = _positive_int(input_nc, "input_nc")
        self.n_layers_D = _positive_int(n_layers_D, "n_layers_D")
        nf = _positive_int(ndf, "ndf")
        self.model0 = nn.Sequential(nn.Conv2d(input_nc, nf, D_KERNEL, 2, D_PADDING), nn.LeakyReLU(LRELU_SLOPE))
        for n in range(1, n_layers_D):
            nf_prev, nf = nf, min(nf * 2, D_MAX_CHANNELS)
            stride = 1 if n == n_layers_D - 1 else 2
            layer = nn.Sequential(_d_layer(nf_prev, nf, stride, norm_D), nn.LeakyReLU(LRELU_SLOPE))
            self.add_module(f"model{n}", layer)
        self.add_module(f"model{n_layers_D}", nn.Sequential(nn.Conv2d(nf, 1, D_KERNEL, 1, D_PADDING)))
        self.feature_dim = nf

    def _trunk(self) -> list[nn.Module]:
        return [getattr(self, f"model{n}") for n in range(self.n_layers_D)]

    def features(self, x: Tensor) -> Tensor:
        """x (N, input_nc, H, W) -> (N, feature_dim, h, w): the output of the last LReLU block."""
        _check_map(x, "discriminator input", self.input_nc)
        for layer in self._trunk():
            x = layer(x)
        return x

    def head(self, h: Tensor) -> Tensor:
        """Features (N, feature_dim, h, w) -> patch logits (N, 1, h + 1, w + 1)."""
        _check_map(h, "discriminator features", self.feature_dim)
        return getattr(self, f"model{self.n_layers_D}")(h)

    def forward(self, x: Tensor) -> list[Tensor]:
        _check_map(x, "discriminator input", self.input_nc)
        outputs = []
        for layer in self._trunk():
            x = layer(x)
            outputs.append(x)
        return outputs + [self.head(x)]


class MultiscaleDiscriminator(nn.Module):
    """D(x): x = cat([semantics, image], 1) (N, input_nc, H, W) -> per scale s, the list of NLayerDiscriminator outputs.

    Scale 0 sees x; scale s sees x average-pooled s times (3x3, stride 2, padding 1, count_include_pad=False).
    `D(x)[s][-1]` are the patch logits (hinge loss); `D(x)[s][:-1]` the features for feature matching.
    Feature/head split (AdaptiveMix), per scale, because the scales' features have different shapes:
    `features(x)[s]` / `head(hs)[s]`, or `scale_split(s)` -> (features(images, semantics), head(h, semantics)), the
    `i2i.mixing.adaptivemix` signature. `head(features(x))[s]` equals `D(x)[s][-1]`.
    PyTorch default init; the official init is `net.apply(xavier_init)`.
    """

    def __init__(self, input_nc: int, ndf: int = 64, n_layers_D: int = 4, num_D: int = 2,
                 norm_D: str = "spectralinstance") -> None:
        super().__init__()
        self.input_nc = _positive_int(input_nc, "input_nc")
        self.num_D = _positive_int(num_D, "num_D")
        self.options = {"input_nc": input_nc, "ndf": ndf, "n_layers_D": n_layers_D, "num_D": num_D, "norm_D": norm_D}
        for i in range(num_D):
            self.add_module(f"discriminator_{i}", NLayerDiscriminator(input_nc, ndf, n_layers_D, norm_D))

    @property
    def scales(self) -> list[NLayerDiscriminator]:
        return [getattr(self, f"discriminator_{i}") for i in range(self.num_D)]

    @staticmethod
    def downsample(x: Tensor) -> Tensor:
        return F.avg_pool2d(x, kernel_size=3, stride=2, padding=1, count_include_pad=False)

    def scale_inputs(self, x: Tensor) -> list[Tensor]:
        """x (N, input_nc, H, W) -> [x, downsample(x), ...], one input per scale."""
        _check_map(x, "MultiscaleDiscriminator input", self.input_nc)
        inputs = [x]
        for _ in range(self.num_D - 1):
            inputs.append(self.downsample(inputs[-1]))
        return inputs

    def forward(self, x: Tensor) -> list[list[Tensor]]:
        return [d(inp) for d, inp in zip(self.scales, self.scale_inputs(x))]

    def features(self, x: Tensor) -> list[Tensor]:
        """Per scale, the output of the last LReLU block (N, C, h_s, w_s)."""
        return [d.features(inp) for d, inp in zip(self.scales, self.scale_inputs(x))]

    def head(self, features: list[Tensor]) -> list[Tensor]:
        """Per-scale features (the output of `features`) -> per-scale patch logits (N, 1, h_s + 1, w_s + 1)."""
        if len(features) != self.num_D:
            raise ValueError(f"head: expected {self.num_D} per-scale feature maps, got {len(features)}")
        return [d.head(h) for d, h in zip(self.scales, features)]

    def scale_split(self, scale: int) -> tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]:
        """(features, head) of one scale as AdaptiveMix wants them: images (N, 3, H, W) in [-1, 1], semantics cond.

        features(images, semantics) = scale's features of downsample**scale(cat([semantics, images], 1));
        head(h, semantics) = the scale's patch logits (the semantics enter through the features only).
        """
        if not isinstance(scale, int) or not 0 <= scale < self.num_D:
            raise ValueError(f"scale must be an int in [0, {self.num_D}), got {scale!r}")
        d = self.scales[scale]

        def features(images: Tensor, semantics: Tensor) -> Tensor:
            x = torch.cat([semantics, images], dim=1)
            _check_map(x, f"scale {scale} input cat([semantics, images])", self.input_nc)
            for _ in range(scale):
                x = self.downsample(x)
            return d.features(x)

        def head(h: Tensor, semantics: Tensor) -> Tensor:
            return d.head(h)

        return features, head


# ----------------------------------------------------------------------------------------------- init and export
def xavier_init(module: nn.Module, gain: float = INIT_GAIN) -> None:
    """Official init (`--init_type xavier --init_variance 0.02`), applied per module: `net.apply(xavier_init)`.

    Conv/Linear weights ~ xavier_normal_(gain) (the spectral-norm `weight_orig` where there is one; u, v keep their
    random unit init), biases 0; affine batch norms: weight ~ N(1, gain), bias 0. Other modules are left as they are.
    """
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.weight is not None:
            nn.init.normal_(module.weight, 1.0, gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        nn.init.xavier_normal_(getattr(module, "weight_orig", module.weight), gain=gain)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def bake_spectral_norm(module: nn.Module) -> nn.Module:
    """Removes every spectral-norm hook in `module` (in place), leaving a plain `weight = weight_orig / sigma`.

    sigma = u . (W_mat v) with the STORED u, v: eval-mode semantics (no power iteration), so an eval-mode forward is
    unchanged. Needed for ONNX export (the hooks are not exportable) and removes weight_orig/_u/_v from the state dict.
    A train-mode forward before baking would first move u, v by one power step: bake after `eval()` comparisons.
    """
    for sub in module.modules():
        for hook in [h for h in sub._forward_pre_hooks.values() if isinstance(h, SpectralNorm)]:
            remove_spectral_norm(sub, hook.name)  # torch computes the weight with do_power_iteration=False
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """The inverse of `nn.SyncBatchNorm.convert_sync_batchnorm`: every SyncBatchNorm becomes a BatchNorm2d with the
    same parameters, running stats and train/eval mode (for export and single-process use). Returns the module (a new
    one when `module` itself is a SyncBatchNorm)."""
    out = module
    if isinstance(module, nn.SyncBatchNorm):
        out = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        # The tensors themselves move over (same device, dtype, requires_grad), not copies.
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        if module.track_running_stats:
            out.running_mean, out.running_var = module.running_mean, module.running_var
            out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, revert_sync_batchnorm(child))
    return out


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


def _state_problems(net: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    # load_state_dict takes a (1,) tensor for a 0-d one (old torch saved scalars, e.g. num_batches_tracked, so).
    mismatched = [f"{k}: file {tuple(v.shape)} vs net {expected[k]}" for k, v in state.items()
                  if k in expected and tuple(v.shape) != expected[k] and (expected[k], tuple(v.shape)) != ((), (1,))]
    missing = [f"{k} {shape}" for k, shape in expected.items() if k not in state]
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    return [f"{len(keys)} {kind} (e.g. {'; '.join(keys[:_SHOWN_KEYS])})"
            for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", mismatched)) if keys]


def _hints(net: nn.Module, state: Mapping[str, Tensor]) -> str:
    if isinstance(net, SPADEGenerator):
        hint = ("Check semantic_nc (labels + dontcare + instance edge), ngf, use_vae/z_dim (and crop_size, "
                "aspect_ratio, num_upsampling_layers for the VAE fc)")
    else:
        hint = "Check input_nc (semantic_nc + 3), ndf, n_layers_D, num_D and norm_D"
    if any(k.endswith("weight_orig") for k in state) and not any(k.endswith("weight_orig") for k in net.state_dict()):
        hint += "; the file has spectral-norm weights but the net has none (baked, or built without 'spectral')"
    if isinstance(net, SPADEGenerator) and "discriminator_0.model0.0.weight" in state:
        hint += "; the file looks like a discriminator (net_D) checkpoint"
    if isinstance(net, MultiscaleDiscriminator) and "conv_img.weight" in state:
        hint += "; the file looks like a generator (net_G) checkpoint"
    return hint + "."


def load_official_state(net: nn.Module, state: Mapping[str, Tensor], *,
                        source: str | os.PathLike | None = None) -> None:
    """Strict load of a flat official state dict into a SPADEGenerator / MultiscaleDiscriminator (maybe wrapped).

    Every key must match in name and shape; otherwise a ValueError names the missing, unexpected and mismatched keys
    and the constructor options to check, and the net is unchanged. 'normal' and 'more' generators have the same keys:
    num_upsampling_layers cannot be checked here (Cityscapes is 'more').
    """
    net = _unwrap(net)
    problems = _state_problems(net, state)
    if problems:
        origin = f"'{source}'" if source is not None else "the given state dict"
        options = ", ".join(f"{k}={v!r}" for k, v in getattr(net, "options", {}).items())
        raise ValueError(f"cannot load {origin} into {type(net).__name__}({options}): " + "; ".join(problems)
                         + ". " + _hints(net, state))
    net.load_state_dict(state, strict=True)


def load_official_generator(path: str | os.PathLike | None = None, generator: SPADEGenerator | None = None, *,
                            trust: bool = False) -> SPADEGenerator:
    """An official `*_net_G.pth` loaded strictly into `generator` (default: a new `CITYSCAPES_GENERATOR` one).

    `path` None looks up the registry entry `spade_cityscapes` (`$I2I_WEIGHTS/spade_cityscapes/latest_net_G.pth`,
    ...; MissingWeightsError says where to get it). `module.` prefixes are stripped; tensors-only unpickling unless
    `trust`. The generator's train/eval mode is left as it was.
    """
    state = load_weights("spade_cityscapes", path, trust=trust)
    generator = SPADEGenerator(**CITYSCAPES_GENERATOR) if generator is None else generator
    load_official_state(generator, state, source=path if path is not None else "spade_cityscapes")
    return generator


def load_official_discriminator(path: str | os.PathLike, discriminator: MultiscaleDiscriminator | None = None, *,
                                trust: bool = False) -> MultiscaleDiscriminator:
    """An official `*_net_D.pth` loaded strictly into `discriminator` (default: a new `CITYSCAPES_DISCRIMINATOR` one).

    NVlabs released generators only (NVlabs/SPADE issue #91), so this reads files of official training runs; there is
    no registry entry. `module.` prefixes are stripped; tensors-only unpickling unless `trust`.
    """
    state = plain_state_dict(safe_torch_load(path, trust=trust), Path(path))
    discriminator = MultiscaleDiscriminator(**CITYSCAPES_DISCRIMINATOR) if discriminator is None else discriminator
    load_official_state(discriminator, state, source=path)
    return discriminator


def save_official(net: nn.Module, path: str | os.PathLike) -> None:
    """Writes the flat state dict (no `module.` prefix), the official `*_net_G.pth` / `*_net_D.pth` format,
    atomically: a crash never leaves a truncated file at `path`."""
    atomic_torch_save(_unwrap(net).state_dict(), path)
