"""Files are handled safely: no pickle from a file runs code unless the user says the file is trusted (resume,
--init-from, every torch.load in the code base goes through the tensors-only loader), and a checkpoint that cannot be
written (disk full, no permission) is named while the last good one is kept."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from i2i.train import main as train_main
from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


class _RunsCode:
    """Unpickling this runs a shell command (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def _malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"format": "i2i-checkpoint", "version": 1, "task": "afhq", "config": {}, "payload": _RunsCode(marker)},
               path)
    return path


def test_resume_from_a_malicious_checkpoint_runs_nothing_and_says_so(tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = _malicious_checkpoint(tmp_path / "000100.pt", marker)
    assert train_main(["--resume", str(bad), "--run-dir", str(tmp_path / "run")]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def test_init_from_a_malicious_file_runs_nothing_without_trust(tiny_afhq, tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = _malicious_checkpoint(tmp_path / "weights.ckpt", marker)
    args = ["--data", str(tiny_afhq), "--run-dir", str(tmp_path / "run"), "--init-from", str(bad)]
    for key, value in TINY.items():
        args += [f"--{key}", str(value)]
    assert train_main(args) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and "Traceback" not in err


def test_every_torch_load_goes_through_the_tensors_only_loader():
    offenders = []
    for folder in ("i2i", "evaluators", "apps"):
        for path in (REPO / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if re.search(r"\btorch\.load\(", line) and path.name != "weights.py":
                    offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert offenders == [], f"torch.load outside i2i/weights.py (use safe_torch_load): {offenders}"
    source = (REPO / "i2i" / "weights.py").read_text()
    assert source.count("weights_only=False") == 1 and "if not trust:" in source


@pytest.mark.parametrize("code", ["ENOSPC", "EACCES"], ids=["disk full", "no permission"])
def test_a_failed_checkpoint_write_names_the_file_and_keeps_the_last_good_one(tiny_afhq, tmp_path, capsys, monkeypatch,
                                                                              code):
    """The disk fills up (or the folder turns read-only: as root, chmod cannot provoke it) at the second save."""
    import errno

    import i2i.engine.checkpoint as checkpoint

    real_save, calls, number = checkpoint.atomic_torch_save, [], getattr(errno, code)

    def fails(obj, path):
        calls.append(path)
        if len(calls) > 1:
            raise (PermissionError if code == "EACCES" else OSError)(number, os.strerror(number), str(path))
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "atomic_torch_save", fails)
    run = tmp_path / "run"
    args = ["--data", str(tiny_afhq), "--run-dir", str(run)]
    for key, value in {**TINY, "train.total_iters": 4, "train.save_every": 2}.items():
        args += [f"--{key}", str(value)]
    assert train_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "000004.pt" in err and os.strerror(number) in err and "000002.pt" in err
    assert checkpoint.load_checkpoint(run / "checkpoints" / "000002.pt")["iteration"] == 2
