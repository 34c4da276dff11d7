"""CASIA NIR-VIS 2.0 as its protocols define it: protocol files, NIR -> VIS training pairs of one identity,
`--data-frac` by identity (and the paper's one-pair-per-identity setting) with its manifest, a stateless, resumable
stream of training batches, and the gallery / probe lists of the recognition evaluation.

Layout (official): `ROOT/s1..s4/{NIR,VIS}/<subject>/<NNN>.{bmp,jpg}` and `ROOT/protocols/` with
`vis_train_<k>.txt`, `nir_train_<k>.txt`, `vis_gallery_<k>.txt`, `nir_probe_<k>.txt` for fold k = 1..10 (View 2) and
k = dev (View 1). A protocol line is a root-relative path with Windows backslashes (`s2\\NIR\\10117\\001.bmp`); the
subject id is the parent folder. NIR files are .bmp and VIS .jpg, but copies of the set swap some extensions: a
listed file that is missing is looked up under the other image extensions before it is reported — by path and by
protocol file:line.

Faces are expected aligned and cropped (as the LightCNN crops people use); the reader resizes (shorter side to S,
then a centre crop to S x S, bilinear with antialiasing) and does not detect or align faces. NIR is read as one grey
channel (ITU-R 601 luma, PIL's "L"), the input LightCNN takes; VIS as RGB. Both are normalised to [-1, 1].

Reproducibility: every random choice comes from `numpy.random.default_rng([seed, step])`, so the batch of training
step s is a pure function of (training set, seed, s), whatever the number of workers and wherever the run was
resumed (the contract of `i2i.data.afhq.AFHQTrainStream`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path, PureWindowsPath
from typing import Any, Iterator, Literal

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode

from i2i.data.afhq import _CountFrom, _check_int, seeded_choice
from i2i.data.images import DatasetError, load_rgb
from i2i.data.subset import fraction_count
from i2i.engine.distributed import shard_slice
from i2i.fileio import atomic_write_text

FOLDS = tuple(str(k) for k in range(1, 11)) + ("dev",)
PROTOCOLS = (("vis", "train"), ("nir", "train"), ("vis", "gallery"), ("nir", "probe"))  # (modality, role)
MANIFEST_NAME = "data_manifest.json"
MANIFEST_FORMAT, MANIFEST_VERSION = "i2i-nirvis-manifest", 1
# Extensions tried, in this order, when a listed file is missing (the set's own two first).
FALLBACK_EXTENSIONS = (".bmp", ".jpg", ".BMP", ".JPG", ".jpeg", ".png")
LAYOUT_HINT = (
    "expected the CASIA NIR-VIS 2.0 layout ROOT/s1..s4/{NIR,VIS}/<subject>/<NNN>.{bmp,jpg} with "
    "ROOT/protocols/{vis_train,nir_train,vis_gallery,nir_probe}_<fold>.txt, fold 1..10 or dev"
)
Pairs = Literal["all", "one"]


# ----------------------------------------------------------------------------------------------------------- protocols
@dataclass(frozen=True)
class FaceEntry:
    """One protocol line resolved on disk: the file (absolute; the other extension when the listed one is missing),
    the subject id (its parent folder), the modality ("NIR" or "VIS") and where it was listed (`file:line`)."""

    path: Path
    subject: str
    modality: str
    source: str


def check_fold(fold: int | str) -> str:
    """A fold as the protocol file names spell it: 1..10 (int or str) or "dev" (View 1); ValueError otherwise."""
    name = str(fold).strip().lower() if not isinstance(fold, bool) else ""
    if name not in FOLDS:
        raise ValueError(f"fold must be 1..10 or 'dev', got {fold!r}")
    return name


def protocol_file(root: str | Path, modality: str, role: str, fold: int | str) -> Path:
    """`root/protocols/<modality>_<role>_<fold>.txt`, e.g. protocol_file(root, "nir", "probe", 1); (modality, role)
    must be one of PROTOCOLS."""
    if (modality, role) not in PROTOCOLS:
        raise ValueError(f"(modality, role) must be one of {PROTOCOLS}, got {(modality, role)!r}")
    return Path(root).expanduser().absolute() / "protocols" / f"{modality}_{role}_{check_fold(fold)}.txt"


def _resolve(listed: Path) -> Path | None:
    """The listed file, or the same stem under another image extension, or None."""
    if listed.is_file():
        return listed
    for extension in FALLBACK_EXTENSIONS:
        candidate = listed.with_suffix(extension)
        if candidate != listed and candidate.is_file():
            return candidate
    return None


def read_protocol(root: str | Path, modality: str, role: str, fold: int | str) -> list[FaceEntry]:
    """The entries of one protocol file in file order (blank lines skipped; CRLF, a UTF-8 BOM and surrounding spaces
    tolerated). Every line must be a relative path `.../<NIR|VIS>/<subject>/<file>` of the file's modality.

    Raises DatasetError naming the protocol file (and line) when the file is missing or empty, a line is not such a
    path, or its image is missing under every extension tried (the message gives the path looked for).
    """
    root = Path(root).expanduser().absolute()
    path = protocol_file(root, modality, role, fold)
    if not path.is_file():
        raise DatasetError(f"protocol file '{path}' does not exist; {LAYOUT_HINT}")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"protocol file '{path}' is not text: {error}") from error
    expected = modality.upper()
    entries = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{path.relative_to(root).as_posix()}:{number}"
        listed_path = PureWindowsPath(line)  # splits on both \ and /
        parts = listed_path.parts
        if len(parts) < 3 or listed_path.anchor or ".." in parts or any(" " in p for p in parts):
            raise DatasetError(f"{where} ('{path}'): '{line}' is not a relative path <session>\\<NIR|VIS>\\"
                               f"<subject>\\<file>; {LAYOUT_HINT}")
        if parts[-3].upper() != expected:
            raise DatasetError(f"{where} ('{path}'): '{line}' is not a {expected} image (its folder is "
                               f"'{parts[-3]}'); a {modality}_{role} protocol lists {expected} images only")
        listed = root.joinpath(*parts)
        found = _resolve(listed)
        if found is None:
            tried = ", ".join(e for e in FALLBACK_EXTENSIONS if e != listed.suffix)
            raise DatasetError(f"image '{listed}' listed at {where} does not exist (also tried {tried}); "
                               f"{LAYOUT_HINT}")
        entries.append(FaceEntry(found, parts[-2], expected, where))
    if not entries:
        raise DatasetError(f"protocol file '{path}' lists no images; {LAYOUT_HINT}")
    return entries


# ------------------------------------------------------------------------------------------------------ training set
@dataclass(frozen=True)
class NIRVISTrainSet:
    """The training images of one fold, grouped by identity.

    root: the dataset root, absolute. fold: "1".."10" or "dev". subjects: subject ids, sorted; identity label k is
    subjects[k]. nir[k], vis[k]: the NIR and VIS files of subjects[k] (absolute paths, protocol order, non-empty).
    """

    root: Path
    fold: str
    subjects: tuple[str, ...]
    nir: tuple[tuple[Path, ...], ...]
    vis: tuple[tuple[Path, ...], ...]

    def __len__(self) -> int:
        return len(self.subjects)

    def without(self, bad: set[Path]) -> "NIRVISTrainSet":
        """The set minus the files in `bad` (--skip-bad-images); an identity left without a NIR or a VIS image is
        dropped (the later identities' labels shift down). DatasetError when no identity is left."""
        kept = [(subject, tuple(p for p in nir if p not in bad), tuple(p for p in vis if p not in bad))
                for subject, nir, vis in zip(self.subjects, self.nir, self.vis)]
        kept = [entry for entry in kept if entry[1] and entry[2]]
        if not kept:
            raise DatasetError(f"'{self.root}': no identity of fold {self.fold} is left with a good NIR and VIS image")
        subjects, nir, vis = zip(*kept)
        return NIRVISTrainSet(self.root, self.fold, subjects, nir, vis)

    @property
    def nir_files(self) -> list[tuple[int, Path]]:
        """(identity label, NIR file) for every NIR image, identity by identity."""
        return [(k, path) for k, files in enumerate(self.nir) for path in files]


def load_train_set(root: str | Path, fold: int | str) -> NIRVISTrainSet:
    """Read `nir_train_<fold>.txt` and `vis_train_<fold>.txt`. Raises DatasetError (see read_protocol) and when a
    subject has NIR but no VIS training images or the reverse (naming it and the protocol line of its first image)."""
    root = Path(root).expanduser().absolute()
    fold = check_fold(fold)
    grouped: dict[str, dict[str, list[FaceEntry]]] = {"NIR": {}, "VIS": {}}
    for modality in ("nir", "vis"):
        for entry in read_protocol(root, modality, "train", fold):
            grouped[entry.modality].setdefault(entry.subject, []).append(entry)
    for have, lack in (("NIR", "VIS"), ("VIS", "NIR")):
        unpaired = sorted(set(grouped[have]) - set(grouped[lack]))
        if unpaired:
            first = grouped[have][unpaired[0]][0]
            raise DatasetError(
                f"subject '{unpaired[0]}' (listed at {first.source}) has {have} but no {lack} training images in "
                f"fold {fold} ({len(unpaired)} such subject(s)); each training subject needs both to form NIR -> VIS "
                "pairs"
            )
    subjects = tuple(sorted(grouped["NIR"]))
    return NIRVISTrainSet(root, fold, subjects,
                          tuple(tuple(e.path for e in grouped["NIR"][s]) for s in subjects),
                          tuple(tuple(e.path for e in grouped["VIS"][s]) for s in subjects))


def select_identities(train_set: NIRVISTrainSet, frac: float, seed: int) -> NIRVISTrainSet:
    """Keep fraction_count(frac, n) = max(1, round(frac * n)) identities with all their images, chosen by a
    permutation seeded with (seed, fold) only; for a fixed seed a smaller fraction keeps a subset of a larger one's
    identities. frac must be in (0, 1]; frac == 1 returns `train_set`."""
    _check_fraction(frac, seed)
    if frac == 1:
        return train_set
    kept = seeded_choice(range(len(train_set)), fraction_count(frac, len(train_set)), seed,
                         f"nirvis/{train_set.fold}/identities")
    return replace(train_set, subjects=tuple(train_set.subjects[k] for k in kept),
                   nir=tuple(train_set.nir[k] for k in kept), vis=tuple(train_set.vis[k] for k in kept))


def one_pair_per_identity(train_set: NIRVISTrainSet, seed: int) -> NIRVISTrainSet:
    """The paper's extreme setting: one NIR and one VIS image per identity, each chosen by a permutation seeded with
    (seed, subject, modality), so an identity's pair does not depend on which other identities are kept."""
    _check_fraction(1.0, seed)
    def pick(groups: tuple[tuple[Path, ...], ...], modality: str) -> tuple[tuple[Path, ...], ...]:
        return tuple(tuple(seeded_choice(files, 1, seed, f"nirvis/{subject}/{modality}"))
                     for subject, files in zip(train_set.subjects, groups))

    return replace(train_set, nir=pick(train_set.nir, "NIR"), vis=pick(train_set.vis, "VIS"))


def _check_fraction(frac: float, seed: int) -> None:
    if isinstance(frac, bool) or not isinstance(frac, Real) or not 0.0 < frac <= 1.0:
        raise ValueError(f"data fraction must be a number in (0, 1], got {frac!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data fraction seed must be an integer >= 0, got {seed!r}")


def write_manifest(path: str | Path, train_set: NIRVISTrainSet, *, frac: float, seed: int, pairs: Pairs,
                   source_root: str | Path) -> Path:
    """Write the JSON manifest of `train_set` atomically; returns its path. Keys: format "i2i-nirvis-manifest",
    version 1, root (source_root as given), fold, frac, seed, pairs ("all" or "one"), subjects (sorted ids) and
    files (subject -> {"NIR": [...], "VIS": [...]} paths relative to the root, POSIX separators, as found on disk)."""
    path = Path(path)
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "root": str(source_root), "fold": train_set.fold,
        "frac": frac, "seed": seed, "pairs": pairs, "subjects": list(train_set.subjects),
        "files": {subject: {"NIR": [p.relative_to(train_set.root).as_posix() for p in nir],
                            "VIS": [p.relative_to(train_set.root).as_posix() for p in vis]}
                  for subject, nir, vis in zip(train_set.subjects, train_set.nir, train_set.vis)},
    }
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(path: str | Path, root: str | Path | None = None) -> NIRVISTrainSet:
    """Rebuild the NIRVISTrainSet a manifest records; `root` overrides the manifest's root (the dataset moved).

    Raises DatasetError naming the manifest when it is missing or malformed, and listing the first missing files and
    how many are missing when the recorded images are not all under the root.
    """
    path = Path(path)
    manifest = _load_manifest(path)
    root = Path(manifest["root"] if root is None else root).expanduser().absolute()
    subjects = tuple(manifest["subjects"])
    nir = tuple(tuple(root / rel for rel in manifest["files"][s]["NIR"]) for s in subjects)
    vis = tuple(tuple(root / rel for rel in manifest["files"][s]["VIS"]) for s in subjects)
    listed = [p for group in (*nir, *vis) for p in group]
    missing = [p for p in listed if not p.is_file()]
    if missing:
        shown = ", ".join(f"'{p}'" for p in missing[:5])
        raise DatasetError(
            f"{len(missing)} of {len(listed)} files listed in manifest '{path}' are missing under root '{root}' "
            f"(first: {shown}); pass the dataset's current location as root if it moved"
        )
    return NIRVISTrainSet(root, manifest["fold"], subjects, nir, vis)


def _load_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"data manifest '{path}' does not exist")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"data manifest '{path}' is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"'{path}' is not an i2i NIR-VIS manifest (expected \"format\": \"{MANIFEST_FORMAT}\")")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DatasetError(f"data manifest '{path}' has version {manifest.get('version')!r}; this i2i reads version "
                           f"{MANIFEST_VERSION}")
    absent = [key for key in ("root", "fold", "frac", "seed", "pairs", "subjects", "files") if key not in manifest]
    if absent:
        raise DatasetError(f"data manifest '{path}' lacks the key(s) {absent}")
    subjects, files = manifest["subjects"], manifest["files"]
    def path_list(group: Any) -> bool:
        return isinstance(group, list) and bool(group) and all(isinstance(f, str) for f in group)

    well_formed = isinstance(subjects, list) and isinstance(files, dict) and set(files) == set(subjects) and all(
        isinstance(files[s], dict) and set(files[s]) == {"NIR", "VIS"} and all(map(path_list, files[s].values()))
        for s in subjects
    )
    if not well_formed or manifest["fold"] not in FOLDS:
        raise DatasetError(f"data manifest '{path}': 'files' must map each of the 'subjects' to non-empty NIR and VIS "
                           "path lists, and 'fold' be 1..10 or dev")
    return manifest


def train_set_for_run(root: str | Path, run_dir: str | Path, *, fold: int | str, frac: float, seed: int,
                      pairs: Pairs = "all", resume: bool) -> NIRVISTrainSet:
    """The training set of a run: on resume, that of the run's manifest (`run_dir/data_manifest.json`) when it
    exists; otherwise load_train_set(root, fold), then select_identities(frac, seed), then (pairs "one")
    one_pair_per_identity(seed), recorded in a new manifest."""
    if pairs not in ("all", "one"):
        raise ValueError(f"pairs must be 'all' or 'one', got {pairs!r}")
    manifest = Path(run_dir) / MANIFEST_NAME
    if resume and manifest.exists():
        return read_manifest(manifest, root)
    train_set = select_identities(load_train_set(root, fold), frac, seed)
    if pairs == "one":
        train_set = one_pair_per_identity(train_set, seed)
    write_manifest(manifest, train_set, frac=frac, seed=seed, pairs=pairs, source_root=root)
    return train_set


# ----------------------------------------------------------------------------------------------------------- images
def load_face(path: str | Path, img_size: int, channels: int) -> torch.Tensor:
    """A face file -> (channels, S, S) float32 in [-1, 1]: channels 1 is grey (luma), 3 is RGB; shorter side resized
    to S, then centre-cropped, bilinear with antialiasing. Unreadable files raise DatasetError naming the path."""
    image = load_rgb(path)
    if channels == 1:
        image = image.convert("L")
    elif channels != 3:
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    image = TF.resize(image, img_size, interpolation=InterpolationMode.BILINEAR, antialias=True)
    image = TF.center_crop(image, [img_size, img_size])
    return TF.normalize(TF.to_tensor(image), [0.5] * channels, [0.5] * channels)


# ----------------------------------------------------------------------------------------------------- training stream
class NIRVISStepBatches(Dataset):
    """Map-style dataset whose item `s` is the whole training batch of step `s` (a pure function of the training set,
    seed and s).

    Draws from `numpy.random.default_rng([seed, s])`, in this order, for the main batch: B NIR images uniformly over
    all training NIR images (with replacement), for each a VIS image of its identity uniformly, then B flips; then
    the same for the second batch. The second batch's draws come after the main batch's, so the main batch does not
    depend on `second_batch`. With `shard` (rank, world size), `batch_size` is the global batch and the rank's
    contiguous part of it is loaded.
    """

    def __init__(self, train_set: NIRVISTrainSet, img_size: int, batch_size: int, seed: int, flip: bool = True,
                 second_batch: bool = True, nir_channels: int = 1, shard: tuple[int, int] = (0, 1)):
        if not len(train_set):
            raise DatasetError(f"NIR-VIS training set under '{train_set.root}' holds no identities")
        self.train_set, self.nir_files = train_set, train_set.nir_files
        self.img_size, self.batch_size, self.seed = img_size, batch_size, seed
        self.flip, self.second_batch, self.nir_channels = flip, second_batch, nir_channels
        self.part = shard_slice(batch_size, shard)

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step])
        draws = []
        for _ in range(2):
            picks = rng.integers(len(self.nir_files), size=self.batch_size)
            identities = [self.nir_files[i][0] for i in picks]
            partners = [self.train_set.vis[k][rng.integers(len(self.train_set.vis[k]))] for k in identities]
            flips = rng.random(self.batch_size) < 0.5
            part = self.part  # all draws are made for the global batch; the rank loads its part
            draws.append(([self.nir_files[i][1] for i in picks][part], partners[part], identities[part], flips[part]))
        batch = self._load(*draws[0], suffix="")
        if self.second_batch:
            batch.update(self._load(*draws[1], suffix="2"))
        return batch

    def _load(self, nir: list[Path], vis: list[Path], identities: list[int], flips: np.ndarray,
              suffix: str) -> dict[str, torch.Tensor]:
        nir_images, vis_images = [], []
        for nir_path, vis_path, flip in zip(nir, vis, flips):
            x, y = load_face(nir_path, self.img_size, self.nir_channels), load_face(vis_path, self.img_size, 3)
            if flip and self.flip:  # the same flip for both: a frontal face stays roughly aligned with its partner
                x, y = x.flip(-1), y.flip(-1)
            nir_images.append(x)
            vis_images.append(y)
        return {f"nir{suffix}": torch.stack(nir_images), f"vis{suffix}": torch.stack(vis_images),
                f"identity{suffix}": torch.tensor(identities, dtype=torch.int64)}


class NIRVISTrainStream:
    """Endless, stateless stream of NIR -> VIS training batches; iterating yields, for steps start_step,
    start_step + 1, ..., dicts of CPU tensors (B = batch_size, S = img_size):

    nir (B, C, S, S) float32 in [-1, 1]: NIR faces, C = nir_channels: 1 by default (grey, what LightCNN takes),
        3 reads the file as RGB (the grey level three times for grey NIR files);
    vis (B, 3, S, S) float32 in [-1, 1]: for each NIR face, a VIS face of the same identity (another session or
        pose: the set is not strictly paired);
    identity (B,) int64: labels into train_set.subjects;
    and, with second_batch (default), nir2, vis2, identity2: an independently drawn batch of the same shapes, the
        second input ReMix interpolates with.

    NIR images are drawn uniformly over all training NIR images (with replacement), the VIS partner uniformly among
    its identity's VIS images; with `flip`, a pair is flipped left-right (both images) with probability 0.5. The
    batch of step s depends only on (train_set, seed, s) (see NIRVISStepBatches), so resuming at step k is
    constructing with start_step=k. Workers (num_workers > 0, persistent) build whole batches in parallel. Each
    `iter()` restarts at start_step; use one iterator at a time. Under DDP give each rank its own seed.
    """

    def __init__(self, train_set: NIRVISTrainSet, img_size: int, batch_size: int, seed: int, start_step: int = 0,
                 num_workers: int = 0, flip: bool = True, second_batch: bool = True, nir_channels: int = 1,
                 shard: tuple[int, int] = (0, 1)):
        _check_int("img_size", img_size, minimum=1)
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("seed", seed, minimum=0)
        _check_int("start_step", start_step, minimum=0)
        _check_int("num_workers", num_workers, minimum=0)
        if nir_channels not in (1, 3):
            raise ValueError(f"nir_channels must be 1 (grey) or 3, got {nir_channels!r}")
        self.batches = NIRVISStepBatches(train_set, img_size, batch_size, seed, flip, second_batch, nir_channels,
                                         shard)
        self.start_step = start_step
        self.loader = DataLoader(
            self.batches, batch_size=None, sampler=_CountFrom(start_step), num_workers=num_workers,
            persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
            # its own generator: creating an iterator draws a base seed, which must not move the global RNG that
            # training checkpoints and restores (resume would stop being exact)
            generator=torch.Generator().manual_seed(seed),
        )

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of `step`, built in this process (what iteration yields at that step)."""
        return self.batches[step]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.loader)


# ---------------------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class RecognitionProtocol:
    """The recognition test of one fold: gallery (one VIS image per test subject) and probes (every NIR image of
    the test subjects). subjects: the test subject ids, sorted; identity label k is subjects[k].
    gallery_labels / probe_labels: (G,) / (P,) int64 labels aligned with gallery / probes."""

    fold: str
    subjects: tuple[str, ...]
    gallery: tuple[FaceEntry, ...]
    probes: tuple[FaceEntry, ...]

    @property
    def gallery_labels(self) -> np.ndarray:
        return self._labels(self.gallery)

    @property
    def probe_labels(self) -> np.ndarray:
        return self._labels(self.probes)

    def _labels(self, entries: tuple[FaceEntry, ...]) -> np.ndarray:
        label = {subject: k for k, subject in enumerate(self.subjects)}
        return np.array([label[entry.subject] for entry in entries], dtype=np.int64)


def load_recognition_protocol(root: str | Path, fold: int | str) -> RecognitionProtocol:
    """Read `vis_gallery_<fold>.txt` and `nir_probe_<fold>.txt`. Raises DatasetError (see read_protocol) and when a
    probe's subject has no gallery image (it could never be matched), naming the probe's protocol line."""
    fold = check_fold(fold)
    gallery = read_protocol(root, "vis", "gallery", fold)
    probes = read_protocol(root, "nir", "probe", fold)
    in_gallery = {entry.subject for entry in gallery}
    orphan = next((entry for entry in probes if entry.subject not in in_gallery), None)
    if orphan is not None:
        raise DatasetError(f"probe '{orphan.path}' (listed at {orphan.source}) is of subject '{orphan.subject}', "
                           f"who has no image in the gallery protocol of fold {fold}")
    return RecognitionProtocol(fold, tuple(sorted(in_gallery)), tuple(gallery), tuple(probes))


class FaceImages(Dataset):
    """Faces of protocol entries with their identity labels; item i -> (image (C, S, S) float32 in [-1, 1], label
    int, path str), C = channels (1 grey, 3 RGB). For evaluation: no flip, no randomness."""

    def __init__(self, entries: tuple[FaceEntry, ...] | list[FaceEntry], labels: np.ndarray, img_size: int,
                 channels: int):
        _check_int("img_size", img_size, minimum=1)
        if len(entries) != len(labels):
            raise ValueError(f"{len(entries)} entries but {len(labels)} labels")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
        self.entries, self.labels, self.img_size, self.channels = list(entries), labels, img_size, channels

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        path = self.entries[i].path
        return load_face(path, self.img_size, self.channels), int(self.labels[i]), str(path)


def eval_loaders(protocol: RecognitionProtocol, img_size: int, batch_size: int, num_workers: int = 0,
                 nir_channels: int = 1) -> tuple[DataLoader, DataLoader]:
    """(gallery, probes) loaders in protocol order: batches (images, labels (B,) int64, the B path strings); gallery
    images (B, 3, S, S) RGB, probes (B, nir_channels, S, S) grey, both in [-1, 1]."""
    _check_int("batch_size", batch_size, minimum=1)
    _check_int("num_workers", num_workers, minimum=0)
    sets = (FaceImages(protocol.gallery, protocol.gallery_labels, img_size, 3),
            FaceImages(protocol.probes, protocol.probe_labels, img_size, nir_channels))
    # own generators: iterating a DataLoader must not move the global RNG (exact resume)
    return tuple(DataLoader(s, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            generator=torch.Generator().manual_seed(0),
                            pin_memory=torch.cuda.is_available()) for s in sets)
