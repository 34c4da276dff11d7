"""float16 autocast with a GradScaler, gradient penalties under loss scaling, skipped updates on overflow, and
--compile with its eager fallback (tiny CPU runs: float16 is meant for CUDA, here it is checked for correctness)."""
from __future__ import annotations

import copy
import functools
import json
import math

import pytest
import torch
from torch import nn

from i2i.config import build_config
from i2i.engine.amp import penalty_grad, penalty_scale
from i2i.engine.checkpoint import load_checkpoint
from i2i.engine.logging import read_log
from i2i.engine.trainer import Trainer, TrainingDiverged
from i2i.tasks import task_class
from tests.conftest import TINY, TINY_CITYSCAPES, TINY_NIRVIS
from tests.test_trainer import assert_same_tree, comparable

FP16 = {"train.amp": True, "train.amp_dtype": "float16"}


@pytest.mark.parametrize("task", ["afhq", "cityscapes", "nirvis"])
def test_float16_with_a_grad_scaler_trains_every_task_and_resumes_its_scale(task, tiny_afhq, tiny_streets, tiny_faces,
                                                                            lightcnn_file, tmp_path, capsys):
    """The R1 tasks (afhq every iteration, nirvis lazily at step 0) take their penalty through penalty_grad."""
    source, tiny = {"afhq": (tiny_afhq, {**TINY, "remix.method": "remix", "remix.p": 1.0, "train.batch_size": 2}),
                    "cityscapes": (tiny_streets, TINY_CITYSCAPES),
                    "nirvis": (tiny_faces, {**TINY_NIRVIS, "model.encoder_weights": str(lightcnn_file),
                                            "train.batch_size": 2})}[task]

    def config(**overrides):
        return build_config(task, None, {"data.root": str(source), **tiny, **FP16, **overrides})

    logs, states = {}, {}
    for amp in (False, True):  # float32's first iteration is the reference
        trainer = Trainer(config(**{"train.total_iters": 2 if amp else 1, "train.amp": amp}), tmp_path / str(amp))
        states[amp] = load_checkpoint(trainer.fit())
        logs[amp] = read_log(tmp_path / str(amp))
        assert all(p.dtype == torch.float32 for net in trainer.task.nets.values() for p in net.parameters())
    assert "float16 on the CPU is slow and meant for testing" in capsys.readouterr().err
    first = {k: v for k, v in logs[True][0].items() if k.endswith("loss")}
    assert first and all(math.isfinite(v) for record in logs[True] for k, v in record.items() if k.endswith("loss"))
    assert any(first[k] != logs[False][0][k] for k in first)  # autocast ran
    assert all(abs(first[k] - logs[False][0][k]) <= 0.02 * abs(logs[False][0][k]) + 0.02 for k in first)
    assert "amp" not in states[False]  # float32 (and bfloat16) checkpoints are as before

    saved = states[True]
    assert saved["amp"]["scaler"]["scale"] == logs[True][-1]["amp/scale"]
    resumed = Trainer(config(**{"train.total_iters": 3}), tmp_path / "True")
    assert resumed.setup(tmp_path / "True" / "checkpoints" / "000002.pt") == 2
    assert resumed.precision.state_dict() == saved["amp"]
    fresh = Trainer(config(), tmp_path / "fresh").precision.state_dict()
    assert fresh != saved["amp"]  # the scaler's steps (growth tracker, backoffs) are what was restored

    del saved["amp"]  # a checkpoint from before float16 support: it loads, with a fresh scaler
    older = Trainer(config(), tmp_path / "older")
    older.setup(None)
    older.load_state(saved)
    assert older.precision.state_dict() == fresh


def small_critic() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))


def test_penalty_grad_is_autograd_grad_without_a_scale_and_the_same_gradient_under_one():
    critic, x = small_critic(), torch.randn(2, 3, 6, 6).requires_grad_()

    def second(grad):  # the penalty's own backward (R1's double backward), into the first layer's weight
        return torch.autograd.grad(grad.pow(2).sum(), critic[0].weight)[0]

    (plain,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    plain_second = second(plain)
    grad = penalty_grad(critic(x), x)
    assert torch.equal(grad, plain) and torch.equal(second(grad), plain_second)
    with penalty_scale(torch.tensor(2.0**15)):  # a power of two, as the GradScaler's scales are: no value changes
        grad = penalty_grad(critic(x), x)
    assert torch.equal(grad, plain) and torch.equal(second(grad), plain_second)
    with penalty_scale(torch.tensor(3.0)):  # another scale only rounds
        grad = penalty_grad(critic(x), x)
    torch.testing.assert_close(grad, plain)
    torch.testing.assert_close(second(grad), plain_second)


def test_penalty_grad_under_loss_scaling_keeps_float16_gradients_that_would_underflow():
    x = torch.full((4,), 0.5, requires_grad=True)

    def output():
        with torch.autocast("cpu", dtype=torch.float16):
            return x.half() * 1e-4 * 1e-4  # d output / dx = 1e-8 < float16's smallest subnormal (6e-8)

    assert torch.equal(penalty_grad(output(), x), torch.zeros(4))
    with penalty_scale(torch.tensor(2.0**15)):
        torch.testing.assert_close(penalty_grad(output(), x), torch.full((4,), 1e-8), rtol=1e-2, atol=0.0)


@pytest.mark.parametrize("amp", [False, True], ids=["float32", "float16"])
def test_a_non_finite_loss_skips_the_update_under_loss_scaling_and_stops_the_run_without(tiny_config, tmp_path, amp):
    trainer = Trainer(tiny_config(**{**FP16, "train.amp": amp}), tmp_path / "run")
    trainer.setup(None)
    critic = trainer.task.nets["discriminator"]

    def optimize(value: float, step: int) -> None:
        loss = sum(p.square().sum() for p in critic.parameters()) * value
        trainer.optimize(loss, {"D/latent_real": torch.tensor(1.0), "D/latent_loss": loss.detach()},
                         ("discriminator",), step)

    if not amp:
        with pytest.raises(TrainingDiverged, match=r"^loss 'D/latent_loss' is inf at iteration 1; stopped before "
                                                   r"updating, no checkpoint was written yet$"):
            optimize(float("inf"), 0)
        return
    precision = trainer.precision
    precision.max_skipped = 3
    scale, weights = precision.scaler.get_scale(), copy.deepcopy(critic.state_dict())
    for k in range(2):
        optimize(float("inf"), k)
        assert precision.skipped == {"discriminator": k + 1} and precision.scaler.get_scale() == scale * 0.5 ** (k + 1)
    assert_same_tree(critic.state_dict(), weights)  # no optimiser step
    optimize(1.0, 2)  # a finite loss steps and ends the run of skips
    assert precision.skipped == {} and any(not torch.equal(v, weights[k]) for k, v in critic.state_dict().items())
    assert precision.scaler.state_dict()["_growth_tracker"] == 1  # one good step towards growing the scale
    for k in range(3):
        optimize(float("nan"), 3 + k)
        assert precision.scaler.state_dict()["_growth_tracker"] == 0  # a skip restarts the count, as GradScaler's own
    with pytest.raises(TrainingDiverged, match=r"^loss 'D/latent_loss' is nan at iteration 7 \(float16 loss scaling; "
                                               r"updates skipped in a row for non-finite losses: discriminator 3\); "
                                               r"stopped before updating, no checkpoint was written yet$"):
        optimize(float("nan"), 6)


def test_an_overflow_in_training_is_skipped_and_logged_and_a_persistent_one_stops(tiny_config, tmp_path):
    def poisoned(branches: set[str]) -> Trainer:
        trainer = Trainer(tiny_config(**{**FP16, "train.total_iters": 1}), tmp_path / "+".join(branches))
        original = trainer.task.d_loss

        def d_loss(branch, critic, negatives):
            loss, logs = original(branch, critic, negatives)
            return (loss * float("inf") if branch.name in branches else loss), logs

        trainer.task.d_loss = d_loss
        return trainer

    poisoned({"latent"}).fit()  # the reference branch's D update follows, and the G updates
    text = (tmp_path / "latent" / "log.jsonl").read_text()
    assert json.loads(text.splitlines()[0], parse_constant=pytest.fail)["D/latent_loss"] == "Infinity"  # strict JSON
    log = read_log(tmp_path / "latent")
    assert log[0]["D/latent_loss"] == math.inf and math.isfinite(log[0]["D/reference_loss"])
    assert log[0]["amp/scale"] <= 2.0**15 / 2

    trainer = poisoned({"latent", "reference"})
    trainer.precision.max_skipped = 1
    with pytest.raises(TrainingDiverged, match=r"'D/reference_loss' is inf at iteration 1 \(float16 loss scaling; "
                                               r"updates skipped in a row for non-finite losses: discriminator 1\)"):
        trainer.fit()


def test_gradients_that_keep_overflowing_with_a_finite_loss_stop_the_run(tiny_config, tmp_path):
    """GradScaler skips an update whose gradients overflow though the loss is finite; one such update is absorbed (the
    scale backs off), `max_skipped` in a row for a net stop the run naming it. The counters are checkpointed."""
    def run(name: str, poisoned_iterations: int, total: int, max_skipped: int = 3) -> Trainer:
        trainer = Trainer(tiny_config(**{**FP16, "train.total_iters": total, "train.log_every": 1,
                                         "train.save_every": 2}), tmp_path / name)
        trainer.setup(None)
        trainer.precision.max_skipped = max_skipped
        decode, poisoned = trainer.task.decode, {"calls": 0}

        def decode_with_inf_gradients(e, branch):  # every G-side gradient behind the fakes becomes inf
            fake = decode(e, branch)
            poisoned["calls"] += fake.requires_grad
            if fake.requires_grad and poisoned["calls"] <= 2 * poisoned_iterations:  # 2 G steps per iteration
                fake.register_hook(lambda grad: grad * float("inf"))
            return fake

        trainer.task.decode = decode_with_inf_gradients
        return trainer

    trainer = run("once", poisoned_iterations=1, total=2)
    assert load_checkpoint(trainer.fit())["amp"]["overflows"] == {"discriminator": 0, "generator": 0,
                                                                   "mapping_network": 0, "style_encoder": 0}
    assert {name: int(n) for name, n in trainer.precision.overflows.items()}["generator"] == 0  # a clean step reset it
    log = read_log(tmp_path / "once")
    assert all(math.isfinite(v) for v in log[0].values())  # the losses were finite: only the gradients overflowed
    assert log[1]["amp/scale"] <= 2.0**15 / 4  # the two skipped G updates backed the scale off

    with pytest.raises(TrainingDiverged, match=r"^float16 gradients overflowed in every update for 3\+ in a row "
                                               r"\(updates skipped: generator 4\) "
                                               r"by iteration 2; stopped, no checkpoint was written yet$"):
        run("always", poisoned_iterations=10, total=4).fit()


@pytest.mark.parametrize("task, double_backward", [("afhq", ("discriminator",)), ("cityscapes", ()), ("afhq", ())])
def test_compile_trains_with_the_same_state_dict_keys_or_falls_back_to_eager(task, double_backward, tiny_afhq,
                                                                             tiny_streets, tmp_path, capsys,
                                                                             monkeypatch):
    """--compile leaves a task's double_backward_nets eager (AFHQ's D: R1), and the rest trains compiled with the
    checkpoint's keys unchanged. Compiling D as well makes R1's double backward fail in the first iteration (torch.compile's
    aot_autograd refuses it): the run then goes on eagerly from the state before it, bit for bit the eager run. The
    aot_eager backend traces and differentiates as inductor does (and raises the same error) without generating C++
    code, which takes minutes on this CPU."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    source, tiny = {"afhq": (tiny_afhq, TINY), "cityscapes": (tiny_streets, TINY_CITYSCAPES)}[task]
    monkeypatch.setattr(task_class(task), "double_backward_nets", double_backward)

    falls_back = task == "afhq" and not double_backward
    # compiled vs eager weights after one iteration: Adam's next steps move a weight by about ±lr wherever its
    # gradient is round-off small, so they would compare the round-off of the two graphs (which varies with threads)
    iterations = 2 if falls_back else 1

    def run(name: str, **overrides) -> dict:
        cfg = build_config(task, None, {"data.root": str(source), **tiny, "train.total_iters": iterations,
                                        **overrides})
        return load_checkpoint(Trainer(cfg, tmp_path / name).fit())

    eager, compiled = run("eager"), run("compiled", **{"train.compile": True})
    for key in ("nets", "nets_ema", "optimizers"):
        assert compiled[key].keys() == eager[key].keys()
        for name in eager[key]:
            assert compiled[key][name].keys() == eager[key][name].keys(), f"{key}.{name}"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--compile" in line]
    if falls_back:
        assert len(warnings) == 1 and "double backward" in warnings[0] and "without torch.compile" in warnings[0]
        assert_same_tree(comparable(compiled), comparable(eager))  # the failed trial left nothing behind
    else:
        assert not warnings
        for name, weights in eager["nets"]["generator"].items():
            torch.testing.assert_close(compiled["nets"]["generator"][name], weights, msg=lambda m: f"{name}: {m}")
