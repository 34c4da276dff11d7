"""Cityscapes data: the procedural street set in the official layout, scanning and pairing, label / instance maps,
the 36-channel semantics, flips, --data-frac manifests, the resumable training stream, evaluation batches and the
colour palette."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i2i.data.cityscapes import (
    CITYSCAPES_PALETTE, NUM_LABEL_IDS, SEMANTIC_CHANNELS, CityscapesTrainStream, colorize_labels, eval_loader,
    instance_edges, labels_from_colors, load_instance_ids, load_label_ids, load_sample, read_manifest, resize_nearest,
    scan_cityscapes, select_fraction, train_index_for_run, write_manifest,
)
from i2i.data.images import DatasetError
from i2i.data.synthetic import MARKER_NAME, make_cityscapes
from i2i.data.synthetic.__main__ import main as synthetic_main
from i2i.data.cityscapes_labels import LABEL_IDS
from i2i.data.synthetic.streets import CITIES

REQUIRED_CLASSES = ("road", "sidewalk", "building", "vegetation", "sky", "car", "person", "pole", "traffic sign")
TINY = {"n_train": 9, "n_val": 3, "width": 64, "height": 32}


@pytest.fixture(scope="module")
def tiny_cityscapes(tmp_path_factory) -> Path:
    return make_cityscapes(tmp_path_factory.mktemp("synthetic") / "cityscapes", **TINY)


@pytest.fixture
def cityscapes_copy(tiny_cityscapes, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(tiny_cityscapes, tmp_path / "cityscapes"))


def frames(root: Path, split: str) -> list[str]:
    return sorted(p.name[: -len("_leftImg8bit.png")] for p in (root / "leftImg8bit" / split).glob("*/*.png"))


# ------------------------------------------------------------------------------------------------------- synthetic set
def test_make_cityscapes_writes_the_official_layout(tiny_cityscapes):
    assert (tiny_cityscapes / MARKER_NAME).is_file()
    assert not [p for p in tiny_cityscapes.parent.iterdir() if ".partial-" in p.name]
    for split, count in (("train", 9), ("val", 3)):
        names = frames(tiny_cityscapes, split)
        assert len(names) == count
        assert sorted(os.listdir(tiny_cityscapes / "leftImg8bit" / split)) == sorted(CITIES[split])
        assert all(re.fullmatch(r"[a-z]+_\d{6}_000019", name) for name in names)
        for name in names:
            city = name.split("_")[0]
            photo = Image.open(tiny_cityscapes / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            gt = tiny_cityscapes / "gtFine" / split / city
            label = Image.open(gt / f"{name}_gtFine_labelIds.png")
            instance = Image.open(gt / f"{name}_gtFine_instanceIds.png")
            colour = Image.open(gt / f"{name}_gtFine_color.png")
            assert (photo.mode, label.mode, colour.mode) == ("RGB", "L", "RGB") and instance.mode.startswith("I")
            assert photo.size == label.size == instance.size == colour.size == (64, 32)
            assert np.array_equal(np.asarray(colour), CITYSCAPES_PALETTE[np.asarray(label)])


def test_synthetic_maps_use_real_label_ids_and_instance_encoding(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n_train=8, n_val=1, width=128, height=64)
    seen, thing_instances = set(), 0
    for sample in scan_cityscapes(root, "train").samples:
        label, instance = load_label_ids(sample.label), load_instance_ids(sample.instance)
        seen |= set(np.unique(label).tolist())
        things = np.isin(label, [LABEL_IDS["person"], LABEL_IDS["car"]])
        assert np.array_equal(instance[things] // 1000, label[things])  # labelId * 1000 + k
        assert np.array_equal(instance[~things], label[~things])  # stuff: the labelId itself
        thing_instances += len(np.unique(instance[things]))
        assert np.isin(label[-1], [0, 1, 2, 3]).all()  # void labels along the bottom edge, as in real frames
    assert {LABEL_IDS[name] for name in REQUIRED_CLASSES} <= seen and {1, 3} <= seen
    assert thing_instances >= 16  # several cars and persons per frame


def test_make_cityscapes_is_idempotent_and_deterministic(tiny_cityscapes, tmp_path):
    stamps = {p: p.stat().st_mtime_ns for p in tiny_cityscapes.rglob("*")}
    assert make_cityscapes(tiny_cityscapes, **TINY) == tiny_cityscapes
    assert {p: p.stat().st_mtime_ns for p in tiny_cityscapes.rglob("*")} == stamps
    copy = make_cityscapes(tmp_path / "copy", **{**TINY, "n_train": 4})  # image i does not depend on the count
    relative = "gtFine/train/aachen/aachen_000001_000019_gtFine_instanceIds.png"  # image 3
    assert (copy / relative).read_bytes() == (tiny_cityscapes / relative).read_bytes()
    photo = "leftImg8bit/val/lindau/lindau_000000_000019_leftImg8bit.png"
    assert (copy / photo).read_bytes() == (tiny_cityscapes / photo).read_bytes()
    reseeded = make_cityscapes(tmp_path / "reseeded", **{**TINY, "n_train": 1, "seed": 1})
    assert (reseeded / photo).read_bytes() != (tiny_cityscapes / photo).read_bytes()
    with pytest.raises(DatasetError, match="other parameters"):
        make_cityscapes(tiny_cityscapes, **{**TINY, "width": 32})


def test_cli_generates_cityscapes(tmp_path, capsys):
    out = synthetic_main(["cityscapes", str(tmp_path / "cli"), "--width", "32", "--height", "16", "--n-train", "2",
                          "--n-val", "1"])
    assert len(scan_cityscapes(out, "train")) == 2 and "ready" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------ scanning
def test_scan_pairs_photos_with_their_maps(tiny_cityscapes):
    index = scan_cityscapes(tiny_cityscapes, "train")
    assert len(index) == 9 and index.root == tiny_cityscapes and index.split == "train"
    assert [s.name for s in index.samples] == frames(tiny_cityscapes, "train")
    for sample in index.samples:
        assert sample.label.name == f"{sample.name}_gtFine_labelIds.png"
        assert sample.instance.name == f"{sample.name}_gtFine_instanceIds.png"
        assert sample.image.parent.name == sample.label.parent.name == sample.name.split("_")[0]


def test_photo_without_label_file_and_label_file_without_photo_are_reported(cityscapes_copy):
    sample = scan_cityscapes(cityscapes_copy, "train").samples[4]
    sample.instance.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(sample.instance))):
        scan_cityscapes(cityscapes_copy, "train")
    sample.image.unlink()  # its instanceIds is gone already: the labelIds file is left without a photo
    with pytest.raises(DatasetError, match=re.escape(str(sample.label))) as error:
        scan_cityscapes(cityscapes_copy, "train")
    assert "has no photo" in str(error.value)


@pytest.mark.parametrize("case", ["missing_root", "no_gtfine", "no_cities", "empty_city"])
def test_scan_errors_name_the_path_and_layout(tmp_path, case):
    root = tmp_path / "cs"
    expected = str(root)
    if case != "missing_root":
        (root / "leftImg8bit" / "train").mkdir(parents=True)
    if case in ("no_cities", "empty_city"):
        (root / "gtFine" / "train").mkdir(parents=True)
    if case == "empty_city":
        (root / "leftImg8bit" / "train" / "ulm").mkdir()
        expected = str(root / "leftImg8bit" / "train" / "ulm")
    with pytest.raises(DatasetError) as error:
        scan_cityscapes(root, "train")
    assert expected in str(error.value) and "leftImg8bit" in str(error.value)


# ------------------------------------------------------------------------------------------------------------ loading
def test_label_ids_outside_the_set_are_reported_with_the_file(tmp_path):
    bad = np.full((4, 6), 7, np.uint8)
    bad[0, 0], bad[1, 1] = 255, 40
    Image.fromarray(bad).save(tmp_path / "x_gtFine_labelIds.png")
    with pytest.raises(DatasetError, match=r"x_gtFine_labelIds\.png.*\[40, 255\]"):
        load_label_ids(tmp_path / "x_gtFine_labelIds.png")
    Image.fromarray(np.full((4, 6, 3), 128, np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(DatasetError, match="rgb.png.*labels_from_colors"):
        load_label_ids(tmp_path / "rgb.png")
    ok = np.arange(35, dtype=np.uint8).reshape(5, 7)
    Image.fromarray(ok).save(tmp_path / "ok.png")
    assert np.array_equal(load_label_ids(tmp_path / "ok.png"), ok)


def test_bad_label_id_in_a_dataset_frame_fails_the_batch_naming_the_file(cityscapes_copy):
    index = scan_cityscapes(cityscapes_copy, "train")
    sample = index.samples[2]
    label = np.asarray(Image.open(sample.label)).copy()
    label[5, 5] = 255
    Image.fromarray(label).save(sample.label)
    with pytest.raises(DatasetError, match=re.escape(sample.label.name)):
        load_sample(sample, 32, 16, flip=False)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(index.samples[3].label)  # wrong size
    with pytest.raises(DatasetError, match="differ in size"):
        load_sample(index.samples[3], 32, 16, flip=False)


def test_resize_nearest_matches_pil_nearest():
    rng = np.random.default_rng(0)
    for (h, w), (out_w, out_h) in [((32, 64), (16, 8)), ((30, 50), (64, 32)), ((37, 61), (24, 13))]:
        labels = rng.integers(0, 35, (h, w), dtype=np.uint8)
        pil = np.asarray(Image.fromarray(labels).resize((out_w, out_h), Image.Resampling.NEAREST))
        assert np.array_equal(resize_nearest(labels, out_w, out_h), pil)
    deep = rng.integers(0, 34000, (20, 40)).astype(np.int32)  # instance ids beyond uint8 survive
    assert set(np.unique(resize_nearest(deep, 10, 5))) <= set(np.unique(deep))


def test_instance_edges_on_a_hand_made_map():
    instance = torch.tensor([[7, 7, 7, 7, 7],
                             [7, 26000, 26000, 7, 7],
                             [7, 26000, 26000, 7, 24000],
                             [7, 7, 7, 7, 24000]])
    expected = torch.tensor([[0, 1, 1, 0, 0],
                             [1, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1],
                             [0, 1, 1, 1, 1]], dtype=torch.float32)
    edges = instance_edges(instance)
    assert edges.shape == (1, 4, 5) and edges.dtype == torch.float32
    assert torch.equal(edges[0], expected)
    batched = instance_edges(torch.stack([instance, instance.flip(-1)]))
    assert batched.shape == (2, 1, 4, 5) and torch.equal(batched[1, 0], expected.flip(-1))
    assert instance_edges(torch.full((3, 3), 11)).sum() == 0


def test_load_sample_gives_36_channel_semantics_and_normalised_photo(tiny_cityscapes):
    sample = scan_cityscapes(tiny_cityscapes, "train").samples[0]
    item = load_sample(sample, 32, 16, flip=False)
    assert item["label"].shape == (16, 32) and item["label"].dtype == torch.int64
    assert item["semantics"].shape == (SEMANTIC_CHANNELS, 16, 32) == (36, 16, 32)
    assert item["image"].shape == (3, 16, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0 and item["image"].std() > 0.1
    one_hot = item["semantics"][:NUM_LABEL_IDS]
    assert torch.equal(one_hot.sum(0), torch.ones(16, 32))
    assert torch.equal(one_hot.argmax(0), item["label"])
    assert torch.equal(item["semantics"][NUM_LABEL_IDS:], item["instance_edges"])
    assert torch.equal(item["label"], torch.from_numpy(resize_nearest(load_label_ids(sample.label), 32, 16)).long())
    instance = torch.from_numpy(resize_nearest(load_instance_ids(sample.instance), 32, 16))
    assert torch.equal(item["instance_edges"], instance_edges(instance)) and item["instance_edges"].sum() > 0
    photo = Image.open(sample.image).resize((32, 16), Image.Resampling.BICUBIC)
    assert torch.allclose(item["image"], torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 127.5 - 1)


def test_flip_is_the_same_for_photo_labels_and_instances(tiny_cityscapes):
    sample = scan_cityscapes(tiny_cityscapes, "val").samples[0]
    plain, flipped = load_sample(sample, 32, 16, flip=False), load_sample(sample, 32, 16, flip=True)
    for key in plain:
        assert torch.equal(flipped[key], plain[key].flip(-1)), key
    assert not torch.equal(flipped["label"], plain["label"])  # street scenes are not symmetric


# ---------------------------------------------------------------------------------------------------- subset/manifest
def test_select_fraction_is_seeded_nested_and_by_image(tiny_cityscapes):
    index = scan_cityscapes(tiny_cityscapes, "train")
    third = select_fraction(index, 1 / 3, seed=0)
    assert len(third) == 3 and set(third.samples) <= set(index.samples)
    assert list(third.samples) == [s for s in index.samples if s in third.samples]  # index order kept
    assert select_fraction(index, 1 / 3, seed=0) == third
    assert any(select_fraction(index, 1 / 3, seed=s) != third for s in range(1, 6))
    assert set(third.samples) <= set(select_fraction(index, 2 / 3, seed=0).samples)
    assert len(select_fraction(index, 0.01, seed=0)) == 1 and select_fraction(index, 1.0, seed=0) is index
    for frac in (0, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="data fraction"):
            select_fraction(index, frac, seed=0)


def test_manifest_round_trip_resume_and_moved_root(cityscapes_copy, tmp_path):
    run = tmp_path / "run"
    chosen = train_index_for_run(cityscapes_copy, run, frac=0.5, seed=3, resume=False)
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert manifest["format"] == "i2i-cityscapes-manifest" and manifest["count"] == len(chosen) == 4
    assert (manifest["split"], manifest["frac"], manifest["seed"]) == ("train", 0.5, 3)
    assert all(path.startswith("leftImg8bit/train/") for path in manifest["images"])
    extra = cityscapes_copy / "leftImg8bit" / "train" / "aachen" / "aachen_000099_000019_leftImg8bit.png"
    shutil.copy(chosen.samples[0].image, extra)  # the dataset gains a frame: resume must not see it
    for suffix in ("labelIds", "instanceIds"):
        shutil.copy(chosen.samples[0].label if suffix == "labelIds" else chosen.samples[0].instance,
                    cityscapes_copy / "gtFine" / "train" / "aachen" / f"aachen_000099_000019_gtFine_{suffix}.png")
    assert train_index_for_run(cityscapes_copy, run, frac=0.5, seed=3, resume=True) == chosen
    moved = cityscapes_copy.rename(tmp_path / "moved")
    relocated = read_manifest(run / "data_manifest.json", root=moved)
    assert [s.name for s in relocated.samples] == [s.name for s in chosen.samples]
    assert all(p.is_file() for s in relocated.samples for p in (s.image, s.label, s.instance))
    with pytest.raises(DatasetError, match="missing under root"):
        read_manifest(run / "data_manifest.json")  # the recorded root is gone
    (run / "bad.json").write_text(json.dumps({"format": "i2i-data-manifest"}))
    with pytest.raises(DatasetError, match="not an i2i Cityscapes manifest"):
        read_manifest(run / "bad.json")


def test_write_manifest_leaves_no_temp_file(tiny_cityscapes, tmp_path):
    path = write_manifest(tmp_path / "m" / "data_manifest.json", scan_cityscapes(tiny_cityscapes, "val"), frac=1.0,
                          seed=0, source_root=tiny_cityscapes)
    assert os.listdir(path.parent) == ["data_manifest.json"]
    assert read_manifest(path) == scan_cityscapes(tiny_cityscapes, "val")


# ----------------------------------------------------------------------------------------------------- training stream
def take(stream: CityscapesTrainStream, count: int) -> list[dict[str, torch.Tensor]]:
    iterator = iter(stream)
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_batch_s_is_the_same_when_restarted_at_s(tiny_cityscapes, num_workers):
    index = scan_cityscapes(tiny_cityscapes, "train")
    full = take(CityscapesTrainStream(index, 32, 16, 3, seed=5, num_workers=num_workers), 5)
    resumed = take(CityscapesTrainStream(index, 32, 16, 3, seed=5, start_step=3, num_workers=num_workers), 2)
    for a, b in zip(full[3:], resumed):
        assert a.keys() == {"label", "instance_edges", "semantics", "image", "label2", "instance_edges2",
                            "semantics2", "image2"}
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(full[4][k], CityscapesTrainStream(index, 32, 16, 3, seed=5).batch(4)[k]) for k in full[4])
    assert not torch.equal(full[4]["image"], CityscapesTrainStream(index, 32, 16, 3, seed=6).batch(4)["image"])
    assert len({batch["image"].numpy().tobytes() for batch in full}) == 5


def test_stream_batches_shapes_flips_and_second_batch(tiny_cityscapes):
    index = scan_cityscapes(tiny_cityscapes, "train")
    references = [load_sample(s, 32, 16, flip=False) for s in index.samples]
    stream = CityscapesTrainStream(index, 32, 16, 4, seed=1)
    flips = 0
    for step in range(6):
        batch = stream.batch(step)
        assert batch["label"].shape == (4, 16, 32) and batch["label"].dtype == torch.int64
        assert batch["semantics"].shape == batch["semantics2"].shape == (4, 36, 16, 32)
        assert batch["instance_edges"].shape == (4, 1, 16, 32) and batch["image2"].shape == (4, 3, 16, 32)
        assert not torch.equal(batch["image"], batch["image2"])  # an independent draw
        for j in range(4):
            sample = {key: batch[key][j] for key in references[0]}
            matches = [(r, flip) for r in references for flip in (False, True)
                       if torch.equal(sample["image"], r["image"].flip(-1) if flip else r["image"])]
            assert len(matches) == 1
            reference, flip = matches[0]
            flips += flip
            for key in reference:  # the photo's flip is the maps' flip
                assert torch.equal(sample[key], reference[key].flip(-1) if flip else reference[key]), key
    assert 4 <= flips <= 20  # about half of 24
    main_only = CityscapesTrainStream(index, 32, 16, 4, seed=1, second_batch=False).batch(3)
    assert set(main_only) == {"label", "instance_edges", "semantics", "image"}
    assert all(torch.equal(main_only[k], stream.batch(3)[k]) for k in main_only)
    unflipped = CityscapesTrainStream(index, 32, 16, 4, seed=1, flip=False).batch(0)["image"]
    assert all(any(torch.equal(x, r["image"]) for r in references) for x in unflipped)


def test_stream_rejects_bad_arguments(tiny_cityscapes):
    index = scan_cityscapes(tiny_cityscapes, "train")
    for kwargs, name in [({"batch_size": 0}, "batch_size"), ({"width": 0}, "width"), ({"seed": -1}, "seed")]:
        arguments = {"width": 32, "height": 16, "batch_size": 2, "seed": 0, **kwargs}
        with pytest.raises(ValueError, match=name):
            CityscapesTrainStream(index, **arguments)


def test_eval_loader_covers_val_in_order_without_flip(tiny_cityscapes):
    index = scan_cityscapes(tiny_cityscapes, "val")
    batches = list(eval_loader(index, 32, 16, batch_size=2))
    assert [len(b["name"]) for b in batches] == [2, 1]
    assert [name for b in batches for name in b["name"]] == [s.name for s in index.samples]
    assert batches[0]["semantics"].shape == (2, 36, 16, 32) and batches[1]["image"].shape == (1, 3, 16, 32)
    for key, value in load_sample(index.samples[2], 32, 16, flip=False).items():
        assert torch.equal(batches[1][key][0], value)


# -------------------------------------------------------------------------------------------------------------- palette
def test_palette_is_the_official_one_and_round_trips():
    assert CITYSCAPES_PALETTE.shape == (35, 3) and CITYSCAPES_PALETTE.dtype == np.uint8
    official = {"road": (128, 64, 128), "sidewalk": (244, 35, 232), "building": (70, 70, 70), "pole": (153, 153, 153),
                "traffic sign": (220, 220, 0), "vegetation": (107, 142, 35), "sky": (70, 130, 180),
                "person": (220, 20, 60), "car": (0, 0, 142), "bicycle": (119, 11, 32)}
    assert all(tuple(CITYSCAPES_PALETTE[LABEL_IDS[name]]) == rgb for name, rgb in official.items())
    ids = np.arange(35).reshape(5, 7)
    back = labels_from_colors(colorize_labels(ids))
    unique_colour = [i for i in range(35) if (CITYSCAPES_PALETTE == CITYSCAPES_PALETTE[i]).all(1).sum() == 1]
    assert np.array_equal(back.ravel()[unique_colour], ids.ravel()[unique_colour])
    assert back.dtype == np.uint8 and back.ravel()[[1, 2, 3, 4, 18, 34]].tolist() == [0, 0, 0, 0, 17, 26]
    noisy = colorize_labels(ids).astype(int) + np.random.default_rng(0).integers(-12, 13, (5, 7, 3))
    assert np.array_equal(labels_from_colors(np.clip(noisy, 0, 255).astype(np.uint8)), back)  # JPEG-like noise


def test_colour_maps_far_from_the_palette_are_refused():
    street = colorize_labels(np.full((10, 10), LABEL_IDS["road"]))
    street[0, :5] = (255, 255, 255)  # 5 % of the pixels: off-palette antialiasing would be less
    with pytest.raises(DatasetError, match=r"upload.png.*5 of 100 pixels"):
        labels_from_colors(street, source="upload.png")
    assert labels_from_colors(street, max_far_fraction=0.1)[5, 5] == LABEL_IDS["road"]
    with pytest.raises(DatasetError, match="RGB"):
        labels_from_colors(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="35"):
        colorize_labels(np.array([[7, 35]]))


# --------------------------------------------------------------------------------------------------------- learnability
def test_synthetic_photos_are_segmentable_by_nearest_class_mean_colour(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n_train=24, n_val=8, width=128, height=64)
    # the classes covering >= 3 % of the pixels each: a tiny class of many-coloured instances (signs in red, blue,
    # yellow, white) has a meaningless mean colour that would only steal pixels from the big classes
    classes = np.array(sorted(LABEL_IDS[name] for name in ("road", "sidewalk", "building", "vegetation", "sky", "car")))

    def pixels(split: str) -> tuple[np.ndarray, np.ndarray]:
        items = [load_sample(s, 128, 64, flip=False) for s in scan_cityscapes(root, split).samples]
        colours = torch.cat([item["image"].flatten(1).T for item in items]).numpy()
        labels = torch.cat([item["label"].flatten() for item in items]).numpy()
        keep = np.isin(labels, classes)
        return colours[keep], labels[keep]

    (x_train, y_train), (x_val, y_val) = pixels("train"), pixels("val")
    means = np.stack([x_train[y_train == c].mean(0) for c in classes])
    predicted = classes[((x_val[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
    accuracy = (predicted == y_val).mean()
    prior = np.array([(y_val == c).mean() for c in classes])
    per_class = [(predicted[y_val == c] == c).mean() for c in classes if (y_val == c).any()]
    # chance: guessing by the class frequencies (sum p^2) for pixel accuracy, 1/K for the class-balanced accuracy
    assert accuracy > (prior ** 2).sum() + 0.15, (accuracy, (prior ** 2).sum())
    assert np.mean(per_class) > 2.5 / len(classes), per_class
