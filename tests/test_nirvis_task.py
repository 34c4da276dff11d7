"""The NIR-VIS task (frozen LightCNN-29v2 + StyleGAN2 decoder, ReMix on the codes) on a tiny procedural face set."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from i2i.config import ConfigError, build_config
from i2i.data.nirvis import load_train_set
from i2i.engine.checkpoint import load_checkpoint
from i2i.engine.trainer import Trainer
from tests.conftest import TINY_NIRVIS
from tests.test_trainer import assert_same_tree, comparable

TINY_NV = TINY_NIRVIS


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faces(tiny_faces):
    return tiny_faces


@pytest.fixture(scope="module")
def encoder_file(lightcnn_file):
    return lightcnn_file


def config(faces, encoder_file, **overrides):
    return build_config("nirvis", None, {"data.root": str(faces), **TINY_NV,
                                         "model.encoder_weights": str(encoder_file), **overrides})


FLAGS = {
    "baseline": {}, "remix": {"remix.method": "remix", "remix.p": 1.0}, "wm": {"remix.method": "wm", "remix.p": 1.0},
    "mixup-target": {"remix.method": "mixup", "remix.p": 1.0},
    "cutmix": {"regularizers.mixer": "cutmix", "regularizers.mix_ratio": 0.5}, "srmix": {"regularizers.mixer": "srmix"},
    "adaptivemix": {"regularizers.adaptivemix": True}, "pcr+sc": {"regularizers.pcr": True,
                                                                 "regularizers.sample_correction": True},
    "diffaug": {"regularizers.diffaug": "color,translation,cutout"},
}


@pytest.mark.parametrize("name", list(FLAGS))
def test_every_regularizer_trains_on_this_task(faces, encoder_file, tmp_path, name):
    checkpoint = Trainer(config(faces, encoder_file, **FLAGS[name]), tmp_path / "run").fit()
    state = load_checkpoint(checkpoint)
    assert set(state["nets"]) == {"encoder", "generator", "discriminator"} and set(state["nets_ema"]) == {"generator"}
    assert (tmp_path / "run" / "samples" / "000002_faces.png").is_file()


def test_relative_l1_reaches_the_decoder_not_the_frozen_encoder(faces, encoder_file, tmp_path):
    trainer = Trainer(config(faces, encoder_file, **{"remix.method": "remix"}), tmp_path / "run")
    trainer.setup(None)
    task = trainer.task
    encoder_before = {k: v.clone() for k, v in task.nets["encoder"].state_dict().items()}
    batch = {k: v.to(task.device) for k, v in next(iter(task.train_stream(0))).items()}
    branch = task.branches(batch, 0)[0]
    branch.lam = torch.tensor(0.6)
    trainer.regs.feature_mix.a_bars["main"] = -1.0
    codes, fake = trainer.translate(branch)
    assert torch.allclose(task.code(batch["nir"]) * 0.6 + task.code(batch["nir2"]) * 0.4,
                          trainer.regs.feature_mix.interpolate(codes.first, codes.second, branch.lam))
    targets = task.targets(branch, codes)
    loss, logs = trainer.regs.feature_mix.content_loss(task.content(fake, branch), targets.first, targets.second,
                                                       branch.lam, lambda t: task.target_content(t, branch),
                                                       task.content_distance, branch="main")
    loss.backward()
    assert logs["l_n"] > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.nets["generator"].parameters())
    assert all(p.grad is None for p in task.nets["encoder"].parameters())
    assert all(p.grad is None for p in task.nets["discriminator"].parameters())
    trainer.fit()
    for k, v in task.nets["encoder"].state_dict().items():
        assert torch.equal(v, encoder_before[k]), k  # frozen through training


def test_resume_continues_bit_for_bit(faces, encoder_file, tmp_path):
    cfg = {"remix.method": "remix", "remix.p": 0.5, "train.total_iters": 4}
    full = Trainer(config(faces, encoder_file, **cfg), tmp_path / "full").fit()
    first = Trainer(config(faces, encoder_file, **{**cfg, "train.total_iters": 2}), tmp_path / "split").fit()
    resumed = Trainer(config(faces, encoder_file, **cfg), tmp_path / "split").fit(resume_from=first)
    assert_same_tree(comparable(load_checkpoint(full)), comparable(load_checkpoint(resumed)))


def test_without_encoder_weights_the_error_names_both_ways_out(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = build_config("nirvis", None, {"data.root": str(faces), **TINY_NV})
    with pytest.raises(ConfigError, match="LightCNN_29Layers_V2_checkpoint.pth.tar(.|\\n)*--pretrain-encoder"):
        Trainer(cfg, tmp_path / "run").fit()


def test_pretrained_encoder_is_trained_once_and_cached(faces, tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_WEIGHTS", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cfg = build_config("nirvis", None, {"data.root": str(faces), **TINY_NV, "model.pretrain_encoder": True,
                                        "model.encoder_steps": 2, "train.total_iters": 1})
    Trainer(cfg, tmp_path / "a").fit()
    cached = list((tmp_path / ".cache" / "i2i").glob("lightcnn-pretrained-*.pt"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    Trainer(cfg, tmp_path / "b").fit()
    assert cached[0].stat().st_mtime_ns == mtime
    a, b = load_checkpoint(tmp_path / "a" / "checkpoints" / "000001.pt"), load_checkpoint(
        tmp_path / "b" / "checkpoints" / "000001.pt")
    assert_same_tree(a["nets"], b["nets"])  # pretraining does not move the run's RNG
    # a run on part of the data (fewer identities, one pair each) with another seed is scored by the same recognizer:
    # the one trained on the whole training split
    Trainer(build_config("nirvis", None, {"data.root": str(faces), **TINY_NV, "model.pretrain_encoder": True,
                                          "model.encoder_steps": 2, "train.total_iters": 1, "data.frac": 0.5,
                                          "data.pairs": "one", "train.seed": 5}), tmp_path / "c").fit()
    assert list((tmp_path / ".cache" / "i2i").glob("lightcnn-pretrained-*.pt")) == cached
    # the same data elsewhere (a copy) too
    shutil.copytree(faces, tmp_path / "copy")
    Trainer(build_config("nirvis", None, {"data.root": str(tmp_path / "copy"), **TINY_NV, "model.pretrain_encoder": True,
                                          "model.encoder_steps": 2, "train.total_iters": 1}), tmp_path / "d").fit()
    assert list((tmp_path / ".cache" / "i2i").glob("lightcnn-pretrained-*.pt")) == cached
    assert torch.load(cached[0], weights_only=True)["subjects"] == list(load_train_set(faces, "1").subjects)


def test_a_narrow_encoder_is_pretrained_and_a_file_is_refused_for_it(faces, encoder_file, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="encoder_width 0.25: only the full-width"):
        Trainer(config(faces, encoder_file, **{"model.encoder_width": 0.25}), tmp_path / "file").fit()
    cfg = build_config("nirvis", None, {"data.root": str(faces), **TINY_NV, "model.pretrain_encoder": True,
                                        "model.encoder_width": 0.25, "model.encoder_steps": 2,
                                        "train.total_iters": 1})
    Trainer(cfg, tmp_path / "narrow").fit()
    state = load_checkpoint(tmp_path / "narrow" / "checkpoints" / "000001.pt")
    assert state["nets"]["encoder"]["conv1.filter.weight"].shape[0] == 2 * 12  # mfm: 2 x round(48 x 0.25)


def test_export_translates_and_embeds(faces, encoder_file, tmp_path):
    from i2i.engine.inference import load_run
    from i2i.export import export_model
    from i2i.serving import ExportedModel, random_feed

    Trainer(config(faces, encoder_file), tmp_path / "run").fit()
    run = load_run(tmp_path / "run")
    manifest = export_model(run.task, run.nets, tmp_path / "export", source=run.checkpoint, log=lambda m: None)
    assert list(manifest.graphs) == ["nir_to_vis", "face_features"]
    for graph, diffs in manifest.info["parity"]["max_abs_diff"].items():
        assert max(diffs.values()) <= 1e-4, graph
    model = ExportedModel(tmp_path / "export")
    out = model.run("nir_to_vis", random_feed(manifest.graphs["nir_to_vis"], batch=3, seed=0))["image"]
    assert out.shape == (3, 3, 32, 32) and np.isfinite(out).all()
    assert manifest.examples


def test_recognition_protocol_cli_and_table(faces, encoder_file, tmp_path):
    from evaluators.__main__ import main
    from evaluators.tables import load_results, render_table

    Trainer(config(faces, encoder_file), tmp_path / "run").fit()
    assert main(["nirvis", "--run", str(tmp_path / "run"), "--device", "cpu", "--no-progress"]) == 0
    [result] = load_results([tmp_path / "run"])
    m = result["metrics"]
    assert result["task"] == "nirvis" and result["recognizer"] == "lightcnn29v2" and result["calibrated"]
    for row in (m, m["raw"]):
        assert set(row) >= {"rank1", "vr_far_1e-2", "vr_far_1e-3"} and all(0 <= row[k] <= 100 for k in
                                                                           ("rank1", "vr_far_1e-2", "vr_far_1e-3"))
    assert (tmp_path / "run" / "eval" / "nirvis_roc.png").stat().st_size > 5000
    assert "Table 2" in render_table([result], "md")
