"""StyleGAN2 (rosinality layout, plain PyTorch): official names/shapes, parity with the official forwards (fixtures),
grouped vs non-grouped modulated conv, ONNX export, upfirdn2d, R1 / path-length regularisation, checkpoint IO."""
from __future__ import annotations

import argparse
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from i2i.nets.stylegan2 import Discriminator, Generator, ModulatedConv2d, NoiseInjection, upfirdn2d
from i2i.nets.stylegan2_io import generator_args_from_state, load_into, load_rosinality_checkpoint
from i2i.nets.stylegan2_losses import (D_REG_EVERY, R1_GAMMA, d_logistic_loss, d_r1_loss, g_nonsaturating_loss,
                                       g_path_regularize, lazy_adam_settings)
from i2i.weights import UntrustedCheckpointError
from tests.fixture_weights import FIXTURES, deterministic_state_dict, fixture

SPEC_PARAMS = {"generator": 26_231_202, "discriminator": 28_864_129}
SMALL_G = {"size": 32, "style_dim": 64, "n_mlp": 2, "channel_multiplier": 1}  # the stylegan2_small fixture
VARIANTS = ("", "_ck", "_u")


def _shapes(net: nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in net.state_dict().items()]


def _variant_weights(manifest: dict, net: str, variant: str,
                     fill: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """The fixture's weight regimes (README_a.md): fill, _ck (official FIR kernels), _u (N(0, 1), the realistic one).

    `fill`: the net's deterministic_state_dict when already drawn (drawing it takes seconds).
    """
    shapes = manifest["state_dict_shapes"][net]
    state = dict(deterministic_state_dict(shapes, seed=0) if fill is None else fill)
    if not variant:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    kernels = dict(np.load(FIXTURES / "stylegan2_small" / f"const_kernels_{'G' if net == 'generator' else 'D'}.npz"))
    for k, shape in shapes.items():
        if k.endswith(".kernel"):
            state[k] = kernels[k].astype(np.float32)
        elif variant == "_u" and len(shape) >= 2:
            factor = math.sqrt(math.prod(shape[1:])) * (100.0 if re.fullmatch(r"style\.\d+\.weight", k) else 1.0)
            state[k] = (state[k].astype(np.float64) * factor).astype(np.float32)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def _small_nets(manifest: dict, variant: str, fills: dict | None = None,
                nets: tuple[Generator, Discriminator] | None = None) -> tuple[Generator, Discriminator]:
    """The fixture's nets (or `nets`, reloaded) with the variant's weights, strict, in eval mode."""
    generator, discriminator = nets or (Generator(**SMALL_G), Discriminator(32, channel_multiplier=1))
    fills = fills or {}
    generator.load_state_dict(_variant_weights(manifest, "generator", variant, fills.get("generator")), strict=True)
    discriminator.load_state_dict(_variant_weights(manifest, "discriminator", variant, fills.get("discriminator")),
                                  strict=True)
    return generator.eval(), discriminator.eval()


def _outputs(generator: Generator, discriminator: Discriminator | None, io: dict,
             latent: bool = True) -> dict[str, torch.Tensor]:
    z, x = torch.from_numpy(io["z"]), torch.from_numpy(io["x"])
    with torch.no_grad():
        outputs = {"G_out": generator([z], randomize_noise=False)[0], "W_out": generator.get_latent(z)}
        if latent:
            outputs["G_out_latent"] = generator([z], input_is_latent=True, randomize_noise=False)[0]
        if discriminator is not None:
            outputs["D_out"], outputs["D_x"] = discriminator(outputs["G_out"]), discriminator(x)
    return outputs


@pytest.fixture(scope="module")
def small():
    """manifest, io and {(variant, fused): outputs of our nets loaded with that variant's weights}.

    The non-grouped path runs on the realistic _u weights only: the fixture's 512-channel generator costs ~1 s per
    forward on one CPU thread.
    """
    manifest, io = fixture("stylegan2_small")
    fills = {net: deterministic_state_dict(shapes, seed=0) for net, shapes in manifest["state_dict_shapes"].items()}
    nets, outputs = None, {}
    for variant in VARIANTS:
        nets = _small_nets(manifest, variant, fills, nets)
        outputs[variant, True] = _outputs(*nets, io)
    outputs["_u", False] = _outputs(nets[0].set_fused(False), None, io)  # D has no modulated convs
    return manifest, io, outputs


def _tiny_generator(size: int = 16, style_dim: int = 8, channel_max: int = 16) -> Generator:
    torch.manual_seed(0)
    return Generator(size, style_dim, 2, channel_multiplier=1, channel_max=channel_max)


def _tiny_discriminator(size: int = 16) -> Discriminator:
    torch.manual_seed(1)
    return Discriminator(size, channel_multiplier=1, channel_max=16)


# --------------------------------------------------------------------------------------- names, shapes, counts
def test_256_state_dicts_equal_official_names_shapes_order_and_counts():
    manifest, _ = fixture("stylegan2_256_keys")
    with torch.device("meta"):  # shapes only: skips 55M parameter initialisations
        nets = {"generator": Generator(256, 256, 8, channel_multiplier=2),
                "discriminator": Discriminator(256, channel_multiplier=2)}
    for name, net in nets.items():
        assert _shapes(net) == list(manifest["state_dict_shapes"][name].items())
        assert sum(p.numel() for p in net.parameters()) == SPEC_PARAMS[name]
        assert {k for k, _ in net.named_buffers()} == set(manifest["buffers"][name])
    assert generator_args_from_state(nets["generator"].state_dict()) == {
        "size": 256, "style_dim": 256, "n_mlp": 8, "channel_multiplier": 2}


def test_small_state_dicts_equal_official_names_and_shapes():
    manifest, _ = fixture("stylegan2_small")
    assert _shapes(Generator(**SMALL_G)) == list(manifest["state_dict_shapes"]["generator"].items())
    discriminator = Discriminator(32, channel_multiplier=1)
    assert _shapes(discriminator) == list(manifest["state_dict_shapes"]["discriminator"].items())


# --------------------------------------------------------------------------------------- parity with official outputs
# (output, weight variant, grouped modulated convs); the shared path is a generator option, so no D outputs there
PARITY_CASES = [pytest.param(output, variant, fused, id=f"{output}-{variant.strip('_') or 'fill'}"
                             + ("" if fused else "-shared"))
                for variant, fused in (("", True), ("_ck", True), ("_u", True), ("_u", False))
                for output in ("G_out", "G_out_latent", "W_out", "D_out", "D_x") if fused or not output.startswith("D")]


@pytest.mark.parametrize("output, variant, fused", PARITY_CASES)
def test_small_nets_reproduce_official_outputs(small, output, variant, fused):
    manifest, io, outputs = small
    name = output + variant
    if name not in io:  # W_out_ck equals W_out (the kernels do not touch the mapping), so it was not stored
        name = output
    # Per-output cross-implementation tolerance: max(1e-5, 10 x |official float32 - float64|); 1e-5 except the
    # _u generator outputs (6e-5, 7e-5), whose non-grouped path orders the float32 sums differently.
    atol = manifest["tolerance_details"]["atol_cross_impl_per_output"][name]
    torch.testing.assert_close(outputs[variant, fused][output], torch.from_numpy(io[name]), atol=atol, rtol=0)
    if name == "W_out":  # O(1e-3) in the fill regime, where an absolute 1e-5 says little
        torch.testing.assert_close(outputs[variant, fused][output], torch.from_numpy(io[name]), atol=1e-9, rtol=1e-4)


def test_fill_variant_checks_the_kernel_buffers(small):
    _, io, outputs = small
    # The random non-symmetric kernels of the fill change the image by ~2 (official: 1.91) against the constant ones.
    assert (outputs["", True]["G_out"] - outputs["_ck", True]["G_out"]).abs().max() > 1.0
    # In the _u regime D depends on its input and G on the mapping, so those paths are really compared.
    assert (torch.from_numpy(io["D_out_u"]) - torch.from_numpy(io["D_x_u"])).abs().max() > 0.5


# --------------------------------------------------------------------------------------- grouped vs shared modulated conv
@pytest.mark.parametrize("kernel_size, upsample, demodulate", [(3, False, True), (3, True, True), (1, False, False)])
def test_grouped_and_shared_modulated_conv_agree(kernel_size, upsample, demodulate):
    torch.manual_seed(0)
    conv = ModulatedConv2d(6, 5, kernel_size, 8, demodulate=demodulate, upsample=upsample)
    x, style = torch.randn(3, 6, 8, 8), torch.randn(3, 8)
    grouped = conv(x, style)
    conv.fused = False
    shared = conv(x, style)
    assert grouped.shape == (3, 5, 16 if upsample else 8, 16 if upsample else 8)
    torch.testing.assert_close(shared, grouped, atol=1e-5, rtol=0)


def test_grouped_and_shared_generators_agree_at_batch_3():
    generator = _tiny_generator(32, channel_max=32)
    for module in generator.modules():  # non-zero noise strength, so the noise path is compared too
        if isinstance(module, NoiseInjection):
            nn.init.constant_(module.weight, 0.5)
    z = torch.randn(3, 8)
    with torch.no_grad():
        grouped = generator([z], randomize_noise=False)[0]
        shared = generator.set_fused(False)([z], randomize_noise=False)[0]
    assert all(not m.fused for m in generator.modules() if isinstance(m, ModulatedConv2d))
    # The images reach |x| ~ 10 (random init, 11 modulated convs): float32 rounding of the two summation orders
    # is ~6e-6 there (measured), so a relative term joins the 1e-5 of the single-layer test.
    torch.testing.assert_close(shared, grouped, atol=1e-5, rtol=1e-6)


class _ExportedGenerator(nn.Module):
    """z (N, style_dim) -> image, with the fixed noise buffers: no random op in the graph."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator([z], randomize_noise=False)[0]


@pytest.mark.slow  # ~25 s: the dynamo export dominates
def test_shared_generator_exports_to_onnx_with_dynamic_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _ExportedGenerator(_tiny_generator(16).set_fused(False)).eval()
    path = tmp_path / "stylegan2.onnx"
    torch.onnx.export(model, (torch.randn(2, 8),), path, dynamo=True, opset_version=18, external_data=False,
                      dynamic_shapes={"z": {0: torch.export.Dim("batch")}})
    assert [p.name for p in tmp_path.iterdir()] == ["stylegan2.onnx"]  # one file, no external data
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in (1, 3):
        z = torch.randn(batch, 8)
        with torch.no_grad():
            expected = model(z).numpy()
        (got,) = session.run(None, {name: z.numpy()})
        assert got.shape == (batch, 3, 16, 16)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------- upfirdn2d
def _upfirdn2d_by_definition(x: np.ndarray, kernel: np.ndarray, up: int, down: int, pad: tuple) -> np.ndarray:
    """Zero insertion, zero padding, true 2-D convolution (flipped kernel), subsampling, written out with loops."""
    n, c, h, w = x.shape
    up_x = np.zeros((n, c, h * up, w * up))
    up_x[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    padded = np.pad(up_x, ((0, 0), (0, 0), (y0, y1), (x0, x1)))
    kh, kw = kernel.shape
    out_h, out_w = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    full = np.zeros((n, c, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            window = padded[:, :, i:i + kh, j:j + kw]
            full[:, :, i, j] = (window * kernel[::-1, ::-1]).sum((2, 3))
    return full[:, :, ::down, ::down]


@pytest.mark.parametrize("up, down, pad", [(2, 1, (2, 1, 2, 1)), (1, 2, (2, 2, 1, 2)), (2, 2, (1, 0, 0, 1))])
def test_upfirdn2d_matches_its_definition_with_a_non_symmetric_kernel(up, down, pad):
    rng = np.random.default_rng(0)
    x, kernel = rng.standard_normal((2, 3, 5, 6)), rng.standard_normal((4, 3))
    out = upfirdn2d(torch.from_numpy(x), torch.from_numpy(kernel), up=up, down=down, pad=pad)
    np.testing.assert_allclose(out.numpy(), _upfirdn2d_by_definition(x, kernel, up, down, pad), atol=1e-12, rtol=0)


def test_upfirdn2d_has_correct_first_and_second_derivatives():
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(4, 4, dtype=torch.float64)
    for up, down, pad in ((2, 1, (2, 1)), (1, 2, (1, 1))):
        assert torch.autograd.gradcheck(lambda t: upfirdn2d(t, kernel, up, down, pad), (x,))
        assert torch.autograd.gradgradcheck(lambda t: upfirdn2d(t, kernel, up, down, pad), (x,))
    with pytest.raises(ValueError, match="non-negative"):
        upfirdn2d(x, kernel, pad=(-1, 0))


# --------------------------------------------------------------------------------------- losses and regularisation
def test_losses_are_the_logistic_forms():
    zero = torch.zeros(4, 1)
    torch.testing.assert_close(d_logistic_loss(zero, zero), torch.tensor(2 * math.log(2)))
    torch.testing.assert_close(g_nonsaturating_loss(zero), torch.tensor(math.log(2)))
    confident = torch.full((4, 1), 20.0)
    assert d_logistic_loss(confident, -confident) < 1e-8 and g_nonsaturating_loss(-confident) > 19


def test_r1_double_backward_reaches_the_discriminator_weights():
    discriminator = _tiny_discriminator()
    real = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    real_pred = discriminator(real)
    r1 = d_r1_loss(real_pred, real)
    assert r1 > 0
    # The lazy form of the reference: weight gamma/2 * reg_every; 0 * real_pred[0] keeps every D output in the graph.
    (R1_GAMMA / 2 * r1 * D_REG_EVERY + 0 * real_pred[0]).sum().backward()
    grads = {n: p.grad for n, p in discriminator.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    for name in ("convs.0.0.weight", "convs.1.conv1.0.weight", "convs.2.skip.1.weight", "final_conv.0.weight",
                 "final_linear.0.weight"):
        assert grads[name].abs().sum() > 0, name
    with pytest.raises(ValueError, match="real_img must require grad"):
        d_r1_loss(real_pred, real.detach())


def test_path_length_regularisation_runs_and_updates_the_mean():
    generator = _tiny_generator()
    image, latents = generator([torch.randn(2, 8)], return_latents=True)
    assert latents.shape == (2, generator.n_latent, 8)
    penalty, mean, lengths = g_path_regularize(image, latents, 0.0)
    assert lengths.shape == (2,) and torch.all(lengths > 0) and not mean.requires_grad
    torch.testing.assert_close(mean, 0.01 * lengths.mean().detach())
    penalty.backward()
    grad = generator.style[1].weight.grad
    assert torch.isfinite(penalty) and grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    _, mean2, _ = g_path_regularize(*generator([torch.randn(2, 8)], return_latents=True), mean)
    assert mean2 != mean


def test_lazy_adam_settings_follow_the_reference():
    settings = lazy_adam_settings(0.002, 16)
    assert settings["lr"] == pytest.approx(0.002 * 16 / 17)
    assert settings["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))


# --------------------------------------------------------------------------------------- forward API
def test_discriminator_equals_head_of_features_and_checks_the_stddev_group():
    discriminator = _tiny_discriminator()
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        h = discriminator.features(x)
        assert h.shape == (4, discriminator.feature_dim, 4, 4)
        torch.testing.assert_close(discriminator.head(h), discriminator(x), atol=0, rtol=0)
        assert discriminator(x[:3]).shape == (3, 1)  # group = min(N, 4) = 3
    with pytest.raises(ValueError, match="batch size 6 must be a multiple of the minibatch-stddev group size"):
        discriminator(torch.zeros(6, 3, 16, 16))
    with pytest.raises(ValueError, match=r"expected images \(N, 3, 16, 16\), got \(2, 3, 32, 32\)"):
        discriminator(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"features: expected shape \(N, 16, 4, 4\)"):
        discriminator.head(torch.zeros(2, 16, 8, 8))


def test_noise_options_make_translation_deterministic_or_random():
    generator = _tiny_generator()
    for module in generator.modules():
        if isinstance(module, NoiseInjection):
            nn.init.constant_(module.weight, 1.0)
    z = torch.randn(2, 8)
    with torch.no_grad():
        fixed = generator([z], randomize_noise=False)[0]
        assert torch.equal(generator([z], randomize_noise=False)[0], fixed)
        assert torch.equal(generator([z], noise=generator.fixed_noise())[0], fixed)
        assert not torch.allclose(generator([z])[0], generator([z])[0])  # fresh noise each call
        assert not torch.allclose(generator([z], noise=generator.make_noise())[0], fixed)


def test_latent_options():
    generator = _tiny_generator()
    z1, z2 = torch.randn(2, 8), torch.randn(2, 8)
    w1, w2 = generator.get_latent(z1), generator.get_latent(z2)
    with torch.no_grad():
        image, latent = generator([z1], randomize_noise=False, return_latents=True)
        assert image.shape == (2, 3, 16, 16) and generator([z1])[1] is None
        torch.testing.assert_close(latent, w1[:, None].expand(-1, generator.n_latent, -1))
        # w given directly, as one vector or per layer (W+), skips the mapping network
        torch.testing.assert_close(generator([w1], input_is_latent=True, randomize_noise=False)[0], image)
        torch.testing.assert_close(generator([latent], input_is_latent=True, randomize_noise=False)[0], image)
        _, mixed = generator([z1, z2], inject_index=3, return_latents=True)
        torch.testing.assert_close(mixed[:, :3], w1[:, None].expand(-1, 3, -1))
        torch.testing.assert_close(mixed[:, 3:], w2[:, None].expand(-1, generator.n_latent - 3, -1))
        # truncation 0 maps every z to truncation_latent
        mean = generator.mean_latent(64)
        truncated = generator([z1], truncation=0.0, truncation_latent=mean, randomize_noise=False)[0]
        torch.testing.assert_close(truncated[0], truncated[1])
        torch.testing.assert_close(truncated, generator([mean.expand(2, -1)], input_is_latent=True,
                                                        randomize_noise=False)[0])


def test_bad_generator_inputs_and_arguments_are_named():
    generator = _tiny_generator()
    z = torch.randn(2, 8)
    with pytest.raises(ValueError, match=r"list of one or two latents, G\(\[z\]\).*got a tensor of shape \(2, 8\)"):
        generator(z)
    with pytest.raises(ValueError, match=r"styles\[0\]: expected shape \(N, 8\), got \(2, 7\)"):
        generator([torch.randn(2, 7)])
    with pytest.raises(ValueError, match=r"per-layer w must be \(N, 6, 8\), got \(2, 5, 8\)"):
        generator([torch.randn(2, 5, 8)], input_is_latent=True)
    with pytest.raises(ValueError, match="noise: expected a list of 5 maps"):
        generator([z], noise=[None] * 4)
    with pytest.raises(ValueError, match="truncation < 1 needs truncation_latent"):
        generator([z], truncation=0.5)
    with pytest.raises(ValueError, match=r"size must be a power of two in \[4, 1024\], got 48"):
        Generator(48, 8, 2)
    with pytest.raises(ValueError, match="style_dim must be a positive int"):
        Generator(16, 0, 2)


# --------------------------------------------------------------------------------------- checkpoint IO
def _train_checkpoint(generator: Generator, discriminator: Discriminator, g_ema: Generator) -> dict:
    """The layout of rosinality's train.py checkpoint, with real optimiser states and its argparse options."""
    # foreach=False: the first foreach step costs seconds of one-off setup on CPU
    g_optim = torch.optim.Adam(generator.parameters(), **lazy_adam_settings(0.002, 4), foreach=False)
    d_optim = torch.optim.Adam(discriminator.parameters(), **lazy_adam_settings(0.002, 16), foreach=False)
    for p in generator.parameters():  # one step with stand-in gradients fills the Adam state with tensors
        p.grad = torch.randn_like(p)
    g_optim.step()
    args = argparse.Namespace(size=16, latent=8, n_mlp=2, channel_multiplier=1, r1=10.0, path="lmdb", wandb=False)
    return {"g": generator.state_dict(), "d": discriminator.state_dict(), "g_ema": g_ema.state_dict(),
            "g_optim": g_optim.state_dict(), "d_optim": d_optim.state_dict(), "args": args, "ada_aug_p": 0.0}


def test_official_checkpoint_loads_without_trust_and_reproduces_outputs(tmp_path):
    g_ema, discriminator, trained = _tiny_generator(), _tiny_discriminator(), _tiny_generator()
    path = tmp_path / "010000.pt"
    torch.save(_train_checkpoint(trained, discriminator, g_ema), path)
    state = load_rosinality_checkpoint(path)  # the Namespace of options needs no full unpickle
    assert sorted(state) == ["d", "g", "g_ema"]
    torch.manual_seed(5)  # other initial weights than the saved nets
    generator = Generator(16, 8, 2, channel_multiplier=1, channel_max=16)
    critic, g_train = Discriminator(16, channel_multiplier=1, channel_max=16), Generator(16, 8, 2, 1, channel_max=16)
    load_into({"g_ema": generator, "d": critic, "g": g_train}, state, source=path)
    z, x = torch.randn(2, 8), torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(generator([z], randomize_noise=False)[0], g_ema([z], randomize_noise=False)[0],
                                   atol=0, rtol=0)
        torch.testing.assert_close(critic(x), discriminator(x), atol=0, rtol=0)
    assert all(torch.equal(v, trained.state_dict()[k]) for k, v in g_train.state_dict().items())


def test_converted_checkpoint_with_g_ema_only_loads(tmp_path):
    generator = _tiny_generator()
    path = tmp_path / "stylegan2-converted.pt"  # convert_weight.py: {'g_ema', 'latent_avg'}
    torch.save({"g_ema": {f"module.{k}": v for k, v in generator.state_dict().items()},
                "latent_avg": torch.zeros(8)}, path)
    state = load_rosinality_checkpoint(path)
    target = _tiny_generator()
    nn.init.zeros_(target.input.input)
    load_into({"g_ema": target}, state, source=path)
    assert torch.equal(target.input.input, generator.input.input)
    with pytest.raises(ValueError, match=re.escape(f"'{path}' has no weights for ['d']; it holds ['g_ema']")):
        load_into({"d": _tiny_discriminator()}, state, source=path)


def test_wrong_files_are_named_and_change_nothing(tmp_path):
    tensor_file, bare_file, other_file = tmp_path / "t.pt", tmp_path / "bare.pt", tmp_path / "other.pt"
    torch.save(torch.zeros(3), tensor_file)
    torch.save(_tiny_generator().state_dict(), bare_file)
    torch.save({"model": {}}, other_file)
    with pytest.raises(ValueError, match=re.escape(f"'{tensor_file}' is not a rosinality StyleGAN2 checkpoint")):
        load_rosinality_checkpoint(tensor_file)
    with pytest.raises(ValueError, match=r"none of \['g', 'd', 'g_ema'\].*a bare state_dict\?"):
        load_rosinality_checkpoint(bare_file)
    with pytest.raises(ValueError, match=r"none of .* it holds \['model'\]$"):
        load_rosinality_checkpoint(other_file)

    small = {"g_ema": Generator(**SMALL_G).state_dict()}
    target = _tiny_generator()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_into({"g_ema": target}, small, source="010000.pt")
    message = str(error.value)
    assert "cannot load 'g_ema' (Generator) from '010000.pt'" in message
    assert "the file's entry fits Generator(size=32, style_dim=64, n_mlp=2)" in message
    assert "18 unexpected keys (e.g. convs.4.conv.weight (1, 512, 512, 3, 3)" in message  # the 32 px layers
    assert "input.input: file (1, 512, 4, 4) vs net (1, 16, 4, 4)" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


class _RunsCodeOnLoad:
    """Pickles as a call to `_record`: loading the file executes code."""

    def __init__(self, marker, state: dict) -> None:
        self.marker, self.state = marker, state

    def __reduce__(self):
        return _record, (str(self.marker), self.state)


def _record(marker: str, state: dict) -> dict:
    with open(marker, "w") as f:
        f.write("ran")
    return state


def test_pickled_code_is_refused_without_trust(tmp_path):
    generator = _tiny_generator()
    marker, path = tmp_path / "marker", tmp_path / "suspicious.pt"
    torch.save({"g_ema": _RunsCodeOnLoad(marker, generator.state_dict())}, path)
    with pytest.raises(UntrustedCheckpointError, match="trust"):
        load_rosinality_checkpoint(path)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="fully unpickling"):
        state = load_rosinality_checkpoint(path, trust=True)
    assert marker.exists() and torch.equal(state["g_ema"]["input.input"], generator.input.input)
