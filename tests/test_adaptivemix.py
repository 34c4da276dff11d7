"""Tests for i2i.mixing.adaptivemix: official within-batch variant and the paper's real/fake variant."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i2i.mixing.adaptivemix import AdaptiveMix, feature_distance, group_derangement, group_permutation, mix_within
from i2i.mixing.common import sample_beta


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 6, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=seeded(seed)) * 2 - 1


class SplitCritic(nn.Module):
    """A tiny conditional D = head . features with StyleGAN2-like (N, C, 4, 4) features."""

    def __init__(self, linear: bool = False, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = linear
        self.conv = nn.Conv2d(3, 8, 1, bias=False) if linear else nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.out = nn.Linear(8 * 4 * 4, classes)

    def features(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        h = self.conv(x)
        return h if self.linear else F.leaky_relu(h, 0.2)

    def head(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        logits = self.out(F.adaptive_avg_pool2d(h, 4).flatten(1))
        return logits if cond is None else logits.gather(1, cond.view(-1, 1)).squeeze(1)

    def forward(self, x, cond):
        return self.head(self.features(x, cond), cond)


LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


# ---------------------------------------------------------------------------------------------------------------------
# distances and permutations


def test_feature_distance_by_hand():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    cos_expected = -(1 / 2**0.5 + -1.0) / 2
    assert feature_distance(pred, target, "cos").item() == pytest.approx(cos_expected)
    assert feature_distance(pred, target, "mse").item() == pytest.approx((0 + 1 + 0 + 9) / 4)
    with pytest.raises(ValueError, match="valid distances: cos, mse"):
        feature_distance(pred, target, "l1")
    with pytest.raises(ValueError, match=r"\(2, 2\) vs \(2, 1\)"):
        feature_distance(pred, target[:, :1], "cos")


def test_group_permutation_stays_within_groups_and_shuffles():
    groups = torch.tensor([2, 0, 2, 1, 0, 2, 0, 5])
    seen = set()
    for seed in range(30):
        perm = group_permutation(groups, seeded(seed))
        assert sorted(perm.tolist()) == list(range(8))
        assert torch.equal(groups[perm], groups)
        assert perm[7].item() == 7  # a group of one pairs with itself
        seen.add(tuple(perm.tolist()))
    assert len(seen) > 10
    with pytest.raises(ValueError, match="integer tensor"):
        group_permutation(torch.zeros(4))


def test_group_derangement_pairs_every_sample_with_another_of_its_group():
    groups = torch.tensor([2, 0, 2, 1, 0, 2, 0, 5, 1])
    seen = set()
    for seed in range(30):
        perm = group_derangement(groups, seeded(seed))
        assert sorted(perm.tolist()) == list(range(9))
        assert torch.equal(groups[perm], groups)
        fixed = (perm == torch.arange(9)).nonzero().flatten().tolist()
        assert fixed == [7]  # only the group of one keeps its sample
        seen.add(tuple(perm.tolist()))
    assert len(seen) == 2 * 2 * 1  # every derangement is reached: 2 of each group of 3, 1 of the pair
    # at batch 8 with 3 domains a plain permutation within domains leaves about a third of the samples unpaired
    labels = torch.randint(0, 3, (8,), generator=seeded(0))
    unpaired = [(group_permutation(labels, seeded(s)) == torch.arange(8)).float().mean() for s in range(200)]
    assert 0.25 < float(torch.stack(unpaired).mean()) < 0.5


# ---------------------------------------------------------------------------------------------------------------------
# within-batch (official) variant


def test_cos_loss_is_minus_one_for_a_linear_feature_map_without_noise():
    critic = SplitCritic(linear=True)
    mix = AdaptiveMix(noise=0.0)
    wrapped = mix.wrap(critic.features, critic.head)
    wrapped(images(), LABELS, generator=seeded(1))
    assert mix.pop_loss().item() == pytest.approx(-1.0, abs=1e-5)


def test_mse_loss_is_zero_for_a_linear_feature_map_without_noise():
    critic = SplitCritic(linear=True)
    mix = AdaptiveMix(distance="mse", noise=0.0)
    mix.wrap(critic.features, critic.head)(images(), None, generator=seeded(1))
    assert mix.pop_loss().item() == pytest.approx(0.0, abs=1e-10)


def test_wrapped_critic_matches_the_formula_with_its_random_draws():
    critic = SplitCritic()
    mix = AdaptiveMix(alpha=0.7, noise=0.05, weight=2.5, pairing="batch")  # the official whole-batch randperm
    x = images()
    logits = mix.wrap(critic.features, critic.head)(x, LABELS, generator=seeded(3))
    # replay the draws in the wrapper's order: permutation, lambda, target noise
    g = seeded(3)
    perm = torch.randperm(6, generator=g)
    lam = sample_beta(0.7, 1, generator=g)[0]
    h = critic.features(x, LABELS)
    noise = torch.randn(h.shape, generator=g)
    h_easy = lam * h + (1 - lam) * h[perm]
    h_hard = critic.features(lam * x + (1 - lam) * x[perm], LABELS)
    expected_loss = -F.cosine_similarity(h_hard.flatten(1), (h_easy + 0.05 * noise).flatten(1), dim=1).mean()
    torch.testing.assert_close(logits, critic.head(h_easy, LABELS) + critic.head(h_hard, LABELS))
    torch.testing.assert_close(mix.pop_loss(), 2.5 * expected_loss)


def test_logits_for_lambda_one_are_twice_the_plain_critic():
    critic = SplitCritic()
    x = images()
    perm = torch.randperm(6, generator=seeded(4))
    logits, _ = mix_within(critic.features, critic.head, x, LABELS, 1.0, perm, 0.05, "cos", seeded(5))
    torch.testing.assert_close(logits, 2 * critic(x, LABELS))


def test_target_is_detached_so_only_the_hard_branch_carries_the_loss_gradient():
    critic = SplitCritic()
    x = images()
    perm = torch.randperm(6, generator=seeded(6))
    _, loss = mix_within(critic.features, critic.head, x, LABELS, 0.3, perm, 0.0, "cos")
    grad = torch.autograd.grad(loss, critic.conv.weight)[0]
    h = critic.features(x, LABELS)
    target = (0.3 * h + 0.7 * h[perm]).detach()
    h_hard = critic.features(0.3 * x + 0.7 * x[perm], LABELS)
    reference = -F.cosine_similarity(h_hard.flatten(1), target.flatten(1), dim=1).mean()
    torch.testing.assert_close(grad, torch.autograd.grad(reference, critic.conv.weight)[0])
    assert grad.abs().sum() > 0
    assert torch.autograd.grad(loss, critic.out.weight, allow_unused=True)[0] is None  # the head is not in L_ada


def test_loss_gradient_reaches_features_and_an_upstream_generator():
    critic = SplitCritic()
    generator_net = nn.Linear(4, 3 * 16 * 16)
    fake = torch.tanh(generator_net(torch.randn(6, 4, generator=seeded(7)))).view(6, 3, 16, 16)
    mix = AdaptiveMix()
    logits = mix.wrap(critic.features, critic.head)(fake, LABELS, generator=seeded(8))
    loss = mix.pop_loss(generator_step=True)
    g_grad, d_grad = torch.autograd.grad(loss, [generator_net.weight, critic.conv.weight], retain_graph=True)
    assert g_grad.abs().sum() > 0 and d_grad.abs().sum() > 0
    # the logits reach the head and the features too
    head_grad, feat_grad = torch.autograd.grad(logits.sum(), [critic.out.weight, critic.conv.weight])
    assert head_grad.abs().sum() > 0 and feat_grad.abs().sum() > 0


@pytest.mark.parametrize("pairing, pair", [("derangement", group_derangement), ("permutation", group_permutation)])
def test_groups_pair_only_images_of_the_same_group(pairing, pair):
    critic = SplitCritic(linear=True)
    seen_pairs = []

    def recording_features(x, cond):
        seen_pairs.append(x.detach().clone())
        return critic.features(x, cond)

    mix = AdaptiveMix(noise=0.0, pairing=pairing)
    wrapped = mix.wrap(recording_features, critic.head, groups_fn=lambda labels: labels)
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(6)]) / 10  # image i has value i / 10
    wrapped(x, LABELS, generator=seeded(9))
    mixed = seen_pairs[1][:, 0, 0, 0]  # the second features call sees lam x + (1 - lam) x[perm]
    g = seeded(9)  # replay the wrapper's draws: permutation, then lambda
    perm = pair(LABELS, g)
    lam = sample_beta(1.0, 1, generator=g)[0]
    assert torch.equal(LABELS[perm], LABELS)
    torch.testing.assert_close(mixed, (lam * torch.arange(6) + (1 - lam) * perm) / 10)
    mix.pop_loss()
    with pytest.raises(ValueError, match=r"\(6,\) labels for a batch of 6, got shape \(3,\)"):
        mix.wrap(critic.features, critic.head, groups_fn=lambda labels: labels[:3])(x, LABELS)


def test_pop_loss_sums_records_and_clears():
    critic = SplitCritic(linear=True)
    mix = AdaptiveMix(noise=0.0, weight=0.5)
    wrapped = mix.wrap(critic.features, critic.head)
    assert mix.pop_loss().item() == 0.0
    wrapped(images(seed=1), LABELS)  # D-real
    wrapped(images(seed=2), LABELS)  # D-fake
    assert mix.pop_loss().item() == pytest.approx(2 * 0.5 * -1.0, abs=1e-5)
    assert mix.pop_loss().item() == 0.0


def test_generator_step_loss_is_zero_when_off_for_the_generator():
    critic = SplitCritic(linear=True)
    mix = AdaptiveMix(noise=0.0, on_generator=False)
    mix.wrap(critic.features, critic.head)(images(), LABELS)
    assert mix.pop_loss(generator_step=True).item() == 0.0
    assert mix.pop_loss().item() == 0.0  # the G-step records were dropped, not carried over


# ---------------------------------------------------------------------------------------------------------------------
# real/fake (paper) variant


def test_real_fake_mse_is_zero_for_a_linear_map_without_noise():
    critic = SplitCritic(linear=True)
    mix = AdaptiveMix(pairs="real_fake", distance="mse", noise=0.0)
    loss = mix.real_fake_loss(critic.features, images(seed=1), images(seed=2), LABELS, generator=seeded(10))
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


def test_real_fake_mse_equals_noise_variance_for_a_linear_map():
    critic = SplitCritic(linear=True)
    mix = AdaptiveMix(pairs="real_fake", distance="mse", noise=0.05, weight=3.0)
    loss = mix.real_fake_loss(critic.features, images(32, 1, 32), images(32, 2, 32), None, generator=seeded(11))
    assert loss.item() == pytest.approx(3.0 * 0.05**2, rel=0.02)  # 32 * 8 * 32 * 32 noise values


def test_real_fake_gradient_reaches_the_generator_and_features():
    critic = SplitCritic()
    generator_net = nn.Linear(4, 3 * 16 * 16)
    fake = torch.tanh(generator_net(torch.randn(6, 4, generator=seeded(12)))).view(6, 3, 16, 16)
    mix = AdaptiveMix(pairs="real_fake", distance="mse")
    loss = mix.real_fake_loss(critic.features, images(), fake, LABELS, generator=seeded(13))
    g_grad, d_grad = torch.autograd.grad(loss, [generator_net.weight, critic.conv.weight])
    assert g_grad.abs().sum() > 0 and d_grad.abs().sum() > 0


def test_real_fake_wrap_is_the_plain_critic_and_records_nothing():
    critic = SplitCritic()
    mix = AdaptiveMix(pairs="real_fake")
    x = images()
    torch.testing.assert_close(mix.wrap(critic.features, critic.head)(x, LABELS), critic(x, LABELS))
    assert mix.pop_loss().item() == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("kwargs,message", [
    ({"pairs": "real_real"}, "valid values: within, real_fake"),
    ({"distance": "l1"}, "valid distances: cos, mse"),
    ({"alpha": 0.0}, "alpha must be a finite number > 0"),
    ({"noise": -0.1}, "noise must be a std >= 0"),
    ({"weight": -1.0}, "weight must be >= 0"),
])
def test_invalid_options_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaptiveMix(**kwargs)


def test_bad_shapes_raise_clear_errors():
    critic = SplitCritic()
    mix = AdaptiveMix(pairs="real_fake")
    with pytest.raises(ValueError, match=r"\(6, 3, 16, 16\) and \(6, 3, 8, 8\)"):
        mix.real_fake_loss(critic.features, images(), images(size=8), LABELS)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got \(3, 16, 16\)"):
        AdaptiveMix().wrap(critic.features, critic.head)(images()[0], LABELS)
