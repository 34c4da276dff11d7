"""DRN-D-105 / DRNSeg: official names and shapes, forward parity with fyu/drn (tests/fixtures/drn_d_105), loading the
official checkpoint format, and clear errors for wrong files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluators.nets.drn import (DRN, DRNSeg, Bottleneck, bilinear_up_kernel, drn_d_22, load_drn_d_105_cityscapes,
                                 load_drnseg_state_dict)
from evaluators.segmentation import build_segmenter
from i2i.weights import REGISTRY, MissingWeightsError, WeightFormatError
from tests.fixture_weights import FIXTURES, as_torch, deterministic_state_dict, filled, fixture

MANIFEST, IO = fixture("drn_d_105")
SHAPES = json.loads((FIXTURES / "drn_d_105" / "keys.json").read_text())
ATOL = MANIFEST["atol"]  # 1e-5: the official forward is bit-reproducible; we stay within it (no cross-impl slack)
_SCALE_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight", "bn.weight", "bn1.weight", "bn2.weight", "bn3.weight")


def bnfix_state() -> dict[str, torch.Tensor]:
    """README_b's `bn_scale_plus_one` regime: +1 on the BN scales that fill.py's name rule misses (input-sensitive)."""
    state = deterministic_state_dict(SHAPES, seed=0)
    for name in SHAPES:
        if name.endswith("running_var"):
            weight = name[: -len("running_var")] + "weight"
            if not weight.endswith(_SCALE_SUFFIXES):
                state[weight] = state[weight] + np.float32(1)
    return as_torch(state)


@pytest.fixture(scope="module")
def model() -> DRNSeg:
    torch.manual_seed(0)
    return DRNSeg("drn_d_105", 19).eval()


@pytest.fixture(scope="module")
def bnfix() -> dict[str, torch.Tensor]:
    return bnfix_state()


def run(model: DRNSeg, x: np.ndarray = IO["x"]) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        log_probs, logits = model(torch.from_numpy(x))
    return log_probs.numpy(), logits.numpy()


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b).max())


def test_names_shapes_and_parameter_count(model):
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == {k: list(v) for k, v in SHAPES.items()}
    assert list(model.state_dict()) == list(SHAPES)  # same order as the official module tree
    assert sum(p.numel() for p in model.parameters()) == MANIFEST["n_params"] == 54_302_915
    assert not model.up.weight.requires_grad and "up.weight" in model.state_dict()


def test_up_kernel_is_the_official_bilinear_fill(model):
    assert np.array_equal(bilinear_up_kernel(19).numpy(), IO["up_weight_bilinear"])
    assert np.array_equal(model.up.weight.detach().numpy(), IO["up_weight_bilinear"])


def test_parity_bnfix_weights(model, bnfix):
    """The real check (input-sensitive weights): both returned tensors equal the official ones within atol."""
    model.load_state_dict(bnfix, strict=True)
    log_probs, logits = run(model)
    assert max_diff(logits, IO["seg_logits_bnfix"]) <= ATOL
    assert max_diff(log_probs, IO["log_softmax_up_bnfix"]) <= ATOL
    # The comparison can fail: a mirrored image moves the logits by far more than the tolerance.
    _, mirrored = run(model, np.ascontiguousarray(IO["x"][..., ::-1]))
    assert max_diff(mirrored, IO["seg_logits_bnfix"]) > 1000 * ATOL


def test_parity_plain_fill_and_bilinear_up(model):
    """Plain fill.py weights pin names, bias paths, padding and output geometry (nearly input-independent)."""
    state = filled(SHAPES)
    model.load_state_dict(state, strict=True)
    log_probs, logits = run(model)
    assert logits.shape == (1, 19, 8, 16) and log_probs.shape == (1, 19, 64, 128)
    assert max_diff(logits, IO["seg_logits"]) <= ATOL
    assert max_diff(log_probs, IO["log_softmax_up"]) <= ATOL
    model.load_state_dict({**state, "up.weight": torch.from_numpy(IO["up_weight_bilinear"])}, strict=True)
    assert max_diff(run(model)[0], IO["log_softmax_up_bilinear"]) <= ATOL


def test_official_file_loads_with_and_without_num_batches_tracked(tmp_path, bnfix, monkeypatch):
    """A flat state_dict file as released (old files lack num_batches_tracked; DataParallel adds `module.`)."""
    old_style = {("module." + k): v for k, v in bnfix.items() if not k.endswith("num_batches_tracked")}
    assert len(old_style) < len(bnfix)
    path = tmp_path / REGISTRY["drn_d_105_cityscapes"].filename
    torch.save(old_style, path)
    net = load_drn_d_105_cityscapes(path)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert max_diff(run(net)[1], IO["seg_logits_bnfix"]) <= ATOL
    # found through the registry search ($I2I_WEIGHTS), and wrapped as the calibrated "drn_d_105" segmenter
    monkeypatch.setenv("I2I_WEIGHTS", str(tmp_path))
    segmenter = build_segmenter("drn_d_105")
    assert segmenter.name == "drn_d_105" and segmenter.calibrated and segmenter.source == str(path)
    assert all(torch.equal(v, bnfix[k]) for k, v in segmenter.net.state_dict().items()
               if not k.endswith("num_batches_tracked"))
    # the complete (new-style) dict loads too
    net = load_drnseg_state_dict(DRNSeg("drn_d_105", 19), bnfix)
    assert all(torch.equal(v.reshape(bnfix[k].shape), bnfix[k]) for k, v in net.state_dict().items())


def test_wrong_files_give_clear_errors(tmp_path, model, bnfix):
    classifier = {k.replace("base.", "layer", 1): v for k, v in list(bnfix.items())[:5]}
    classifier["fc.weight"] = torch.zeros(1000, 512, 1, 1)
    with pytest.raises(WeightFormatError, match="DRN classifier"):
        load_drnseg_state_dict(model, classifier, source="drn_d_105-12b40979.pth")
    truncated = {k: v for k, v in bnfix.items() if not k.startswith("seg.")}
    with pytest.raises(WeightFormatError, match=r"2 missing entries .*seg\.weight"):
        load_drnseg_state_dict(model, truncated)
    other_classes = {**bnfix, "seg.weight": torch.zeros(21, 512, 1, 1), "seg.bias": torch.zeros(21)}
    with pytest.raises(WeightFormatError, match=r"shape mismatches, e\.g\. \['seg\.weight \(21, 512, 1, 1\)"):
        load_drnseg_state_dict(model, other_classes)
    extra = {**bnfix, "aux.weight": torch.zeros(1)}
    with pytest.raises(WeightFormatError, match=r"1 unexpected .*aux\.weight"):
        load_drnseg_state_dict(model, extra)
    not_a_state_dict = tmp_path / "drn-d-105_ms_cityscapes.pth"
    torch.save({"epoch": torch.tensor(3)}, not_a_state_dict)
    with pytest.raises(WeightFormatError, match="not a drn_d_105 DRNSeg"):
        load_drn_d_105_cityscapes(not_a_state_dict)
    with pytest.raises(MissingWeightsError, match="drn-d-105_ms_cityscapes.pth"):
        load_drn_d_105_cityscapes(tmp_path / "absent.pth")


def test_small_variants_geometry_and_training_parameters():
    torch.manual_seed(0)
    net = DRNSeg("drn_d_22", 19, width=0.25).eval()
    assert net.base[3][0].conv1.out_channels == 16 and net.seg.in_channels == 128
    assert sum(p.numel() for p in net.parameters()) < 1_100_000
    with torch.no_grad():
        log_probs, logits = net(torch.randn(2, 3, 30, 50))
    assert logits.shape == (2, 19, 4, 7) and log_probs.shape == (2, 19, 32, 56)  # up gives 8 * ceil(size / 8)
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(2, 32, 56), atol=1e-5)
    assert {id(p) for p in net.trainable_parameters()} == {id(p) for p in net.parameters() if p.requires_grad}
    # the ImageNet-style classifier form of the trunk (avgpool + 1x1 fc) and the stride-8 feature map
    classifier = drn_d_22(width=0.25, num_classes=10, pool_size=4).eval()
    with torch.no_grad():
        assert classifier(torch.randn(1, 3, 32, 32)).shape == (1, 10)
        features, middle = DRN(Bottleneck, [1, 1, 1, 1, 1, 1, 1, 1], num_classes=0, channels=(4,) * 8,
                               out_middle=True)(torch.randn(1, 3, 32, 32))
    assert features.shape == (1, 4, 4, 4) and len(middle) == 8
    with pytest.raises(ValueError, match="arch 'D'"):
        DRN(Bottleneck, [1] * 8, arch="C")
    with pytest.raises(ValueError, match="unknown DRN arch"):
        DRNSeg("drn_c_26")
