"""The trainer on the StarGAN v2 task: exact resume, ReMix wiring, NaN handling, checkpoints (tiny CPU runs)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from i2i.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from i2i.config import build_config
from i2i.engine.amp import amp_supported
from i2i.engine.trainer import Trainer, TrainingDiverged
from i2i.nets.stargan_v2 import load_into, load_official_checkpoint
from tests.conftest import TINY, TINY_CITYSCAPES, TINY_NIRVIS


def assert_same_tree(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{path} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: keys differ"
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def comparable(state: dict) -> dict:
    return {k: state[k] for k in ("iteration", "nets", "nets_ema", "optimizers", "regularizers", "rng")}


def test_resume_reproduces_uninterrupted_run(tiny_config, tmp_path):
    """2N iterations in one run == N iterations, a new process-like Trainer resuming, and N more (bit for bit)."""
    cfg = dict(**{"remix.method": "remix", "remix.p": 0.5, "train.total_iters": 6, "train.save_every": 3})
    full = Trainer(tiny_config(**cfg), tmp_path / "full").fit()

    first = Trainer(tiny_config(**{**cfg, "train.total_iters": 3}), tmp_path / "split").fit()
    assert first.name == "000003.pt"
    resumed = Trainer(tiny_config(**cfg), tmp_path / "split").fit(resume_from=first)

    a, b = load_checkpoint(full), load_checkpoint(resumed)
    assert a["iteration"] == b["iteration"] == 6
    assert any(a["regularizers"]["feature_mix"]["a_bars"].values()), "the run never mixed: the test would not cover ReMix"
    assert_same_tree(comparable(a), comparable(b))
    log = [json.loads(line) for line in (tmp_path / "split" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3, 4, 5, 6]


def test_p_zero_equals_baseline_bit_for_bit(tiny_config, tmp_path):
    base = Trainer(tiny_config(**{"train.total_iters": 2}), tmp_path / "base").fit()
    remix0 = Trainer(tiny_config(**{"train.total_iters": 2, "remix.method": "remix", "remix.p": 0.0}),
                     tmp_path / "p0").fit()
    a, b = load_checkpoint(base), load_checkpoint(remix0)
    for key in ("nets", "nets_ema", "optimizers"):
        assert_same_tree(a[key], b[key], key)


@pytest.mark.parametrize("method", [{}, {"remix.method": "remix", "remix.p": 1.0, "regularizers.diffaug": "color"}],
                         ids=["baseline", "remix+diffaug"])
def test_reusing_the_d_step_fakes_in_the_g_step_changes_nothing(tiny_config, tmp_path, method):
    """The G step takes its branch's D-step fakes (G unchanged in between) instead of translating again: the run's
    weights and optimiser states equal those of the official recomputation, bit for bit."""
    runs = {reuse: Trainer(tiny_config(**{**method, "train.total_iters": 3, "train.reuse_fakes": reuse}),
                           tmp_path / str(reuse)).fit() for reuse in (True, False)}
    a, b = load_checkpoint(runs[True]), load_checkpoint(runs[False])
    for key in ("nets", "nets_ema", "optimizers"):
        assert_same_tree(a[key], b[key], key)


@pytest.mark.parametrize("branch_name, stepped", [("latent", {"generator", "mapping_network", "style_encoder"}),
                                                 ("reference", {"generator"})])
@pytest.mark.parametrize("method", [{}, {"remix.method": "remix", "remix.p": 1.0, "regularizers.adaptivemix": True,
                                         "regularizers.adaptivemix_on_generator": True, "regularizers.diffaug": "color"}],
                         ids=["baseline", "remix+adaptivemix+diffaug"])
def test_the_g_step_computes_gradients_of_the_nets_it_steps_only(tiny_config, tmp_path, method, branch_name, stepped):
    """The G step's backward goes through D (and, in the reference branch, E) to the fakes but not into the weights
    of a net it does not step (the update would discard them); those stay trainable and unchanged, the stepped move."""
    trainer = Trainer(tiny_config(**method), tmp_path / "run")
    trainer.setup(None)
    task = trainer.task
    batch = {k: v.to(task.device) for k, v in next(iter(task.train_stream(0))).items()}
    branch = next(b for b in task.branches(batch, 0) if b.name == branch_name)
    branch.lam = torch.tensor(0.7) if method else None
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in task.nets.items()}
    trainer.g_step(branch, 0)
    for name, net in task.nets.items():
        params = list(net.parameters())
        assert all(p.requires_grad for p in params), name
        if name in stepped:
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
            assert not all(torch.equal(p, q) for p, q in zip(params, before[name])), name
        else:
            assert all(p.grad is None for p in params), name
            assert all(torch.equal(p, q) for p, q in zip(params, before[name])), name


@pytest.mark.skipif(not amp_supported(torch.device("cpu")), reason="this CPU has no bfloat16 instructions")
@pytest.mark.parametrize("task", ["afhq", "cityscapes", "nirvis"])
def test_amp_trains_every_task_in_bfloat16_on_a_cpu_with_bf16(task, tiny_afhq, tiny_streets, tiny_faces, lightcnn_file,
                                                             tmp_path):
    source, tiny = {"afhq": (tiny_afhq, {**TINY, "remix.method": "remix", "remix.p": 1.0}),
                    "cityscapes": (tiny_streets, TINY_CITYSCAPES),
                    "nirvis": (tiny_faces, {**TINY_NIRVIS, "model.encoder_weights": str(lightcnn_file)})}[task]
    logs = {}
    for amp in (False, True):
        cfg = build_config(task, None, {"data.root": str(source), **tiny, "train.total_iters": 2, "train.amp": amp})
        trainer = Trainer(cfg, tmp_path / str(amp))
        trainer.fit()
        logs[amp] = [json.loads(line) for line in (tmp_path / str(amp) / "log.jsonl").read_text().splitlines()]
        assert all(p.dtype == torch.float32 for net in trainer.task.nets.values() for p in net.parameters())
    first = {k: v for k, v in logs[True][0].items() if k.endswith("loss")}
    assert first and all(math.isfinite(v) for record in logs[True] for k, v in record.items() if k.endswith("loss"))
    # bfloat16 keeps 8 bits of mantissa: the first losses differ from float32's (autocast ran), but only slightly
    assert any(first[k] != logs[False][0][k] for k in first)
    assert all(abs(first[k] - logs[False][0][k]) <= 0.05 * abs(logs[False][0][k]) + 0.05 for k in first)


@pytest.mark.parametrize("branch_name, stepped", [("latent", {"generator", "mapping_network", "style_encoder"}),
                                                 ("reference", {"generator", "style_encoder"})])
def test_relative_content_loss_reaches_generator_mapping_and_style_encoder(tiny_config, tmp_path, branch_name, stepped):
    """Gradients of L'_con = L_p + L_n flow into G, F (latent branch) and E; nothing reaches D."""
    trainer = Trainer(tiny_config(**{"remix.method": "remix", "remix.p": 1.0}), tmp_path / "run")
    trainer.setup(None)
    task = trainer.task
    batch = next(iter(task.train_stream(0)))
    branch = next(b for b in task.branches(batch, 0) if b.name == branch_name)
    branch.lam = torch.tensor(0.7)
    trainer.regs.feature_mix.a_bar = -1.0  # L_n = relu(d2 - a_bar) > 0: both terms carry gradient
    codes, fake = trainer.translate(branch)
    targets = task.targets(branch, codes)
    loss, logs = trainer.regs.feature_mix.content_loss(task.content(fake, branch), targets.first, targets.second,
                                                       branch.lam,
                                                       lambda t: task.target_content(t, branch), task.content_distance)
    assert logs["l_n"] > 0
    loss.backward()
    reached = {name for name, net in task.nets.items()
               if any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())}
    assert reached == stepped


def test_remix_at_content_runs_and_mixes_generator_features(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(**{"remix.method": "remix", "remix.p": 1.0, "remix.at": "content",
                                     "train.total_iters": 2}), tmp_path / "run")
    ckpt = trainer.fit()
    assert any(load_checkpoint(ckpt)["regularizers"]["feature_mix"]["a_bars"].values())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(**{"train.total_iters": 5, "train.save_every": 1}), tmp_path / "run")
    original = trainer.task.g_loss

    def poisoned(branch, critic, fake, codes):
        loss, logs = original(branch, critic, fake, codes)
        if branch.step == 2 and branch.name == "reference":
            logs["cyc"] = torch.tensor(float("nan"))
            loss = loss * float("nan")
        return loss, logs

    monkeypatch.setattr(trainer.task, "g_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"'G/reference_cyc' is nan at iteration 3.*000002\.pt"):
        trainer.fit()
    assert latest_checkpoint(tmp_path / "run").name == "000002.pt"
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert all(torch.isfinite(v).all() for v in state["nets"]["generator"].values())


def test_checkpoint_holds_official_nets_ema_and_prunes(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(**{"train.total_iters": 4, "train.save_every": 1, "train.keep_checkpoints": 2}),
                      tmp_path / "run")
    final = trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["000003.pt", "000004.pt"]
    # the nets_ema entry is the official `*_nets_ema.ckpt` content: save it alone and load it the official way
    official = tmp_path / "000004_nets_ema.ckpt"
    torch.save(load_checkpoint(final)["nets_ema"], official)
    fresh = {name: trainer.ema.nets[name].__class__ for name in trainer.ema.nets}
    assert set(fresh) == {"generator", "mapping_network", "style_encoder"}
    assert load_into(trainer.ema.nets, load_official_checkpoint(official)) == list(trainer.ema.nets)
    assert (tmp_path / "run" / "samples" / "000004_reference.png").exists()
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


def test_losses_change_and_ema_differs_from_trained(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(**{"train.total_iters": 3}), tmp_path / "run")
    trainer.fit()
    g, g_ema = trainer.task.nets["generator"], trainer.ema.nets["generator"]
    assert not all(p.requires_grad for p in g_ema.parameters())
    diffs = [(p - q).abs().max().item() for p, q in zip(g.parameters(), g_ema.parameters())]
    assert max(diffs) > 0


def test_training_reduces_the_reconstruction_losses(tiny_config, tmp_path):
    """A tiny StarGAN v2 + ReMix learns: the cycle losses fall within 40 iterations (lr raised for a short run)."""
    trainer = Trainer(tiny_config(**{"remix.method": "remix", "train.total_iters": 40, "train.save_every": 40,
                                     "train.sample_every": 40, "optim.lr": 1e-3}), tmp_path / "run")
    trainer.fit()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]

    def mean(key, records):
        values = [r[key] for r in records if key in r]
        return sum(values) / len(values)

    for key in ("G/latent_cyc", "G/reference_cyc"):
        assert mean(key, log[-10:]) < 0.8 * mean(key, log[:3]), key
    assert "mix/latent_a_bar" in log[-1] and "mix/reference_a_bar" in log[-1]  # one a_bar per branch


def test_mixing_uses_an_independent_code_not_the_diversity_one(tiny_config, tmp_path):
    """The second code ReMix mixes is a third latent / reference (remix.second_code independent), so the diversity
    loss, which compares G(x, s') with G(x, s2), does not shrink on mixed batches."""
    for second_code in ("independent", "shared"):
        trainer = Trainer(tiny_config(**{"remix.method": "remix", "remix.second_code": second_code}),
                          tmp_path / second_code)
        trainer.setup(None)
        task = trainer.task
        batch = {k: v.to(task.device) for k, v in next(iter(task.train_stream(0))).items()}
        assert ("x_ref3" in batch) == (second_code == "independent")
        for branch in task.branches(batch, 0):
            codes = task.encode(branch)
            same = torch.equal(codes.second, task.style_code(branch, second=True))
            assert same == (second_code == "shared"), (second_code, branch.name)
            again = task.encode(branch).second  # the D and G steps of an iteration mix the same code
            assert torch.equal(codes.second, again)


@pytest.mark.parametrize("draw, branches", [("per_iteration", "all"), ("per_branch", "reference")])
def test_draw_modes_and_branch_selection(draw, branches):
    from i2i.mixing.remix import FeatureMix

    mix = FeatureMix("remix", p=0.5, draw=draw, branches=None if branches == "all" else (branches,), seed=0)
    draws = [mix.draw_branches(["latent", "reference"], 4) for _ in range(200)]
    if draw == "per_iteration":
        assert all((d["latent"] is None) == (d["reference"] is None) for d in draws)
        assert all(d["latent"] is None or torch.equal(d["latent"], d["reference"]) for d in draws)
    else:
        assert all(d["latent"] is None for d in draws)
    share = sum(d["reference"] is not None for d in draws) / len(draws)
    assert 0.4 < share < 0.6
