"""ReMix and its baselines on fixed tensors: every quantity against a hand computation."""
import numpy as np
import pytest
import torch

from i2i.mixing.remix import (
    FeatureMix,
    derangement,
    draw_lambda,
    interpolate,
    relative_content_loss,
    update_a_bar,
)


def l1(a, b):
    return (a - b).abs().mean(1)


PHI_S = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
T1 = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
T2 = torch.tensor([[2.0, 2.0], [1.0, 3.0], [2.0, 1.0]])
# d1 = [0.5, 0, 1], d2 = [2, 1, 0.5]


def test_relative_loss_matches_hand_computation():
    l_p, l_n = relative_content_loss(PHI_S, T1, T2, l1, a_bar=0.75)
    # L_p = mean(relu(d1 - d2)) = mean(0, 0, 0.5); L_n = mean(relu(d2 - 0.75)) = mean(1.25, 0.25, 0)
    assert l_p.item() == pytest.approx(0.5 / 3)
    assert l_n.item() == pytest.approx(1.5 / 3)


def test_content_loss_remix_updates_a_bar_with_unrelated_pairs():
    mix = FeatureMix("remix", p=1.0, momentum=0.9, momentum_form="paper", seed=0)
    mix.a_bar = 0.2
    expected_perm = derangement(3, np.random.default_rng(0))  # the module's generator draws the same derangement
    loss, logs = mix.content_loss(PHI_S, T1, T2, torch.tensor(0.7), lambda t: t, l1)
    a = l1(PHI_S, T2[torch.from_numpy(expected_perm)]).mean().item()
    assert logs["a"].item() == pytest.approx(a)
    d1, d2 = l1(PHI_S, T1), l1(PHI_S, T2)
    assert loss.item() == pytest.approx((torch.relu(d1 - d2).mean() + torch.relu(d2 - 0.2).mean()).item())
    assert mix.a_bar == pytest.approx(0.9 * 0.2 + 0.1 * (a - 0.2))  # Eq. 11 as printed


def test_the_a_bar_update_needs_no_host_sync_and_resumes_exactly(monkeypatch):
    """a_bar stays a tensor on the batch's device (a GPU run does not wait on every mixing step); DDP's reduce gets
    the tensor; a checkpoint holds floats that continue the run exactly."""
    mix = FeatureMix("remix", p=1.0, momentum=0.9, seed=0)
    reduced = []
    mix.reduce = lambda a: reduced.append(a) or a * 1.0
    mix.content_loss(PHI_S, T1, T2, torch.tensor(0.7), lambda t: t, l1)  # the first update, from the float 0.0
    resumed = FeatureMix("remix", p=1.0, momentum=0.9, seed=1)
    resumed.load_state_dict(mix.state_dict())
    assert isinstance(mix.state_dict()["a_bars"][""], float)

    def no_sync(*args):
        raise AssertionError("host sync in the ReMix step")

    with monkeypatch.context() as patched:
        for name in ("item", "__float__", "tolist"):
            patched.setattr(torch.Tensor, name, no_sync)
        loss, logs = mix.content_loss(PHI_S, T1, T2, torch.tensor(0.7), lambda t: t, l1)
        resumed_loss, _ = resumed.content_loss(PHI_S, T1, T2, torch.tensor(0.7), lambda t: t, l1)
    assert isinstance(mix.a_bars[""], torch.Tensor) and mix.a_bars[""].dtype == torch.float32
    assert len(reduced) == 2 and all(isinstance(a, torch.Tensor) for a in reduced)
    assert torch.equal(loss, resumed_loss) and torch.equal(mix.a_bars[""], resumed.a_bars[""])


def test_a_bar_forms_and_fixed_points():
    assert update_a_bar(1.0, 3.0, 0.99, "paper") == pytest.approx(0.99 + 0.01 * 2.0)
    assert update_a_bar(1.0, 3.0, 0.99, "ema") == pytest.approx(0.99 + 0.03)
    paper = ema = 0.0
    for _ in range(3000):
        paper, ema = update_a_bar(paper, 2.0, 0.99, "paper"), update_a_bar(ema, 2.0, 0.99, "ema")
    assert paper == pytest.approx(1.0, rel=1e-3)  # the printed form converges to a / 2 (spec note)
    assert ema == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match="momentum_form"):
        update_a_bar(0.0, 1.0, 0.9, "average")


def test_baselines_targets():
    lam = torch.tensor(0.8)
    wm = FeatureMix("wm", p=1.0)
    loss, _ = wm.content_loss(PHI_S, T1, T2, lam, lambda t: t, l1)
    assert loss.item() == pytest.approx(l1(PHI_S, T1).mean().item())  # Eq. 13: t1 (lambda >= 0.5)
    mixup = FeatureMix("mixup", p=1.0)
    loss, _ = mixup.content_loss(PHI_S, T1, T2, lam, lambda t: t, l1)
    assert loss.item() == pytest.approx(l1(PHI_S, 0.8 * T1 + 0.2 * T2).mean().item())  # Eq. 12


def test_plain_batch_uses_plain_content_loss():
    for method in ("none", "remix", "wm", "mixup"):
        loss, logs = FeatureMix(method, p=1.0).content_loss(PHI_S, T1, T2, None, lambda t: t, l1)
        assert loss.item() == pytest.approx(l1(PHI_S, T1).mean().item()) and logs == {}


def test_relative_loss_gradient_reaches_output_and_targets():
    phi = PHI_S.clone().requires_grad_()
    t1, t2 = T1.clone().requires_grad_(), T2.clone().requires_grad_()
    loss, _ = FeatureMix("remix", p=1.0).content_loss(phi, t1, t2, torch.tensor(0.6), lambda t: t, l1)
    loss.backward()
    assert phi.grad.abs().sum() > 0 and t1.grad.abs().sum() > 0 and t2.grad.abs().sum() > 0


def test_lambda_distribution():
    lam = draw_lambda(np.random.default_rng(0), 0.2, size=20000)
    assert lam.min() >= 0.5 and lam.max() <= 1.0
    mu = np.random.default_rng(0).beta(0.2, 0.2, size=20000)
    np.testing.assert_allclose(lam, np.maximum(mu, 1 - mu))
    assert (lam > 0.9).mean() > 0.5  # Beta(0.2, 0.2) puts most mass near 0 and 1


def test_draw_probability_and_per_sample():
    mix = FeatureMix("remix", p=0.25, seed=1)
    draws = [mix.draw(4) for _ in range(4000)]
    rate = sum(d is not None for d in draws) / len(draws)
    assert 0.22 < rate < 0.28
    assert all(d.dim() == 0 for d in draws if d is not None)
    per_sample = FeatureMix("remix", p=1.0, per_sample=True).draw(5)
    assert per_sample.shape == (5,) and (per_sample >= 0.5).all()
    assert FeatureMix("remix", p=0.0).draw(4) is None and FeatureMix("none", p=1.0).draw(4) is None


def test_interpolate_structures_and_shared_parts():
    a, b = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    out = interpolate(a, b, torch.tensor([0.75, 0.5]))
    assert out[0].unique().item() == 0.75 and out[1].unique().item() == 0.5
    s = torch.randn(2, 8)
    mixed = interpolate({"content": a, "style": s}, {"content": b, "style": s}, torch.tensor(0.6))
    assert mixed["style"] is s and torch.allclose(mixed["content"], torch.full_like(a, 0.6))
    pair = interpolate([a, b], [b, a], torch.tensor(0.25))
    assert torch.allclose(pair[0], torch.full_like(a, 0.25)) and torch.allclose(pair[1], torch.full_like(a, 0.75))


def test_derangement_has_no_fixed_point():
    rng = np.random.default_rng(0)
    for n in (2, 3, 8):
        for _ in range(50):
            perm = derangement(n, rng)
            assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, rng)


def test_state_round_trip_reproduces_draws():
    mix = FeatureMix("remix", p=0.5, seed=3)
    for _ in range(7):
        mix.draw(4)
    mix.a_bar = 0.37
    state = mix.state_dict()
    expected = [mix.draw(4) for _ in range(20)]
    other = FeatureMix("remix", p=0.5, seed=99)
    other.load_state_dict(state)
    assert other.a_bar == 0.37
    got = [other.draw(4) for _ in range(20)]
    assert all((e is None and g is None) or (e is not None and g is not None and e.item() == g.item())
               for e, g in zip(expected, got))


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "remixx"}, "none, remix, wm, mixup"),
    ({"p": 1.5}, "probability"),
    ({"alpha": 0.0}, "alpha"),
    ({"momentum_form": "x"}, "paper, ema"),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FeatureMix(**kwargs)
