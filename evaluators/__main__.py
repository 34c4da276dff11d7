"""Command line of the evaluators: the AFHQ, Cityscapes and NIR-VIS protocols and the papers' metric tables.

    python -m evaluators afhq --run runs/x                              # RUN/eval/afhq.json, latest checkpoint
    python -m evaluators afhq --run runs/x --backbone proxy --max-per-domain 50 --mode latent
    python -m evaluators afhq --checkpoint 100000_nets_ema.ckpt --data data/afhq --out eval/official.json
    python -m evaluators cityscapes --run runs/c --segmenter proxy --backbone proxy   # RUN/eval/cityscapes.json
    python -m evaluators train-segmenter --data data/synthetic_cityscapes            # the proxy segmenter (cached)
    python -m evaluators nirvis --run runs/n --fold 1                    # Rank-1, VR@FAR -> RUN/eval/nirvis.json + ROC
    python -m evaluators table runs/remix-* runs/baseline-* --format md  # Table 1: mean ± std over seeds per method

User errors (missing files or weights, bad values) print one `error:` message and exit with status 2.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaluators import tables
from evaluators.fid import BACKBONES, FeatureBackbone, build_backbone
from evaluators.lpips import LPIPS, build_lpips
from evaluators.protocols import (MODES, OFFICIAL_BATCH_SIZE, afhq_result, evaluate_afhq, format_summary, load_official,
                                  load_run, write_result)
from evaluators.content import read_poses, train_pose_regressor
from evaluators.protocols.cityscapes import add_commands as add_cityscapes_commands
from evaluators.protocols.cityscapes import run_command as run_cityscapes_command
from evaluators.protocols.nirvis import add_commands as add_nirvis_commands
from evaluators.protocols.nirvis import run_command as run_nirvis_command
from evaluators.proxy import train_proxy
from i2i.data.afhq import scan_split
from i2i.engine.trainer import select_device
from i2i.weights import MissingWeightsError, UntrustedCheckpointError, find_weights

USER_ERRORS = (ValueError, FileNotFoundError, UntrustedCheckpointError)
FID_WEIGHTS = {"torchvision": "inception_v3_torchvision", "pytorch-fid": "fid_inception"}  # registry entries


def default_cache_dir() -> Path:
    """Shared by all runs: real statistics are keyed by backbone and file list, proxies by their training data."""
    return Path.home() / ".cache" / "i2i" / "eval"


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"'{text}': expected a comma-separated subset of {','.join(MODES)}")
    return modes


def _integer(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evaluators", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    afhq = commands.add_parser("afhq", help="StarGAN v2's AFHQ protocol (FID, LPIPS; latent and reference)",
                               allow_abbrev=False)
    what = afhq.add_argument_group("what to evaluate (--run, --checkpoint or both)")
    what.add_argument("--run", type=Path, metavar="RUN", help="a run folder of python -m i2i.train (its EMA nets)")
    what.add_argument("--checkpoint", type=Path, metavar="FILE",
                      help="with --run: one of its checkpoints (default: the latest); alone: an official-format "
                           "*_nets_ema.ckpt (needs --data) or RUN/checkpoints/NNNNNN.pt")
    what.add_argument("--data", type=Path, metavar="DIR",
                      help="dataset root ROOT/{train,val}/<domain>/* (default: the run's)")
    what.add_argument("--trust-checkpoint", action="store_true",
                      help="allow a full unpickle of an official-format checkpoint that holds Python objects (only "
                           "for files from a trusted source)")
    how = afhq.add_argument_group("protocol")
    how.add_argument("--mode", type=_modes, default=MODES, metavar="MODES", help="latent,reference (default: both)")
    how.add_argument("--num-outs", type=_positive, default=10, metavar="K",
                     help="outputs per source image (default: 10)")
    how.add_argument("--backbone", "--fid-backbone", choices=BACKBONES, default="torchvision",
                     help="FID features: torchvision (the paper's, default), pytorch-fid, or proxy (a domain "
                          "classifier trained on the run's training images; for data without published weights)")
    how.add_argument("--allow-random-lpips", action="store_true",
                     help="if the AlexNet file is missing, use random LPIPS weights (results labelled uncalibrated)")
    how.add_argument("--max-per-domain", type=_positive, metavar="N",
                     help="at most N val and N training images per domain (quick runs; not comparable with full "
                          "evaluations)")
    how.add_argument("--seed", type=int, default=0, metavar="N",
                     help="evaluation seed (latent codes, shuffles; default: 0)")
    how.add_argument("--proxy-steps", type=_positive, default=400, metavar="N",
                     help="training steps of the proxy backbone (default: 400)")
    how.add_argument("--pose-steps", type=_positive, default=800, metavar="N",
                     help="training steps of the pose regressor of the content metric (default: 800)")
    how.add_argument("--no-proxy-metrics", action="store_true",
                     help="skip the † proxy metrics: target-domain accuracy (a domain classifier trained on the data "
                          "set) and content preservation (a pose regressor; only on data with poses.json)")
    run = afhq.add_argument_group("execution and output")
    run.add_argument("--out", type=Path, metavar="FILE",
                     help="result file (default: RUN/eval/afhq.json, or eval/afhq.json beside the checkpoint)")
    run.add_argument("--device", default="auto", metavar="DEV", help="auto | cpu | cuda[:i] | mps (default: auto)")
    run.add_argument("--batch-size", type=_positive, default=OFFICIAL_BATCH_SIZE, metavar="N",
                     help=f"source images per batch (default: the official {OFFICIAL_BATCH_SIZE}; LPIPS is "
                          "averaged per batch)")
    run.add_argument("--workers", type=_non_negative, default=0, metavar="N",
                     help="image-loading worker processes (default: 0)")
    run.add_argument("--cache-dir", type=Path, metavar="DIR",
                     help="cache of real statistics and proxy backbones (default: ~/.cache/i2i/eval)")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_cityscapes_commands(commands)
    add_nirvis_commands(commands)
    commands.add_parser("table", add_help=False, help="the papers' tables from result files: table RUN... "
                        "[--format md|csv|json] [--group-by method] (see: table --help)")
    return parser


# ----------------------------------------------------------------------------------------------------------------------
# afhq


@dataclass
class _Model:
    """The nets to evaluate and what the result records about them."""

    nets: dict[str, torch.nn.Module]
    img_size: int
    latent_dim: int
    domains: list[str]
    data_root: Path
    header: dict[str, Any]
    default_out: Path


def _iteration_from_name(path: Path) -> int | None:
    match = re.match(r"^(\d+)_nets", path.name)
    return int(match.group(1)) if match else None


def _run_of(checkpoint: Path | None) -> Path | None:
    """The run folder of a `RUN/checkpoints/NNNNNN.pt` file; None for anything else (an official-format file)."""
    if checkpoint is None or checkpoint.parent.name != "checkpoints":
        return None
    run_dir = checkpoint.parent.parent
    return run_dir if (run_dir / "data_manifest.json").is_file() else None


def _load_model(args: argparse.Namespace, device: torch.device) -> _Model:
    run_dir = args.run or _run_of(args.checkpoint)
    if run_dir is not None:
        run = load_run(run_dir, args.checkpoint, device=device, data_root=args.data)
        cfg = run.cfg
        header = {"run": str(run_dir), "method": cfg.method, "seed": cfg.train.seed, "data_frac": cfg.data.frac,
                  "iteration": run.iteration, "checkpoint": str(run.checkpoint)}
        return _Model(run.nets, cfg.data.img_size, cfg.model.latent_dim, run.domains, run.data_root, header,
                      run_dir / "eval" / "afhq.json")
    if args.checkpoint is None:
        raise ValueError("nothing to evaluate: pass --run RUN (a training run) or --checkpoint FILE --data DIR")
    if args.data is None:
        raise ValueError(f"--checkpoint '{args.checkpoint}' needs --data DIR, the AFHQ-layout dataset to evaluate on")
    val = scan_split(args.data, "val")
    nets = load_official(args.checkpoint, num_domains=len(val.domains), trust=args.trust_checkpoint, device=device)
    # An official checkpoint is StarGAN v2 trained on the full data set.
    header = {"run": str(args.checkpoint), "method": "official", "seed": None, "data_frac": 1.0,
              "iteration": _iteration_from_name(args.checkpoint), "checkpoint": str(args.checkpoint)}
    return _Model(nets, nets["generator"].img_size, nets["mapping_network"].latent_dim, list(val.domains),
                  val.root, header, args.checkpoint.parent / "eval" / "afhq.json")


def _lpips(args: argparse.Namespace, device: torch.device) -> tuple[LPIPS, str]:
    try:
        model = build_lpips(allow_random=args.allow_random_lpips, device=device)
    except MissingWeightsError as error:
        raise MissingWeightsError(f"{error}\nTo run without it (demo, tests), pass --allow-random-lpips: LPIPS then "
                                  "uses random AlexNet weights and the results are labelled uncalibrated.") from None
    return model, str(find_weights("alexnet")) if model.calibrated else "random AlexNet weights (uncalibrated)"


def _backbone(args: argparse.Namespace, model: _Model, device: torch.device,
              cache_dir: Path) -> tuple[FeatureBackbone, str]:
    if args.backbone == "proxy":
        proxy = _proxy_classifier(args, model, device, cache_dir)
        return proxy, str(proxy.source)
    try:
        backbone = build_backbone(args.backbone, image_size=model.img_size, device=device)
    except MissingWeightsError as error:
        raise MissingWeightsError(f"{error}\nFor data without published Inception weights, use --backbone proxy (a "
                                  "domain classifier trained on the data set's training images; its numbers compare only "
                                  "with runs scored by the same proxy).") from None
    return backbone, str(find_weights(FID_WEIGHTS[args.backbone]))


def _proxy_classifier(args: argparse.Namespace, model: _Model, device: torch.device, cache_dir: Path):
    # trained on the data set's full training split, not a run's --data-frac subset: runs with different
    # fractions or seeds are then scored in one feature space and stay comparable
    index = scan_split(model.data_root, "train")
    return train_proxy(index.files, index.labels, cache_dir=cache_dir / "proxy", steps=args.proxy_steps,
                       progress=not args.no_progress, device=device)


def _proxy_metrics(args: argparse.Namespace, model: _Model, device: torch.device, cache_dir: Path, backbone):
    """(classifier, pose regressor or None) for the † metrics; (None, None) with --no-proxy-metrics."""
    if args.no_proxy_metrics:
        return None, None
    classifier = backbone if args.backbone == "proxy" else _proxy_classifier(args, model, device, cache_dir)
    index = scan_split(model.data_root, "train")
    poses = read_poses(model.data_root, index.files)
    regressor = None
    if poses is not None:
        regressor = train_pose_regressor(index.files, poses, cache_dir=cache_dir / "proxy", image_size=model.img_size,
                                         steps=args.pose_steps, progress=not args.no_progress, device=device)
    return classifier.classify, regressor


def _afhq(args: argparse.Namespace) -> int:
    device = select_device(args.device)
    cache_dir = args.cache_dir or default_cache_dir()
    model = _load_model(args, device)
    lpips_model, lpips_weights = _lpips(args, device)
    backbone, fid_weights = _backbone(args, model, device, cache_dir)
    classifier, pose_regressor = _proxy_metrics(args, model, device, cache_dir, backbone)
    evaluation = evaluate_afhq(model.nets, model.data_root, img_size=model.img_size, latent_dim=model.latent_dim,
                               backbone=backbone, lpips_model=lpips_model, modes=args.mode, num_outs=args.num_outs,
                               batch_size=args.batch_size, seed=args.seed, device=device,
                               progress=not args.no_progress, max_per_domain=args.max_per_domain,
                               cache_dir=cache_dir / "stats", num_workers=args.workers, domains=model.domains,
                               classifier=classifier, pose_regressor=pose_regressor)
    result = afhq_result(evaluation, **model.header, data_root=str(model.data_root),
                         weights={"fid": fid_weights, "lpips": lpips_weights})
    out = write_result(result, args.out or model.default_out)
    print(format_summary(result))
    print(f"written: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["table"]:
            return tables.main(argv[1:], prog="python -m evaluators table")
        args = _parser().parse_args(argv)
        if args.command in ("cityscapes", "train-segmenter"):
            return run_cityscapes_command(args)
        if args.command == "nirvis":
            return run_nirvis_command(args)
        return _afhq(args)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
