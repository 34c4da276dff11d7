"""Data layer: image IO, AFHQ scanning and transforms, the stateless training stream, --data-frac and manifests, and
the procedural AFHQ-like dataset."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i2i.data.synthetic import animals
from i2i.data.synthetic.__main__ import main as synthetic_main
from i2i.data.afhq import (
    AFHQEvalDataset, AFHQTrainStream, ImageIndex, eval_transform, load_eval_images, random_resized_crop_box, scan_split,
    train_transform,
)
from i2i.data.images import DatasetError, load_rgb
from i2i.data.subset import read_manifest, select_fraction, write_manifest
from i2i.data.synthetic import MARKER_NAME, make_afhq


# ------------------------------------------------------------------------------------------------------------ helpers
def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def coded_colour(domain: int, image: int) -> tuple[int, int, int]:
    """A solid colour that survives crops, resizes and flips and identifies (domain, image)."""
    return 20 + 80 * domain, 8 + 16 * image, 128


def decode(x: torch.Tensor) -> tuple[list[int], list[int]]:
    """(B, 3, S, S) batch of coded solid images -> (domain, image) per sample, from the mean colour."""
    rgb = ((x.mean(dim=(2, 3)) + 1.0) * 127.5).numpy()
    return np.rint((rgb[:, 0] - 20) / 80).astype(int).tolist(), np.rint((rgb[:, 1] - 8) / 16).astype(int).tolist()


def coded_dataset(root: Path, counts: dict[str, int], split: str = "train", size: int = 12) -> Path:
    for d, (name, count) in enumerate(sorted(counts.items())):
        for i in range(count):
            save(root / split / name / f"{i:03d}.png", np.full((size, size + 2, 3), coded_colour(d, i), np.uint8))
    return root


@pytest.fixture(scope="module")
def tiny_afhq(tmp_path_factory) -> Path:
    return make_afhq(tmp_path_factory.mktemp("synthetic") / "afhq", img_size=32, n_train=8, n_val=2)


# ----------------------------------------------------------------------------------------------------------- image IO
def test_load_rgb_converts_gray_palette_alpha_and_16_bit(tmp_path):
    gray = load_rgb(save(tmp_path / "gray.png", np.array([[0, 77], [200, 255]], np.uint8)))
    assert gray.mode == "RGB" and np.array_equal(np.asarray(gray), np.repeat([[[0], [77]], [[200], [255]]], 3, axis=2))

    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8)
    composited = np.asarray(load_rgb(save(tmp_path / "rgba.png", rgba)))
    assert composited.tolist() == [[[200, 100, 50], [0, 0, 0], [100, 50, 25]]]  # on black: rgb * alpha / 255

    palette = Image.new("P", (2, 1))
    palette.putdata([0, 1])
    palette.putpalette([10, 20, 30, 240, 130, 20])
    palette.save(tmp_path / "palette.png")
    assert np.asarray(load_rgb(tmp_path / "palette.png")).tolist() == [[[10, 20, 30], [240, 130, 20]]]
    palette.save(tmp_path / "transparent.png", transparency=1)  # palette entry 1 is fully transparent
    assert np.asarray(load_rgb(tmp_path / "transparent.png")).tolist() == [[[10, 20, 30], [0, 0, 0]]]

    save(tmp_path / "deep.png", np.array([[0, 65535, 32896, 1000]], np.uint16))
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    deep = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert deep.shape == (1, 4, 3) and deep[..., 0].tolist() == [[0, 255, 128, 4]]  # rescaled, not clipped at 255


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_load_rgb_reports_unreadable_file_by_path(tmp_path, content):
    if content == "truncated":
        save(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        content = (tmp_path / "good.png").read_bytes()[:400]
    bad = tmp_path / "cat" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(content)
    with pytest.raises(DatasetError, match="broken.png"):
        load_rgb(bad)
    with pytest.raises(DatasetError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------------------------ scanning
def test_scan_split_sorts_domains_and_files_and_skips_non_images(tmp_path):
    coded_dataset(tmp_path, {"dog": 2, "cat": 3})
    save(tmp_path / "train" / "cat" / "UPPER.JPG", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    (tmp_path / "train" / "cat" / "._000.png").write_bytes(b"macOS resource fork")
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()
    index = scan_split(tmp_path, "train")
    assert index.domains == ["cat", "dog"] and len(index) == 6
    assert [p.name for p in index.files] == ["000.png", "001.png", "002.png", "UPPER.JPG", "000.png", "001.png"]
    assert index.labels == [0, 0, 0, 0, 1, 1]
    assert all(p.is_absolute() and p.is_file() for p in index.files)
    assert [p.name for p in index.per_domain()["dog"]] == ["000.png", "001.png"]


@pytest.mark.parametrize("case", ["missing_root", "root_is_file", "missing_split", "one_domain", "empty_domain"])
def test_scan_split_errors_name_the_path(tmp_path, case):
    root = tmp_path / "afhq"
    expected = str(root)
    if case == "root_is_file":
        root.write_text("not a folder")
    elif case == "missing_split":
        coded_dataset(root, {"cat": 1, "dog": 1}, split="val")
    elif case == "one_domain":
        coded_dataset(root, {"cat": 2})
    elif case == "empty_domain":
        coded_dataset(root, {"cat": 1, "dog": 1})
        (root / "train" / "wild").mkdir()
        (root / "train" / "wild" / "readme.txt").write_text("no images")
        expected = str(root / "train" / "wild")
    with pytest.raises(DatasetError) as error:
        scan_split(root, "train")
    assert expected in str(error.value)
    assert case != "missing_split" or "'train'" in str(error.value)


# ---------------------------------------------------------------------------------------------------------- transforms
def test_random_resized_crop_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(120, 100, rng)
        assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 120
        assert 0.8 * 12000 * 0.97 <= h * w <= 12000 and 0.9 * 0.97 <= w / h <= 1.1 * 1.03  # rounding slack
    # 4:1 images cannot fit ratio 0.9-1.1 at 80% of the area: central crop with the widest valid ratio.
    assert random_resized_crop_box(400, 100, np.random.default_rng(1)) == (0, 145, 100, 110)


def test_eval_transform_is_exact_normalisation_and_train_flip_is_fair():
    pixels = np.zeros((8, 8, 3), np.uint8)
    pixels[:, 4:] = 255
    pixels[0, 0] = (51, 102, 204)
    image = Image.fromarray(pixels)
    plain = eval_transform(image, 8)
    assert torch.equal(plain, torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1.0)
    assert plain.dtype == torch.float32 and plain.min() == -1.0 and plain.max() == 1.0
    rng = np.random.default_rng(0)
    outputs = [train_transform(image, 8, rng, rrc_prob=0.0) for _ in range(400)]
    flipped = sum(torch.equal(out, plain.flip(-1)) for out in outputs)
    assert all(torch.equal(out, plain) or torch.equal(out, plain.flip(-1)) for out in outputs)
    assert 160 <= flipped <= 240
    cropped = [train_transform(image, 8, np.random.default_rng(s), rrc_prob=1.0) for s in range(20)]
    assert sum(not torch.equal(c, plain) and not torch.equal(c, plain.flip(-1)) for c in cropped) >= 10


# ----------------------------------------------------------------------------------------------------- training stream
def take(stream: AFHQTrainStream, count: int) -> list[dict[str, torch.Tensor]]:
    iterator = iter(stream)
    return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_is_deterministic_and_resumes_bit_for_bit(tiny_afhq, num_workers):
    index = scan_split(tiny_afhq, "train")
    full = take(AFHQTrainStream(index, 16, 4, seed=7, num_workers=num_workers), 6)
    resumed = take(AFHQTrainStream(index, 16, 4, seed=7, start_step=3, num_workers=num_workers), 3)
    for a, b in zip(full[3:], resumed):
        assert a.keys() == {"x", "y", "x_ref", "x_ref2", "y_trg"}
        assert all(torch.equal(a[k], b[k]) for k in a)
    reference = AFHQTrainStream(index, 16, 4, seed=7)
    assert all(torch.equal(full[5][k], reference.batch(5)[k]) for k in full[5])
    other_seed = AFHQTrainStream(index, 16, 4, seed=8).batch(5)
    assert not torch.equal(full[5]["x"], other_seed["x"])
    assert len({batch["x"].numpy().tobytes() for batch in full}) == 6  # every step draws afresh


def test_stream_batches_have_the_documented_shapes_and_ranges(tiny_afhq):
    batch = AFHQTrainStream(scan_split(tiny_afhq, "train"), 24, 5, seed=0).batch(0)
    for key in ("x", "x_ref", "x_ref2"):
        assert batch[key].shape == (5, 3, 24, 24) and batch[key].dtype == torch.float32
        assert -1.0 <= batch[key].min() and batch[key].max() <= 1.0
    assert batch["y"].dtype == batch["y_trg"].dtype == torch.int64 and batch["y"].shape == (5,)


def test_stream_is_domain_balanced_and_reference_pairs_are_consistent(tmp_path):
    counts = {"a_single": 1, "b_few": 3, "c_many": 12}  # labels 0, 1, 2
    stream = AFHQTrainStream(scan_split(coded_dataset(tmp_path, counts), "train"), 8, 8, seed=3)
    sources, seen, pairs = np.zeros(3), set(), 0
    for step in range(150):
        batch = stream.batch(step)
        domains, images = decode(batch["x"])
        assert domains == batch["y"].tolist()  # y is the domain x came from
        sources += np.bincount(domains, minlength=3)
        seen |= {(d, i) for d, i in zip(domains, images)}
        (d1, i1), (d2, i2) = decode(batch["x_ref"]), decode(batch["x_ref2"])
        assert d1 == d2 == batch["y_trg"].tolist()
        for domain, first, second in zip(d1, i1, i2):
            assert (first == second) == (domain == 0)  # distinct unless the domain has a single image
            pairs += domain != 0
    assert np.all(np.abs(sources / sources.sum() - 1 / 3) < 0.05), sources  # not proportional to 1:3:12
    assert len(seen) == sum(counts.values()) and pairs > 500


def test_stream_rejects_bad_arguments(tiny_afhq):
    index = scan_split(tiny_afhq, "train")
    for kwargs, name in [({"batch_size": 0}, "batch_size"), ({"rrc_prob": 1.5}, "rrc_prob"), ({"seed": -1}, "seed")]:
        arguments = {"img_size": 16, "batch_size": 2, "seed": 0, **kwargs}
        with pytest.raises(ValueError, match=name):
            AFHQTrainStream(index, **arguments)


# ---------------------------------------------------------------------------------------------------------- evaluation
def test_eval_images_are_deterministic_per_domain_picks(tmp_path):
    index = scan_split(coded_dataset(tmp_path, {"a": 5, "b": 2, "c": 6}), "train")
    x, y = load_eval_images(index, 8, per_domain=3, seed=1)
    assert x.shape == (8, 3, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]  # domain b has only 2
    domains, images = decode(x)
    assert domains == y.tolist() and images[:3] == sorted(images[:3])
    again, _ = load_eval_images(index, 8, per_domain=3, seed=1)
    assert torch.equal(x, again)
    picks = {tuple(decode(load_eval_images(index, 8, per_domain=3, seed=s)[0])[1][:3]) for s in range(6)}
    assert len(picks) > 1  # the seed matters
    x_all, y_all = load_eval_images(index, 8)
    assert len(y_all) == 13 and decode(x_all)[1][:5] == [0, 1, 2, 3, 4]
    dataset = AFHQEvalDataset(index, 8)
    image, label, path = dataset[6]
    assert len(dataset) == 13 and label == 1 and Path(path).parent.name == "b" and torch.equal(image, x_all[6])


# ---------------------------------------------------------------------------------------------------- subset/manifest
def fake_index(counts: dict[str, int]) -> ImageIndex:
    root = Path("/data/afhq").absolute()
    return ImageIndex.from_groups(root, {d: [root / "train" / d / f"{i:04d}.jpg" for i in range(n)]
                                         for d, n in counts.items()})


def test_select_fraction_counts_determinism_and_nesting():
    index = fake_index({"cat": 50, "dog": 7, "wild": 2})
    subset = select_fraction(index, 0.1, seed=0)
    groups = subset.per_domain()
    assert {d: len(f) for d, f in groups.items()} == {"cat": 5, "dog": 1, "wild": 1}  # round(0.7) = 1, at least 1
    assert all(files == sorted(files) and set(files) <= set(index.per_domain()[d]) for d, files in groups.items())
    assert select_fraction(index, 0.1, seed=0) == subset
    assert select_fraction(index, 0.1, seed=1).per_domain()["cat"] != groups["cat"]
    larger = select_fraction(index, 0.5, seed=0).per_domain()
    assert len(larger["cat"]) == 25 and set(groups["cat"]) <= set(larger["cat"])
    assert select_fraction(index, 1.0, seed=3) is index


def test_select_fraction_domain_picks_ignore_other_domains():
    two = select_fraction(fake_index({"cat": 40, "dog": 40}), 0.25, seed=5).per_domain()
    three = select_fraction(fake_index({"ant": 9, "cat": 40, "dog": 40}), 0.25, seed=5).per_domain()
    assert two["cat"] == three["cat"] and two["dog"] == three["dog"]


@pytest.mark.parametrize("frac", [0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_select_fraction_rejects_invalid_fraction(frac):
    with pytest.raises(ValueError, match=re.escape(repr(frac))):
        select_fraction(fake_index({"cat": 4, "dog": 4}), frac, seed=0)


def test_manifest_round_trip_and_root_override(tmp_path):
    index = select_fraction(scan_split(coded_dataset(tmp_path / "afhq", {"cat": 6, "dog": 4}), "train"), 0.5, 2)
    path = write_manifest(tmp_path / "run" / "data_manifest.json", index, split="train", frac=0.5, seed=2,
                          source_root=tmp_path / "afhq")
    assert sorted(os.listdir(path.parent)) == ["data_manifest.json"]  # no temp file left behind
    manifest = json.loads(path.read_text())
    assert manifest["format"] == "i2i-data-manifest" and manifest["version"] == 1
    assert (manifest["split"], manifest["frac"], manifest["seed"]) == ("train", 0.5, 2)
    assert manifest["counts"] == {"cat": 3, "dog": 2} and manifest["domains"] == ["cat", "dog"]
    assert all(f.startswith(f"train/{d}/") for d, files in manifest["files"].items() for f in files)
    assert read_manifest(path) == index
    (tmp_path / "afhq").rename(tmp_path / "moved")
    moved = read_manifest(path, root=tmp_path / "moved")
    assert [p.relative_to(moved.root) for p in moved.files] == [p.relative_to(index.root) for p in index.files]
    assert moved.labels == index.labels and all(p.is_file() for p in moved.files)


def test_manifest_with_missing_files_or_bad_format_is_reported(tmp_path):
    index = scan_split(coded_dataset(tmp_path / "afhq", {"cat": 3, "dog": 3}), "train")
    path = write_manifest(tmp_path / "m.json", index, split="train", frac=1.0, seed=0, source_root=tmp_path / "afhq")
    index.files[4].unlink()
    with pytest.raises(DatasetError, match=r"1 of 6 files .* missing .*001\.png"):
        read_manifest(path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="bad.json"):
        read_manifest(bad)
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="not an i2i data manifest"):
        read_manifest(bad)


# ----------------------------------------------------------------------------------------------------------- synthetic
def test_make_afhq_layout_counts_and_variation(tiny_afhq):
    assert (tiny_afhq / MARKER_NAME).is_file()
    assert not [p for p in tiny_afhq.parent.iterdir() if ".partial-" in p.name]
    for split, count in (("train", 8), ("val", 2)):
        index = scan_split(tiny_afhq, split)
        assert index.domains == ["cat", "dog", "wild"] and len(index) == 3 * count
        assert [p.name for p in index.per_domain()["dog"]] == [f"dog_{i:04d}.png" for i in range(count)]
    images = [np.asarray(Image.open(p)) for s in ("train", "val") for p in scan_split(tiny_afhq, s).files]
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images)
    assert len({im.tobytes() for im in images}) == len(images)  # no two images identical


def test_make_afhq_is_idempotent_and_deterministic(tiny_afhq, tmp_path):
    stamps = {p: p.stat().st_mtime_ns for p in tiny_afhq.rglob("*")}
    assert make_afhq(tiny_afhq, img_size=32, n_train=8, n_val=2) == tiny_afhq
    assert {p: p.stat().st_mtime_ns for p in tiny_afhq.rglob("*")} == stamps
    copy = make_afhq(tmp_path / "copy", img_size=32, n_train=8, n_val=2, domains=("wild", "cat"))
    for name in ("cat_0003.png", "wild_0007.png"):
        domain = name.split("_")[0]
        assert (copy / "train" / domain / name).read_bytes() == (tiny_afhq / "train" / domain / name).read_bytes()
    reseeded = make_afhq(tmp_path / "reseeded", img_size=32, n_train=1, n_val=1, seed=1)
    assert (reseeded / "val/cat/cat_0000.png").read_bytes() != (tiny_afhq / "val/cat/cat_0000.png").read_bytes()


def test_make_afhq_never_overwrites_foreign_or_different_data(tiny_afhq, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(DatasetError, match="mine"):
        make_afhq(foreign, img_size=16, n_train=1, n_val=1)
    assert os.listdir(foreign) == ["notes.txt"] and (foreign / "notes.txt").read_text() == "precious"
    with pytest.raises(DatasetError, match="other parameters"):
        make_afhq(tiny_afhq, img_size=16, n_train=8, n_val=2)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DatasetError, match="a_file"):
        make_afhq(tmp_path / "a_file", img_size=16, n_train=1, n_val=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(scan_split(make_afhq(empty, img_size=16, n_train=1, n_val=1), "val")) == 3
    with pytest.raises(ValueError, match="lion"):
        make_afhq(tmp_path / "x", domains=("cat", "lion"))


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    written = []

    def failing_save(pixels, path):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(path)
        Image.fromarray(pixels).save(path)

    monkeypatch.setattr(animals, "save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        make_afhq(tmp_path / "afhq", img_size=16, n_train=3, n_val=1)
    assert os.listdir(tmp_path) == []


def test_synthetic_domains_are_separable_by_nearest_class_mean(tmp_path):
    root = make_afhq(tmp_path / "afhq", img_size=32, n_train=20, n_val=10)
    x_train, y_train = load_eval_images(scan_split(root, "train"), 16)
    x_val, y_val = load_eval_images(scan_split(root, "val"), 16)
    means = torch.stack([x_train[y_train == k].flatten(1).mean(0) for k in range(3)])
    accuracy = (torch.cdist(x_val.flatten(1), means).argmin(1) == y_val).float().mean().item()
    assert accuracy >= 0.6, accuracy  # chance is 1/3


def test_cli_generates_and_reports_refusal(tmp_path, capsys):
    out = synthetic_main(["afhq", str(tmp_path / "cli"), "--size", "16", "--n-train", "2", "--n-val", "1"])
    assert len(scan_split(out, "train")) == 6 and "ready" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        synthetic_main(["afhq", str(tmp_path), "--size", "16"])
    assert stop.value.code == 2 and "refusing" in capsys.readouterr().err
    assert len(list((out / "val").rglob("*.png"))) == 3
