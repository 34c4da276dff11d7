"""Atomic checkpoints and the RNG state that makes `--resume` continue a run bit for bit.

Layout: RUN/checkpoints/{iteration:06d}.pt, each a dict of plain tensors and Python values (loadable with
`weights_only=True`):
    format, version, task, iteration (number of completed iterations), config,
    nets {name: state_dict}, nets_ema {name: state_dict}, optimizers {name: state_dict},
    regularizers {name: state}, rng {torch, cuda, numpy, python}
`nets_ema` is exactly the official StarGAN v2 `*_nets_ema.ckpt` content for the afhq task.
"""
from __future__ import annotations

import random
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from i2i.fileio import atomic_torch_save
from i2i.weights import safe_torch_load

FORMAT = "i2i-checkpoint"
VERSION = 1
_NAME = re.compile(r"^(\d{6,})\.pt$")


def capture_rng() -> dict:
    legacy = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [legacy[0], torch.from_numpy(legacy[1].astype(np.int64)), *map(_plain, legacy[2:])],
        "python": _plain(random.getstate()),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, *rest = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _plain(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    return x


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file and the last good checkpoint."""


def checkpoint_path(run_dir: Path, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"{iteration:06d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def remove_partial_writes(run_dir: Path) -> None:
    """Deletes the temp files of checkpoint writes that a killed process left (`atomic_write` names them
    `.NNNNNN.pt.*.tmp`); the checkpoints themselves are only ever renamed into place whole."""
    for stale in (Path(run_dir) / "checkpoints").glob(".*.pt.*.tmp"):
        stale.unlink(missing_ok=True)


def checkpoint_damage(path: Path) -> str | None:
    """Why `path` cannot be a complete checkpoint, or None: torch writes a zip archive with a CRC-32 checksum per
    record, so a truncated file (no central directory) or a changed byte is found without unpickling anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return f"not a complete archive: {error}"
    return f"checksum mismatch in record '{bad}'" if bad is not None else None


def latest_valid_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of the run that passes `checkpoint_damage`; each damaged newer one is reported on stderr
    (a crash or a full disk while writing, or a copy cut short) and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        damage = checkpoint_damage(path)
        if damage is None:
            return path
        print(f"warning: checkpoint '{path}' is damaged ({damage}); trying the one before it", file=sys.stderr)
    return None


def save_checkpoint(run_dir: Path, state: dict, keep: int) -> Path:
    """Writes RUN/checkpoints/{iteration}.pt atomically and deletes all but the newest `keep` checkpoints. A write
    that fails (disk full, no permission) raises CheckpointWriteError naming the file and the last good checkpoint,
    which is kept (old ones are only deleted after a successful write)."""
    path = checkpoint_path(run_dir, state["iteration"])
    try:
        atomic_torch_save({"format": FORMAT, "version": VERSION, **state}, path)
    except OSError as error:
        last = latest_checkpoint(run_dir)
        kept = f"the last good checkpoint is '{last}'" if last is not None else "no checkpoint was written yet"
        raise CheckpointWriteError(f"could not write checkpoint '{path}': {error.strerror or error}; {kept}") from None
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    state = safe_torch_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(
            f"'{path}' is not an i2i training checkpoint (no format '{FORMAT}'); official StarGAN v2 files "
            "are loaded with i2i.nets.stargan_v2.load_official_checkpoint"
        )
    if state["version"] > VERSION:
        raise ValueError(f"'{path}' has checkpoint version {state['version']}; this i2i reads up to {VERSION}")
    return state
