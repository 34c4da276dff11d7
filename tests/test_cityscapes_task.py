"""The Cityscapes task (SPADE + ReMix on label maps) on a tiny procedural street set."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from i2i.config import build_config
from i2i.engine.checkpoint import load_checkpoint
from i2i.engine.trainer import Trainer
from i2i.tasks.base import Negatives
from tests.conftest import TINY_CITYSCAPES
from tests.test_trainer import assert_same_tree, comparable

TINY_CS = TINY_CITYSCAPES


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def streets(tiny_streets):
    return tiny_streets


def config(streets, **overrides):
    return build_config("cityscapes", None, {"data.root": str(streets), **TINY_CS, **overrides})


FLAGS = {
    "baseline": {}, "remix": {"remix.method": "remix", "remix.p": 1.0}, "wm": {"remix.method": "wm", "remix.p": 1.0},
    "mixup-target": {"remix.method": "mixup", "remix.p": 1.0}, "remix fm drop": {"remix.method": "remix",
                                                                               "remix.p": 1.0, "loss.fm_on_mixed": "drop"},
    "mixup": {"regularizers.mixer": "mixup", "regularizers.mix_ratio": 0.5}, "cutmix": {"regularizers.mixer": "cutmix"},
    "srmix": {"regularizers.mixer": "srmix"}, "adaptivemix": {"regularizers.adaptivemix": True},
    "adaptivemix real_fake": {"regularizers.adaptivemix": True, "regularizers.adaptivemix_pairs": "real_fake"},
    "pcr": {"regularizers.pcr": True}, "pcr+sc": {"regularizers.pcr": True, "regularizers.sample_correction": True},
    "diffaug": {"regularizers.diffaug": "color,translation,cutout"},
    "all": {"remix.method": "remix", "remix.p": 1.0, "regularizers.mixer": "cutmix", "regularizers.adaptivemix": True,
            "regularizers.pcr": True, "regularizers.diffaug": "color,translation,cutout"},
}


@pytest.mark.parametrize("name", list(FLAGS))
def test_every_regularizer_trains_on_this_task(streets, tmp_path, name):
    trainer = Trainer(config(streets, **FLAGS[name]), tmp_path / "run")
    checkpoint = trainer.fit()
    state = load_checkpoint(checkpoint)
    assert state["iteration"] == 2 and set(state["nets"]) == {"generator", "discriminator"}
    assert (tmp_path / "run" / "samples" / "000002_scenes.png").is_file()


def test_relative_vgg_loss_reaches_the_generator_only(streets, tmp_path):
    trainer = Trainer(config(streets, **{"remix.method": "remix"}), tmp_path / "run")
    trainer.setup(None)
    task = trainer.task
    batch = {k: v.to(task.device) for k, v in next(iter(task.train_stream(0))).items()}
    branch = task.branches(batch, 0)[0]
    branch.lam = torch.tensor(0.7)
    trainer.regs.feature_mix.a_bars["main"] = -1.0  # L_n > 0: both terms carry gradient
    codes, fake = trainer.translate(branch)
    mixed = 0.7 * batch["semantics"] + 0.3 * batch["semantics2"]
    assert torch.allclose(branch.cond_fake, mixed)  # the critic judges the fake under the mixed map
    targets = task.targets(branch, codes)
    loss, logs = trainer.regs.feature_mix.content_loss(task.content(fake, branch), targets.first, targets.second,
                                                       branch.lam, lambda t: task.target_content(t, branch),
                                                       task.content_distance, branch="main")
    assert logs["l_n"] > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.nets["generator"].parameters())
    assert all(p.grad is None for p in task.nets["discriminator"].parameters())
    assert all(p.grad is None for p in task.vgg.parameters())


def test_the_d_loss_scores_reals_and_fakes_in_one_critic_pass_with_the_separate_passes_value(streets, tmp_path):
    """As the official code: one D pass over reals and every negative set (one spectral-norm power iteration per D
    step); with D in eval mode (no power iteration) the loss equals that of one pass per set (instance norm is per
    sample)."""
    trainer = Trainer(config(streets, **{"regularizers.pcr": True}), tmp_path / "run")
    trainer.setup(None)
    task = trainer.task
    batch = {k: v.to(task.device) for k, v in next(iter(task.train_stream(0))).items()}
    branch = task.branches(batch, 0)[0]
    with torch.no_grad():
        _, fake = trainer.translate(branch)
    real_a, real_b = task.real_pair(branch)
    negatives = Negatives(trainer.regs.negative_sets(fake, branch.cond_fake, real_a, real_b, task.real_condition(branch)))
    assert len(negatives.sets) > 1
    D = task.nets["discriminator"]
    calls = []
    first_conv = next(m for m in D.modules() if isinstance(m, torch.nn.Conv2d))  # runs once per pass
    hook = first_conv.register_forward_hook(lambda *_: calls.append(1))
    D.train()
    task.d_loss(branch, task.critic, negatives)
    assert len(calls) == 1
    D.eval()
    fused, _ = task.d_loss(branch, task.critic, negatives)
    separate, _ = task.d_loss(branch, lambda x, c: task.critic(x, c), negatives)
    hook.remove()
    assert len(calls) == 2 + 1 + len(negatives.sets)
    torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-6)


def test_g_step_comes_before_d_step_and_the_rate_decays(streets, tmp_path):
    trainer = Trainer(config(streets, **{"train.total_iters": 10, "optim.decay_start": 0.6}), tmp_path / "run")
    task = trainer.task
    assert task.step_order == "g_first"
    assert [task.lr_factor(s) for s in (0, 5, 6, 8, 10)] == [1.0, 1.0, 1.0, 0.5, 0.0]
    trainer.setup(None)
    trainer.set_learning_rates(8)
    assert trainer.optimizers["generator"].param_groups[0]["lr"] == pytest.approx(0.5 * 1e-4)
    assert trainer.optimizers["discriminator"].param_groups[0]["lr"] == pytest.approx(0.5 * 4e-4)


def test_resume_continues_bit_for_bit(streets, tmp_path):
    cfg = {"remix.method": "remix", "remix.p": 0.5, "train.total_iters": 4}
    full = Trainer(config(streets, **cfg), tmp_path / "full").fit()
    first = Trainer(config(streets, **{**cfg, "train.total_iters": 2}), tmp_path / "split").fit()
    resumed = Trainer(config(streets, **cfg), tmp_path / "split").fit(resume_from=first)
    assert_same_tree(comparable(load_checkpoint(full)), comparable(load_checkpoint(resumed)))


def test_export_and_serve_a_label_map(streets, tmp_path):
    from i2i.data.cityscapes_labels import colorize_labels
    from i2i.engine.inference import load_run
    from i2i.export import export_model
    from i2i.serving import ExportedModel, random_feed, translate

    Trainer(config(streets), tmp_path / "run").fit()
    run = load_run(tmp_path / "run")
    manifest = export_model(run.task, run.nets, tmp_path / "export", source=run.checkpoint, log=lambda m: None)
    spec = manifest.graphs["label_to_photo"]
    assert spec.inputs[0].role == "label_map" and spec.inputs[0].shape == ("N", 32, 64)
    assert max(manifest.info["parity"]["max_abs_diff"]["label_to_photo"].values()) <= 1e-4
    model = ExportedModel(tmp_path / "export")
    feed = random_feed(spec, batch=2, seed=0)
    assert model.run("label_to_photo", feed)["image"].shape == (2, 3, 32, 64)
    ids = np.zeros((64, 128), np.uint8)
    ids[:20], ids[20:45], ids[45:] = 23, 11, 7  # sky, building, road at twice the model size
    grey, colour = tmp_path / "ids.png", tmp_path / "colour.png"
    Image.fromarray(ids).save(grey)
    Image.fromarray(colorize_labels(ids)).save(colour)
    from_ids = translate(model, "label_to_photo", images={"label": str(grey)})
    from_colours = translate(model, "label_to_photo", images={"label": str(colour)})
    assert from_ids[0].shape == (32, 64, 3) and (from_ids[0] == from_colours[0]).all()
    assert manifest.examples  # colour-coded val maps a person can click


def test_protocol_cli_scores_a_run_and_the_table_reads_it(streets, tmp_path, capsys):
    from evaluators.__main__ import main
    from evaluators.tables import load_results, render_table

    Trainer(config(streets), tmp_path / "run").fit()
    args = ["--segmenter", "proxy", "--segmenter-steps", "20", "--backbone", "proxy", "--device", "cpu",
            "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--batch-size", "2"]
    assert main(["cityscapes", "--run", str(tmp_path / "run"), *args]) == 0
    [result] = load_results([tmp_path / "run"])
    m = result["metrics"]
    assert result["task"] == "cityscapes" and result["segmenter"] == "proxy" and result["resolution"] == "output"
    assert 0 <= m["miou"] <= 1 and 0 <= m["accuracy"] <= m["accuracy_labelled"] <= 1 and m["fid"] >= 0
    assert set(m["real"]) == {"miou", "accuracy", "accuracy_labelled"}
    table = render_table([result], "md")
    assert "Table 3" in table and "†" in table
    assert main(["cityscapes", "--run", str(tmp_path / "run"), *args, "--resolution", "full",
                 "--out", str(tmp_path / "full.json")]) == 0
    assert main(["cityscapes", "--run", str(tmp_path / "nowhere"), *args]) == 2
