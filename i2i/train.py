"""Train a translator:  python -m i2i.train --task afhq --data-frac 0.1 --remix

Configuration: configs/<task>.yaml (the paper's setting), overridden by flags; `--config FILE` picks another preset.
Without --data and without data/<task>, the procedural dataset (generated on first use) and the demo preset are used.
Resume: `--resume auto --run-dir RUN` (latest checkpoint of RUN, or a fresh start) or `--resume RUN/checkpoints/X.pt`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from i2i.config import (
    CONFIG_DIR,
    ConfigError,
    add_config_arguments,
    build_config,
    config_from_dict,
    describe_keys,
    load_yaml,
    overrides_from_args,
    set_value,
    validate,
)
from i2i.cli import error_message
from i2i.data.images import DatasetError
from i2i.engine.checkpoint import CheckpointWriteError, latest_checkpoint, latest_valid_checkpoint, load_checkpoint
from i2i.tasks import TASKS

EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def _parser(task: str | None) -> argparse.ArgumentParser:
    """The full parser for `task`; with task None, the first pass that only finds --task/--config/--resume."""
    parser = argparse.ArgumentParser(prog="python -m i2i.train", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=task is not None)
    parser.add_argument("--task", choices=sorted(TASKS), default=task,
                        help="translation task (default: the --config preset's, else afhq)")
    parser.add_argument("--config", metavar="YAML", help="preset file (default: configs/<task>.yaml)")
    parser.add_argument("--run-dir", metavar="DIR", help="output folder (default: runs/<task>-<method>-<time>)")
    parser.add_argument("--resume", metavar="PATH|auto", help="continue a run from a checkpoint")
    if task is not None:
        add_config_arguments(parser, task)
        parser.epilog = describe_keys(task)
    return parser


def resolve_resume(resume: str, run_dir: str | None) -> tuple[Path, Path | None]:
    """(run dir, checkpoint or None for a fresh start) for --resume auto|RUN_DIR|CHECKPOINT."""
    if resume == "auto":
        if run_dir is None:
            raise ConfigError("--resume auto needs --run-dir (the run to continue)")
        return Path(run_dir), latest_valid_checkpoint(Path(run_dir))
    path = Path(resume)
    if path.is_dir():
        ckpt = latest_valid_checkpoint(path)
        if ckpt is None:
            raise ConfigError(f"--resume: '{path}' holds no checkpoints (expected {path}/checkpoints/NNNNNN.pt)")
        return Path(run_dir) if run_dir else path, ckpt
    if not path.is_file():
        raise ConfigError(f"--resume: no checkpoint at '{path}'")
    if run_dir:
        return Path(run_dir), path
    if path.parent.name == "checkpoints":  # RUN/checkpoints/NNNNNN.pt: continue RUN
        return path.parent.parent, path
    raise ConfigError(f"--resume: '{path}' is not inside a run's checkpoints/ folder; say where the run continues "
                      "with --run-dir DIR (a new folder; the configuration is read from the checkpoint)")


def saved_config(run_dir: Path, checkpoint: Path) -> dict:
    """The configuration a resumed run continues with: RUN/config.yaml, else the one stored in the checkpoint (a
    copied file without its folder); a file that is not an i2i checkpoint is refused naming it."""
    if (run_dir / "config.yaml").exists() and checkpoint.parent == run_dir / "checkpoints":
        return load_yaml(run_dir / "config.yaml")
    try:
        state = load_checkpoint(checkpoint)
    except (ValueError, RuntimeError, OSError) as error:  # incl. UntrustedCheckpointError: no pickle is run here
        raise ConfigError(f"--resume: '{checkpoint}' is not an i2i training checkpoint "
                          f"({str(error).splitlines()[0]})") from None
    if not isinstance(state.get("config"), dict):
        raise ConfigError(f"--resume: '{checkpoint}' holds no configuration (not written by python -m i2i.train)")
    return state["config"]


def resolve(argv: list[str] | None):
    """Parses the command line into (config, run dir, checkpoint to resume from or None)."""
    known, _ = _parser(None).parse_known_args(argv)
    saved = None
    if known.resume:
        run_dir, ckpt = resolve_resume(known.resume, known.run_dir)
        if ckpt is not None:
            saved = saved_config(run_dir, ckpt)
    preset_task = load_yaml(known.config).get("task") if known.config and saved is None else None
    task = known.task or (saved or {}).get("task") or preset_task or "afhq"
    args = _parser(task).parse_args(argv)
    overrides = overrides_from_args(args)
    if saved is not None:
        if saved["task"] != task:
            raise ConfigError(f"--task {task} but the run to resume is a '{saved['task']}' run")
        cfg = config_from_dict(saved)
        for key, value in overrides.items():
            set_value(cfg, key, value)
        validate(cfg)
        return cfg, run_dir, ckpt
    preset = Path(args.config) if args.config else CONFIG_DIR / f"{task}.yaml"
    if args.config is None and "data.root" not in overrides:
        root = load_yaml(preset).get("data", {}).get("root")
        demo = CONFIG_DIR / f"{task}_demo.yaml"
        if root and not Path(root).exists() and demo.exists():
            demo_root = load_yaml(demo).get("data", {}).get("root")
            print(f"note: no --data given and '{root}' does not exist; using the procedural dataset "
                  f"'{demo_root}' (generated on first use) with the demo preset {demo.relative_to(CONFIG_DIR.parent)}",
                  file=sys.stderr)
            preset = demo
    cfg = build_config(task, preset, overrides)
    run_dir = Path(args.run_dir) if args.run_dir else Path("runs") / f"{task}-{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    if known.resume:  # --resume auto on a run without checkpoints: a fresh start in that folder
        print(f"note: '{run_dir}' has no checkpoint yet; starting a new run there", file=sys.stderr)
    elif latest_checkpoint(run_dir) is not None:
        raise ConfigError(f"'{run_dir}' already holds a run with checkpoints; continue it with --resume auto "
                          "--run-dir DIR, or choose another --run-dir")
    return cfg, run_dir, None


def main(argv: list[str] | None = None) -> int:
    from i2i.engine.trainer import Trainer, TrainingDiverged

    run_dir: Path | None = None
    trainer = None
    created = False
    try:
        cfg, run_dir, ckpt = resolve(argv)
        created = not run_dir.exists()
        trainer = Trainer(cfg, run_dir)
        print(f"run: {run_dir}  task: {cfg.task}  method: {cfg.method}  device: {trainer.device}"
              + (f"  resuming from: {ckpt}" if ckpt else ""), file=sys.stderr)
        final = trainer.fit(resume_from=ckpt)
    except (ConfigError, DatasetError, FileNotFoundError, TrainingDiverged, CheckpointWriteError) as error:
        if created and (trainer is None or trainer.iteration == 0):  # failed before its first iteration: no husk
            shutil.rmtree(run_dir, ignore_errors=True)
        print(f"error: {error_message(error)}", file=sys.stderr)
        return 2 if isinstance(error, (ConfigError, DatasetError, FileNotFoundError)) else 1
    if trainer.stop_requested:
        print(f"stopped by {trainer.stop_requested} at iteration {trainer.iteration}; "
              f"continue with: python -m i2i.train --resume auto --run-dir {run_dir}", file=sys.stderr)
    print(f"checkpoint: {final}\nsamples: {run_dir / 'samples'}", file=sys.stderr)
    return EXIT_SIGNAL.get(trainer.stop_requested, 0)


if __name__ == "__main__":
    sys.exit(main())
