"""Every regularizer inside real StarGAN v2 training iterations, alone and all together (tiny CPU runs)."""
from __future__ import annotations

import math

import pytest
import torch

from i2i.engine.trainer import Trainer
from i2i.train import resolve

ALONE = {
    "mixup": {"regularizers.mixer": "mixup", "regularizers.mix_ratio": 0.5},
    "cutmix": {"regularizers.mixer": "cutmix", "regularizers.mix_ratio": 0.5},
    "srmix": {"regularizers.mixer": "srmix", "regularizers.mix_ratio": 0.5},
    "adaptivemix": {"regularizers.adaptivemix": True},
    "adaptivemix-paper": {"regularizers.adaptivemix": True, "regularizers.adaptivemix_pairs": "real_fake",
                          "regularizers.adaptivemix_distance": "mse"},
    "pcr": {"regularizers.pcr": True},
    "sample-correction": {"regularizers.sample_correction": True, "regularizers.sc_threshold": 0.3},
    "diffaug": {"regularizers.diffaug": "color,translation,cutout"},
}
EVERYTHING = {k: v for overrides in (ALONE["cutmix"], ALONE["adaptivemix"], ALONE["pcr"], ALONE["sample-correction"],
                                     ALONE["diffaug"]) for k, v in overrides.items()}


def run_two_iterations(tiny_config, tmp_path, overrides):
    trainer = Trainer(tiny_config(**{"train.total_iters": 2, **overrides}), tmp_path / "run")
    trainer.setup(None)
    stream = iter(trainer.task.train_stream(0))
    before = {k: v.clone() for k, v in trainer.task.nets["discriminator"].state_dict().items()}
    logs = [trainer.train_iteration(next(stream), step) for step in range(2)]
    after = trainer.task.nets["discriminator"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "D was not updated"
    assert all(math.isfinite(v) for record in logs for v in record.values())
    return trainer, logs[-1]


@pytest.mark.parametrize("name", list(ALONE))
def test_each_regularizer_trains(tiny_config, tmp_path, name):
    trainer, logs = run_two_iterations(tiny_config, tmp_path, ALONE[name])
    regs, n = trainer.regs, trainer.cfg.train.batch_size
    if name in ("mixup", "cutmix", "srmix"):
        assert len(regs.image_mixer.last_replaced) == n // 2  # floor(r N) fakes replaced in the last D step
    if name.startswith("adaptivemix"):
        assert "D/latent_adaptivemix" in logs and "G/reference_adaptivemix" in logs
        if name == "adaptivemix":  # cos variant: one negative cosine in [-1, 1] per critic call (real, fakes)
            assert -2.0 <= logs["D/latent_adaptivemix"] <= 2.0
        assert regs.adaptivemix.pop_loss().item() == 0.0, "recorded losses must be consumed every step"
    if name == "sample-correction":
        assert regs.sample_correction.last_scores.shape == (n,)
    if name == "pcr":
        assert regs.pcr.last_pairs[0].tolist() == list(range(n))


def test_all_regularizers_together_with_remix(tiny_config, tmp_path):
    trainer, logs = run_two_iterations(tiny_config, tmp_path, {**EVERYTHING, "remix.method": "remix", "remix.p": 1.0})
    assert trainer.cfg.method == "remix+cutmix+adaptivemix+pcr+sc+diffaug"
    assert "mix/latent_l_p" in logs and "D/reference_adaptivemix" in logs


def test_regularizer_flags_on_the_command_line(tmp_path):
    cfg, _, _ = resolve(["--data", str(tmp_path), "--mixer", "srmix", "--mix-ratio", "0.15", "--mix-alpha", "0.5",
                         "--adaptivemix", "--adaptivemix-pairs", "real_fake", "--adaptivemix-distance", "mse",
                         "--pcr", "--pcr-op", "or", "--sample-correction", "--sc-threshold", "0.2",
                         "--diffaug", "color,cutout"])
    reg = cfg.regularizers
    assert (reg.mixer, reg.mix_ratio, reg.mix_alpha) == ("srmix", 0.15, 0.5)
    assert (reg.adaptivemix, reg.adaptivemix_pairs, reg.adaptivemix_distance) == (True, "real_fake", "mse")
    assert (reg.pcr, reg.pcr_op, reg.sample_correction, reg.sc_threshold) == (True, "or", True, 0.2)
    assert reg.diffaug == "color,cutout"
