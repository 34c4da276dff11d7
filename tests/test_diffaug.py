"""Tests for i2i.mixing.diffaug: DiffAugment ops, policies, differentiability."""

import pytest
import torch

from i2i.mixing.diffaug import DiffAugment, color, cutout, cutout_masks, diff_augment, translate, translation


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 4, seed: int = 0, size: int = 16, dtype=torch.float32) -> torch.Tensor:
    return (torch.rand(n, 3, size, size, generator=seeded(seed)) * 2 - 1).to(dtype)


@pytest.mark.parametrize("policy", ["", " ", ",", " , "])
def test_empty_policy_is_the_identity(policy):
    x = images()
    assert diff_augment(x, policy) is x
    assert DiffAugment(policy)(x) is x


@pytest.mark.parametrize("policy", ["color,flip", "Color", "translation,cutout,rotate"])
def test_unknown_policy_ops_list_the_valid_ones(policy):
    with pytest.raises(ValueError, match="valid ops: color, translation, cutout"):
        diff_augment(images(), policy)
    with pytest.raises(ValueError, match="valid ops: color, translation, cutout"):
        DiffAugment(policy)


def test_bad_input_shape_is_reported():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\), got shape \(3, 16, 16\)"):
        diff_augment(images()[0], "cutout")


# ---------------------------------------------------------------------------------------------------------------------
# color


def test_color_matches_the_three_formulas_with_the_same_draws():
    x = images(dtype=torch.float64)
    out = color(x, seeded(1))
    g = seeded(1)
    draw = lambda: torch.rand(4, 1, 1, 1, generator=g, dtype=torch.float64)  # noqa: E731
    y = x + (draw() - 0.5)
    mean_c = y.mean(dim=1, keepdim=True)
    y = (y - mean_c) * (2 * draw()) + mean_c
    mean_all = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean_all) * (draw() + 0.5) + mean_all
    torch.testing.assert_close(out, y)


def test_color_parameters_are_per_sample_and_in_range():
    x = torch.zeros(64, 3, 4, 4)  # grey: saturation and contrast leave a constant image alone
    shift = color(x, seeded(2))[:, 0, 0, 0]
    assert shift.min() >= -0.5 and shift.max() <= 0.5
    assert shift.std() > 0.2  # uniform on [-0.5, 0.5] has std 0.29; one shared draw would give 0


# ---------------------------------------------------------------------------------------------------------------------
# translation


def test_translate_shifts_and_zero_fills_by_hand():
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4).repeat(2, 2, 1, 1)
    out = translate(x, torch.tensor([1, -2]), torch.tensor([-1, 0]))
    expected0 = torch.tensor([[0, 0, 0, 0], [2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]], dtype=torch.float32)
    expected1 = torch.tensor([[9, 10, 11, 12], [13, 14, 15, 16], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(out[0, 0], expected0) and torch.equal(out[0, 1], expected0)
    assert torch.equal(out[1, 0], expected1)


def test_random_translation_is_an_integer_shift_within_one_eighth():
    x = images(8, seed=3, size=16) + 2  # strictly positive, so the zero padding is unambiguous
    out = translation(x, seeded(4))
    assert out.shape == x.shape
    shifts = []
    for image, source in zip(out, x):
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(image, translate(source[None], torch.tensor([dy]), torch.tensor([dx]))[0])]
        assert len(found) == 1  # 16 / 8 = 2 pixels at most
        shifts.append(found[0])
    assert len(set(shifts)) > 1


# ---------------------------------------------------------------------------------------------------------------------
# cutout


def test_cutout_masks_by_hand():
    masks = cutout_masks((6, 6), torch.tensor([3, 0]), torch.tensor([3, 5]), (2, 2))[:, 0]
    expected = torch.ones(2, 6, 6, dtype=torch.bool)
    expected[0, 2:4, 2:4] = False  # rows/cols [3 - 1, 3 - 1 + 2)
    expected[1, 0:1, 4:6] = False  # clipped at the top border
    assert torch.equal(masks, expected)


def test_cutout_zeroes_a_half_size_box_and_keeps_the_rest():
    x = images(32, seed=5, size=16) + 2  # no zeros in the input
    out = cutout(x, seeded(6))
    assert out.shape == x.shape
    zeroed = (out == 0).all(dim=1)  # (N, H, W), the same pixels in every channel
    assert torch.equal(out[~zeroed.unsqueeze(1).expand_as(out)], x[~zeroed.unsqueeze(1).expand_as(x)])
    for region in zeroed:
        rows, cols = region.any(dim=1), region.any(dim=0)
        assert torch.equal(region, rows[:, None] & cols[None, :])  # a rectangle
        assert rows.sum() <= 8 and cols.sum() <= 8
    assert (zeroed.sum(dim=(1, 2)) == 64).any()  # an unclipped box is exactly 8 x 8


# ---------------------------------------------------------------------------------------------------------------------
# differentiability, policies


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_each_op_passes_gradcheck(policy):
    x = images(2, seed=7, size=8, dtype=torch.float64).requires_grad_()
    # a fresh generator per call keeps the random parameters fixed while gradcheck perturbs x
    assert torch.autograd.gradcheck(lambda inp: diff_augment(inp, policy, seeded(8)), (x,))


def test_full_policy_keeps_shape_and_passes_gradients():
    x = images(seed=9).requires_grad_()
    out = diff_augment(x, generator=seeded(10))
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_class_wrapper_equals_the_function():
    x = images(seed=11)
    aug = DiffAugment(" color , cutout ")
    assert aug.policy == "color,cutout"
    assert torch.equal(aug(x, seeded(12)), diff_augment(x, "color,cutout", seeded(12)))


def test_rank_parts_draw_the_rows_of_the_whole_batch():
    """Under torchrun each rank augments its part with the global batch's draws: the parts together equal one
    process augmenting the whole batch, and the two parts get different parameters."""
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    whole = diff_augment(x, generator=torch.Generator().manual_seed(3))
    parts = [DiffAugment(shard=(rank, 2))(x[rank * 3:(rank + 1) * 3], generator=torch.Generator().manual_seed(3))
             for rank in range(2)]
    torch.testing.assert_close(torch.cat(parts), whole, atol=0, rtol=0)
    same_images = torch.cat([x[:3], x[:3]])
    a, b = (DiffAugment(shard=(rank, 2))(same_images[:3], generator=torch.Generator().manual_seed(3))
            for rank in range(2))
    assert not torch.equal(a, b)
