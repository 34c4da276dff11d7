"""Face-recognition metrics: Rank-1, VR@FAR, ROC on hand-made score matrices, and equality with sklearn."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluators.face_recognition import (cosine_scores, far_key, genuine_impostor, genuine_mask, plot_roc, rank1,
                                         rank1_vr, roc_curve, threshold_at_far, verification_rate, vr_at_far)

FARS = (1e-2, 1e-3)


def identity_scores(n: int, genuine: float, impostor: np.ndarray) -> np.ndarray:
    """(n, n) scores for probe i = subject i: `genuine` on the diagonal, `impostor` elsewhere."""
    s = np.broadcast_to(impostor, (n, n)).astype(np.float64).copy()
    np.fill_diagonal(s, genuine)
    return s


def sklearn_vr(genuine: np.ndarray, impostor: np.ndarray, far: float) -> float:
    """Reference: TPR of the ROC point with the largest FPR <= FAR (no points dropped)."""
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a test-only extra")
    y = np.r_[np.ones(genuine.size), np.zeros(impostor.size)]
    fpr, tpr, _ = metrics.roc_curve(y, np.r_[genuine, impostor], drop_intermediate=False)
    return float(tpr[fpr <= far].max())


def test_cosine_scores():
    probes = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    gallery = np.array([[2.0, 0.0], [0.0, -3.0]])
    s = cosine_scores(probes, gallery)
    np.testing.assert_allclose(s, [[1, 0], [2 ** -0.5, -(2 ** -0.5)], [0, 0]], atol=1e-15)
    assert s.dtype == np.float64
    np.testing.assert_allclose(cosine_scores(torch.tensor(probes, dtype=torch.float32), torch.tensor(gallery)), s,
                               atol=1e-7)
    with pytest.raises(ValueError, match=r"\(P, D\) and \(G, D\)"):
        cosine_scores(probes, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        cosine_scores(np.full((1, 2), np.nan), gallery)


def test_perfect_scores():
    rng = np.random.default_rng(0)
    s = identity_scores(50, 1.0, rng.uniform(-1, 0.9, (50, 50)))
    ids = np.arange(50)
    assert rank1(s, ids, ids) == 1.0
    assert vr_at_far(s, ids, ids, FARS) == {1e-2: 1.0, 1e-3: 1.0}
    # from features: every probe is its subject's gallery image plus a little noise
    gallery = rng.standard_normal((20, 16))
    probe_ids = rng.integers(0, 20, 300)
    result = rank1_vr(gallery[probe_ids] + 0.01 * rng.standard_normal((300, 16)), probe_ids, gallery, np.arange(20))
    assert result["rank1"] == result["vr_far_1e-2"] == result["vr_far_1e-3"] == 1.0
    assert result["genuine_pairs"] == 300 and result["impostor_pairs"] == 300 * 19 and result["probes"] == 300


def test_inverted_scores():
    rng = np.random.default_rng(1)
    s = identity_scores(40, -1.0, rng.uniform(0, 1, (40, 40)))
    ids = np.arange(40)
    assert rank1(s, ids, ids) == 0.0
    assert vr_at_far(s, ids, ids, FARS) == {1e-2: 0.0, 1e-3: 0.0}
    assert vr_at_far(s, ids, ids, 1.0) == 1.0  # FAR = 1 accepts everything


def test_random_scores_are_at_chance():
    rng = np.random.default_rng(2)
    probes, gallery = 3000, 100
    s = rng.standard_normal((probes, gallery))
    probe_ids, gallery_ids = rng.integers(0, gallery, probes), np.arange(gallery)
    assert rank1(s, probe_ids, gallery_ids) == pytest.approx(1 / gallery, abs=0.01)
    vr = vr_at_far(s, probe_ids, gallery_ids, (0.1, 0.01))
    assert vr[0.1] == pytest.approx(0.1, abs=0.02) and vr[0.01] == pytest.approx(0.01, abs=0.006)


def test_hand_made_threshold_and_tie_convention():
    impostor = np.array([0.9, 0.7, 0.5, 0.3, 0.1])
    genuine = np.array([0.95, 0.8, 0.7, 0.6])
    # FAR 0.2 allows k = 1 false accept: t = the 2nd largest impostor (0.7); the genuine 0.7 ties t and is rejected
    assert threshold_at_far(impostor, 0.2) == 0.7
    assert verification_rate(genuine, impostor, 0.2) == 0.5 == sklearn_vr(genuine, impostor, 0.2)
    assert threshold_at_far(impostor, 0.19) == 0.9 and verification_rate(genuine, impostor, 0.19) == 0.25
    assert threshold_at_far(impostor, 1.0) == -np.inf and verification_rate(genuine, impostor, 1.0) == 1.0
    # tied impostors: with two at 0.8, FAR 0.2 cannot accept either, so t stays at 0.8
    tied = np.array([0.8, 0.8, 0.5, 0.3, 0.1])
    assert verification_rate(np.array([0.85, 0.8]), tied, 0.2) == 0.5 == sklearn_vr(np.array([0.85, 0.8]), tied, 0.2)
    # FAR * N_imp whose float product lands just below an integer (0.29 * 100 = 28.999...): k is still 29
    impostor100 = np.arange(100) / 100.0
    assert threshold_at_far(impostor100, 0.29) == impostor100[-30]
    with pytest.raises(ValueError, match=r"FAR must be in \(0, 1\]"):
        verification_rate(genuine, impostor, 0.0)
    with pytest.raises(ValueError, match="no genuine scores"):
        verification_rate(np.array([]), impostor, 0.1)


def test_all_scores_tied():
    s = np.full((30, 10), 0.5)
    probe_ids, gallery_ids = np.arange(30) % 10, np.arange(10)
    assert rank1(s, probe_ids, gallery_ids) == pytest.approx(0.1)  # split: 1 genuine among 10 tied
    assert rank1(s, probe_ids, gallery_ids, ties="pessimistic") == 0.0
    assert rank1(s, probe_ids, gallery_ids, ties="optimistic") == 1.0
    assert vr_at_far(s, probe_ids, gallery_ids, (0.5, 1e-3)) == {0.5: 0.0, 1e-3: 0.0}
    assert vr_at_far(s, probe_ids, gallery_ids, 1.0) == 1.0
    with pytest.raises(ValueError, match="ties must be one of"):
        rank1(s, probe_ids, gallery_ids, ties="first")


def test_equals_sklearn_on_random_matrices():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a test-only extra")
    rng = np.random.default_rng(3)
    for trial in range(4):
        probes, gallery = 500, 40
        gallery_ids = rng.permutation(1000)[:gallery]
        probe_ids = gallery_ids[rng.integers(0, gallery, probes)]
        signal = genuine_mask(probe_ids, gallery_ids) * rng.uniform(0.5, 2)
        s = rng.standard_normal((probes, gallery)) + signal
        if trial % 2:
            s = np.round(s, 1)  # many ties
        genuine, impostor = genuine_impostor(s, probe_ids, gallery_ids)
        for far in (1e-1, 3e-2, 1e-2, 1e-3, 1 / impostor.size, 0.29):
            assert verification_rate(genuine, impostor, far) == sklearn_vr(genuine, impostor, far), (trial, far)
        fpr, tpr, thresholds = roc_curve(genuine, impostor)
        y = np.r_[np.ones(genuine.size), np.zeros(impostor.size)]
        sk_fpr, sk_tpr, sk_thresholds = metrics.roc_curve(y, np.r_[genuine, impostor], drop_intermediate=False)
        np.testing.assert_allclose(fpr, sk_fpr, rtol=0, atol=1e-15)
        np.testing.assert_allclose(tpr, sk_tpr, rtol=0, atol=1e-15)
        assert np.array_equal(thresholds[1:], sk_thresholds[1:]) and thresholds[0] == np.inf
        if trial % 2 == 0:  # rank-1 = top-1 accuracy when there are no ties (sklearn leaves ties undefined)
            column = {g: j for j, g in enumerate(gallery_ids)}
            top1 = metrics.top_k_accuracy_score([column[p] for p in probe_ids], s, k=1, labels=np.arange(gallery))
            assert rank1(s, probe_ids, gallery_ids) == pytest.approx(top1, abs=1e-15)


def test_rank1_vr_fields_and_identities():
    rng = np.random.default_rng(4)
    gallery = rng.standard_normal((5, 8))
    gallery_ids = ["10117", "10118", "10119", "10120", "10121"]
    probe_ids = [10117, 10118, 10119, 10120, 99999]  # ints match the string ids; 99999 has no gallery entry
    probes = gallery[[0, 1, 2, 3, 4]] + 0.01 * rng.standard_normal((5, 8))
    result = rank1_vr(torch.tensor(probes), probe_ids, torch.tensor(gallery), gallery_ids, fars=FARS)
    assert result["rank1"] == pytest.approx(0.8)  # the unmatched probe is a miss
    assert result["probes_without_gallery_identity"] == 1 and result["genuine_pairs"] == 4
    assert {far_key(far) for far in FARS} == {"vr_far_1e-2", "vr_far_1e-3"} <= set(result)
    assert {"threshold_far_1e-2", "threshold_far_1e-3", "tie_convention"} <= set(result)
    assert far_key(5e-3) == "vr_far_5e-3" and far_key(0.1) == "vr_far_1e-1"
    with pytest.raises(ValueError, match="do not match"):
        rank1(np.zeros((4, 5)), probe_ids, gallery_ids)


def test_plot_roc_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib", reason="matplotlib draws the ROC")
    rng = np.random.default_rng(5)
    genuine, impostor = rng.normal(2, 1, 3000), rng.normal(0, 1, 200_000)  # a curve of ~200k points, thinned
    curves = {"translated": roc_curve(genuine, impostor)[:2], "raw": roc_curve(genuine - 1, impostor)[:2]}
    path = plot_roc(curves, tmp_path / "figures" / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="at least one curve"):
        plot_roc({}, tmp_path / "empty.png")
