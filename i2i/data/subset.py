"""`--data-frac`: a deterministic, seeded, per-domain fraction of a dataset, and the manifest that records it.

The manifest lists every file a run used (root-relative POSIX paths), so a run can be reproduced or resumed on the
exact same images even if the dataset folder later gains files.
"""
from __future__ import annotations

import json
from numbers import Real
from pathlib import Path
from typing import Any

from i2i.data.afhq import ImageIndex, seeded_choice
from i2i.data.images import DatasetError
from i2i.fileio import atomic_write_text

MANIFEST_FORMAT = "i2i-data-manifest"
MANIFEST_VERSION = 1
_MANIFEST_KEYS = ("format", "version", "root", "split", "frac", "seed", "domains", "counts", "files")


def fraction_count(frac: float, count: int) -> int:
    """Images kept from a domain of `count` images: round(frac * count) (Python's round), at least 1."""
    return max(1, round(frac * count))


def select_fraction(index: ImageIndex, frac: float, seed: int) -> ImageIndex:
    """Keep fraction_count(frac, n) images of each domain, chosen by a permutation seeded with (seed, domain name)
    only, so adding or removing a domain never changes another domain's picks; for a fixed seed a smaller fraction
    picks a subset of a larger one. Files stay in index order. frac must be in (0, 1]; frac == 1 returns `index`."""
    if isinstance(frac, bool) or not isinstance(frac, Real) or not 0.0 < frac <= 1.0:
        raise ValueError(f"data fraction must be a number in (0, 1], got {frac!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"data fraction seed must be an integer >= 0, got {seed!r}")
    if frac == 1:
        return index
    groups = {
        name: seeded_choice(files, fraction_count(frac, len(files)), seed, name)
        for name, files in index.per_domain().items()
    }
    return ImageIndex.from_groups(index.root, groups)


def write_manifest(
    path: str | Path, index: ImageIndex, *, split: str, frac: float, seed: int, source_root: str | Path,
) -> Path:
    """Write the JSON manifest of `index` atomically (temp file in the same folder, fsync, rename); returns its path.

    Keys: format "i2i-data-manifest", version 1, root (source_root as given), split, frac, seed, domains, counts
    (domain -> number of files) and files (domain -> paths relative to index.root, POSIX separators).
    """
    path = Path(path)
    relative = {name: [_relative_posix(p, index.root) for p in files] for name, files in index.per_domain().items()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "root": str(source_root),
        "split": split,
        "frac": frac,
        "seed": seed,
        "domains": list(index.domains),
        "counts": {name: len(files) for name, files in relative.items()},
        "files": relative,
    }
    atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    return path


def read_manifest(path: str | Path, root: str | Path | None = None) -> ImageIndex:
    """Rebuild the ImageIndex a manifest records; `root` overrides the manifest's root (e.g. the dataset moved).

    Raises DatasetError naming the manifest when it is missing or malformed, and listing the first missing files and
    how many are missing when the listed images are not all under the root.
    """
    path = Path(path)
    manifest = _load_manifest(path)
    root = Path(manifest["root"] if root is None else root).expanduser().absolute()
    groups = {name: [root / rel for rel in manifest["files"][name]] for name in manifest["domains"]}
    missing = [p for files in groups.values() for p in files if not p.is_file()]
    if missing:
        total = sum(len(files) for files in groups.values())
        shown = ", ".join(f"'{p}'" for p in missing[:5])
        raise DatasetError(
            f"{len(missing)} of {total} files listed in manifest '{path}' are missing under root '{root}' "
            f"(first: {shown}); pass the dataset's current location as root if it moved"
        )
    return ImageIndex.from_groups(root, groups)


def manifest_domains(path: str | Path) -> list[str]:
    """The domain names a manifest records, in label order (no dataset access)."""
    return list(_load_manifest(Path(path))["domains"])


def _relative_posix(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        message = f"file '{path}' is not under the index root '{root}'; cannot record it in a manifest"
        raise ValueError(message) from None


def _load_manifest(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"data manifest '{path}' does not exist")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"data manifest '{path}' is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"'{path}' is not an i2i data manifest (expected \"format\": \"{MANIFEST_FORMAT}\")")
    if manifest.get("version") != MANIFEST_VERSION:
        raise DatasetError(
            f"data manifest '{path}' has version {manifest.get('version')!r}; this i2i reads version {MANIFEST_VERSION}"
        )
    absent = [key for key in _MANIFEST_KEYS if key not in manifest]
    if absent:
        raise DatasetError(f"data manifest '{path}' lacks the key(s) {absent}")
    files = manifest["files"]
    domains = manifest["domains"]
    if not isinstance(domains, list) or not isinstance(files, dict) or set(files) != set(domains) or not all(
        isinstance(listed, list) and all(isinstance(f, str) for f in listed) for listed in files.values()
    ):
        raise DatasetError(f"data manifest '{path}': 'files' must map each of the 'domains' {domains} to a path list")
    counts = manifest["counts"] if isinstance(manifest["counts"], dict) else {}
    wrong = {name: len(files[name]) for name in files if counts.get(name) != len(files[name])}
    if wrong:
        raise DatasetError(f"data manifest '{path}': 'counts' disagree with the listed files (listed: {wrong})")
    return manifest
