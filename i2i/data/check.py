"""Fail fast on bad data: every training file of a run is read once before the first iteration.

A truncated or zero-byte image, a wrong extension, a label map with ids outside the label set or a protocol line
pointing at a missing file then stops the run at start-up, naming the file, instead of hours into training. Each task
says what to read (`Task.data_checks()`: a file and the loader that validates it); files that passed are remembered
by path, size and modification time (`~/.cache/i2i/checked_files.json`), so a second run on the same data reads
nothing again. With `--skip-bad-images` the run trains without the bad files instead, and its data manifest lists them.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from i2i.data.images import DatasetError
from i2i.fileio import atomic_write_text

CACHE = Path.home() / ".cache" / "i2i" / "checked_files.json"
Check = tuple[Path, Callable[[Path], object]]  # (file, loader raising DatasetError for a bad file)


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def _read_cache(cache: Path) -> dict[str, list[int]]:
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}


def find_bad_files(checks: Sequence[Check], cache: Path | None = None, workers: int | None = None,
                   progress: bool = False) -> tuple[int, dict[Path, str]]:
    """Reads every file of `checks` not already known good (in parallel); returns (how many were read, {bad file:
    its DatasetError message}). Good files are added to `cache` (default CACHE); bad ones never are."""
    cache = cache or CACHE
    known = _read_cache(cache)
    todo = [(path, load) for path, load in checks if (stamp := _stamp(path)) is None or known.get(str(path)) != stamp]
    if not todo:
        return 0, {}

    def run(check: Check) -> str | None:
        path, load = check
        try:
            load(path)
        except DatasetError as error:
            return str(error)
        return None

    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(run, todo), total=len(todo), desc="checking training files",
                            disable=not progress or len(todo) < 1000, unit="file"))
    good = {str(path): _stamp(path) for (path, _), message in zip(todo, results) if message is None}
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache, json.dumps({**_read_cache(cache), **good}))
    return len(todo), {path: message for (path, _), message in zip(todo, results) if message is not None}


def bad_files_error(bad: dict[Path, str], total: int) -> DatasetError:
    """One line: the first bad file's message, how many more there are, and the way to train without them."""
    first = next(iter(bad.values()))
    more = f" ({len(bad) - 1} more bad files among the {total} training files)" if len(bad) > 1 else ""
    return DatasetError(f"{first}{more}; fix or remove the file(s), or pass --skip-bad-images to train without them")


def check_files(checks: Sequence[Check], cache: Path | None = None, workers: int | None = None,
                progress: bool = False) -> int:
    """find_bad_files, raising bad_files_error when any file is bad; returns how many files were read."""
    read, bad = find_bad_files(checks, cache, workers, progress)
    if bad:
        raise bad_files_error(bad, len(checks))
    return read


def record_skipped(manifest: Path, earlier: list[dict], bad: dict[Path, str]) -> None:
    """Lists the skipped files and why in the run's data manifest (key `skipped`: [{"file", "error"}, ...]): those
    of `earlier` (read before the task rewrote the manifest) and those of `bad`."""
    record = json.loads(manifest.read_text())
    known = {entry["file"] for entry in earlier}
    record["skipped"] = earlier + [{"file": str(path), "error": message} for path, message in bad.items()
                                   if str(path) not in known]
    atomic_write_text(manifest, json.dumps(record, indent=1) + "\n")
