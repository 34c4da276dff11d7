"""Tests for i2i.mixing.image_mix: Beta sampling, Mixup/CutMix/SRMix masks, ImageMixer."""

import math

import pytest
import torch
from scipy import stats

from i2i.mixing.common import concat_cond, index_cond, sample_beta
from i2i.mixing.image_mix import (
    ImageMixer,
    box_masks,
    cutmix_boxes,
    cutmix_masks,
    mix_images,
    mixup_masks,
    srmix_masks,
    tanh_masks,
)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=seeded(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------------------------------
# helpers


@pytest.mark.parametrize("alpha", [0.2, 1.0, 3.0])
def test_sample_beta_follows_beta_distribution(alpha):
    draws = sample_beta(alpha, 20000, generator=seeded(1)).double()
    assert draws.min() >= 0 and draws.max() <= 1
    # compare CDFs on an interior grid: float32 rounds draws within 6e-8 of 1 to exactly 1, which a plain
    # KS test on the tails would flag for small alpha
    grid = torch.linspace(0.001, 0.999, 99, dtype=torch.float64)
    empirical = (draws[:, None] <= grid[None, :]).double().mean(dim=0)
    reference = torch.from_numpy(stats.beta(alpha, alpha).cdf(grid.numpy()))
    assert (empirical - reference).abs().max() < 0.015  # 4 standard errors of an empirical CDF with n = 20000


def test_sample_beta_is_reproducible_from_generator():
    assert torch.equal(sample_beta(0.5, 50, generator=seeded(3)), sample_beta(0.5, 50, generator=seeded(3)))


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_sample_beta_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha must be a finite number > 0"):
        sample_beta(alpha, 3)


def test_index_cond_handles_none_tensor_and_tuples():
    labels = torch.tensor([5, 6, 7])
    maps = torch.arange(3 * 2).view(3, 2)
    idx = torch.tensor([2, 0])
    assert index_cond(None, idx) is None
    assert torch.equal(index_cond(labels, idx), torch.tensor([7, 5]))
    selected = index_cond((labels, [maps]), idx)
    assert isinstance(selected, tuple) and isinstance(selected[1], list)
    assert torch.equal(selected[1][0], maps[[2, 0]])
    assert torch.equal(index_cond({"y": labels}, idx)["y"], torch.tensor([7, 5]))
    with pytest.raises(TypeError, match="tuple/list/dict"):
        index_cond("labels", idx)


def test_concat_cond_joins_along_batch():
    assert concat_cond(None, None) is None
    joined = concat_cond((torch.tensor([1]),), (torch.tensor([2, 3]),))
    assert torch.equal(joined[0], torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="different structure"):
        concat_cond(torch.tensor([1]), None)


# ---------------------------------------------------------------------------------------------------------------------
# mixup


def test_mix_images_endpoints_return_real_and_fake():
    real, fake = images(seed=1), images(seed=2)
    ones = torch.ones(8, 1, 32, 32)
    assert torch.equal(mix_images(real, fake, ones), real)
    assert torch.equal(mix_images(real, fake, torch.zeros_like(ones)), fake)


def test_mixup_masks_are_constant_beta_lambdas():
    masks = mixup_masks(6, (16, 24), 1.0, generator=seeded(4))
    assert masks.shape == (6, 1, 16, 24)
    lam = sample_beta(1.0, 6, generator=seeded(4))
    assert torch.equal(masks, lam.view(6, 1, 1, 1).expand(6, 1, 16, 24))
    real, fake = images(6, 1, 16)[..., :16], images(6, 2, 16)[..., :16]
    mixed = mix_images(real, fake, mixup_masks(6, 16, 1.0, generator=seeded(4)))
    expected = lam.view(6, 1, 1, 1) * real + (1 - lam.view(6, 1, 1, 1)) * fake
    torch.testing.assert_close(mixed, expected)


# ---------------------------------------------------------------------------------------------------------------------
# cutmix


def test_box_masks_match_hand_computed_boxes_and_lambda():
    boxes = torch.tensor([[1, 2, 3, 6], [0, 0, 8, 8], [6, 6, 8, 8]])  # [top, left, bottom, right)
    masks = box_masks(8, boxes, torch.tensor([False, False, True]))
    expected = torch.ones(3, 8, 8)
    expected[0, 1:3, 2:6] = 0
    expected[1] = 0
    expected[2] = 0
    expected[2, 6:8, 6:8] = 1
    assert torch.equal(masks[:, 0], expected)
    # lambda = mean(M) = 1 - box fraction (fake inside) or box fraction (real inside)
    torch.testing.assert_close(masks.mean(dim=(1, 2, 3)), torch.tensor([1 - 8 / 64, 0.0, 4 / 64]))


def test_cutmix_boxes_have_area_one_minus_lambda_when_not_clipped():
    n, size, alpha = 400, 64, 1.0
    boxes = cutmix_boxes(n, size, alpha, generator=seeded(5))
    lam = sample_beta(alpha, n, generator=seeded(5))  # the first draw inside cutmix_boxes
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    interior = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < size) & (boxes[:, 3] < size)
    assert interior.sum() > 50
    side = torch.sqrt(1 - lam[interior]) * size
    # rounding the two edges changes each side by at most one pixel
    assert torch.all(area[interior] <= (side + 1) ** 2 + 1e-3)
    assert torch.all(area[interior] >= (side - 1).clamp(min=0) ** 2 - 1e-3)
    assert torch.all((boxes >= 0) & (boxes <= size))
    clipped = ~interior
    assert clipped.any()  # some boxes are clipped at the border


def _is_rectangle(region: torch.Tensor) -> bool:
    rows, cols = region.any(dim=1), region.any(dim=0)
    return bool(torch.equal(region, rows[:, None] & cols[None, :]))


def test_cutmix_masks_are_binary_boxes_in_both_orientations():
    masks = cutmix_masks(200, 32, 1.0, generator=seeded(6))[:, 0]
    assert torch.all((masks == 0) | (masks == 1))
    real_in_box = 0
    for mask in masks:
        zeros_box, ones_box = _is_rectangle(mask == 0), _is_rectangle(mask == 1)
        assert zeros_box or ones_box
        real_in_box += int(ones_box and not zeros_box)
    assert 60 < real_in_box < 140  # orientation drawn with probability 1/2


# ---------------------------------------------------------------------------------------------------------------------
# srmix


def test_tanh_masks_match_eq2_by_hand():
    masks = tanh_masks((8, 10), torch.tensor([True, False]), torch.tensor([1.0, -1.0]), torch.tensor([4.5, 3.0]),
                       torch.tensor([2.0, 3.0]))
    # sample 0: horizontal, x = column + 0.5; sample 1: vertical, x = row + 0.5, sign -1
    assert math.isclose(masks[0, 0, 3, 7].item(), 0.5 * (1 + math.tanh((7.5 - 4.5) / 2.0)), rel_tol=1e-6)
    assert math.isclose(masks[1, 0, 6, 2].item(), 0.5 * (1 - math.tanh((6.5 - 3.0) / 3.0)), rel_tol=1e-6)


def test_tanh_masks_are_monotone_constant_across_and_half_at_centre():
    horizontal = torch.tensor([True, True, False, False])
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0])
    centre = torch.tensor([10.5, 20.5, 5.5, 25.5])
    masks = tanh_masks(32, horizontal, sign, centre, torch.full((4,), 2.0))[:, 0]
    assert torch.all((masks >= 0) & (masks <= 1))
    for mask, is_horizontal, s, x0 in zip(masks, horizontal, sign, centre):
        profile = mask[0] if is_horizontal else mask[:, 0]
        across = mask if is_horizontal else mask.T  # rows of `across` must be identical
        assert torch.equal(across, profile.expand_as(across))
        steps = torch.diff(profile) * s
        assert torch.all(steps >= 0)
        assert profile[int(x0 - 0.5)].item() == pytest.approx(0.5, abs=1e-7)


def test_tanh_masks_tend_to_a_step_as_width_goes_to_zero():
    masks = tanh_masks(16, torch.tensor([True]), torch.tensor([1.0]), torch.tensor([7.0]), torch.tensor([1e-4]))
    step = (torch.arange(16) + 0.5 > 7.0).float()
    assert torch.equal(masks[0, 0, 5], step)


def test_srmix_masks_draw_centres_and_widths_in_the_paper_ranges():
    size = 64
    masks = srmix_masks(100, size, generator=seeded(7))[:, 0].double()
    assert torch.all((masks >= 0) & (masks <= 1))
    axes = []
    for mask in masks:
        horizontal = bool(torch.equal(mask, mask[0].expand_as(mask)))
        vertical = bool(torch.equal(mask, mask[:, :1].expand_as(mask)))
        assert horizontal != vertical
        axes.append(horizontal)
        profile = mask[0] if horizontal else mask[:, 0]
        # invert Eq. 2 on the ramp: atanh(2M - 1) = sign (x - x0) / dx is linear in x
        coords = torch.arange(size, dtype=torch.float64) + 0.5
        on_ramp = (profile - 0.5).abs() < 0.45
        assert on_ramp.sum() >= 2
        slope, intercept = torch.linalg.lstsq(
            torch.stack([coords[on_ramp], torch.ones_like(coords[on_ramp])], dim=1),
            torch.atanh(2 * profile[on_ramp] - 1).unsqueeze(1)).solution.flatten().tolist()
        width, centre = 1 / abs(slope), -intercept / slope
        assert 2 - 1e-3 <= width <= size / 16 + 1e-3
        assert size / 8 - 1e-3 <= centre <= 7 * size / 8 + 1e-3
    assert 25 < sum(axes) < 75


def test_srmix_width_for_small_images_is_two_pixels():
    masks = srmix_masks(4, 16, generator=seeded(8))
    assert masks.shape == (4, 1, 16, 16)  # 16 / 16 < 2: the width range collapses to 2 px


# ---------------------------------------------------------------------------------------------------------------------
# ImageMixer


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "srmix"])
@pytest.mark.parametrize("ratio,count", [(0.25, 2), (0.3, 2), (0.5, 4), (1.0, 8)])
def test_image_mixer_replaces_exactly_floor_ratio_n_and_leaves_others_bitwise(kind, ratio, count):
    real, fake = images(seed=1), images(seed=2)
    mixer = ImageMixer(kind, ratio)
    out = mixer(real, fake, generator=seeded(9))
    replaced = mixer.last_replaced
    assert out.shape == fake.shape and replaced.numel() == count == len(set(replaced.tolist()))
    kept = torch.tensor([i for i in range(8) if i not in replaced.tolist()], dtype=torch.long)
    assert torch.equal(out[kept], fake[kept])
    # a replaced row is M real + (1 - M) fake with M in [0, 1]: each pixel lies between real and fake
    low, high = torch.minimum(real, fake)[replaced], torch.maximum(real, fake)[replaced]
    assert torch.all((out[replaced] >= low - 1e-6) & (out[replaced] <= high + 1e-6))
    assert not torch.equal(out[replaced], fake[replaced])


def test_image_mixer_mixup_rows_use_the_reported_lambda():
    real, fake = images(seed=1), images(seed=2)
    mixer = ImageMixer("mixup", 0.5, alpha=0.4)
    out = mixer(real, fake, generator=seeded(10))
    lam = mixer.last_lambdas.view(-1, 1, 1, 1)
    idx = mixer.last_replaced
    torch.testing.assert_close(out[idx], lam * real[idx] + (1 - lam) * fake[idx])


def test_image_mixer_cutmix_lambda_is_mean_of_mask():
    real, fake = torch.ones(8, 3, 32, 32), -torch.ones(8, 3, 32, 32)
    mixer = ImageMixer("cutmix", 1.0)
    out = mixer(real, fake, generator=seeded(11))
    masks = (out + 1) / 2  # 1 where the real image was taken
    torch.testing.assert_close(masks.mean(dim=(1, 2, 3)), mixer.last_lambdas)


@pytest.mark.parametrize("mixer", [ImageMixer("none", 0.5), ImageMixer("srmix", 0.0), ImageMixer("mixup", 0.1)])
def test_image_mixer_off_returns_fake_object(mixer):
    fake = images(seed=2)
    assert mixer(images(seed=1), fake) is fake  # floor(0.1 * 8) = 0 also replaces nothing
    assert mixer.last_replaced.numel() == 0


def test_image_mixer_keeps_gradients_to_fake_and_real():
    real = images(seed=1).requires_grad_()
    fake = images(seed=2).requires_grad_()
    mixer = ImageMixer("mixup", 0.5)
    mixer(real, fake, generator=seeded(12)).sum().backward()
    lam = mixer.last_lambdas.view(-1, 1, 1, 1)
    idx = mixer.last_replaced
    expected_fake = torch.ones_like(fake)
    expected_fake[idx] = (1 - lam).expand(-1, 3, 32, 32)
    expected_real = torch.zeros_like(real)
    expected_real[idx] = lam.expand(-1, 3, 32, 32)
    torch.testing.assert_close(fake.grad, expected_fake)
    torch.testing.assert_close(real.grad, expected_real)


def test_image_mixer_validates_options_and_shapes():
    with pytest.raises(ValueError, match="valid kinds: none, mixup, cutmix, srmix"):
        ImageMixer("smoothmix")
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\], got 1.5"):
        ImageMixer("mixup", 1.5)
    with pytest.raises(ValueError, match="alpha"):
        ImageMixer("mixup", 0.25, alpha=0.0)
    with pytest.raises(ValueError, match=r"\(8, 3, 32, 32\) and \(8, 3, 16, 16\)"):
        ImageMixer("mixup")(images(), images(size=16))
