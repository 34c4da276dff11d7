"""Fine-tuning from released weights (`--init-from`): official files load into a new run, per tensor, with the number
of domains changed, fresh optimisers, the EMA copy starting at the loaded weights, and a report of what was loaded."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from i2i.config import ConfigError, build_config
from i2i.engine.trainer import Trainer
from i2i.nets.stargan_v2 import build_nets, save_official_checkpoint
from i2i.nets.stylegan2 import Discriminator, Generator
from tests.conftest import TINY, TINY_NIRVIS


def _equal(net, state, prefix=""):
    own = net.state_dict()
    return all(torch.equal(own[k], v) for k, v in state.items() if k.startswith(prefix))


def test_official_stargan_v2_file_with_two_domains_starts_a_three_domain_run(tiny_config, tmp_path):
    torch.manual_seed(1)
    released = build_nets(32, num_domains=2, style_dim=TINY["model.style_dim"], latent_dim=TINY["model.latent_dim"],
                          max_conv_dim=TINY["model.max_conv_dim"], width=TINY["model.width"])
    del released["discriminator"]  # as released: nets_ema only
    path = tmp_path / "100000_nets_ema.ckpt"
    save_official_checkpoint(path, released)

    trainer = Trainer(tiny_config(**{"train.init_from": str(path)}), tmp_path / "run")
    assert trainer.setup(None) == 0
    nets = trainer.task.nets
    assert _equal(nets["generator"], released["generator"].state_dict())
    mapping = released["mapping_network"].state_dict()
    assert _equal(nets["mapping_network"], mapping, "shared.") and _equal(nets["mapping_network"], mapping, "unshared.1.")
    assert not any(k.startswith("unshared.2.") for k in mapping)  # the third domain's head: a new one, initialised
    assert _equal(trainer.ema.nets["generator"], released["generator"].state_dict())  # EMA starts at the file
    assert all(not s for s in trainer.optimizers["generator"].state.values())  # fresh optimiser

    report = json.loads((tmp_path / "run" / "init_from.json").read_text())
    assert report["format"] == "StarGAN v2 official" and report["absent"] == ["discriminator"]
    kept = report["nets"]["mapping_network"]["kept"]
    assert kept and all(k.startswith("unshared.2.") for k in kept)
    assert report["nets"]["generator"]["kept"] == []


def test_an_i2i_checkpoint_starts_a_new_run_from_its_ema_weights(tiny_config, tiny_run, tmp_path):
    source = sorted((tiny_run / "checkpoints").glob("*.pt"))[-1]
    state = torch.load(source, weights_only=True)
    trainer = Trainer(tiny_config(**{"train.init_from": str(source), "train.total_iters": 1}), tmp_path / "run")
    trainer.setup(None)
    assert trainer.iteration == 0
    assert _equal(trainer.task.nets["generator"], state["nets_ema"]["generator"])
    assert _equal(trainer.task.nets["discriminator"], state["nets"]["discriminator"])
    Trainer(tiny_config(**{"train.init_from": str(source), "train.total_iters": 1}), tmp_path / "run2").fit()
    assert (tmp_path / "run2" / "checkpoints" / "000001.pt").is_file()


def test_bad_init_files_give_one_line_errors(tiny_config, tmp_path, tiny_streets):
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    with pytest.raises(ConfigError, match="notes.txt"):
        Trainer(tiny_config(**{"train.init_from": str(text)}), tmp_path / "a").setup(None)
    with pytest.raises(FileNotFoundError, match="no such file"):  # the CLI prints it as one line too
        Trainer(tiny_config(**{"train.init_from": str(tmp_path / "missing.ckpt")}), tmp_path / "b").setup(None)
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"generator": {"foo.weight": torch.zeros(3)}}, unrelated)
    with pytest.raises(ConfigError, match="no tensor that fits"):
        Trainer(tiny_config(**{"train.init_from": str(unrelated)}), tmp_path / "c").setup(None)


def test_rosinality_checkpoint_starts_a_nirvis_run(tiny_faces, lightcnn_file, tmp_path):
    torch.manual_seed(2)
    args = dict(channel_multiplier=1, channel_max=16)
    g, g_ema = Generator(32, 256, 2, **args), Generator(32, 256, 2, **args)
    d = Discriminator(32, **args)
    path = tmp_path / "020000.pt"
    torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g_ema.state_dict(),
                "args": argparse.Namespace(size=32)}, path)  # as rosinality's train.py writes it
    cfg = build_config("nirvis", None, {"data.root": str(tiny_faces), **TINY_NIRVIS,
                                        "model.encoder_weights": str(lightcnn_file), "train.init_from": str(path)})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.setup(None)
    assert _equal(trainer.task.nets["generator"], g_ema.state_dict())
    assert _equal(trainer.task.nets["discriminator"], d.state_dict())
    report = json.loads((tmp_path / "run" / "init_from.json").read_text())
    assert report["format"] == "rosinality StyleGAN2" and report["absent"] == []  # the frozen encoder is not D's


class PickledStateDict(dict):
    """A state dict saved as a custom class: loading it needs a full unpickle (code from the file could run)."""


def test_a_file_that_needs_a_full_unpickle_loads_only_with_trust(tiny_config, tmp_path):
    torch.manual_seed(3)
    released = build_nets(32, num_domains=3, style_dim=TINY["model.style_dim"], latent_dim=TINY["model.latent_dim"],
                          max_conv_dim=TINY["model.max_conv_dim"], width=TINY["model.width"])
    path = tmp_path / "pickled_nets_ema.ckpt"
    torch.save({name: PickledStateDict(net.state_dict()) for name, net in released.items()}, path)
    with pytest.raises(ConfigError, match="--trust-checkpoint"):
        Trainer(tiny_config(**{"train.init_from": str(path)}), tmp_path / "a").setup(None)
    trusted = Trainer(tiny_config(**{"train.init_from": str(path), "train.trust_checkpoint": True}), tmp_path / "b")
    with pytest.warns(UserWarning, match="fully unpickling"):
        trusted.setup(None)
    assert _equal(trusted.task.nets["discriminator"], released["discriminator"].state_dict())
