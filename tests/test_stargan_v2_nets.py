"""StarGAN v2 nets: official names/shapes, parity with the official forwards (fixtures), splits, init, checkpoint IO."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from i2i.nets.stargan_v2 import (
    NET_NAMES,
    Discriminator,
    Generator,
    HighPass,
    MappingNetwork,
    StyleEncoder,
    build_nets,
    he_init,
    load_into,
    load_official_checkpoint,
    official_width,
    save_official_checkpoint,
)
from i2i.weights import UntrustedCheckpointError
from tests.fixture_weights import filled, fixture

SPEC_PARAMS_AFHQ = {"generator": 33_892_995, "mapping_network": 3_259_072, "style_encoder": 20_949_760,
                    "discriminator": 20_852_803}
SPEC_PARAMS_HPF_K2 = {"generator": 43_467_395, "mapping_network": 2_438_272, "style_encoder": 20_916_928,
                      "discriminator": 20_852_290}
OFFICIAL_HPF = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]])


def _num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _small_nets() -> dict[str, nn.Module]:
    """The stargan_v2_small fixture's constructors (64 px, 3 domains, max_conv_dim 128)."""
    return build_nets(64, 3, max_conv_dim=128)


def _hpf_generator() -> Generator:
    return Generator(img_size=64, style_dim=64, max_conv_dim=64, w_hpf=1)


def _t(io: dict[str, np.ndarray], *names: str) -> list[torch.Tensor]:
    return [torch.from_numpy(io[n]) for n in names]


def _small_outputs(nets, io) -> dict[str, torch.Tensor]:
    x, y, z, s = _t(io, "x", "y", "z", "s")
    with torch.no_grad():
        return {"G_out": nets["generator"](x, s), "G1": nets["generator"].encode_content(x),
                "F_out": nets["mapping_network"](z, y), "E_out": nets["style_encoder"](x, y),
                "D_out": nets["discriminator"](x, y)}


@pytest.fixture(scope="module")
def afhq_nets() -> dict[str, nn.Module]:
    return build_nets(256, 3)


@pytest.fixture(scope="module")
def small():
    """(manifest, io, nets loaded with the fixture weights, their outputs on the fixture inputs)."""
    manifest, io = fixture("stargan_v2_small")
    nets = _small_nets()
    for name, net in nets.items():
        net.load_state_dict(filled(manifest["state_dict_shapes"][name]), strict=True)
        net.eval()
    return manifest, io, nets, _small_outputs(nets, io)


@pytest.fixture(scope="module")
def hpf_small():
    manifest, io = fixture("stargan_v2_hpf_small")
    return manifest, io, filled(manifest["state_dict_shapes"])


# --------------------------------------------------------------------------------------- names, shapes, counts
@pytest.mark.parametrize("name", NET_NAMES)
def test_afhq256_state_dict_equals_official_names_shapes_and_order(afhq_nets, name):
    manifest, _ = fixture("stargan_v2_afhq256_keys")
    ours = [(k, list(v.shape)) for k, v in afhq_nets[name].state_dict().items()]
    assert ours == list(manifest["state_dict_shapes"][name].items())


@pytest.mark.parametrize("name", NET_NAMES)
def test_afhq256_parameter_counts_match_spec(afhq_nets, name):
    assert _num_params(afhq_nets[name]) == SPEC_PARAMS_AFHQ[name]


def test_hpf_k2_parameter_counts_match_spec_and_have_filter_buffer():
    with torch.device("meta"):  # shapes only; skips 88M parameter initializations
        nets = build_nets(256, 2, w_hpf=1)
    assert {n: _num_params(net) for n, net in nets.items()} == SPEC_PARAMS_HPF_K2
    assert [k for k, _ in nets["generator"].named_buffers()] == ["hpf.filter"]


# --------------------------------------------------------------------------------------- parity with official outputs
@pytest.mark.parametrize("output", ["G_out", "G1", "F_out", "E_out", "D_out"])
def test_small_nets_reproduce_official_outputs(small, output):
    manifest, io, _, outputs = small
    torch.testing.assert_close(outputs[output], torch.from_numpy(io[output]), atol=manifest["atol"], rtol=0)


def test_hpf_generator_reproduces_official_outputs(hpf_small):
    manifest, io, weights = hpf_small
    generator = _hpf_generator().eval()
    generator.load_state_dict(weights, strict=True)
    x, s, masks0, masks1 = _t(io, "x", "s", "masks0", "masks1")
    with torch.no_grad():
        plain, masked = generator(x, s), generator(x, s, masks=[masks0, masks1])
    torch.testing.assert_close(plain, torch.from_numpy(io["G_out"]), atol=manifest["atol"], rtol=0)
    torch.testing.assert_close(masked, torch.from_numpy(io["G_out_masks"]), atol=manifest["atol"], rtol=0)


def test_old_hpf_checkpoint_without_filter_gets_official_constant(hpf_small, tmp_path):
    manifest, io, weights = hpf_small
    path = tmp_path / "celeba_hq_style_nets_ema.ckpt"
    torch.save({"generator": {k: v for k, v in weights.items() if k != "hpf.filter"}}, path)
    generator = _hpf_generator().eval()
    generator.hpf.filter.fill_(0.0)
    load_into({"generator": generator}, load_official_checkpoint(path), source=path)
    torch.testing.assert_close(generator.hpf.filter, OFFICIAL_HPF, atol=0, rtol=0)
    x, s, masks0, masks1 = _t(io, "x", "s", "masks0", "masks1")
    with torch.no_grad():
        out = generator(x, s, masks=[masks0, masks1])
    torch.testing.assert_close(out, torch.from_numpy(io["G_out_masks_constfilter"]), atol=manifest["atol"], rtol=0)


def test_injected_filter_is_divided_by_w_hpf():
    source, target = Generator(32, 16, 16, w_hpf=2.0, width=8), Generator(32, 16, 16, w_hpf=2.0, width=8)
    target.hpf.filter.fill_(0.0)
    state = {k: v for k, v in source.state_dict().items() if k != "hpf.filter"}
    load_into({"generator": target}, {"generator": state})
    torch.testing.assert_close(target.hpf.filter, OFFICIAL_HPF / 2, atol=0, rtol=0)


def test_high_pass_matches_hand_computed_laplacian():
    x = torch.zeros(1, 2, 5, 5)
    x[0, 0, 2, 2] = 1.0  # a unit impulse returns the kernel itself (it is symmetric)
    x[0, 1] = 3.0  # a constant returns 0 inside, and 3 * (8 - #neighbours inside the image) on the border
    out = HighPass(w_hpf=1)(x)
    torch.testing.assert_close(out[0, 0, 1:4, 1:4], OFFICIAL_HPF)
    assert out[0, 0].abs().sum() == OFFICIAL_HPF.abs().sum()
    assert torch.all(out[0, 1, 1:4, 1:4] == 0)
    assert out[0, 1, 0, 0] == 3.0 * (8 - 3) and out[0, 1, 0, 2] == 3.0 * (8 - 5)


# --------------------------------------------------------------------------------------- splits used by ReMix / AdaptiveMix
def test_generator_equals_decode_of_encode(small):
    _, io, nets, outputs = small
    x, s = _t(io, "x", "s")
    generator = nets["generator"]
    with torch.no_grad():
        h = generator.encode_content(x)
        assert h.shape == (2, generator.content_dim, 16, 16)
        torch.testing.assert_close(generator.decode_content(h, s), outputs["G_out"], atol=0, rtol=0)


def test_hpf_generator_masks_path_equals_decode_of_encode():
    torch.manual_seed(0)
    generator = Generator(64, 16, 32, w_hpf=1, width=8)
    x, s = torch.rand(2, 3, 64, 64) * 2 - 1, torch.randn(2, 16)
    masks = [torch.rand(2, 1, 16, 16), torch.zeros(2, 1, 64, 64)]  # each mask is resized to its skip's size
    with torch.no_grad():
        h, skips = generator.encode_content(x, masks)
        assert sorted(skips) == [32, 64] and skips[32].shape == (2, 16, 32, 32) and skips[64].shape == (2, 8, 64, 64)
        assert skips[32].abs().sum() > 0 and torch.all(skips[64] == 0)  # masks[0] feeds 32 px, masks[1] the finer
        assert torch.equal(generator.decode_content(h, s, skips), generator(x, s, masks))
        assert not torch.allclose(generator.decode_content(h, s), generator(x, s, masks))


@pytest.mark.parametrize("name", ["discriminator", "style_encoder"])
def test_features_then_head_equals_forward(small, name):
    _, io, nets, _ = small
    net = nets[name]
    x, y = _t(io, "x", "y")
    with torch.no_grad():
        h = net.features(x)
        assert h.shape == (2, net.feature_dim, 1, 1)
        torch.testing.assert_close(net.head(h, y), net(x, y), atol=0, rtol=0)


# --------------------------------------------------------------------------------------- gradients
def test_only_the_picked_domain_heads_receive_gradient(small):
    z, y = _t(small[1], "z", "y")  # y = [0, 2]: domain 1 is not used
    mapping, discriminator = MappingNetwork(16, 8, 3), Discriminator(16, 3, 32, width=8)
    z = z.clone().requires_grad_(True)
    mapping(z, y).sum().backward()
    assert z.grad.abs().sum() > 0
    for k in (0, 2):
        assert all(p.grad.abs().sum() > 0 for p in mapping.unshared[k].parameters())
    assert all(p.grad.abs().sum() == 0 for p in mapping.unshared[1].parameters())
    discriminator(torch.rand(2, 3, 16, 16) * 2 - 1, y).sum().backward()
    head_grad = discriminator.main[-1].weight.grad.flatten(1).abs().sum(1)
    assert head_grad[0] > 0 and head_grad[1] == 0 and head_grad[2] > 0


def test_hpf_generator_leaves_unused_shortcuts_without_gradient():
    generator = Generator(32, 16, 32, w_hpf=1, width=8)
    x, s = torch.rand(1, 3, 32, 32, requires_grad=True), torch.randn(1, 16, requires_grad=True)
    masks = [torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)]
    generator(x, s, masks).square().mean().backward()
    assert x.grad.abs().sum() > 0 and s.grad.abs().sum() > 0
    unused = {n for n, p in generator.named_parameters() if p.grad is None}
    assert unused == {n for n, _ in generator.named_parameters() if n.startswith("decode.") and ".conv1x1." in n}
    assert unused  # w_hpf > 0 skips the decoder shortcuts; DDP users need find_unused_parameters


# --------------------------------------------------------------------------------------- init and width
def test_he_init_is_kaiming_fan_in_relu_and_not_applied_by_constructors():
    mapping = MappingNetwork(16, 64, 2)
    assert mapping.shared[2].bias.abs().sum() > 0  # PyTorch default init keeps non-zero biases
    torch.manual_seed(0)
    mapping.apply(he_init)
    layer = mapping.shared[2]  # Linear(512, 512): 262k draws of N(0, 2/512)
    assert abs(layer.weight.std().item() / math.sqrt(2 / 512) - 1) < 0.01
    assert all(m.bias.abs().sum() == 0 for m in mapping.modules() if isinstance(m, nn.Linear))
    generator = Generator(32, 16, 32, w_hpf=0, width=8)
    generator.apply(he_init)
    torch.testing.assert_close(generator.encode[0].norm1.weight, torch.ones(8))  # norms keep their init
    assert generator.from_rgb.bias.abs().sum() == 0


def test_width_none_is_the_official_rule():
    assert (official_width(256), official_width(64)) == (64, 256)
    for size in (64, 256):
        with torch.device("meta"):
            nets = build_nets(size, 2)
        assert nets["generator"].from_rgb.out_channels == official_width(size)
        assert nets["style_encoder"].shared[0].out_channels == official_width(size)
        assert nets["discriminator"].main[0].out_channels == official_width(size)


def test_width_override_builds_and_runs_with_expected_channels():
    nets = build_nets(64, 2, max_conv_dim=128, width=32)
    generator, mapping, encoder, discriminator = (nets[n] for n in NET_NAMES)
    assert [b.conv2.out_channels for b in generator.encode] == [64, 128, 128, 128]
    assert [b.conv2.out_channels for b in generator.decode] == [128, 128, 64, 32]
    assert generator.to_rgb[0].num_features == 32
    assert [m.conv2.out_channels for m in encoder.shared[1:5]] == [64, 128, 128, 128]
    x, y, z = torch.rand(2, 3, 64, 64) * 2 - 1, torch.tensor([1, 0]), torch.randn(2, 16)
    with torch.no_grad():
        s = mapping(z, y)
        assert generator.encode_content(x).shape == (2, 128, 16, 16)
        out = generator(x, s)
        assert out.shape == (2, 3, 64, 64) and torch.isfinite(out).all()
        assert encoder(x, y).shape == (2, 64)
        assert discriminator.features(x).shape == (2, 128, 1, 1) and discriminator(x, y).shape == (2,)


# --------------------------------------------------------------------------------------- input errors
@pytest.mark.parametrize("build, match", [
    (lambda: Generator(48, w_hpf=0), "power of two >= 32, got 48"),
    (lambda: Generator(16, w_hpf=0), "power of two >= 32, got 16"),
    (lambda: StyleEncoder(64, width=0), "width must be a positive int"),
    (lambda: Generator(64, w_hpf=-1), "w_hpf must be >= 0"),
])
def test_bad_constructor_arguments_are_named(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_inputs_are_named():
    generator = Generator(32, 16, 32, w_hpf=0, width=8)
    encoder, mapping = StyleEncoder(32, 16, 3, 32, width=8), MappingNetwork(4, 16, 3)
    x, s, y = torch.zeros(2, 3, 32, 32), torch.zeros(2, 16), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\), got \(2, 1, 32, 32\)"):
        generator(torch.zeros(2, 1, 32, 32), s)
    with pytest.raises(ValueError, match="multiples of 2"):
        generator(torch.zeros(2, 3, 33, 32), s)
    with pytest.raises(ValueError, match=r"style s: expected shape \(2, 16\), got \(2, 64\)"):
        generator(x, torch.zeros(2, 64))
    with pytest.raises(ValueError, match=r"expected 32x32 images .* got shape \(2, 3, 64, 64\)"):
        encoder(torch.zeros(2, 3, 64, 64), y)
    with pytest.raises(ValueError, match=r"domain labels must be in \[0, 3\), got \[0, 3\]"):
        encoder(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"must be in \[0, 3\), got \[-1, 0\]"):
        mapping(torch.zeros(2, 4), torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match="integer tensor of shape \\(2,\\)"):
        mapping(torch.zeros(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="masks need a generator built with w_hpf > 0"):
        generator(x, s, masks=[torch.zeros(2, 1, 32, 32)] * 2)
    with pytest.raises(ValueError, match=r"masks\[1\]: expected shape \(2, 1, h, w\), got \(2, 3, 32, 32\)"):
        Generator(32, 16, 32, w_hpf=1, width=8)(x, s, masks=[torch.zeros(2, 1, 32, 32), x])


# --------------------------------------------------------------------------------------- checkpoint IO
def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_module_prefixed_checkpoint_loads_with_prefix_stripped(small, tmp_path):
    manifest, io, _, _ = small
    path = tmp_path / "100000_nets_ema.ckpt"  # as saved from DataParallel-wrapped nets
    torch.save({n: {f"module.{k}": v for k, v in filled(manifest["state_dict_shapes"][n]).items()}
                for n in NET_NAMES}, path)
    state = load_official_checkpoint(path)
    assert not any(k.startswith("module.") for sd in state.values() for k in sd)
    nets = _small_nets()
    assert load_into(nets, state, source=path) == list(NET_NAMES)
    for name, net in nets.items():  # the same weights as the parity tests, so the same outputs
        expected = filled(manifest["state_dict_shapes"][name])
        assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    with torch.no_grad():
        styles = nets["mapping_network"](*_t(io, "z", "y"))
    torch.testing.assert_close(styles, torch.from_numpy(io["F_out"]), atol=manifest["atol"], rtol=0)


def test_mismatched_checkpoint_error_names_net_file_and_keys_and_changes_nothing(small, tmp_path):
    path = tmp_path / "other_nets.ckpt"
    save_official_checkpoint(path, {"generator": small[2]["generator"]})
    target = Generator(64, 64, max_conv_dim=64, w_hpf=0)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as error:
        load_into({"generator": target}, load_official_checkpoint(path), source=path)
    message = str(error.value)
    assert "'generator'" in message and str(path) in message
    assert "encode.0.conv2.weight: file (128, 256, 3, 3) vs net (64, 256, 3, 3)" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())
    plain = Generator(32, 16, 32, w_hpf=0, width=8)
    with pytest.raises(ValueError, match=r": 1 unexpected keys \(e\.g\. hpf\.filter \(3, 3\)\)\. Check"):
        load_into({"generator": plain}, {"generator": {**plain.state_dict(), "hpf.filter": OFFICIAL_HPF}})
    with pytest.raises(ValueError, match=r"missing keys \(e\.g\. from_rgb\.weight \(256, 3, 3, 3\); from_rgb\.bias"):
        load_into({"generator": _hpf_generator()}, {"generator": {}})


def test_missing_net_is_named_and_strict_false_skips_it(small, tmp_path):
    path = tmp_path / "000010_nets_ema.ckpt"
    save_official_checkpoint(path, {"generator": small[2]["generator"]})
    nets = _small_nets()
    with pytest.raises(ValueError, match=re.escape(f"'{path}' has no weights for ['mapping_network', 'style_encoder', 'discriminator']; "
                                                  "it holds ['generator']")):
        load_into(nets, load_official_checkpoint(path), source=path)
    assert load_into(nets, load_official_checkpoint(path), strict=False) == ["generator"]
    _assert_same_state(nets["generator"], small[2]["generator"])


def test_files_that_are_not_nets_checkpoints_are_named(tmp_path):
    tensor_file, optims_file = tmp_path / "weights.pt", tmp_path / "000010_optims.ckpt"
    torch.save(torch.zeros(3), tensor_file)
    torch.save({"generator": torch.optim.Adam([nn.Parameter(torch.zeros(1))]).state_dict()}, optims_file)
    with pytest.raises(ValueError, match=re.escape(f"'{tensor_file}' is not a StarGAN v2 nets checkpoint")):
        load_official_checkpoint(tensor_file)
    with pytest.raises(ValueError, match="entry 'generator' is not a state_dict of tensors"):
        load_official_checkpoint(optims_file)
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        load_official_checkpoint(tmp_path / "absent.ckpt")


def _record_load(marker: str, state: dict) -> dict:
    Path(marker).write_text("code from the checkpoint ran")
    return state


class _RunsCodeOnLoad:
    """Pickles as a call to `_record_load`: loading the file executes code, as a malicious checkpoint could."""

    def __init__(self, marker: Path, state: dict) -> None:
        self.marker, self.state = marker, state

    def __reduce__(self):
        return _record_load, (str(self.marker), self.state)


def test_pickled_code_is_refused_without_trust_and_runs_with_it(tmp_path):
    generator = Generator(32, 16, 32, w_hpf=0, width=8)
    marker, path = tmp_path / "marker.txt", tmp_path / "suspicious_nets.ckpt"
    torch.save({"generator": _RunsCodeOnLoad(marker, dict(generator.state_dict()))}, path)
    with pytest.raises(UntrustedCheckpointError, match="trust"):
        load_official_checkpoint(path)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="fully unpickling"):
        state = load_official_checkpoint(path, trust=True)
    assert marker.exists()
    target = Generator(32, 16, 32, w_hpf=0, width=8)
    load_into({"generator": target}, state)
    _assert_same_state(target, generator)


def test_save_load_round_trip_is_exact_and_in_official_format(tmp_path):
    torch.manual_seed(1)
    nets = build_nets(32, 2, style_dim=16, latent_dim=4, max_conv_dim=32, w_hpf=1, width=8)
    for net in nets.values():
        net.apply(he_init)
    wrapped = {**nets, "discriminator": nn.DataParallel(nets["discriminator"])}
    path = tmp_path / "ckpt" / "000100_nets.ckpt"
    save_official_checkpoint(path, wrapped)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(NET_NAMES)
    assert list(raw["discriminator"]) == list(nets["discriminator"].state_dict())  # no "module." prefix
    fresh = build_nets(32, 2, style_dim=16, latent_dim=4, max_conv_dim=32, w_hpf=1, width=8)
    assert load_into(fresh, load_official_checkpoint(path), source=path) == list(NET_NAMES)
    for name in NET_NAMES:
        _assert_same_state(fresh[name], nets[name])
