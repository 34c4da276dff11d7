"""VGG19 perceptual net: torchvision layers and slices, registry loading, frozen weights, SPADE's VGG loss value."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision
from torch import nn

from i2i import weights
from i2i.nets.vgg import LAYER_WEIGHTS, SLICES, VGG19Features, VGGLoss, load_vgg19, vgg_distance
from i2i.weights import REGISTRY, ChecksumError, MissingWeightsError, WeightFormatError

RELU_INDICES = [stop - 1 for _, stop in SLICES]  # relu1_1, relu2_1, relu3_1, relu4_1, relu5_1 in torchvision


def _torchvision_trunk() -> nn.Sequential:
    """torchvision's own vgg19 `features` (cfg 'E'), without building the 120M-parameter classifier."""
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"], batch_norm=False)


def _torchvision_file_state(trunk: nn.Sequential) -> dict[str, torch.Tensor]:
    """What vgg19-dcbb9e9d.pth holds: features.{i}.* for all 16 convs, and the classifier (small stand-ins here)."""
    state = {f"features.{k}": v for k, v in trunk.state_dict().items()}
    state.update({"classifier.0.weight": torch.zeros(2, 2), "classifier.6.bias": torch.zeros(2)})
    return state


@pytest.fixture(scope="module")
def trunk() -> nn.Sequential:
    torch.manual_seed(0)
    layers = _torchvision_trunk()
    for module in layers.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.bias, 0, 0.1)  # torchvision inits biases to 0: make them count here
    return layers.eval()


@pytest.fixture(scope="module")
def vgg(trunk) -> VGG19Features:
    return VGG19Features(_torchvision_file_state(trunk))


@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """Empty `$I2I_WEIGHTS`, home cache and torch hub folders; returns the `$I2I_WEIGHTS` folder."""
    monkeypatch.setenv(weights.ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "env"


def _images(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# --------------------------------------------------------------------------------------- layers and slices
def test_slices_are_torchvision_layers_with_torchvision_indices(trunk, vgg):
    ours = {int(name.split(".")[1]): module for name, module in vgg.named_modules() if name.count(".") == 1}
    assert sorted(ours) == list(range(30))
    for i in range(30):
        assert type(ours[i]) is type(trunk[i]) and repr(ours[i]) == repr(trunk[i])
    convs = [k.rsplit(".", 1)[0] for k in vgg.state_dict()][::2]  # SPADE's VGG19 names: slice{k}.{torchvision index}
    assert convs == ["slice1.0", "slice2.2", "slice2.5", "slice3.7", "slice3.10", "slice4.12", "slice4.14", "slice4.16",
                     "slice4.19", "slice5.21", "slice5.23", "slice5.25", "slice5.28"]


def test_outputs_equal_torchvision_relu_outputs_on_the_raw_image(trunk, vgg):
    x = _images()
    with torch.no_grad():
        ours = vgg(x)
        expected, h = [], x.clone()  # raw [-1, 1] input: no ImageNet normalisation, as SPADE
        for i in range(30):
            h = trunk[i](h)
            if i in RELU_INDICES:
                expected.append(h.clone())
    assert [tuple(o.shape) for o in ours] == [(2, 64, 32, 32), (2, 128, 16, 16), (2, 256, 8, 8), (2, 512, 4, 4),
                                              (2, 512, 2, 2)]
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert all(o.abs().sum() > 0 for o in ours)


def test_frozen_and_always_eval(vgg):
    assert not any(p.requires_grad for p in vgg.parameters())
    assert not vgg.train().training and not VGGLoss(vgg).train().vgg.training


# --------------------------------------------------------------------------------------- loading
def test_registry_file_loads_with_classifier_ignored(trunk, isolated_weights, monkeypatch):
    monkeypatch.setitem(REGISTRY, "vgg19", dataclasses.replace(REGISTRY["vgg19"], sha256=None))  # our own file
    isolated_weights.mkdir(parents=True)
    torch.save(_torchvision_file_state(trunk), isolated_weights / REGISTRY["vgg19"].filename)
    model = load_vgg19()
    assert model.calibrated
    torch.testing.assert_close(model.state_dict()["slice5.28.weight"], trunk[28].weight, atol=0, rtol=0)
    torch.testing.assert_close(model.state_dict()["slice1.0.bias"], trunk[0].bias, atol=0, rtol=0)


def test_file_with_the_wrong_hash_is_refused(trunk, tmp_path):
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(_torchvision_file_state(trunk), path)
    with pytest.raises(ChecksumError, match="dcbb9e9d"):
        load_vgg19(path)


def test_random_weights_only_when_allowed_seeded_and_labelled(isolated_weights, tmp_path):
    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        load_vgg19()
    with pytest.raises(MissingWeightsError, match="absent.pth"):  # an explicit path never falls back
        load_vgg19(tmp_path / "absent.pth", allow_random=True)
    rng_state = torch.random.get_rng_state()
    first, second = load_vgg19(allow_random=True), load_vgg19(allow_random=True)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the caller's RNG is untouched
    assert not first.calibrated
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


@pytest.mark.parametrize("edit, match", [
    (lambda s: s.pop("features.28.weight"), r"missing \['features.28.weight'\]"),
    (lambda s: s.update({"features.5.running_mean": torch.zeros(128)}), r"unexpected \['features.5.running_mean'\]"),
    (lambda s: s.update({"features.0.weight": torch.zeros(64, 1, 3, 3)}),
     r"features.0.weight: file \(64, 1, 3, 3\) vs net \(64, 3, 3, 3\)"),
])
def test_non_torchvision_state_is_named(trunk, edit, match):
    state = _torchvision_file_state(trunk)
    edit(state)
    with pytest.raises(WeightFormatError, match=match):
        VGG19Features(state)


# --------------------------------------------------------------------------------------- distance and loss
def test_vgg_distance_is_per_sample_zero_for_identical_and_means_to_spades_loss(vgg):
    a, b = _images(3, seed=1), _images(3, seed=2)
    with torch.no_grad():
        fa, fb = vgg(a), vgg(b)
        d = vgg_distance(fa, fb)
        assert d.shape == (3,) and torch.all(d > 0)
        assert torch.equal(vgg_distance(fa, fa), torch.zeros(3))
        spade_value = sum(w * nn.L1Loss()(x, y) for w, x, y in zip(LAYER_WEIGHTS, fa, fb))  # official VGGLoss
        torch.testing.assert_close(d.mean(), spade_value, atol=1e-6, rtol=1e-6)
        alone = vgg_distance(vgg(a[1:2]), vgg(b[1:2]))
        torch.testing.assert_close(alone, d[1:2], atol=1e-6, rtol=1e-6)
        loss = VGGLoss(vgg)
        torch.testing.assert_close(loss.per_sample(a, b), d, atol=0, rtol=0)
        torch.testing.assert_close(loss(a, b), spade_value, atol=1e-6, rtol=1e-6)


def test_weights_are_spades():
    assert LAYER_WEIGHTS == (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
    ones = [torch.ones(1, 1, 1, 1)] * 5
    zeros = [torch.zeros(1, 1, 1, 1)] * 5
    torch.testing.assert_close(vgg_distance(ones, zeros), torch.tensor([sum(LAYER_WEIGHTS)]))


def test_gradient_reaches_the_fake_only(vgg):
    fake, real = _images(2, seed=3).requires_grad_(True), _images(2, seed=4).requires_grad_(True)
    VGGLoss(vgg)(fake, real).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert real.grad is None  # the target's features are detached, as in SPADE
    assert all(p.grad is None for p in vgg.parameters())
    x = _images(1, seed=5).requires_grad_(True)
    vgg_distance(vgg(x), [f.detach() for f in vgg(_images(1, seed=6))]).sum().backward()
    assert x.grad.abs().sum() > 0 and all(p.grad is None for p in vgg.parameters())


# --------------------------------------------------------------------------------------- input errors
def test_bad_inputs_are_named(vgg):
    with pytest.raises(ValueError, match=r"expected float images \(N, 3, H, W\) in \[-1, 1\], got torch.float32 tensor "
                                         r"of shape \(2, 1, 32, 32\)"):
        vgg(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="got torch.uint8 tensor"):
        vgg(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"H and W must be >= 16 .* got shape \(1, 3, 8, 32\)"):
        vgg(torch.zeros(1, 3, 8, 32))
    maps = [torch.zeros(2, 4, 2, 2)] * 5
    with pytest.raises(ValueError, match="expected 5 feature maps each .* got 4 and 5"):
        vgg_distance(maps[:4], maps)
    with pytest.raises(ValueError, match=r"relu3_1 maps must be .* got \(2, 4, 2, 2\) and \(1, 4, 2, 2\)"):
        vgg_distance(maps, maps[:2] + [torch.zeros(1, 4, 2, 2)] + maps[3:])
    with pytest.raises(ValueError, match=r"fake and real must have the same shape"):
        VGGLoss(vgg)(torch.zeros(1, 3, 32, 32), torch.zeros(2, 3, 32, 32))
