"""End to end: `python -m i2i.train` on a generated mini dataset — outputs, resume, Ctrl-C, clear errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY

REPO = Path(__file__).resolve().parents[1]


def tiny_args(data: Path, run_dir: Path, **overrides) -> list[str]:
    args = ["--data", str(data), "--run-dir", str(run_dir)]
    for key, value in {**TINY, **overrides}.items():
        args += [f"--{key}", str(value)]
    return args


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "i2i.train", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_cli_trains_writes_outputs_and_resumes(tiny_afhq, tmp_path):
    run = tmp_path / "run"
    done = run_cli(tiny_args(tiny_afhq, run, **{"train.total_iters": 3}) + ["--remix", "--data-frac", "0.5"])
    assert done.returncode == 0, done.stderr
    assert (run / "checkpoints" / "000003.pt").exists()
    assert {p.name for p in (run / "samples").iterdir()} >= {"000002_latent.png", "000002_reference.png",
                                                             "000003_latent.png", "000003_reference.png"}
    manifest = json.loads((run / "data_manifest.json").read_text())
    assert manifest["frac"] == 0.5 and manifest["counts"] == {"cat": 4, "dog": 4, "wild": 4}
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3] and "G/latent_content" in log[0]
    assert "method: remix" in done.stderr

    resumed = run_cli(["--resume", "auto", "--run-dir", str(run), "--iters", "5"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and (run / "checkpoints" / "000005.pt").exists()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_exits_130(tiny_afhq, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "i2i.train",
                             *tiny_args(tiny_afhq, run, **{"train.total_iters": 10_000, "train.save_every": 10_000})],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    saved = sorted((run / "checkpoints").glob("*.pt"))
    assert len(saved) == 1 and "stopped by SIGINT" in err
    assert int(saved[0].stem) == max(json.loads(line)["iter"] for line in log.read_text().splitlines())


def _wait_for(condition, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the kill point"
        assert time.time() < deadline, "kill point not reached in time"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_auto_gives_the_uninterrupted_weights(tiny_afhq, tmp_path):
    """kill -9 between checkpoints (log lines past the last checkpoint), in the middle of a checkpoint write (its
    temp file left behind) and during start-up; `--resume auto` each time; the end equals one uninterrupted run."""
    settings = {"train.total_iters": 30, "train.save_every": 10, "train.sample_every": 1000}
    reference = run_cli(tiny_args(tiny_afhq, tmp_path / "reference", **settings))
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "killed"
    command = [sys.executable, "-m", "i2i.train", "--resume", "auto", *tiny_args(tiny_afhq, run, **settings)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    checkpoints, log = run / "checkpoints", run / "log.jsonl"

    def logged() -> int:
        return max((json.loads(line)["iter"] for line in log.read_text().splitlines()[:-1]), default=0) \
            if log.exists() else 0

    kill_points = [
        lambda: (checkpoints / "000010.pt").exists() and logged() > 10,  # past a checkpoint
        lambda: any(checkpoints.glob(".*.tmp")) or (checkpoints / "000020.pt").exists(),  # while writing 20
        lambda: False,  # start-up: killed after a fixed delay below
    ]
    for point, condition in enumerate(kill_points):
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if point == 2:
            time.sleep(1.0)
        else:
            _wait_for(condition, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if point == 1 and not any(checkpoints.glob(".*.tmp")):
            # the write was too quick to catch: leave what a kill in its middle leaves (a partial temp file)
            (checkpoints / "000020.pt").unlink(missing_ok=True)
            partial = (checkpoints / "000010.pt").read_bytes()
            (checkpoints / ".000020.pt.killed.tmp").write_bytes(partial[: len(partial) // 2])
    finished = run_cli(command[3:])
    assert finished.returncode == 0, finished.stderr

    ours = torch.load(checkpoints / "000030.pt", weights_only=True)
    theirs = torch.load(tmp_path / "reference" / "checkpoints" / "000030.pt", weights_only=True)
    for group in ("nets", "nets_ema"):
        for net, state in theirs[group].items():
            for key, value in state.items():
                assert torch.equal(ours[group][net][key], value), f"{group}/{net}/{key} differs after the kills"
    assert not list(checkpoints.glob(".*.tmp"))  # partial writes cleaned up on resume
    assert [json.loads(line)["iter"] for line in log.read_text().splitlines()] == list(range(1, 31))


def test_missing_dataset_and_bad_flag_give_clear_errors(tmp_path):
    missing = run_cli(["--data", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "run"), "--iters", "1"])
    assert missing.returncode == 2 and "nowhere" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "run").exists()  # a run that failed before its first iteration leaves no folder
    bad = run_cli(["--data", str(tmp_path), "--mixer", "blend", "--run-dir", str(tmp_path / "run")])
    assert bad.returncode == 2 and "none, mixup, cutmix, srmix" in bad.stderr and "Traceback" not in bad.stderr
    auto = run_cli(["--resume", "auto"])
    assert auto.returncode == 2 and "--resume auto needs --run-dir" in auto.stderr


def test_the_task_comes_from_the_preset(tmp_path):
    from i2i.config import CONFIG_DIR
    from i2i.train import resolve

    for task in ("cityscapes", "nirvis"):
        cfg, run_dir, checkpoint = resolve(["--config", str(CONFIG_DIR / f"{task}_demo.yaml"),
                                            "--run-dir", str(tmp_path / task)])
        assert cfg.task == task and checkpoint is None


@pytest.mark.slow
def test_resume_from_a_copied_checkpoint_continues_it_or_names_the_bad_file(tiny_afhq, tmp_path):
    run = tmp_path / "run"
    assert run_cli(tiny_args(tiny_afhq, run, **{"train.total_iters": 2})).returncode == 0
    copied = tmp_path / "copied.pt"
    copied.write_bytes((run / "checkpoints" / "000002.pt").read_bytes())
    lonely = run_cli(["--resume", str(copied)])
    assert lonely.returncode == 2 and "--run-dir" in lonely.stderr and "Traceback" not in lonely.stderr
    resumed = run_cli(["--resume", str(copied), "--run-dir", str(tmp_path / "moved"), "--iters", "3"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and (tmp_path / "moved" / "checkpoints" / "000003.pt").exists()
    log = [json.loads(line) for line in (tmp_path / "moved" / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [3]  # iterations 1-2 are the checkpoint's: none trained again
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    refused = run_cli(["--resume", str(not_a_checkpoint), "--run-dir", str(tmp_path / "x")])
    assert refused.returncode == 2 and "notes.pt' is not an i2i training checkpoint" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_resume_auto_skips_a_damaged_latest_checkpoint(tiny_afhq, tmp_path, damage):
    run = tmp_path / "run"
    assert run_cli(tiny_args(tiny_afhq, run, **{"train.total_iters": 4, "train.save_every": 2})).returncode == 0
    latest = run / "checkpoints" / "000004.pt"
    data = bytearray(latest.read_bytes())
    if damage == "truncated":  # a crash or a full disk while copying: the archive's end is missing
        data = data[: len(data) // 2]
    else:  # a changed byte inside a tensor record
        data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    resumed = run_cli(["--resume", "auto", "--run-dir", str(run), "--iters", "5"])
    assert resumed.returncode == 0, resumed.stderr
    assert "000004.pt' is damaged" in resumed.stderr and "resuming from" in resumed.stderr
    assert "000002.pt" in resumed.stderr.split("resuming from")[1].splitlines()[0]
    log = [json.loads(line)["iter"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5]  # 3-4 trained again from the good checkpoint; the log keeps each iteration once
