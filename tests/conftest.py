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
