"""The † proxy metrics of the AFHQ protocol: target-domain accuracy and content preservation (evaluators.content)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from evaluators.content import (chance_distance, content_preservation, read_poses, train_pose_regressor)
from evaluators.protocols import evaluate_afhq
from evaluators.proxy import train_proxy
from i2i.data.afhq import load_eval_images, scan_split
from i2i.data.synthetic import make_afhq
from i2i.data.synthetic.animals import POSE_PARAMETERS, _image_rng, render_animal
from tests.test_protocols import Copy, NoStyle, lpips_random  # noqa: F401  (pytest fixture)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def posed(tmp_path_factory):
    """A procedural set large enough for the proxy networks to learn: 40 train and 6 val images per domain."""
    return make_afhq(tmp_path_factory.mktemp("posed") / "afhq", img_size=32, n_train=40, n_val=6)


@pytest.fixture(scope="module")
def proxies(posed, tmp_path_factory):
    cache = tmp_path_factory.mktemp("proxy-cache")
    index = scan_split(posed, "train")
    classifier = train_proxy(index.files, index.labels, cache_dir=cache, image_size=32, steps=150, progress=False)
    poses = read_poses(posed, index.files)
    regressor = train_pose_regressor(index.files, poses, cache_dir=cache, image_size=32, steps=300, progress=False)
    return classifier, regressor


def test_poses_are_recorded_for_every_image_and_replay_the_renderer(posed):
    recorded = json.loads((posed / "poses.json").read_text())
    assert recorded["parameters"] == list(POSE_PARAMETERS)
    assert len(recorded["poses"]) == 3 * (40 + 6)
    _, pose = render_animal("dog", 32, _image_rng(0, "val", "dog", 4))
    assert recorded["poses"]["val/dog/dog_0004.png"] == pytest.approx([pose.cx, pose.cy, pose.scale, pose.angle],
                                                                        abs=1e-6)
    assert read_poses(posed / "train", []) is None  # no poses.json: real data


def test_a_set_made_before_poses_were_recorded_gets_them(tmp_path):
    root = make_afhq(tmp_path / "a", img_size=16, n_train=2, n_val=1)
    before = (root / "poses.json").read_text()
    (root / "poses.json").unlink()
    make_afhq(root, img_size=16, n_train=2, n_val=1)
    assert (root / "poses.json").read_text() == before


def test_the_classifier_knows_its_training_images(posed, proxies):
    classifier, _ = proxies
    x, y = load_eval_images(scan_split(posed, "train"), 32)
    accuracy = (classifier.classify(x).argmax(1) == y).float().mean().item()
    assert accuracy >= 0.95


def test_the_pose_regressor_sees_poses(proxies):
    _, regressor = proxies
    assert regressor.val_r2 > 0.3, regressor.val_r2  # well above 0: the regressor measures layout


def identity_nets():
    return {"generator": Copy(), "mapping_network": NoStyle(), "style_encoder": NoStyle()}


class Scramble(nn.Module):
    """A 'generator' that returns another image of the batch: the layout of an unrelated image."""

    num_domains = 3

    def forward(self, x, s):
        return x.roll(1, 0)


def evaluate(nets, posed, proxies, lpips_model):
    classifier, regressor = proxies
    return evaluate_afhq(nets, posed, img_size=32, latent_dim=4, backbone=classifier, lpips_model=lpips_model,
                         num_outs=2, progress=False, device="cpu", classifier=classifier.classify,
                         pose_regressor=regressor)


def test_identity_keeps_all_content_and_reaches_no_target(posed, proxies, lpips_random):
    result = evaluate(identity_nets(), posed, proxies, lpips_random)
    assert result["classifier"] == "proxy" and result["pose_regressor_calibrated"] is False
    for mode in ("latent", "reference"):
        metrics = result["metrics"][mode]
        assert metrics["content"] == pytest.approx(1.0, abs=1e-6)
        assert metrics["domain_accuracy"] <= 0.05  # the pairs have source != target
        for values in metrics["per_task"].values():
            assert set(values) == {"fid", "lpips", "num_sources", "domain_accuracy", "content"}


def test_an_unrelated_layout_scores_near_zero_content(posed, proxies, lpips_random):
    nets = {**identity_nets(), "generator": Scramble()}
    content = evaluate(nets, posed, proxies, lpips_random)["metrics"]["latent"]["content"]
    assert content < 0.5  # far below the identity's 1: the metric can fail


def test_content_score_arithmetic():
    assert content_preservation(0.0, 2.0) == 1.0 and content_preservation(2.0, 2.0) == 0.0
    assert np.isnan(content_preservation(1.0, 0.0))
    same = torch.zeros(5, 4)
    assert chance_distance(same, seed=0) == 0.0
