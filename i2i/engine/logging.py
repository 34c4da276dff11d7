"""Run logs: one JSON object per logged iteration in RUN/log.jsonl, mirrored to TensorBoard when it is installed.

The file is strict JSON (any parser reads it): a non-finite value, such as the loss of an update skipped under float16
loss scaling, is written as the string "Infinity", "-Infinity" or "NaN"; `read_log` gives it back as a float."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from i2i.fileio import atomic_write_text


class RunLogger:
    """Appends to RUN/log.jsonl. `start`: the iteration the run continues from; records after it (written by a
    process killed after its last checkpoint, so repeated by this one) and a torn last line are dropped first."""

    def __init__(self, run_dir: Path, enabled: bool = True, start: int = 0):
        self.enabled = enabled
        self.path = Path(run_dir) / "log.jsonl"
        if enabled and self.path.exists():
            _truncate_after(self.path, start)
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, iteration: int, values: dict[str, float], **extra) -> None:
        if not self.enabled:
            return
        record = {"iter": iteration, "time": round(time.time(), 3), **extra,
                  **{k: v if math.isfinite(v) else _NON_FINITE[str(v)] for k, v in values.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


_NON_FINITE = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}


def read_log(run_dir: Path) -> list[dict]:
    """RUN/log.jsonl's records, non-finite values as floats again ([] when there is no log)."""
    path = Path(run_dir) / "log.jsonl"
    if not path.exists():
        return []
    back = set(_NON_FINITE.values())
    return [{k: float(v) if isinstance(v, str) and v in back else v for k, v in json.loads(line).items()}
            for line in path.read_text().splitlines() if line.strip()]


def _truncate_after(path: Path, start: int) -> None:
    kept, dropped = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            dropped = True
            continue
        if record.get("iter", 0) <= start:
            kept.append(line)
        else:
            dropped = True
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
