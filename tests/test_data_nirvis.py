"""CASIA NIR-VIS 2.0 data: the procedural face set in the official layout with its protocols, protocol parsing
(Windows paths, extension mix-ups, missing files), folds, --data-frac by identity, the one-pair-per-identity
setting, manifests, the resumable NIR -> VIS training stream, evaluation lists and raw-pixel learnability."""
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

from i2i.data.images import DatasetError
from i2i.data.nirvis import (
    FOLDS, NIRVISTrainStream, check_fold, eval_loaders, load_face, load_recognition_protocol, load_train_set,
    one_pair_per_identity, protocol_file, read_manifest, read_protocol, select_identities, train_set_for_run,
)
from i2i.data.synthetic import MARKER_NAME, make_nirvis
from i2i.data.synthetic.__main__ import main as synthetic_main
from i2i.data.synthetic.faces import MIXED_UP_EXTENSIONS, PROTOCOL_ROLES, SESSIONS

TINY = {"n_identities": 12, "img_size": 32, "n_folds": 2}


@pytest.fixture(scope="module")
def tiny_nirvis(tmp_path_factory) -> Path:
    return make_nirvis(tmp_path_factory.mktemp("synthetic") / "nirvis", **TINY)


def disk_images(root: Path, modality: str) -> dict[str, list[str]]:
    """subject -> sorted root-relative POSIX paths of its images of one modality, from the folders themselves."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.glob(f"s*/{modality}/*/*")):
        found.setdefault(path.parent.name, []).append(path.relative_to(root).as_posix())
    return found


def raw_lines(root: Path, name: str) -> list[str]:
    return (root / "protocols" / name).read_bytes().decode("ascii").split("\r\n")[:-1]


def write_protocol(root: Path, name: str, lines: list[str]) -> Path:
    path = root / "protocols" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return path


def save(path: Path, pixels: np.ndarray, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


# ------------------------------------------------------------------------------------------------------- synthetic set
def test_make_nirvis_writes_the_official_layout(tiny_nirvis):
    assert (tiny_nirvis / MARKER_NAME).is_file()
    folders = sorted(p.name for p in tiny_nirvis.iterdir() if not p.name.startswith("."))
    assert folders == sorted([*SESSIONS, "protocols"])
    nir, vis = disk_images(tiny_nirvis, "NIR"), disk_images(tiny_nirvis, "VIS")
    assert sorted(nir) == sorted(vis) and len(nir) == 12
    for files in nir.values():
        assert len(files) >= 3 and all(re.fullmatch(r"s[1-4]/NIR/\d{5}/\d{3}\.bmp", f) for f in files)
    for files in vis.values():
        assert len(files) >= 2 and all(re.fullmatch(r"s[1-4]/VIS/\d{5}/\d{3}\.jpg", f) for f in files)
    grey = Image.open(tiny_nirvis / nir["10001"][0])
    colour = Image.open(tiny_nirvis / vis["10001"][0])
    assert (grey.format, grey.mode, grey.size) == ("BMP", "L", (32, 32))
    assert (colour.format, colour.mode, colour.size) == ("JPEG", "RGB", (32, 32))
    expected = {f"{m}_{r}_{k}.txt" for m, r in PROTOCOL_ROLES for k in ("1", "2", "dev")}
    assert set(os.listdir(tiny_nirvis / "protocols")) == expected


def test_protocols_split_identities_and_list_gallery_and_probes_as_the_real_ones(tiny_nirvis):
    nir, vis = disk_images(tiny_nirvis, "NIR"), disk_images(tiny_nirvis, "VIS")
    test_sets = []
    for fold in ("1", "2", "dev"):
        lines = {(m, r): raw_lines(tiny_nirvis, f"{m}_{r}_{fold}.txt") for m, r in PROTOCOL_ROLES}
        assert all("\\" in line and "/" not in line for group in lines.values() for line in group)
        subject = {key: {line.split("\\")[2] for line in group} for key, group in lines.items()}
        train, test = subject["nir", "train"], subject["nir", "probe"]
        assert subject["vis", "train"] == train and subject["vis", "gallery"] == test
        assert not train & test and len(train) == len(test) == 6
        assert len(lines["vis", "gallery"]) == len(test)  # one gallery image per test subject
        listed = sorted(line.replace("\\", "/").rsplit(".", 1)[0] for line in lines["nir", "probe"])
        assert listed == sorted(f.rsplit(".", 1)[0] for s in test for f in nir[s])  # all NIR images of the test set
        listed = sorted(line.replace("\\", "/").rsplit(".", 1)[0] for line in lines["vis", "train"])
        assert listed == sorted(f.rsplit(".", 1)[0] for s in train for f in vis[s])
        test_sets.append(test)
    assert len({frozenset(t) for t in test_sets}) == 3  # the folds differ


def test_make_nirvis_is_idempotent_and_deterministic(tiny_nirvis, tmp_path):
    stamps = {p: p.stat().st_mtime_ns for p in tiny_nirvis.rglob("*")}
    assert make_nirvis(tiny_nirvis, **TINY) == tiny_nirvis
    assert {p: p.stat().st_mtime_ns for p in tiny_nirvis.rglob("*")} == stamps
    copy = make_nirvis(tmp_path / "copy", **TINY)
    for relative in ("s1/NIR/10001/001.bmp", "s2/VIS/10002/001.jpg", "protocols/nir_probe_1.txt"):
        assert (copy / relative).read_bytes() == (tiny_nirvis / relative).read_bytes()
    reseeded = make_nirvis(tmp_path / "reseeded", **{**TINY, "seed": 1})
    assert (reseeded / "s1/NIR/10001/001.bmp").read_bytes() != (tiny_nirvis / "s1/NIR/10001/001.bmp").read_bytes()
    with pytest.raises(DatasetError, match="other parameters"):
        make_nirvis(tiny_nirvis, **{**TINY, "img_size": 16})
    with pytest.raises(ValueError, match="n_folds"):
        make_nirvis(tmp_path / "x", n_folds=11)


def test_cli_generates_nirvis(tmp_path, capsys):
    out = synthetic_main(["nirvis", str(tmp_path / "cli"), "--size", "16", "--identities", "4", "--folds", "1"])
    assert len(load_train_set(out, 1)) == 2 and "ready" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------ protocols
def test_protocol_lines_are_windows_paths_and_the_subject_is_the_parent_folder(tmp_path):
    for relative in ("s1/NIR/10117/001.bmp", "s2/NIR/10117/002.bmp", "s3/NIR/20001/001.bmp"):
        save(tmp_path / relative, np.zeros((4, 4), np.uint8), "BMP")
    lines = ["\ufeffs1\\NIR\\10117\\001.bmp", "", "  s2\\NIR\\10117\\002.bmp  ", "s3/NIR/20001/001.bmp"]
    path = write_protocol(tmp_path, "nir_train_3.txt", lines)
    entries = read_protocol(tmp_path, "nir", "train", 3)
    assert [(e.path, e.subject, e.modality) for e in entries] == [
        (tmp_path / "s1/NIR/10117/001.bmp", "10117", "NIR"), (tmp_path / "s2/NIR/10117/002.bmp", "10117", "NIR"),
        (tmp_path / "s3/NIR/20001/001.bmp", "20001", "NIR")]
    assert [e.source for e in entries] == ["protocols/nir_train_3.txt:1", "protocols/nir_train_3.txt:3",
                                           "protocols/nir_train_3.txt:4"]
    assert protocol_file(tmp_path, "nir", "train", "3") == path


def test_extension_mix_ups_are_tolerated(tiny_nirvis):
    mixed = set()
    for name in sorted(os.listdir(tiny_nirvis / "protocols")):
        for line in raw_lines(tiny_nirvis, name):
            if not (tiny_nirvis / line.replace("\\", "/")).is_file():
                mixed.add(line)
    assert len(mixed) == MIXED_UP_EXTENSIONS
    assert {line.rsplit(".", 1)[1] + line.split("\\")[1] for line in mixed} == {"jpgNIR", "bmpVIS"}
    entries = [e for m, r in PROTOCOL_ROLES for e in read_protocol(tiny_nirvis, m, r, 1)]
    resolved = [e for e in entries if e.path.relative_to(tiny_nirvis).as_posix().replace("/", "\\") not in
                {line for line in raw_lines(tiny_nirvis, e.source.split(":")[0].split("/")[1])}]
    assert len(resolved) == MIXED_UP_EXTENSIONS
    assert all(e.path.is_file() and e.path.suffix == {"NIR": ".bmp", "VIS": ".jpg"}[e.modality] for e in resolved)


def test_missing_file_is_reported_by_path_and_protocol_line(tmp_path):
    save(tmp_path / "s1/VIS/10001/001.jpg", np.zeros((4, 4, 3), np.uint8), "JPEG")
    write_protocol(tmp_path, "vis_gallery_dev.txt", ["s1\\VIS\\10001\\001.jpg", "", "s4\\VIS\\10009\\003.jpg"])
    with pytest.raises(DatasetError) as error:
        read_protocol(tmp_path, "vis", "gallery", "dev")
    message = str(error.value)
    assert str(tmp_path / "s4" / "VIS" / "10009" / "003.jpg") in message
    assert "protocols/vis_gallery_dev.txt:3" in message and ".bmp" in message


@pytest.mark.parametrize("line, complaint", [
    ("s1\\VIS\\10001\\001.jpg", "not a NIR image"),
    ("C:\\data\\s1\\NIR\\10001\\001.bmp", "not a relative path"),
    ("001.bmp", "not a relative path"),
    ("s1\\NIR\\10001\\001.bmp 10001", "not a relative path"),
])
def test_malformed_protocol_lines_are_reported_with_file_and_line(tmp_path, line, complaint):
    write_protocol(tmp_path, "nir_probe_1.txt", ["", line])
    with pytest.raises(DatasetError, match=f"protocols/nir_probe_1.txt:2.*{complaint}"):
        read_protocol(tmp_path, "nir", "probe", 1)


def test_missing_or_empty_protocol_file_and_bad_folds(tmp_path):
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "protocols" / "nir_train_7.txt"))):
        read_protocol(tmp_path, "nir", "train", 7)
    write_protocol(tmp_path, "nir_train_7.txt", ["", "  "])
    with pytest.raises(DatasetError, match="lists no images"):
        read_protocol(tmp_path, "nir", "train", 7)
    assert [check_fold(k) for k in (1, "10", " Dev ")] == ["1", "10", "dev"] and len(FOLDS) == 11
    for fold in (0, 11, "x", True, None):
        with pytest.raises(ValueError, match="fold"):
            check_fold(fold)


# -------------------------------------------------------------------------------------------------- training identities
def test_train_and_test_identities_are_disjoint_in_every_fold(tiny_nirvis):
    for fold in (1, 2, "dev"):
        train, protocol = load_train_set(tiny_nirvis, fold), load_recognition_protocol(tiny_nirvis, fold)
        assert list(train.subjects) == sorted(train.subjects) and len(train) == 6
        assert not set(train.subjects) & set(protocol.subjects)
        assert all(nir and vis for nir, vis in zip(train.nir, train.vis))
        assert all(p.parent.name == s and p.parent.parent.name == "NIR" for s, files in zip(train.subjects, train.nir)
                   for p in files)
        assert all(p.parent.name == s and p.suffix == ".jpg" for s, files in zip(train.subjects, train.vis)
                   for p in files)


def test_a_training_subject_without_vis_images_is_reported(tiny_nirvis, tmp_path):
    root = Path(shutil.copytree(tiny_nirvis, tmp_path / "copy"))
    lines = raw_lines(root, "vis_train_1.txt")
    victim = lines[0].split("\\")[2]
    write_protocol(root, "vis_train_1.txt", [line for line in lines if line.split("\\")[2] != victim])
    expected = f"subject '{victim}' \\(listed at protocols/nir_train_1.txt:\\d+\\) has NIR but no VIS"
    with pytest.raises(DatasetError, match=expected):
        load_train_set(root, 1)


def test_select_identities_keeps_a_seeded_nested_fraction_of_whole_identities(tiny_nirvis):
    full = load_train_set(tiny_nirvis, 1)
    half = select_identities(full, 0.5, seed=0)
    assert len(half) == 3 and set(half.subjects) <= set(full.subjects) and list(half.subjects) == sorted(half.subjects)
    for subject, nir, vis in zip(half.subjects, half.nir, half.vis):  # every image of a kept identity stays
        k = full.subjects.index(subject)
        assert nir == full.nir[k] and vis == full.vis[k]
    assert select_identities(full, 0.5, seed=0) == half
    assert any(select_identities(full, 0.5, seed=s).subjects != half.subjects for s in range(1, 6))
    assert set(select_identities(full, 0.34, seed=0).subjects) <= set(half.subjects)  # nested
    assert len(select_identities(full, 0.01, seed=0)) == 1 and select_identities(full, 1.0, seed=0) is full
    with pytest.raises(ValueError, match="data fraction"):
        select_identities(full, 0.0, seed=0)


def test_one_pair_per_identity(tiny_nirvis):
    full = load_train_set(tiny_nirvis, 1)
    pairs = one_pair_per_identity(full, seed=0)
    assert pairs.subjects == full.subjects
    assert all(len(nir) == len(vis) == 1 for nir, vis in zip(pairs.nir, pairs.vis))
    assert all(n[0] in fn and v[0] in fv for n, v, fn, fv in zip(pairs.nir, pairs.vis, full.nir, full.vis))
    assert one_pair_per_identity(full, seed=0) == pairs
    assert one_pair_per_identity(full, seed=1).nir != pairs.nir
    # an identity's pair does not depend on which other identities are kept
    subset = one_pair_per_identity(select_identities(full, 0.5, seed=2), seed=0)
    assert all(subset.nir[j] == pairs.nir[pairs.subjects.index(s)] for j, s in enumerate(subset.subjects))


def test_manifest_round_trip_resume_and_moved_root(tiny_nirvis, tmp_path):
    root = Path(shutil.copytree(tiny_nirvis, tmp_path / "nirvis"))
    run = tmp_path / "run"
    chosen = train_set_for_run(root, run, fold=2, frac=0.5, seed=4, pairs="one", resume=False)
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert manifest["format"] == "i2i-nirvis-manifest" and manifest["subjects"] == list(chosen.subjects)
    assert (manifest["fold"], manifest["frac"], manifest["seed"], manifest["pairs"]) == ("2", 0.5, 4, "one")
    assert all(len(files["NIR"]) == len(files["VIS"]) == 1 for files in manifest["files"].values())
    # resume reads the manifest back, whatever the arguments now say
    assert train_set_for_run(root, run, fold=1, frac=1.0, seed=0, resume=True) == chosen
    assert train_set_for_run(root, run, fold=2, frac=1.0, seed=4, resume=False) != chosen  # a fresh run rewrites it
    train_set_for_run(root, run, fold=2, frac=0.5, seed=4, pairs="one", resume=False)
    moved = root.rename(tmp_path / "moved")
    relocated = read_manifest(run / "data_manifest.json", root=moved)
    assert relocated.subjects == chosen.subjects and all(p.is_file() for files in relocated.nir for p in files)
    with pytest.raises(DatasetError, match="missing under root"):
        read_manifest(run / "data_manifest.json")
    with pytest.raises(ValueError, match="pairs"):
        train_set_for_run(moved, tmp_path / "run2", fold=1, frac=1.0, seed=0, pairs="two", resume=False)


# ----------------------------------------------------------------------------------------------------- training stream
def test_stream_batches_pair_nir_with_vis_of_the_same_identity(tiny_nirvis):
    pairs = one_pair_per_identity(load_train_set(tiny_nirvis, 1), seed=0)  # one image each: easy to recognise
    faces = [(load_face(n[0], 24, 1), load_face(v[0], 24, 3)) for n, v in zip(pairs.nir, pairs.vis)]
    stream = NIRVISTrainStream(pairs, 24, 5, seed=3)
    flips, seen = 0, set()
    for step in range(8):
        batch = stream.batch(step)
        assert batch.keys() == {"nir", "vis", "identity", "nir2", "vis2", "identity2"}
        assert batch["nir"].shape == batch["nir2"].shape == (5, 1, 24, 24)
        assert batch["vis"].shape == (5, 3, 24, 24) and batch["identity"].dtype == torch.int64
        assert -1.0 <= batch["nir"].min() and batch["vis"].max() <= 1.0
        for x, y, k in zip(batch["nir"], batch["vis"], batch["identity"].tolist()):
            nir, vis = faces[k]
            flipped = torch.equal(x, nir.flip(-1))
            assert flipped or torch.equal(x, nir)
            assert torch.equal(y, vis.flip(-1) if flipped else vis)  # same identity, same flip
            flips += flipped
            seen.add(k)
    assert 8 <= flips <= 32 and len(seen) == len(pairs)
    unflipped = NIRVISTrainStream(pairs, 24, 5, seed=3, flip=False).batch(0)
    assert all(torch.equal(x, faces[k][0]) for x, k in zip(unflipped["nir"], unflipped["identity"].tolist()))
    rgb = NIRVISTrainStream(pairs, 24, 2, seed=3, nir_channels=3).batch(0)["nir"]
    assert rgb.shape == (2, 3, 24, 24) and torch.allclose(rgb[:, 0], rgb[:, 2], atol=2 / 255)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_batch_s_is_the_same_when_restarted_at_s(tiny_nirvis, num_workers):
    train = load_train_set(tiny_nirvis, 1)
    iterator = iter(NIRVISTrainStream(train, 16, 4, seed=9, num_workers=num_workers))
    full = [next(iterator) for _ in range(5)]
    iterator = iter(NIRVISTrainStream(train, 16, 4, seed=9, start_step=3, num_workers=num_workers))
    resumed = [next(iterator) for _ in range(2)]
    for a, b in zip(full[3:], resumed):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert len({batch["nir"].numpy().tobytes() for batch in full}) == 5
    assert not torch.equal(full[4]["nir"], full[4]["nir2"])
    other = NIRVISTrainStream(train, 16, 4, seed=10).batch(4)
    assert not torch.equal(full[4]["nir"], other["nir"])
    main_only = NIRVISTrainStream(train, 16, 4, seed=9, second_batch=False).batch(4)
    assert set(main_only) == {"nir", "vis", "identity"}
    assert all(torch.equal(main_only[k], full[4][k]) for k in main_only)
    with pytest.raises(ValueError, match="nir_channels"):
        NIRVISTrainStream(train, 16, 4, seed=0, nir_channels=2)


# ---------------------------------------------------------------------------------------------------------- evaluation
def test_recognition_protocol_and_eval_loaders(tiny_nirvis, tmp_path):
    protocol = load_recognition_protocol(tiny_nirvis, 1)
    assert len(protocol.gallery) == len(protocol.subjects) == 6
    assert sorted(protocol.gallery_labels.tolist()) == list(range(6))
    assert [protocol.subjects[k] for k in protocol.probe_labels] == [e.subject for e in protocol.probes]
    gallery, probes = eval_loaders(protocol, 16, batch_size=4)
    images, labels, paths = next(iter(gallery))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == protocol.gallery_labels[:4].tolist()
    assert list(paths) == [str(e.path) for e in protocol.gallery[:4]]
    probe_images = torch.cat([batch[0] for batch in probes])
    assert probe_images.shape == (len(protocol.probes), 1, 16, 16)
    root = Path(shutil.copytree(tiny_nirvis, tmp_path / "copy"))
    write_protocol(root, "vis_gallery_1.txt", raw_lines(root, "vis_gallery_1.txt")[1:])
    orphan = r"listed at protocols/nir_probe_1.txt:\d+\) is of subject .* no image in the gallery"
    with pytest.raises(DatasetError, match=orphan):
        load_recognition_protocol(root, 1)


def test_load_face_resizes_crops_and_normalises(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = (255, 128, 0)  # the centre square is orange, the sides black
    path = save(tmp_path / "wide.jpg", wide, "PNG")
    rgb, grey = load_face(path, 10, 3), load_face(path, 10, 1)
    assert rgb.shape == (3, 10, 10) and grey.shape == (1, 10, 10)
    assert torch.allclose(rgb[:, 5, 5], torch.tensor([1.0, 128 / 127.5 - 1, -1.0]), atol=0.02)
    luma = (0.299 * 255 + 0.587 * 128) / 127.5 - 1
    assert abs(grey[0, 5, 5].item() - luma) < 0.02
    (tmp_path / "broken.bmp").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.bmp"):
        load_face(tmp_path / "broken.bmp", 10, 1)


# --------------------------------------------------------------------------------------------------------- learnability
def test_raw_pixel_matching_vis_vis_works_and_nir_vis_is_clearly_worse(tmp_path):
    root = make_nirvis(tmp_path / "nirvis", n_identities=40, img_size=32, n_folds=1)
    protocol = load_recognition_protocol(root, 1)
    label = {subject: k for k, subject in enumerate(protocol.subjects)}
    in_gallery = {e.path for e in protocol.gallery}
    vis_probes = [p for p in sorted(root.glob("s*/VIS/*/*.jpg")) if p.parent.name in label and p not in in_gallery]

    def features(paths) -> torch.Tensor:
        x = torch.stack([load_face(p, 32, 1) for p in paths]).flatten(1)
        x = x - x.mean(1, keepdim=True)
        return x / x.norm(dim=1, keepdim=True)

    gallery = features(e.path for e in protocol.gallery)

    def rank1(probes: torch.Tensor, labels: np.ndarray) -> float:
        return float((protocol.gallery_labels[(probes @ gallery.T).argmax(1).numpy()] == labels).mean())

    vis_vis = rank1(features(vis_probes), np.array([label[p.parent.name] for p in vis_probes]))
    nir_vis = rank1(features(e.path for e in protocol.probes), protocol.probe_labels)
    chance = 1 / len(protocol.gallery)
    assert len(vis_probes) >= 20 and vis_vis > 6 * chance, vis_vis
    assert nir_vis < vis_vis - 0.25, (nir_vis, vis_vis)
