"""Segmentation metrics (LUT, confusion, IoU, both accuracies), the two resolution conventions, cityscapesscripts
equality, and the proxy segmenter trained on a procedural street set."""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import evaluators.proxy_segmenter as proxy_seg
import evaluators.segmentation as seg
from evaluators.nets.drn import DRNSeg
from evaluators.proxy_segmenter import train_segmenter
from evaluators.segmentation import (IGNORE_INDEX, LABEL_ID_TO_TRAIN_ID, SEGMENTERS, TRAIN_CLASSES, Segmenter,
                                     build_segmenter, confusion_matrix, evaluate_segmentation, label_to_train_id,
                                     scores, segment)
from i2i.weights import MissingWeightsError


# ----------------------------------------------------------------------------------------------------------------------
# labelId -> trainId


def test_lut_maps_the_19_classes_and_ignores_the_rest():
    named = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
             27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    ids = np.arange(-3, 300)
    expected = np.array([named.get(i, 255) for i in ids])
    assert np.array_equal(label_to_train_id(ids), expected)
    assert label_to_train_id(np.array([7]))[0] == 0 and label_to_train_id(np.array([33]))[0] == 18
    assert len(LABEL_ID_TO_TRAIN_ID) == 34 and TRAIN_CLASSES[0] == "road" and TRAIN_CLASSES[18] == "bicycle"
    as_torch = label_to_train_id(torch.from_numpy(ids).reshape(1, -1))
    assert torch.is_tensor(as_torch) and as_torch.dtype == torch.uint8 and np.array_equal(as_torch[0].numpy(), expected)
    with pytest.raises(ValueError, match=r"outside the Cityscapes labelIds 0\.\.33: \[-1, 34\]"):
        label_to_train_id(np.array([7, -1, 34]), strict=True)
    with pytest.raises(ValueError, match="integers"):
        label_to_train_id(np.array([7.0]))


def test_lut_equals_cityscapesscripts_label_table():
    labels = pytest.importorskip("cityscapesscripts.helpers.labels", reason="cityscapesscripts is a test-only extra")
    table = {label.id: (label.trainId if 0 <= label.trainId < 255 else 255) for label in labels.labels if label.id >= 0}
    assert [table[i] for i in range(34)] == list(LABEL_ID_TO_TRAIN_ID)
    assert [l.name for l in sorted((l for l in labels.labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)] == \
        list(TRAIN_CLASSES)


# ----------------------------------------------------------------------------------------------------------------------
# Confusion matrix and scores


def test_confusion_matrix_counts_and_ignored_row():
    label = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    c = confusion_matrix(pred, label, num_classes=3)
    assert c.shape == (4, 3) and c.dtype == np.int64
    assert c.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0], [0, 0, 1]]  # last row: the ignored pixel, predicted 2
    assert np.array_equal(confusion_matrix(torch.from_numpy(pred), torch.from_numpy(label), num_classes=3), c)
    with pytest.raises(ValueError, match=r"predictions must be class ids 0\.\.2, found \[255\]"):
        confusion_matrix(np.array([255]), np.array([0]), num_classes=3)
    with pytest.raises(ValueError, match=r"or 255 \(ignored\), found \[7\].*label_to_train_id"):
        confusion_matrix(np.array([0]), np.array([7]), num_classes=3)
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="integer class ids"):
        confusion_matrix(np.zeros(3), np.zeros(3, int))


def test_perfect_prediction():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (2, 16, 32))
    result = scores(confusion_matrix(label, label))
    assert result["miou"] == 1.0 and result["classes_present"] == 19
    assert result["accuracy_all_pixels"] == result["accuracy_labelled_pixels"] == result["accuracy"] == 1.0
    assert all(v == 1.0 for v in result["iou"].values()) and list(result["iou"]) == list(TRAIN_CLASSES)
    # with ignored pixels, a perfect prediction is still 1 on labelled pixels but not on all pixels
    with_void = label.copy()
    with_void[:, :4] = IGNORE_INDEX
    result = scores(confusion_matrix(label, with_void))
    assert result["miou"] == 1.0 and result["accuracy_labelled_pixels"] == 1.0
    assert result["accuracy_all_pixels"] == pytest.approx(12 / 16) and result["ignored_pixels"] == 2 * 4 * 32


def test_one_class_wrong():
    label = np.array([0] * 6 + [1] * 3 + [2] * 1 + [255] * 2)
    pred = np.array([0] * 6 + [2] * 3 + [2] * 1 + [0] * 2)  # every class-1 pixel predicted as class 2
    result = scores(confusion_matrix(pred, label, num_classes=3))
    assert result["iou"] == {"0": 1.0, "1": 0.0, "2": 0.25}  # class 2: tp 1, fp 3
    assert result["miou"] == pytest.approx((1 + 0 + 0.25) / 3)
    assert result["accuracy_labelled_pixels"] == pytest.approx(7 / 10)
    assert result["accuracy_all_pixels"] == pytest.approx(7 / 12)
    assert result["mean_class_accuracy"] == pytest.approx((1 + 0 + 1) / 3)
    # a class neither labelled nor predicted is NaN and left out of the mean; a predicted-only class counts as 0
    result = scores(confusion_matrix(np.array([0, 0, 1]), np.array([0, 0, 0]), num_classes=3))
    assert result["iou"]["0"] == pytest.approx(2 / 3) and result["iou"]["1"] == 0.0 and math.isnan(result["iou"]["2"])
    assert result["miou"] == pytest.approx(1 / 3) and result["classes_present"] == 2


def test_all_pixels_ignored_is_defined_without_warnings():
    label = np.full((4, 4), IGNORE_INDEX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = scores(confusion_matrix(np.zeros((4, 4), int), label))
        empty = scores(np.zeros((20, 19), np.int64))
    assert math.isnan(result["miou"]) and all(math.isnan(v) for v in result["iou"].values())
    assert math.isnan(result["accuracy_labelled_pixels"]) and result["classes_present"] == 0
    assert result["accuracy_all_pixels"] == 0.0 and result["pixels"] == 16 and result["ignored_pixels"] == 16
    assert math.isnan(empty["accuracy_all_pixels"]) and empty["pixels"] == 0


def test_scores_of_a_square_matrix_need_the_ignored_count():
    c = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 255]), num_classes=2)
    square = c[:2]
    with pytest.raises(ValueError, match="pass ignored_pixels"):
        scores(square)
    assert scores(square, ignored_pixels=1) == scores(c)
    with pytest.raises(ValueError, match="do not pass ignored_pixels"):
        scores(c, ignored_pixels=1)
    with pytest.raises(ValueError, match="confusion matrix"):
        scores(np.zeros((3, 5)))


def test_iou_equals_fyu_drn_formula_on_random_maps():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 19, (3, 40, 60))
    label[rng.random(label.shape) < 0.2] = 255
    pred = np.where(rng.random(label.shape) < 0.6, np.where(label == 255, 0, label), rng.integers(0, 19, label.shape))
    valid = label != 255
    hist = np.bincount(19 * label[valid] + pred[valid], minlength=361).reshape(19, 19)  # segment.fast_hist
    with np.errstate(invalid="ignore", divide="ignore"):
        reference = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))  # segment.per_class_iu
    result = scores(confusion_matrix(pred, label))
    np.testing.assert_allclose(list(result["iou"].values()), reference, rtol=1e-12)
    assert result["miou"] == pytest.approx(np.nanmean(reference), rel=1e-12)
    assert result["accuracy_labelled_pixels"] == pytest.approx(np.diag(hist).sum() / valid.sum())
    assert result["accuracy_all_pixels"] == pytest.approx(np.diag(hist).sum() / label.size)


def test_equals_cityscapesscripts_scoring_on_random_maps(tmp_path):
    evaluation = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                                     reason="cityscapesscripts is a test-only extra")
    from cityscapesscripts.helpers.labels import trainId2label

    args = copy.copy(evaluation.args)
    args.evalInstLevelScore, args.evalPixelAccuracy, args.quiet = False, False, True
    rng = np.random.default_rng(2)
    label_ids = rng.integers(0, 34, (3, 24, 48))
    label_ids[label_ids == 31] = 0  # "train" (trainId 16) is absent from ground truth and predictions: NaN in both
    pred_train = rng.integers(0, 19, label_ids.shape)
    pred_train[pred_train == 16] = 0
    agree = rng.random(label_ids.shape) < 0.5
    gt_train = label_to_train_id(label_ids).astype(np.int64)
    pred_train = np.where(agree & (gt_train != 255), gt_train, pred_train)
    to_label_id = np.array([trainId2label[t].id for t in range(19)])
    matrix = evaluation.generateMatrix(args)
    for k in range(len(label_ids)):
        gt_file, pred_file = tmp_path / f"gt{k}_gtFine_labelIds.png", tmp_path / f"pred{k}.png"
        Image.fromarray(label_ids[k].astype(np.uint8)).save(gt_file)
        Image.fromarray(to_label_id[pred_train[k]].astype(np.uint8)).save(pred_file)
        evaluation.evaluatePair(str(pred_file), str(gt_file), matrix, None, {}, args)  # adds to `matrix` in place
    official = {trainId2label[t].name: evaluation.getIouScoreForLabel(trainId2label[t].id, matrix, args)
                for t in range(19)}
    ours = scores(confusion_matrix(pred_train, gt_train))
    assert list(ours["iou"]) == list(official)
    np.testing.assert_allclose(list(ours["iou"].values()), list(official.values()), rtol=1e-12)
    assert math.isnan(ours["iou"]["train"]) and math.isnan(official["train"])
    assert ours["miou"] == pytest.approx(evaluation.getScoreAverage(official, args), rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------------
# Segmenter plumbing and the two resolution conventions


class ColourSegmenter(Segmenter):
    """Predicts class = round(red channel in [0, 1] * 18): an exact, network-free segmenter for the conventions."""

    def __init__(self) -> None:
        super().__init__(DRNSeg("drn_d_22", 19, width=0.125), "random")
        self.seen_sizes: list[tuple[int, int]] = []

    @torch.no_grad()
    def predict(self, images, out_size=None):
        self.seen_sizes.append(tuple(images.shape[-2:]))
        assert tuple(images.shape[-2:]) == tuple(out_size)
        return ((images[:, 0].clamp(-1, 1) + 1) / 2 * 18).round().long()


def blocky_scene(n: int, blocks: tuple[int, int], block: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    """Images (n, 3, bh*block, bw*block) whose red channel encodes the trainId of each block, and the labelId maps."""
    rng = np.random.default_rng(seed)
    train_ids = rng.integers(0, 19, (n, *blocks)).repeat(block, 1).repeat(block, 2)
    red = torch.from_numpy(train_ids / 18 * 2 - 1).float()
    to_label_id = np.array([LABEL_ID_TO_TRAIN_ID.index(t) for t in range(19)])
    return torch.stack([red, torch.zeros_like(red), torch.zeros_like(red)], 1), to_label_id[train_ids]


def test_resolution_output_downsamples_labels_like_pil_nearest():
    images, _ = blocky_scene(2, (2, 4), 4)  # 8x16 images
    full_labels = blocky_scene(2, (2, 4), 16)[1]  # the same layout at 32x64 (4x the image size)
    segmenter = ColourSegmenter()
    result = evaluate_segmentation(segmenter, images, full_labels, resolution="output", batch_size=1)
    assert result["resolution"] == "output" and result["resolution_convention"] == seg.RESOLUTIONS["output"]
    assert result["miou"] == 1.0 and result["pixels"] == 2 * 8 * 16 and result["images"] == 2
    assert segmenter.seen_sizes == [(8, 16), (8, 16)]
    # labels are resized like PIL's NEAREST (what SPADE's loader does), also at non-integer factors
    odd = np.random.default_rng(3).integers(0, 34, (1, 30, 50))
    ours = seg._resize_labels(torch.from_numpy(odd), (7, 13))[0].numpy()
    pil = np.asarray(Image.fromarray(odd[0].astype(np.uint8)).resize((13, 7), Image.NEAREST))
    assert np.array_equal(ours, pil)


def test_resolution_full_segments_upsampled_images_at_label_size():
    images, _ = blocky_scene(2, (2, 4), 4)
    full_labels = blocky_scene(2, (2, 4), 16)[1]
    segmenter = ColourSegmenter()
    result = evaluate_segmentation(segmenter, images, full_labels, resolution="full")
    assert segmenter.seen_sizes == [(32, 64)] and result["pixels"] == 2 * 32 * 64
    assert result["resolution"] == "full" and result["segmenter"] == "random" and result["segmenter_mark"] == "‡"
    # the network saw the images bilinearly upsampled to the label size, and was scored against the full labels
    upsampled = torch.nn.functional.interpolate((images + 1) / 2, size=(32, 64), mode="bilinear", align_corners=False)
    expected = (upsampled[:, 0].clamp(0, 1) * 18).round().long()
    predictions = segment(segmenter, images, "full", label_size=(32, 64))
    assert predictions.shape == (2, 32, 64) and predictions.dtype == torch.uint8
    assert torch.equal(predictions.long(), expected)
    assert result["confusion"] == confusion_matrix(expected, label_to_train_id(full_labels)).tolist()
    assert 0.5 < result["accuracy_labelled_pixels"] < 1  # the upsampling blurs the block borders
    assert segment(segmenter, [images[:1], images[1:]], "output").shape == (2, 8, 16)
    # streamed batches give the same numbers as one tensor
    streamed = evaluate_segmentation(ColourSegmenter(), [images[:1], images[1:]], [full_labels[:1], full_labels[1:]])
    assert streamed["confusion"] == result["confusion"]
    with pytest.raises(ValueError, match="got 2 images but 1 label maps"):
        evaluate_segmentation(segmenter, images, full_labels[:1], resolution="output")
    with pytest.raises(ValueError, match="more label maps than images"):
        evaluate_segmentation(segmenter, [images[:1]], [full_labels[:1], full_labels[1:]], resolution="output")
    with pytest.raises(ValueError, match="fewer label maps than images"):
        evaluate_segmentation(segmenter, [images[:1], images[1:]], [full_labels[:1]], resolution="output")
    with pytest.raises(ValueError, match="batch of 2 images but 1 label maps"):
        evaluate_segmentation(segmenter, [images], [full_labels[:1], full_labels[1:]], resolution="output")
    with pytest.raises(ValueError, match="unknown resolution convention"):
        evaluate_segmentation(segmenter, images, full_labels, resolution="native")


def test_drn_segmenter_predicts_at_any_size():
    torch.manual_seed(0)
    segmenter = Segmenter(DRNSeg("drn_d_22", 19, width=0.125), "random")
    images = torch.rand(2, 3, 30, 50) * 2 - 1
    assert segmenter.predict(images).shape == (2, 30, 50)
    assert segmenter.predict(images, out_size=(60, 100)).shape == (2, 60, 100)
    assert not segmenter.train().training
    with pytest.raises(ValueError, match=r"expected float images \(N, 3, H, W\)"):
        segmenter.predict(torch.zeros(2, 30, 50))


def test_segmenter_labels_and_build_errors(tmp_path, monkeypatch):
    assert SEGMENTERS["drn_d_105"].calibrated and SEGMENTERS["drn_d_105"].mark == ""
    assert SEGMENTERS["proxy"].mark == "†" and not SEGMENTERS["proxy"].calibrated
    with pytest.raises(MissingWeightsError, match="drn-d-105_ms_cityscapes.pth"):
        build_segmenter("drn_d_105", weights_path=tmp_path / "absent.pth", allow_random=True)
    monkeypatch.setattr("i2i.weights.search_dirs", lambda: [tmp_path])
    with pytest.raises(MissingWeightsError):
        build_segmenter("drn_d_105")
    fallback = build_segmenter("drn_d_105", allow_random=True)
    assert fallback.name == "random" and not fallback.calibrated and fallback.metadata()["segmenter_mark"] == "‡"
    with pytest.raises(ValueError, match="train_segmenter"):
        build_segmenter("proxy")
    with pytest.raises(ValueError, match="unknown segmenter"):
        build_segmenter("deeplab")


# ----------------------------------------------------------------------------------------------------------------------
# Proxy segmenter

STREET_COLOURS = {23: (70, 130, 180), 11: (70, 70, 70), 21: (107, 142, 35), 7: (128, 64, 128), 8: (244, 35, 232),
                  26: (0, 0, 142), 0: (0, 0, 0)}  # sky, building, vegetation, road, sidewalk, car, unlabeled


def street_scenes(n: int, seed: int, h: int = 32, w: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural street photos (N, 3, h, w) in [-1, 1] whose colour regions are the labelId maps (N, h, w)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.arange(h)[:, None], np.arange(w)[None, :]
    maps = np.zeros((n, h, w), np.int64)
    for k in range(n):
        horizon, street = rng.integers(h // 5, h // 2), rng.integers(h // 2 + 2, h - h // 6)
        split = rng.integers(w // 4, 3 * w // 4)
        scene = np.where(rows < horizon, 23, np.where(rows < street, np.where(cols < split, 11, 21), 7))
        scene = np.broadcast_to(scene, (h, w)).copy()
        scene[street:street + rng.integers(2, 5)] = np.where(cols < split, 8, 7)[0]
        top, left = rng.integers(street, h - 4), rng.integers(0, w - 12)
        scene[top:top + rng.integers(3, 7), left:left + rng.integers(6, 14)] = 26
        scene[:rng.integers(0, 3), :rng.integers(0, w // 3)] = 0
        maps[k] = scene
    palette = np.zeros((34, 3))
    for label_id, colour in STREET_COLOURS.items():
        palette[label_id] = colour
    photos = palette[maps] / 127.5 - 1 + rng.normal(0, 0.08, (n, 1, 1, 3)) + rng.normal(0, 0.08, (n, h, w, 3))
    return torch.tensor(photos, dtype=torch.float32).permute(0, 3, 1, 2).clamp(-1, 1).contiguous(), torch.from_numpy(maps)


def test_train_segmenter_learns_and_caches(tmp_path, monkeypatch):
    photos, maps = street_scenes(32, seed=0)
    held_out_photos, held_out_maps = street_scenes(16, seed=1)
    settings = dict(cache_dir=tmp_path, image_size=(32, 64), width=0.25, steps=70, batch_size=8, lr=5e-3,
                    progress=False)
    proxy = train_segmenter(photos, maps, **settings)
    assert proxy.name == "proxy" and not proxy.calibrated and proxy.input_size == (32, 64)
    assert 0 < proxy.val_miou <= 1 and proxy.config["train_miou"] > 0.3
    result = evaluate_segmentation(proxy, held_out_photos, held_out_maps, resolution="output")
    torch.manual_seed(0)
    untrained = Segmenter(DRNSeg("drn_d_22", 19, width=0.25), "random", input_size=(32, 64))
    chance = evaluate_segmentation(untrained, held_out_photos, held_out_maps, resolution="output")
    assert result["miou"] > 0.4 and result["accuracy_labelled_pixels"] > 0.75, result
    assert result["miou"] > chance["miou"] + 0.3
    assert result["segmenter"] == "proxy" and result["segmenter_mark"] == "†" and not result["segmenter_calibrated"]
    assert result["segmenter_val_miou"] == proxy.val_miou
    # the second call loads the cached file instead of training
    monkeypatch.setattr(proxy_seg, "_fit", lambda *a, **k: pytest.fail("the cached segmenter was retrained"))
    cached = train_segmenter(photos, maps, **settings)
    assert cached.source == proxy.source and cached.val_miou == proxy.val_miou
    assert torch.equal(cached.predict(held_out_photos), proxy.predict(held_out_photos))
    assert build_segmenter("proxy", weights_path=proxy.source).name == "proxy"
    # other data or settings are another cache entry
    config = proxy_seg.SegmenterConfig(image_size=(32, 64), width=0.25, steps=70, lr=5e-3)
    key = proxy_seg.segmenter_dataset_key(photos, maps)
    assert str(proxy_seg._cache_path(tmp_path, key, config, "labelIds")) == proxy.source
    assert proxy_seg._cache_path(tmp_path, proxy_seg.segmenter_dataset_key(photos[1:], maps[1:]), config, "labelIds") != \
        proxy_seg._cache_path(tmp_path, key, config, "labelIds")


def test_train_segmenter_reads_files_and_checks_inputs(tmp_path):
    photos, maps = street_scenes(4, seed=2)
    photo_files, map_files = [], []
    for k in range(4):
        photo_files.append(tmp_path / f"{k}_leftImg8bit.png")
        map_files.append(tmp_path / f"{k}_gtFine_labelIds.png")
        pixels = ((photos[k].permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(pixels).save(photo_files[-1])
        Image.fromarray(maps[k].numpy().astype(np.uint8)).save(map_files[-1])
    x, y = proxy_seg._training_data(photo_files, map_files, (16, 32), "labelIds", progress=False)
    assert x.shape == (4, 3, 16, 32) and x.dtype == torch.uint8 and y.shape == (4, 16, 32)
    assert set(np.unique(y.numpy())) <= {0, 1, 2, 8, 10, 13, 255}
    assert proxy_seg.segmenter_dataset_key(photo_files, map_files) == proxy_seg.segmenter_dataset_key(photo_files[::-1],
                                                                                          map_files[::-1])
    with pytest.raises(FileNotFoundError, match="absent.png"):
        proxy_seg._training_data([tmp_path / "absent.png"], map_files[:1], (16, 32), "labelIds", progress=False)
    with pytest.raises(ValueError, match="every training pixel is ignored"):
        train_segmenter(photos, torch.zeros_like(maps), cache_dir=tmp_path, image_size=(16, 32), steps=1,
                        progress=False)
    with pytest.raises(ValueError, match="4 training photos but 3 label maps"):
        train_segmenter(photos, maps[:3], cache_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"trainId label maps must hold 0\.\.18"):
        train_segmenter(photos, maps, cache_dir=tmp_path, label_kind="trainIds", steps=1, progress=False)
