"""Shared fixtures: a tiny procedural AFHQ-like dataset and a tiny StarGAN v2 configuration (CPU, seconds)."""
from __future__ import annotations

import pytest
import torch

from i2i.config import build_config
from i2i.data.synthetic import make_afhq


TINY = {
    "data.img_size": 32,
    "data.num_workers": 0,
    "model.width": 8,
    "model.max_conv_dim": 16,
    "model.style_dim": 8,
    "model.latent_dim": 4,
    "train.batch_size": 4,
    "train.total_iters": 4,
    "train.log_every": 1,
    "train.sample_every": 2,
    "train.save_every": 2,
    "train.progress": False,
    "train.ema_start": "trained",
    "loss.ds_iter": 10,
}


@pytest.fixture(scope="session")
def tiny_afhq(tmp_path_factory):
    """ROOT/{train,val}/{cat,dog,wild}/*.png at 32 px, 8 train and 3 val images per domain."""
    return make_afhq(tmp_path_factory.mktemp("data") / "afhq", img_size=32, n_train=8, n_val=3)


@pytest.fixture
def tiny_config(tiny_afhq):
    """A factory: tiny_config(**{"section.field": value}) -> a validated afhq Config on the tiny dataset."""

    def make(**overrides):
        return build_config("afhq", None, {"data.root": str(tiny_afhq), **TINY, **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_run(tiny_afhq, tmp_path_factory):
    """A finished 2-iteration tiny afhq run folder (checkpoint, config, data manifest)."""
    from i2i.engine.trainer import Trainer

    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = build_config("afhq", None, {"data.root": str(tiny_afhq), **TINY, "train.total_iters": 2})
    with torch.random.fork_rng():
        Trainer(cfg, run_dir).fit()
    return run_dir


@pytest.fixture(scope="session")
def tiny_export(tiny_run, tmp_path_factory):
    """All ONNX graphs of the tiny run, exported and verified (tests/test_export.py checks them)."""
    from i2i.engine.inference import load_run
    from i2i.export import export_model

    run = load_run(tiny_run)
    out = tmp_path_factory.mktemp("exports") / "tiny"
    export_model(run.task, run.nets, out, source=run.checkpoint, log=lambda message: None)
    return out


TINY_CITYSCAPES = {
    "data.img_size": 64, "data.num_workers": 0, "model.ngf": 4, "model.num_upsampling_layers": "normal",
    "model.spade_hidden": 8, "model.ndf": 4, "model.n_layers_D": 2, "model.num_D": 2, "model.allow_random_vgg": True,
    "train.batch_size": 2, "train.total_iters": 2, "train.log_every": 1, "train.sample_every": 2,
    "train.save_every": 2, "train.progress": False,
}
TINY_NIRVIS = {
    "data.img_size": 32, "data.num_workers": 0, "model.n_mlp": 2, "model.channel_multiplier": 1,
    "model.channel_max": 16, "train.batch_size": 4, "train.total_iters": 2, "train.log_every": 1,
    "train.sample_every": 2, "train.save_every": 2, "train.progress": False, "train.ema_start": "trained",
    "loss.d_reg_every": 2,
}


@pytest.fixture(scope="session")
def tiny_streets(tmp_path_factory):
    from i2i.data.synthetic import make_cityscapes

    return make_cityscapes(tmp_path_factory.mktemp("data") / "cityscapes", n_train=6, n_val=3, width=64, height=32)


@pytest.fixture(scope="session")
def tiny_faces(tmp_path_factory):
    from i2i.data.synthetic import make_nirvis

    return make_nirvis(tmp_path_factory.mktemp("data") / "nirvis", n_identities=12, img_size=32)


@pytest.fixture(scope="session")
def lightcnn_file(tmp_path_factory):
    """A LightCNN-29v2 checkpoint in the official format, with seeded weights."""
    from i2i.nets.lightcnn import LightCNN29v2

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = LightCNN29v2(num_classes=10)
    path = tmp_path_factory.mktemp("weights") / "LightCNN_29Layers_V2_checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "LightCNN-29v2", "prec1": 0.0,
                "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def _export_tiny(task: str, overrides: dict, root, tmp_path_factory):
    from i2i.engine.inference import load_run
    from i2i.engine.trainer import Trainer
    from i2i.export import export_model

    run_dir = tmp_path_factory.mktemp("runs") / task
    cfg = build_config(task, None, {"data.root": str(root), **overrides})
    with torch.random.fork_rng():
        Trainer(cfg, run_dir).fit()
    run = load_run(run_dir)
    out = tmp_path_factory.mktemp("exports") / task
    export_model(run.task, run.nets, out, source=run.checkpoint, log=lambda message: None)
    return out


@pytest.fixture(scope="session")
def tiny_cityscapes_export(tiny_streets, tmp_path_factory):
    return _export_tiny("cityscapes", TINY_CITYSCAPES, tiny_streets, tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_nirvis_export(tiny_faces, lightcnn_file, tmp_path_factory):
    return _export_tiny("nirvis", {**TINY_NIRVIS, "model.encoder_weights": str(lightcnn_file)}, tiny_faces,
                        tmp_path_factory)
