"""LightCNN-29v2: official names/shapes, parity with the official forward (fixture), encoder-only build, official
checkpoint IO, and the generator-output -> LightCNN-input conversion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from i2i.nets.lightcnn import (
    LightCNN29v2,
    faces_to_lightcnn_input,
    load_lightcnn29v2,
    load_lightcnn_into,
    load_lightcnn_state,
    mfm,
)
from i2i.weights import ENV_VAR, REGISTRY, MissingWeightsError, UntrustedCheckpointError, WeightFormatError
from tests.fixture_weights import filled, fixture

SPEC_PARAMS = 30_959_200
SPEC_ENCODER_PARAMS = 10_475_872
OFFICIAL_FILE = REGISTRY["lightcnn29v2"].filename


def _num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _tolerance(manifest: dict, output: str) -> float:
    # The fixture's atol (1e-5) holds only for the fixture's thread count (2 threads: we measured bit-identical
    # outputs); with OMP_NUM_THREADS=1 the conv reductions run in another order and outputs of size O(1e3) move by
    # ~7e-3, inside the fixture's cross-implementation tolerance (10x |float32 - float64| of the official forward).
    return manifest["tolerance_details"]["atol_cross_impl_per_output"][output]


@pytest.fixture(scope="module")
def official():
    """(manifest, io, the fixture's filled weights, a full net loaded with them in eval mode, its outputs)."""
    manifest, io = fixture("lightcnn29v2")
    weights = filled(manifest["state_dict_shapes"])
    net = LightCNN29v2()
    net.load_state_dict(weights, strict=True)
    net.eval()
    with torch.no_grad():
        logits, feature = net(torch.from_numpy(io["x"]))
    return manifest, io, weights, net, {"logits": logits, "feature": feature}


def _write_official_checkpoint(path, weights: dict) -> None:
    """The layout of train.py's save_checkpoint with a DataParallel model (prec1 is a tensor there)."""
    torch.save({"epoch": 31, "arch": "LightCNN-29v2", "state_dict": {f"module.{k}": v for k, v in weights.items()},
                "prec1": torch.tensor(99.1)}, path)


# --------------------------------------------------------------------------------------- names, shapes, counts
def test_state_dict_equals_official_names_shapes_and_order():
    manifest, _ = fixture("lightcnn29v2")
    with torch.device("meta"):
        full, encoder = LightCNN29v2(), LightCNN29v2(encoder_only=True)
    official = list(manifest["state_dict_shapes"].items())
    assert [(k, list(v.shape)) for k, v in full.state_dict().items()] == official
    assert [(k, list(v.shape)) for k, v in encoder.state_dict().items()] == [e for e in official if e[0] != "fc2.weight"]
    assert _num_params(full) == SPEC_PARAMS and _num_params(encoder) == SPEC_ENCODER_PARAMS
    assert full.fc2.bias is None and not hasattr(encoder, "fc2")


def test_mfm_is_the_max_of_the_first_and_second_half():
    layer = mfm(1, 2, 1, 1, 0)  # a 1x1 conv with 4 outputs: halves are channels (0, 1) and (2, 3), not interleaved
    with torch.no_grad():
        layer.filter.weight.copy_(torch.tensor([1.0, -1.0, 2.0, -3.0]).view(4, 1, 1, 1))
        layer.filter.bias.zero_()
    out = layer(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
    torch.testing.assert_close(out.flatten(1), torch.tensor([[2.0, -1.0], [-1.0, 3.0]]))


# --------------------------------------------------------------------------------------- parity with the official forward
@pytest.mark.parametrize("output", ["logits", "feature"])
def test_reproduces_official_outputs(official, output):
    manifest, io, _, _, outputs = official
    assert outputs[output].shape == io[output].shape
    torch.testing.assert_close(outputs[output], torch.from_numpy(io[output]), atol=_tolerance(manifest, output), rtol=0)


def test_encoder_only_net_gives_the_official_feature_and_no_logits(official):
    manifest, io, weights, _, outputs = official
    encoder = LightCNN29v2(encoder_only=True).eval()
    load_lightcnn_into(encoder, weights)  # drops fc2.weight
    x = torch.from_numpy(io["x"])
    with torch.no_grad():
        logits, feature = encoder(x)
        assert logits is None
        torch.testing.assert_close(encoder.embed(x), feature, atol=0, rtol=0)
    torch.testing.assert_close(feature, outputs["feature"], atol=0, rtol=0)
    torch.testing.assert_close(feature, torch.from_numpy(io["feature"]), atol=_tolerance(manifest, "feature"), rtol=0)


def test_feature_is_taken_before_dropout(official):
    _, io, _, net, _ = official
    x = torch.from_numpy(io["x"][:1])
    torch.manual_seed(0)
    with torch.no_grad():
        eval_logits, eval_feature = net(x)
        logits, feature = net.train()(x)
    net.eval()
    torch.testing.assert_close(feature, eval_feature, atol=0, rtol=0)  # train() does not change the feature
    assert (logits - eval_logits).abs().max() > 1.0  # but dropout makes the logits random


def test_gradients_pass_through_the_frozen_encoder_to_generator_images(official):
    _, _, weights, _, _ = official
    encoder = LightCNN29v2(encoder_only=True).eval().requires_grad_(False)
    load_lightcnn_into(encoder, weights)
    images = (torch.rand(1, 3, 256, 256) * 1.6 - 0.8).requires_grad_(True)  # inside (-1, 1): the clamp is inactive
    encoder.embed(faces_to_lightcnn_input(images)).square().mean().backward()
    assert torch.isfinite(images.grad).all() and (images.grad != 0).float().mean() > 0.99
    assert all(p.grad is None for p in encoder.parameters())


# --------------------------------------------------------------------------------------- checkpoint IO
def test_official_checkpoint_loads_full_and_encoder_only(official, tmp_path, monkeypatch):
    manifest, io, weights, _, outputs = official
    path = tmp_path / OFFICIAL_FILE
    _write_official_checkpoint(path, weights)
    state = load_lightcnn_state(path)  # tensors only: the official layout needs no trust
    assert list(state) == list(weights) and all(torch.equal(state[k], weights[k]) for k in weights)

    full = load_lightcnn29v2(path, encoder_only=False)
    assert not full.training and not any(p.requires_grad for p in full.parameters())
    x = torch.from_numpy(io["x"])
    with torch.no_grad():
        logits, feature = full(x)
    torch.testing.assert_close(logits, outputs["logits"], atol=0, rtol=0)
    torch.testing.assert_close(feature, torch.from_numpy(io["feature"]), atol=_tolerance(manifest, "feature"), rtol=0)

    monkeypatch.setenv(ENV_VAR, str(tmp_path))  # found by the registry under its official name
    encoder = load_lightcnn29v2()
    assert encoder.encoder_only and "fc2.weight" not in encoder.state_dict()
    assert _num_params(encoder) == SPEC_ENCODER_PARAMS
    with torch.no_grad():
        torch.testing.assert_close(encoder.embed(x), feature, atol=0, rtol=0)


def test_missing_file_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    with pytest.raises(MissingWeightsError, match=OFFICIAL_FILE):
        load_lightcnn29v2()


def test_wrong_files_are_named_and_change_nothing(tmp_path):
    not_checkpoint = tmp_path / "features.pt"
    torch.save(torch.zeros(3), not_checkpoint)
    with pytest.raises(WeightFormatError, match="expected a LightCNN checkpoint with a 'state_dict' entry"):
        load_lightcnn_state(not_checkpoint)

    v1 = tmp_path / "LightCNN_29Layers_checkpoint.pth.tar"  # the v1 29-layer net has an mfm fc layer
    torch.save({"epoch": 1, "arch": "LightCNN-29", "prec1": 98.0, "state_dict": {
        "module.conv1.filter.weight": torch.zeros(96, 1, 5, 5), "module.fc.filter.weight": torch.zeros(512, 8192)}}, v1)
    encoder = LightCNN29v2(encoder_only=True)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    with pytest.raises(ValueError, match="LightCNN-9 or LightCNN-29 \\(v1\\) checkpoint") as error:
        load_lightcnn_into(encoder, load_lightcnn_state(v1), source=v1)
    assert str(v1) in str(error.value) and "unexpected keys (e.g. fc.filter.weight (512, 8192))" in str(error.value)
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())

    with torch.device("meta"):
        small_classifier = LightCNN29v2(num_classes=357)
        official_state = LightCNN29v2().state_dict()
    with pytest.raises(ValueError, match=r"fc2\.weight: file \(80013, 256\) vs net \(357, 256\).*encoder_only=True"):
        load_lightcnn_into(small_classifier, official_state)


class _RunsCodeOnLoad:
    """Pickles as a call to `_record`: loading runs code, as a malicious or exotic old pickle could."""

    def __init__(self, marker, state: dict) -> None:
        self.marker, self.state = marker, state

    def __reduce__(self):
        return _record, (str(self.marker), self.state)


def _record(marker: str, state: dict) -> dict:
    with open(marker, "w") as f:
        f.write("ran")
    return state


def test_pickle_needing_code_is_refused_without_trust(tmp_path):
    net = LightCNN29v2(num_classes=4)
    marker, path = tmp_path / "marker", tmp_path / OFFICIAL_FILE
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save({"epoch": 1, "arch": "LightCNN-29v2", "prec1": 0.0, "state_dict": _RunsCodeOnLoad(marker, state)}, path)
    with pytest.raises(UntrustedCheckpointError, match="trust"):
        load_lightcnn29v2(path, encoder_only=False, num_classes=4)
    assert not marker.exists()
    with pytest.warns(UserWarning, match="fully unpickling"):
        loaded = load_lightcnn29v2(path, encoder_only=False, num_classes=4, trust=True)
    assert marker.exists() and torch.equal(loaded.fc2.weight, net.fc2.weight)


# --------------------------------------------------------------------------------------- generator outputs -> input
def test_faces_to_lightcnn_input_shape_range_and_grey_weights():
    colour = torch.tensor([0.2, -0.6, 1.0]).view(1, 3, 1, 1).expand(2, 3, 256, 256)
    out = faces_to_lightcnn_input(colour)
    assert out.shape == (2, 1, 128, 128)
    expected = 0.299 * 0.6 + 0.587 * 0.2 + 0.114 * 1.0  # (x + 1) / 2 per channel, then BT.601 luma
    torch.testing.assert_close(out, torch.full_like(out, expected))
    wild = torch.randn(3, 3, 256, 256) * 3  # unbounded generator outputs
    out = faces_to_lightcnn_input(wild)
    assert out.min() >= 0 and out.max() <= 1
    saturated = faces_to_lightcnn_input(torch.tensor([-5.0, 5.0]).view(2, 1, 1, 1).expand(2, 3, 64, 64))
    assert torch.all(saturated[0] == 0) and torch.all(saturated[1] == 1)


def test_faces_to_lightcnn_input_accepts_grey_and_resizes_like_pil():
    grey = torch.rand(1, 1, 200, 200) * 2 - 1
    out = faces_to_lightcnn_input(grey)
    unit = ((grey[0, 0].numpy() + 1) / 2).astype(np.float32)
    pil = np.asarray(Image.fromarray(unit, mode="F").resize((128, 128), Image.BILINEAR))  # PIL's antialiased resize
    np.testing.assert_allclose(out[0, 0].numpy(), pil, atol=1e-5, rtol=0)
    at_size = torch.rand(2, 1, 128, 128) * 2 - 1
    torch.testing.assert_close(faces_to_lightcnn_input(at_size), (at_size + 1) / 2, atol=0, rtol=0)


def test_faces_to_lightcnn_input_is_differentiable():
    images = torch.rand(2, 3, 256, 256, requires_grad=True)  # in [0, 1): inside the clamp
    out = faces_to_lightcnn_input(images)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(images.grad).all() and (images.grad != 0).all()
    # The channel gradients are in the ratio of the grey weights.
    ratio = images.grad[:, 1] / images.grad[:, 0]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 0.587 / 0.299))


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(2, 2, 64, 64), r"\(N, 3, H, W\) RGB or \(N, 1, H, W\) grey .* got \(2, 2, 64, 64\)"),
    (torch.zeros(3, 64, 64), r"got \(3, 64, 64\)"),
    (torch.zeros(1, 3, 256, 200), "square face crops, got 256x200"),
    (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "float images"),
])
def test_faces_to_lightcnn_input_bad_inputs_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        faces_to_lightcnn_input(bad)


def test_bad_network_inputs_and_arguments_are_named():
    with torch.device("meta"):
        net = LightCNN29v2(encoder_only=True)
    with pytest.raises(ValueError, match=r"\(N, 1, 128, 128\) in \[0, 1\], got \(1, 3, 128, 128\).*faces_to_lightcnn"):
        net(torch.zeros(1, 3, 128, 128, device="meta"))
    with pytest.raises(ValueError, match="num_classes must be a positive int, got 0"):
        LightCNN29v2(num_classes=0)


def test_width_scales_the_channels_and_keeps_the_feature():
    narrow = LightCNN29v2(num_classes=5, width=0.25)
    full = LightCNN29v2(num_classes=5)
    assert narrow.conv1.filter.out_channels == 24 and narrow.fc.in_features == 8 * 8 * 32
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters()) / 8
    logits, feature = narrow(torch.rand(2, 1, 128, 128))
    assert logits.shape == (2, 5) and feature.shape == (2, 256)
    with pytest.raises(ValueError, match="width must be in"):
        LightCNN29v2(width=0)
