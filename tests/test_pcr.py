"""Tests for i2i.mixing.pcr: pixel-wise combinations, PCR negatives, DIF and Sample Correction."""

import math

import pytest
import torch

from i2i.mixing.pcr import PCR, SampleCorrection, combine_pairs, dif, random_derangement


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 8, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=seeded(seed)) * 2 - 1


# ---------------------------------------------------------------------------------------------------------------------
# combinations and pairs


def test_combine_pairs_by_hand():
    a = torch.tensor([-1.0, 0.5, 1.0, -0.2]).view(1, 1, 2, 2)
    b = torch.tensor([1.0, 0.1, 1.0, -0.6]).view(1, 1, 2, 2)
    torch.testing.assert_close(combine_pairs(a, b).flatten(), torch.tensor([0.0, 0.3, 1.0, -0.4]))
    torch.testing.assert_close(combine_pairs(a, b, "and").flatten(), torch.tensor([-1.0, 0.1, 1.0, -0.6]))
    torch.testing.assert_close(combine_pairs(a, b, "or").flatten(), torch.tensor([1.0, 0.5, 1.0, -0.2]))


def test_and_or_are_logical_on_binary_images():
    a = torch.rand(2, 1, 8, 8, generator=seeded(1)) > 0.5
    b = torch.rand(2, 1, 8, 8, generator=seeded(2)) > 0.5
    to_image = lambda bits: bits.float() * 2 - 1  # noqa: E731 -- off = -1, on = +1
    assert torch.equal(combine_pairs(to_image(a), to_image(b), "and"), to_image(a & b))
    assert torch.equal(combine_pairs(to_image(a), to_image(b), "or"), to_image(a | b))


def test_combine_pairs_validates_op_and_shapes():
    with pytest.raises(ValueError, match="valid ops: mean, and, or"):
        combine_pairs(images(), images(), "xor")
    with pytest.raises(ValueError, match=r"\(8, 3, 16, 16\) and \(8, 3, 8, 8\)"):
        combine_pairs(images(), images(size=8))


@pytest.mark.parametrize("n", [2, 3, 7])
def test_random_derangement_never_has_fixed_points(n):
    seen = set()
    for seed in range(50):
        perm = random_derangement(n, generator=seeded(seed))
        assert sorted(perm.tolist()) == list(range(n))
        assert torch.all(perm != torch.arange(n))
        seen.add(tuple(perm.tolist()))
    # n = 2 and n = 3 have exactly 1 and 2 derangements; larger n must vary
    assert len(seen) == {2: 1, 3: 2}[n] if n < 4 else len(seen) > 20


def test_random_derangement_needs_two_elements():
    with pytest.raises(ValueError, match="at least 2 elements, got a batch of 1"):
        random_derangement(1)


# ---------------------------------------------------------------------------------------------------------------------
# PCR


def test_pcr_with_paired_batches_averages_matching_pairs():
    real_a, real_b = images(seed=1), images(seed=2)
    pcr = PCR()
    combined = pcr(real_a, real_b, 5, generator=seeded(3))
    idx_a, idx_b = pcr.last_pairs
    assert combined.shape == (5, 3, 16, 16)
    assert torch.equal(idx_a, idx_b) and len(set(idx_a.tolist())) == 5  # distinct pairs, each i with its partner
    torch.testing.assert_close(combined, (real_a[idx_a] + real_b[idx_a]) / 2)
    # one combination per pair: combination k is pair k, so it keeps real_a[k]'s condition
    torch.testing.assert_close(pcr(real_a, real_b, 8), (real_a + real_b) / 2)


def test_pcr_without_partner_batch_averages_two_distinct_images():
    real = images(seed=4)
    pcr = PCR()
    combined = pcr(real, None, 8, generator=seeded(5))
    for k, image in enumerate(combined):
        # find by brute force which pair of reals this is the average of
        matches = [(i, j) for i in range(8) for j in range(8)
                   if torch.allclose(image, (real[i] + real[j]) / 2, atol=1e-6)]
        assert len(matches) > 0 and all(i != j for i, j in matches)
        assert (pcr.last_pairs[0][k].item(), pcr.last_pairs[1][k].item()) in matches
    assert pcr.last_pairs[0].tolist() == list(range(8))  # combination k starts from real[k]


def test_pcr_negatives_weigh_fakes_and_combinations_by_half():
    fake, real_a, real_b = images(seed=6), images(seed=7), images(seed=8)
    pcr = PCR("or")
    y_fake, y_real = torch.arange(8), torch.arange(8).flip(0)
    (fakes, c_fake, fake_weight), (combined, c_combined, combined_weight) = pcr.negatives(
        fake, y_fake, real_a, real_b, y_real, generator=seeded(9))
    assert (fake_weight, combined_weight) == (0.5, 0.5) == PCR.negative_weights
    assert fakes is fake and c_fake is y_fake and c_combined is y_real
    torch.testing.assert_close(combined, torch.maximum(real_a, real_b))  # position k from the pair at k
    with pytest.raises(ValueError, match=r"fake \(4, 3, 16, 16\) and real_a \(8, 3, 16, 16\)"):
        pcr.negatives(images(4), None, real_a, real_b, None)


def test_pcr_validates_inputs():
    with pytest.raises(ValueError, match="valid ops: mean, and, or"):
        PCR("avg")
    with pytest.raises(ValueError, match="1..8 combinations from a batch of 8 pairs, asked for 9"):
        PCR()(images(), None, 9)
    with pytest.raises(ValueError, match=r"real_b must have real_a's shape \(8, 3, 16, 16\), got \(4, 3, 16, 16\)"):
        PCR()(images(), images(4), 4)


# ---------------------------------------------------------------------------------------------------------------------
# DIF


def test_dif_of_a_bank_image_is_zero_and_values_match_hand_computation():
    bank = images(20, seed=10)
    assert torch.equal(dif(bank[[3, 17]], bank), torch.zeros(2))
    constant_bank = torch.stack([torch.full((3, 4, 4), v) for v in (-1.0, 0.6, 1.0)])
    fakes = torch.stack([torch.zeros(3, 4, 4), torch.full((3, 4, 4), -1.0), torch.full((3, 4, 4), 0.5)])
    # distance to the constant c over D values is |x - c| sqrt(D); normalised by 2 sqrt(D): |x - c| / 2
    torch.testing.assert_close(dif(fakes, constant_bank), torch.tensor([0.3, 0.0, 0.05]))
    assert dif(torch.full((1, 3, 4, 4), 1.0), torch.full((1, 3, 4, 4), -1.0)).item() == pytest.approx(1.0)


def test_dif_does_not_depend_on_chunk_size():
    bank, fakes = images(37, seed=11), images(5, seed=12)
    torch.testing.assert_close(dif(fakes, bank, chunk=1), dif(fakes, bank, chunk=1000))
    brute = torch.stack([((f - bank) ** 2).flatten(1).sum(1).sqrt().min() for f in fakes])
    torch.testing.assert_close(dif(fakes, bank, chunk=8), brute / (2 * math.sqrt(3 * 16 * 16)))


def test_dif_validates_shapes():
    with pytest.raises(ValueError, match=r"\(5, 3, 16, 16\) and \(4, 3, 8, 8\)"):
        dif(images(5), images(4, size=8))
    with pytest.raises(ValueError, match="bank is empty"):
        dif(images(5), images(0))


# ---------------------------------------------------------------------------------------------------------------------
# Sample Correction


def near_copies(bank: torch.Tensor, rows: list[int], scale: float, seed: int) -> torch.Tensor:
    return bank[rows] + scale * torch.randn(len(rows), *bank.shape[1:], generator=seeded(seed))


def test_sample_correction_replaces_exactly_the_fakes_under_the_threshold():
    bank = images(16, seed=13)
    too_real = near_copies(bank, [0, 5, 9], 0.01, 14)  # DIF about 0.005
    fake = torch.cat([images(5, seed=15), too_real])[torch.tensor([0, 5, 1, 6, 2, 3, 7, 4])]
    sc = SampleCorrection(threshold=0.1)
    sc.set_bank(bank)
    expected = (dif(fake, bank) < 0.1).nonzero().flatten()
    assert expected.tolist() == [1, 3, 6]
    out = sc(fake, generator=seeded(16))
    assert out.shape == fake.shape
    assert sc.last_replaced.tolist() == [1, 3, 6] and sc.last_unresolved.numel() == 0
    kept = [0, 2, 4, 5, 7]
    assert torch.equal(out[kept], fake[kept])
    assert torch.all(dif(out, bank) >= 0.1)
    for i in [1, 3, 6]:  # each replacement is one of the batch's less realistic fakes
        assert any(torch.equal(out[i], fake[j]) for j in kept)
    assert torch.equal(out, fake[sc.last_source])


def test_sample_correction_draws_from_spare_first_and_moves_conditions():
    bank = images(16, seed=17)
    fake = torch.cat([near_copies(bank, [1, 2], 0.01, 18), images(2, seed=19)])
    spare = images(3, seed=20)
    sc = SampleCorrection()
    sc.set_bank(bank)
    out = sc(fake, spare, generator=seeded(21))
    assert sc.last_replaced.tolist() == [0, 1]
    assert torch.all(sc.last_source[:2] >= 4)  # rows of the spare batch (pool = cat([fake, spare]))
    assert len(set(sc.last_source[:2].tolist())) == 2  # spare rows are not repeated while some are unused
    assert torch.equal(out[2:], fake[2:])
    labels, spare_labels = torch.tensor([0, 1, 2, 0]), torch.tensor([7, 8, 9])
    expected = torch.cat([labels, spare_labels])[sc.last_source]
    assert torch.equal(sc.select_cond(labels, spare_labels), expected)
    assert torch.equal(sc.select_cond((labels,), (spare_labels,))[0], expected)


def test_sample_correction_keeps_an_all_real_batch_and_reports_it():
    bank = images(8, seed=22)
    fake = near_copies(bank, [0, 1, 2], 0.0, 23)
    sc = SampleCorrection()
    sc.set_bank(bank)
    assert sc(fake) is fake
    assert sc.last_unresolved.tolist() == [0, 1, 2] and sc.last_replaced.numel() == 0


def test_sample_correction_with_nothing_to_replace_returns_fake_itself():
    sc = SampleCorrection()
    sc.set_bank(images(8, seed=24))
    fake = images(4, seed=25)
    assert sc(fake) is fake and sc.last_replaced.numel() == 0
    assert sc.select_cond(torch.tensor([3, 4, 5, 6])).tolist() == [3, 4, 5, 6]


def test_sample_correction_accepts_a_pluggable_measure():
    brightness = lambda x: -x.mean(dim=(1, 2, 3))  # noqa: E731 -- "real" = bright in this toy measure
    fake = torch.stack([torch.full((3, 4, 4), v) for v in (0.9, -0.5, 0.2, -0.8)])
    sc = SampleCorrection(threshold=-0.5, measure=brightness)
    out = sc(fake, generator=seeded(26))
    assert sc.last_replaced.tolist() == [0]
    assert torch.all(brightness(out) >= -0.5)


def test_sample_correction_gives_clear_errors():
    with pytest.raises(ValueError, match="needs a bank: call set_bank"):
        SampleCorrection()(images(4))
    with pytest.raises(ValueError, match=r"must return \(4,\) scores, got \(4, 1\)"):
        SampleCorrection(measure=lambda x: x.mean(dim=(1, 2, 3)).unsqueeze(1))(images(4))
    with pytest.raises(ValueError, match="finite number"):
        SampleCorrection(threshold=float("nan"))
    with pytest.raises(ValueError, match=r"non-empty \(M, C, H, W\)"):
        SampleCorrection().set_bank(torch.zeros(3, 16, 16))
    sc = SampleCorrection()
    sc.set_bank(images(4))
    with pytest.raises(ValueError, match=r"spare must be \(S, 3, 16, 16\), got \(2, 3, 8, 8\)"):
        sc(images(4), images(2, size=8))
