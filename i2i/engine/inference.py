"""A finished run's inference nets, for any task: what export, translation and evaluation start from.

    run = load_run("runs/demo")          # latest checkpoint; the EMA copy of every net the task averages
    run.task.export_graphs(run.nets)

The task is rebuilt from the configuration saved in the checkpoint and `Task.restore(run_dir)` (domain names and
the like from the run folder), so the dataset need not be present.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from i2i.config import Config, config_from_dict
from i2i.engine.checkpoint import latest_checkpoint, load_checkpoint
from i2i.tasks import task_class
from i2i.tasks.base import Task


class InferenceRun(NamedTuple):
    task: Task
    nets: dict[str, nn.Module]  # eval mode, frozen, on the requested device
    cfg: Config
    iteration: int
    checkpoint: Path


def resolve_checkpoint(run_dir: str | Path, checkpoint: str | Path | None = None) -> Path:
    """`checkpoint`, or the latest `RUN/checkpoints/NNNNNN.pt`; FileNotFoundError naming what is missing."""
    run_dir = Path(run_dir)
    if checkpoint is not None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"checkpoint not found: '{checkpoint}'")
        return Path(checkpoint)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: '{run_dir}'")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in '{run_dir / 'checkpoints'}' (expected NNNNNN.pt files written by "
                                "python -m i2i.train)")
    return path


def frozen(nets: dict[str, nn.Module], device: str | torch.device) -> dict[str, nn.Module]:
    return {name: net.eval().requires_grad_(False).to(device) for name, net in nets.items()}


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None,
             device: str | torch.device = "cpu") -> InferenceRun:
    """The inference nets of a run's checkpoint: the EMA copy of each net the task averages, the trained net
    otherwise (the critic included, for programs that need it)."""
    run_dir = Path(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path)
    cfg = config_from_dict(state["config"])
    task = task_class(cfg.task)(cfg, torch.device(device))
    task.restore(run_dir)
    nets = task.build()
    for name, net in nets.items():
        source = state["nets_ema"] if name in state["nets_ema"] else state["nets"]
        if name not in source:
            raise ValueError(f"'{path}' holds no weights for '{name}' (it has {sorted(state['nets'])})")
        net.load_state_dict(source[name])
    return InferenceRun(task, frozen(nets, device), cfg, int(state["iteration"]), path)
