"""SPADE nets: official names/shapes, parity with the official forwards (fixtures), splits, init, export, IO."""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.utils.flop_counter import FlopCounterMode

from i2i import weights
from i2i.mixing.adaptivemix import AdaptiveMix
from i2i.nets.spade import (
    CITYSCAPES_DISCRIMINATOR,
    CITYSCAPES_GENERATOR,
    SPADE,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    SPADEGenerator,
    SPADEResnetBlock,
    bake_spectral_norm,
    load_official_discriminator,
    load_official_generator,
    load_official_state,
    parse_norm_G,
    revert_sync_batchnorm,
    save_official,
    spectral_norm,
    xavier_init,
)
from i2i.weights import UntrustedCheckpointError, WeightFormatError
from tests.fixture_weights import filled, fixture

SPEC_PARAMS = {"netG": 93_048_003, "netD": 5_601_410}
SPEC_GMAC_512x256_MORE = 281
SMALL_G = {"semantic_nc": 37, "ngf": 16, "num_upsampling_layers": "normal", "crop_size": 128, "aspect_ratio": 2.0,
           "norm_G": "spectralspadebatch3x3", "use_vae": False, "z_dim": 256}
SMALL_D = {"input_nc": 40, "ndf": 16, "n_layers_D": 4, "num_D": 2, "norm_D": "spectralinstance"}
D_OUTPUTS = [f"D{s}_{l}" for s in range(2) for l in range(5)]


def _num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _shapes(net: nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in net.state_dict().items()]


def _tiny_generator(**kw) -> SPADEGenerator:
    """(N, 5, 32, 64) -> (N, 3, 32, 64): latent 1x2, 5 upsamplings."""
    return SPADEGenerator(**{"semantic_nc": 5, "ngf": 4, "crop_size": 64, "aspect_ratio": 2.0, **kw})


def _one_hot(n: int, channels: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    labels = torch.randint(0, channels, (n, h, w), generator=torch.Generator().manual_seed(seed))
    return F.one_hot(labels, channels).permute(0, 3, 1, 2).float()


def _max_diff(a: torch.Tensor, b: np.ndarray) -> float:
    return (a - torch.from_numpy(b)).abs().max().item()


@pytest.fixture(scope="module")
def small():
    """(manifest, io, G, D) with the spade_small fixture weights, eval mode."""
    manifest, io = fixture("spade_small")
    generator, discriminator = SPADEGenerator(**SMALL_G), MultiscaleDiscriminator(**SMALL_D)
    generator.load_state_dict(filled(manifest["state_dict_shapes"]["netG"]), strict=True)
    discriminator.load_state_dict(filled(manifest["state_dict_shapes"]["netD"]), strict=True)
    return manifest, io, generator.eval(), discriminator.eval()


@pytest.fixture(scope="module")
def small_outputs(small):
    _, io, generator, discriminator = small
    semantics = torch.from_numpy(io["semantics"])
    with torch.no_grad():
        out = {"G_out": generator(semantics)}
        d_out = discriminator(torch.cat([semantics, torch.from_numpy(io["G_out"])], 1))
    out.update({f"D{s}_{l}": d_out[s][l] for s in range(2) for l in range(5)})
    return out


@pytest.fixture(scope="module")
def cityscapes():
    with torch.device("meta"):  # shapes only; skips 99M parameter initializations
        return {"netG": SPADEGenerator(**CITYSCAPES_GENERATOR),
                "netD": MultiscaleDiscriminator(**CITYSCAPES_DISCRIMINATOR)}


# --------------------------------------------------------------------------------------- names, shapes, counts
@pytest.mark.parametrize("name", ["netG", "netD"])
def test_cityscapes_state_dict_equals_official_names_shapes_and_order(cityscapes, name):
    manifest, _ = fixture("spade_cityscapes_keys")
    assert _shapes(cityscapes[name]) == list(manifest["state_dict_shapes"][name].items())


@pytest.mark.parametrize("name", ["netG", "netD"])
def test_cityscapes_parameter_counts_match_spec(cityscapes, name):
    assert _num_params(cityscapes[name]) == SPEC_PARAMS[name]


def test_cityscapes_dontcare_variant_equals_official_keys():
    import json

    from tests.fixture_weights import FIXTURES

    official = json.loads((FIXTURES / "spade_cityscapes_keys" / "keys_contain_dontcare.json").read_text())
    with torch.device("meta"):
        generator = SPADEGenerator(**{**CITYSCAPES_GENERATOR, "semantic_nc": 37})
        discriminator = MultiscaleDiscriminator(**{**CITYSCAPES_DISCRIMINATOR, "input_nc": 40})
    assert _shapes(generator) == list(official["netG"].items())
    assert _shapes(discriminator) == list(official["netD"].items())


def test_small_state_dicts_equal_fixture_keys(small):
    manifest, _, generator, discriminator = small
    assert _shapes(generator) == list(manifest["state_dict_shapes"]["netG"].items())
    assert _shapes(discriminator) == list(manifest["state_dict_shapes"]["netD"].items())


def test_cityscapes_geometry_and_macs_match_spec(cityscapes):
    generator = cityscapes["netG"].eval()
    assert (generator.sh, generator.sw) == (4, 8) and generator.output_size == (256, 512)
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        out = generator(torch.zeros(1, 36, 256, 512))
    assert out.shape == (1, 3, 256, 512)
    assert round(counter.get_total_flops() / 2e9) == SPEC_GMAC_512x256_MORE  # 1 MAC = 2 FLOPs


def test_normal_and_more_have_identical_keys_but_different_latent_grids():
    with torch.device("meta"):
        more = SPADEGenerator(**CITYSCAPES_GENERATOR)
        normal = SPADEGenerator(**{**CITYSCAPES_GENERATOR, "num_upsampling_layers": "normal"})
    assert _shapes(more) == _shapes(normal)
    assert (normal.sh, normal.sw) == (8, 16) and normal.output_size == more.output_size == (256, 512)


# --------------------------------------------------------------------------------------- parity with official outputs
@pytest.mark.parametrize("output", ["G_out", *D_OUTPUTS])
def test_small_nets_reproduce_official_outputs(small, small_outputs, output):
    manifest, io, _, _ = small
    assert small_outputs[output].shape == io[output].shape
    assert _max_diff(small_outputs[output], io[output]) <= manifest["atol"]


def test_fixture_generator_output_is_input_sensitive(small, small_outputs):
    """Guards the parity test: other semantics move G_out far beyond the tolerance (the manifest measured 55%)."""
    manifest, io, generator, _ = small
    with torch.no_grad():
        moved = generator(torch.from_numpy(io["semantics"]).roll(8, dims=3)) - small_outputs["G_out"]
    assert moved.abs().max() > 1000 * manifest["atol"]


# --------------------------------------------------------------------------------------- building blocks by hand
def test_spade_train_mode_matches_hand_computation():
    torch.manual_seed(0)
    spade = SPADE(6, 4).train()
    x, seg = torch.randn(3, 6, 8, 8), torch.rand(3, 4, 4, 4)
    out = spade(x, seg)
    seg_up = seg.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest x2
    actv = F.relu(F.conv2d(seg_up, spade.mlp_shared[0].weight, spade.mlp_shared[0].bias, padding=1))
    gamma = F.conv2d(actv, spade.mlp_gamma.weight, spade.mlp_gamma.bias, padding=1)
    beta = F.conv2d(actv, spade.mlp_beta.weight, spade.mlp_beta.bias, padding=1)
    mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * (1 + gamma) + beta
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert int(spade.param_free_norm.num_batches_tracked) == 1  # running stats are kept (eval uses them)


def test_instance_option_has_no_running_stats_and_normalises_per_sample():
    torch.manual_seed(0)
    spade = SPADE(6, 4, param_free_norm="instance")
    assert not any("param_free_norm" in k for k in spade.state_dict())
    block = SPADEResnetBlock(8, 4, 4, norm_G="spectralspadeinstance3x3")
    assert isinstance(block.norm_s.param_free_norm, nn.InstanceNorm2d)
    x, seg = torch.randn(2, 8, 4, 4), torch.rand(2, 4, 4, 4)
    with torch.no_grad():
        both = block.eval()(x, seg)
        torch.testing.assert_close(block(x[:1], seg[:1]), both[:1], rtol=1e-5, atol=1e-5)  # no batch statistics


def test_block_shortcut_and_spectral_norm_placement():
    learned, identity = SPADEResnetBlock(8, 4, 3), SPADEResnetBlock(8, 8, 3)
    assert learned.learned_shortcut and not identity.learned_shortcut and not hasattr(identity, "conv_s")
    assert learned.conv_0.out_channels == 4 and learned.conv_s.bias is None
    hooked = {n for n, m in learned.named_modules()
              if any(isinstance(h, SpectralNorm) for h in m._forward_pre_hooks.values())}
    assert hooked == {"conv_0", "conv_1", "conv_s"}
    plain = SPADEResnetBlock(8, 4, 3, norm_G="spadebatch3x3")
    assert not any(k.endswith("weight_orig") for k in plain.state_dict())
    with torch.no_grad():  # identity shortcut: out = x + residual
        x, seg = torch.randn(2, 8, 4, 4), torch.rand(2, 3, 4, 4)
        identity.eval()
        residual = identity.conv_1(F.leaky_relu(identity.norm_1(
            identity.conv_0(F.leaky_relu(identity.norm_0(x, seg), 0.2)), seg), 0.2))
        torch.testing.assert_close(identity(x, seg), x + residual)


def test_spectral_norm_iterates_in_train_mode_and_uses_stored_vectors_in_eval():
    block = SPADEResnetBlock(4, 4, 3)
    x, seg = torch.randn(2, 4, 4, 4), torch.rand(2, 3, 4, 4)
    u0 = block.conv_0.weight_u.clone()
    with torch.no_grad():
        block.eval()(x, seg)
        assert torch.equal(block.conv_0.weight_u, u0)
        block.train()(x, seg)
    assert not torch.equal(block.conv_0.weight_u, u0)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_our_spectral_norm_equals_torchs_in_values_gradients_power_iteration_and_double_backward(memory_format):
    """The lean backward (`_DivideBySigma`) changes the cost, not the math: two train-mode forwards sharing one
    backward (loss = D(real) - D(fake), as in GAN training), then a gradient penalty's double backward."""
    torch.manual_seed(0)
    ours = spectral_norm(nn.Conv2d(3, 5, 3, padding=1))
    theirs = torch.nn.utils.spectral_norm(nn.Conv2d(3, 5, 3, padding=1))  # torch's own hook
    theirs.load_state_dict(ours.state_dict())  # the same weight_orig, u, v
    assert list(theirs.state_dict()) == list(ours.state_dict())
    for net in (ours, theirs):
        net.to(memory_format=memory_format)
    real = torch.randn(2, 3, 6, 6).to(memory_format=memory_format)
    fake = torch.randn(2, 3, 6, 6).to(memory_format=memory_format)
    grads = {}
    for name, net in (("ours", ours), ("theirs", theirs)):
        x = fake.clone().requires_grad_()
        loss = net(real).square().mean() - net(x).pow(3).mean()
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        total = loss + gx.square().sum()  # a penalty on the input gradient: differentiates the backward again
        total.backward()
        grads[name] = (loss.detach(), net.weight_orig.grad.clone(), net.bias.grad.clone(), net.weight_u.clone(),
                       net.weight_v.clone())
    for a, b in zip(grads["ours"], grads["theirs"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert type(ours._forward_pre_hooks[next(iter(ours._forward_pre_hooks))]).__name__ == "LeanSpectralNorm"
    assert bake_spectral_norm(ours).state_dict().keys() == {"weight", "bias"}


@pytest.mark.parametrize("mode, crop_size, shape", [("normal", 64, (32, 64)), ("more", 128, (64, 128)),
                                                   ("most", 256, (128, 256))])
def test_upsampling_modes_set_output_size_and_most_adds_up_4(mode, crop_size, shape):
    generator = _tiny_generator(num_upsampling_layers=mode, crop_size=crop_size)
    assert generator.output_size == shape and (generator.sh, generator.sw) == (1, 2)
    assert hasattr(generator, "up_4") == (mode == "most")
    with torch.no_grad():
        out = generator.eval()(_one_hot(1, 5, *shape))
    assert out.shape == (1, 3, *shape) and out.abs().max() <= 1


def test_every_generator_parameter_gets_gradient_and_output_is_tanh():
    generator = _tiny_generator().train()
    out = generator(_one_hot(2, 5, 32, 64))
    assert out.shape == (2, 3, 32, 64) and out.abs().max() < 1
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())


def test_vae_branch_is_a_linear_from_z_and_draws_z_when_absent():
    generator = _tiny_generator(use_vae=True, z_dim=8).eval()
    assert isinstance(generator.fc, nn.Linear) and tuple(generator.fc.weight.shape) == (16 * 4 * 1 * 2, 8)
    semantics = _one_hot(2, 5, 32, 64)
    z = torch.randn(2, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fixed = generator(semantics, z)
        assert torch.equal(fixed, generator(semantics, z))
        torch.manual_seed(3)
        drawn = generator(semantics)
        torch.manual_seed(3)
        assert torch.equal(drawn, generator(semantics, torch.randn(2, 8)))
        assert not torch.allclose(drawn, fixed)
    with pytest.raises(ValueError, match=r"z: expected shape \(2, 8\), got \(2, 4\)"):
        generator(semantics, torch.zeros(2, 4))


@pytest.mark.parametrize("norm_D, keys", [
    ("spectralinstance", ["model1.0.0.weight_orig", "model1.0.0.weight_u", "model1.0.0.weight_v"]),
    ("spectralbatch", ["model1.0.0.weight_orig", "model1.0.0.weight_u", "model1.0.0.weight_v", "model1.0.1.weight",
                       "model1.0.1.bias", "model1.0.1.running_mean", "model1.0.1.running_var",
                       "model1.0.1.num_batches_tracked"]),
    ("spectralnone", ["model1.0.bias", "model1.0.weight_orig", "model1.0.weight_u", "model1.0.weight_v"]),
])
def test_discriminator_norm_variants_follow_the_official_naming(norm_D, keys):
    """The official get_nonspade_norm_layer: a norm drops the conv bias and nests (conv, norm) in a Sequential."""
    discriminator = NLayerDiscriminator(3, 4, 3, norm_D=norm_D)
    assert [k for k in discriminator.state_dict() if k.startswith("model1.")] == keys
    assert [o.shape[1] for o in discriminator(torch.zeros(2, 3, 16, 16))] == [4, 8, 16, 1]


# --------------------------------------------------------------------------------------- feature/head split
def test_features_then_head_equals_the_logits_of_every_scale(small):
    _, io, _, discriminator = small
    x = torch.cat([torch.from_numpy(io["semantics"]), torch.from_numpy(io["G_out"])], 1)
    with torch.no_grad():
        full, features = discriminator(x), discriminator.features(x)
        logits = discriminator.head(features)
    for s in range(2):
        assert torch.equal(features[s], full[s][3]) and features[s].shape[1] == 128
        assert torch.equal(logits[s], full[s][-1])
    assert torch.equal(discriminator.scale_inputs(x)[1], F.avg_pool2d(x, 3, 2, 1, count_include_pad=False))


@pytest.mark.parametrize("scale", [0, 1])
def test_scale_split_plugs_into_adaptivemix(small, small_outputs, scale):
    _, io, _, discriminator = small
    semantics, images = torch.from_numpy(io["semantics"]), torch.from_numpy(io["G_out"])
    features, head = discriminator.scale_split(scale)
    with torch.no_grad():
        h = features(images, semantics)
        torch.testing.assert_close(h, small_outputs[f"D{scale}_3"], atol=0, rtol=0)
        plain = AdaptiveMix(pairs="real_fake").wrap(features, head)(images, semantics)
        torch.testing.assert_close(plain, small_outputs[f"D{scale}_4"], atol=0, rtol=0)
        mix = AdaptiveMix(pairs="within")
        mixed = mix.wrap(features, head)(images, semantics, torch.Generator().manual_seed(0))
    assert mixed.shape == plain.shape and mix.pop_loss().ndim == 0


# --------------------------------------------------------------------------------------- init
def test_xavier_init_is_official_and_targets_weight_orig():
    torch.manual_seed(0)
    block = SPADEResnetBlock(64, 32, 3)
    block(torch.randn(2, 64, 4, 4), torch.rand(2, 3, 4, 4))  # after a forward, `weight` is a computed tensor
    u_before = block.conv_0.weight_u.clone()
    block.apply(xavier_init)
    weight = block.conv_0.weight_orig  # (32, 64, 3, 3): xavier std = gain * sqrt(2 / (fan_in + fan_out))
    assert abs(weight.std().item() / (0.02 * math.sqrt(2 / (64 * 9 + 32 * 9))) - 1) < 0.03
    assert block.conv_0.bias.abs().sum() == 0 and block.norm_0.mlp_gamma.bias.abs().sum() == 0
    assert torch.equal(block.conv_0.weight_u, u_before)
    discriminator = NLayerDiscriminator(3, 8, 3, norm_D="spectralbatch")
    discriminator.apply(xavier_init)
    bn = discriminator.model1[0][1]
    assert isinstance(bn, nn.BatchNorm2d) and (bn.weight - 1).abs().max() < 0.1 and bn.bias.abs().sum() == 0


def test_constructors_keep_pytorch_default_init():
    assert _tiny_generator().fc.bias.abs().sum() > 0


# --------------------------------------------------------------------------------------- export helpers
def test_bake_spectral_norm_keeps_outputs_and_leaves_plain_weights(small, small_outputs):
    manifest, io, _, _ = small
    generator, discriminator = SPADEGenerator(**SMALL_G), MultiscaleDiscriminator(**SMALL_D)
    generator.load_state_dict(filled(manifest["state_dict_shapes"]["netG"]))
    discriminator.load_state_dict(filled(manifest["state_dict_shapes"]["netD"]))
    conv = generator.up_0.conv_s  # by hand: W = W_orig / (u . W_mat v)
    sigma = conv.weight_u @ (conv.weight_orig.detach().flatten(1) @ conv.weight_v)
    expected = conv.weight_orig.detach() / sigma
    for net in (generator, discriminator):
        assert bake_spectral_norm(net.eval()) is net
        assert not any(k.endswith(("weight_orig", "weight_u", "weight_v")) for k in net.state_dict())
        assert not any(isinstance(h, SpectralNorm) for m in net.modules() for h in m._forward_pre_hooks.values())
    torch.testing.assert_close(generator.up_0.conv_s.weight.detach(), expected, atol=1e-7, rtol=1e-6)
    semantics = torch.from_numpy(io["semantics"])
    with torch.no_grad():
        assert (generator(semantics) - small_outputs["G_out"]).abs().max() <= 1e-5
        baked_d = discriminator(torch.cat([semantics, torch.from_numpy(io["G_out"])], 1))
    for s in range(2):
        for l in range(5):
            assert (baked_d[s][l] - small_outputs[f"D{s}_{l}"]).abs().max() <= 1e-5


def test_baked_block_exports_to_onnx_with_the_same_output(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    block = SPADEResnetBlock(8, 4, 5)
    block.train()(torch.randn(4, 8, 8, 8), torch.rand(4, 5, 8, 8))  # non-trivial running stats and u, v
    block = bake_spectral_norm(block.eval())
    x, seg = torch.randn(1, 8, 8, 8), torch.rand(1, 5, 16, 16)
    path = tmp_path / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(block, (x, seg), str(path), dynamo=False, input_names=["x", "seg"])
    session = ort.InferenceSession(str(path))
    (out,) = session.run(None, {"x": x.numpy(), "seg": seg.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, block(x, seg).numpy(), atol=5e-5, rtol=0)


def test_sync_batchnorm_conversion_keeps_keys_and_reverts_with_running_stats(small, small_outputs):
    manifest, io, _, _ = small
    generator = SPADEGenerator(**SMALL_G)
    generator.load_state_dict(filled(manifest["state_dict_shapes"]["netG"]))
    generator = nn.SyncBatchNorm.convert_sync_batchnorm(generator).eval()
    assert isinstance(generator.head_0.norm_0.param_free_norm, nn.SyncBatchNorm)
    assert _shapes(generator) == list(manifest["state_dict_shapes"]["netG"].items())
    semantics = torch.from_numpy(io["semantics"])
    with torch.no_grad():
        assert (generator(semantics) - small_outputs["G_out"]).abs().max() <= manifest["atol"]
    reverted = revert_sync_batchnorm(generator)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in reverted.modules())
    norm = reverted.up_1.norm_s.param_free_norm
    assert type(norm) is nn.BatchNorm2d and not norm.training and not norm.affine
    expected = filled(manifest["state_dict_shapes"]["netG"])
    assert all(torch.equal(v, expected[k].reshape(v.shape)) for k, v in reverted.state_dict().items())
    with torch.no_grad():
        assert (reverted(semantics) - small_outputs["G_out"]).abs().max() <= manifest["atol"]
    affine = revert_sync_batchnorm(nn.SyncBatchNorm(4))
    assert type(affine) is nn.BatchNorm2d and affine.weight.requires_grad and affine.training


# --------------------------------------------------------------------------------------- checkpoint IO
@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """Empty `$I2I_WEIGHTS`, home cache and torch hub folders; returns the `$I2I_WEIGHTS` folder."""
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "env"


@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_files_load_and_reproduce_the_fixture(small, small_outputs, tmp_path, prefix):
    manifest, io, _, _ = small
    g_path, d_path = tmp_path / "latest_net_G.pth", tmp_path / "latest_net_D.pth"
    for path, net in ((g_path, "netG"), (d_path, "netD")):
        torch.save({prefix + k: v for k, v in filled(manifest["state_dict_shapes"][net]).items()}, path)
    generator = load_official_generator(g_path, SPADEGenerator(**SMALL_G)).eval()
    discriminator = load_official_discriminator(d_path, MultiscaleDiscriminator(**SMALL_D)).eval()
    semantics = torch.from_numpy(io["semantics"])
    with torch.no_grad():
        assert _max_diff(generator(semantics), io["G_out"]) <= manifest["atol"]
        out = discriminator(torch.cat([semantics, torch.from_numpy(io["G_out"])], 1))
    assert _max_diff(out[1][4], io["D1_4"]) <= manifest["atol"]


def test_generator_path_none_uses_the_registry_folder(small, isolated_weights):
    manifest, _, reference, _ = small
    folder = isolated_weights / "spade_cityscapes"
    folder.mkdir(parents=True)
    torch.save(filled(manifest["state_dict_shapes"]["netG"]), folder / "latest_net_G.pth")
    generator = load_official_generator(generator=SPADEGenerator(**SMALL_G))
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in generator.state_dict().items())


def test_missing_generator_file_says_where_to_put_it(isolated_weights):
    with pytest.raises(weights.MissingWeightsError, match="spade_cityscapes.*latest_net_G.pth"):
        load_official_generator()


def test_mismatched_file_names_keys_and_options_and_changes_nothing(small, tmp_path):
    manifest, _, _, _ = small
    path = tmp_path / "latest_net_G.pth"
    torch.save(filled(manifest["state_dict_shapes"]["netG"]), path)
    target = SPADEGenerator(**{**SMALL_G, "semantic_nc": 36})
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_official_generator(path, target)
    message = str(error.value)
    assert str(path) in message and "SPADEGenerator(semantic_nc=36, ngf=16" in message
    assert "fc.weight: file (256, 37, 3, 3) vs net (256, 36, 3, 3)" in message and "Check semantic_nc" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_generator_file_into_discriminator_is_named(small, tmp_path):
    path = tmp_path / "latest_net_G.pth"
    save_official(small[2], path)
    with pytest.raises(ValueError, match=r"missing keys \(e\.g\. discriminator_0\.model0\.0\.weight .*"
                                         r"unexpected keys \(e\.g\. fc\.weight .*looks like a generator"):
        load_official_discriminator(path, MultiscaleDiscriminator(**SMALL_D))


def test_baked_net_gets_a_hint(small):
    manifest = small[0]
    baked = bake_spectral_norm(MultiscaleDiscriminator(**SMALL_D))
    with pytest.raises(ValueError, match="spectral-norm weights but the net has none"):
        load_official_state(baked, filled(manifest["state_dict_shapes"]["netD"]))


def test_files_that_are_not_state_dicts_are_named(tmp_path):
    tensor_file, nested = tmp_path / "tensor.pth", tmp_path / "nested.pth"
    torch.save(torch.zeros(3), tensor_file)
    torch.save({"netG": {"fc.weight": torch.zeros(1)}}, nested)
    with pytest.raises(WeightFormatError, match="expected a state_dict .* got Tensor"):
        load_official_discriminator(tensor_file)
    with pytest.raises(WeightFormatError, match=re.escape("entries ['netG'] are not tensors")):
        load_official_generator(nested, _tiny_generator())
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_official_discriminator(tmp_path / "absent.pth")


class _RunsCodeOnLoad:
    def __reduce__(self):
        return print, ("code from the checkpoint ran",)


def test_pickled_code_is_refused_without_trust(tmp_path):
    path = tmp_path / "latest_net_D.pth"
    torch.save({"discriminator_0.model0.0.weight": _RunsCodeOnLoad()}, path)
    with pytest.raises(UntrustedCheckpointError, match="trust"):
        load_official_discriminator(path)


def test_save_official_round_trip_is_exact_and_unprefixed(tmp_path):
    torch.manual_seed(1)
    discriminator = MultiscaleDiscriminator(8, 4, 3, 2)
    discriminator.apply(xavier_init)
    path = tmp_path / "ckpt" / "10_net_D.pth"
    save_official(nn.DataParallel(discriminator), path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(discriminator.state_dict())
    fresh = load_official_discriminator(path, MultiscaleDiscriminator(8, 4, 3, 2))
    assert all(torch.equal(v, raw[k]) for k, v in fresh.state_dict().items())


# --------------------------------------------------------------------------------------- input errors
def test_bad_inputs_are_named():
    generator = _tiny_generator().eval()
    discriminator = MultiscaleDiscriminator(8, 4, 2, 2)
    with pytest.raises(ValueError, match=r"semantics: expected a float tensor \(N, 5, H, W\), got torch.float32 tensor "
                                         r"of shape \(1, 4, 32, 64\)"):
        generator(torch.zeros(1, 4, 32, 64))
    with pytest.raises(ValueError, match=r"expected spatial size 32x64 \(H x W\), got shape \(1, 5, 64, 64\)"):
        generator(torch.zeros(1, 5, 64, 64))
    with pytest.raises(ValueError, match="got torch.int64 tensor"):
        generator(torch.zeros(1, 5, 32, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="z is only used by a generator built with use_vae=True"):
        generator(torch.zeros(1, 5, 32, 64), torch.zeros(1, 256))
    with pytest.raises(ValueError, match=r"MultiscaleDiscriminator input: expected a float tensor \(N, 8, H, W\)"):
        discriminator(torch.zeros(1, 7, 16, 16))
    features, _ = discriminator.scale_split(1)
    with pytest.raises(ValueError, match=r"scale 1 input cat\(\[semantics, images\]\): expected .*\(N, 8, H, W\)"):
        features(torch.zeros(1, 3, 16, 16), torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"head: expected 2 per-scale feature maps, got 1"):
        discriminator.head([torch.zeros(1, 8, 4, 4)])
    with pytest.raises(ValueError, match=r"scale must be an int in \[0, 2\), got 2"):
        discriminator.scale_split(2)


@pytest.mark.parametrize("build, match", [
    (lambda: SPADEGenerator(5, norm_G="spectralspadegroup3x3"), "norm_G must be"),
    (lambda: SPADEGenerator(5, norm_G="spectralspadebatch4x4"), "with an odd k"),
    (lambda: SPADEGenerator(5, num_upsampling_layers="many"), "num_upsampling_layers must be one of"),
    (lambda: SPADEGenerator(5, crop_size=16), "latent grid sh x sw = 0x0 is empty"),
    (lambda: SPADEGenerator(0), "semantic_nc must be a positive int"),
    (lambda: MultiscaleDiscriminator(8, norm_D="instance"), "needs the 'spectral' prefix"),
    (lambda: MultiscaleDiscriminator(8, num_D=0), "num_D must be a positive int"),
])
def test_bad_constructor_arguments_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_parse_norm_G():
    assert parse_norm_G("spectralspadesyncbatch3x3") == (True, "syncbatch", 3)
    assert parse_norm_G("spadeinstance5x5") == (False, "instance", 5)
