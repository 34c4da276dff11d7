"""SPADE's Cityscapes protocol (what the ReMix paper's Table 3 reports): generate a scene from every validation label
map, segment it, score the segmentation against the map; FID of the generated scenes against the real validation
photos.

- Segmenter: DRN-D-105 trained on Cityscapes (the official `drn-d-105_ms_cityscapes.pth`), or a proxy DRN trained on
  the data set's own training photos (`evaluators.proxy_segmenter.train_segmenter`, †) where those weights do not apply
  (the procedural set). Every result names the segmenter.
- mIoU over the 19 trainId classes and pixel accuracy in both conventions (all pixels in the denominator — SPADE's —
  and labelled pixels only); resolution convention "full" (scenes upsampled to the label maps' resolution) or
  "output" (label maps downsampled to the scenes'), recorded.
- The same segmenter on the real validation photos gives the "real data" row (what a perfect generator would score).
- FID: torchvision / pytorch-fid Inception, or `proxy`: the pooled features of the proxy segmenter's trunk (†).
  Fakes are rounded to 8 bits first, as saved PNGs would be.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from evaluators.fid import FeatureBackbone, build_backbone, extract_features, fid_from_features
from evaluators.nets.drn import normalize
from evaluators.protocols.afhq import quantize_8bit, write_result
from evaluators.proxy_segmenter import train_segmenter
from evaluators.segmentation import Segmenter, build_segmenter, evaluate_segmentation
from evaluators.tables import FORMAT, VERSION, validate_result
from i2i.data.cityscapes import CityscapesIndex, eval_loader, load_label_ids, scan_cityscapes
from i2i.engine.inference import load_run
from i2i.engine.trainer import select_device


class SegmenterBackbone(FeatureBackbone):
    """FID features from a segmenter: its trunk's output, average-pooled (N, C). Named "proxy" (†) for a proxy
    segmenter; it is a feature space trained on the data set itself, comparable only between runs scored with it."""

    def __init__(self, segmenter: Segmenter) -> None:
        super().__init__(calibrated=False)
        self.name = "proxy" if segmenter.name == "proxy" else f"segmenter-{segmenter.name}"
        self.segmenter = segmenter
        self.dim = segmenter.net.seg.in_channels

    def _features(self, images01: Tensor) -> Tensor:
        s = self.segmenter
        if s.input_size is not None and tuple(images01.shape[-2:]) != s.input_size:
            images01 = F.interpolate(images01, size=s.input_size, mode="bilinear", align_corners=False,
                                     antialias=True)
        return s.net.base(normalize(images01, s.mean, s.std)).mean(dim=(2, 3))


@torch.no_grad()
def evaluate_cityscapes(generator: nn.Module, val_index: CityscapesIndex, *, size: tuple[int, int],
                        segmenter: Segmenter, backbone: FeatureBackbone, resolution: str = "output",
                        batch_size: int = 8, device: str | torch.device = "cpu", max_images: int | None = None,
                        progress: bool = True, score_real: bool = True) -> dict[str, Any]:
    """Scores `generator` (semantics (N, 36, H, W) -> images in [-1, 1]) on the val frames at `size` (H, W).

    Returns {"metrics": {"miou", "accuracy" (all pixels), "accuracy_labelled", "fid", "per_class_iou",
    ["real": {"miou", "accuracy", "accuracy_labelled"}]}, "resolution", "images", segmenter fields, "backbone",
    "calibrated", "elapsed_seconds"}.
    """
    start = time.perf_counter()
    device = torch.device(device)
    generator = generator.eval().to(device)
    segmenter, backbone = segmenter.to(device), backbone.to(device).eval()
    if max_images is not None:
        val_index = CityscapesIndex(val_index.root, val_index.split, val_index.samples[:max_images])
    h, w = size
    fakes, reals, labels = [], [], []
    for batch in tqdm(eval_loader(val_index, w, h, batch_size), desc="cityscapes", disable=not progress, leave=False):
        fake = generator(batch["semantics"].to(device))
        if not torch.isfinite(fake).all():
            raise ValueError("the generator produced NaN or Inf outputs (a diverged checkpoint?)")
        fakes.append(quantize_8bit(fake).cpu())
        reals.append(batch["image"])
        labels.append(batch["label"] if resolution == "output" else None)
    if resolution == "full":  # the label maps at the resolution they ship in
        labels = [torch.from_numpy(np.stack([load_label_ids(s.label).astype(np.int64)
                                             for s in val_index.samples[i:i + batch_size]]))
                  for i in range(0, len(val_index), batch_size)]
    fake_scores = evaluate_segmentation(segmenter, fakes, labels, resolution, batch_size=batch_size)
    metrics = {"miou": fake_scores["miou"], "accuracy": fake_scores["accuracy_all_pixels"],
               "accuracy_labelled": fake_scores["accuracy_labelled_pixels"], "per_class_iou": fake_scores["iou"]}
    fake_features = extract_features(backbone, torch.cat(fakes), batch_size=batch_size, progress=False)
    real_features = extract_features(backbone, torch.cat(reals), batch_size=batch_size, progress=False)
    metrics["fid"] = fid_from_features(fake_features, real_features)
    if score_real:
        real_scores = evaluate_segmentation(segmenter, reals, labels, resolution, batch_size=batch_size)
        metrics["real"] = {"miou": real_scores["miou"], "accuracy": real_scores["accuracy_all_pixels"],
                           "accuracy_labelled": real_scores["accuracy_labelled_pixels"]}
    return {"metrics": metrics, "resolution": resolution,
            "resolution_convention": fake_scores["resolution_convention"], "images": fake_scores["images"],
            "size": [h, w], **segmenter.metadata(), "backbone": backbone.name, "calibrated": bool(backbone.calibrated),
            "elapsed_seconds": round(time.perf_counter() - start, 1)}


def cityscapes_result(evaluation: dict[str, Any], *, run: str, method: str, seed: int | None, data_frac: float | None,
                      iteration: int | None, checkpoint: str | None = None, data_root: str | None = None,
                      weights: dict[str, str] | None = None) -> dict[str, Any]:
    header = {"format": FORMAT, "version": VERSION, "task": "cityscapes", "run": run, "method": method, "seed": seed,
              "data_frac": data_frac, "iteration": iteration, "checkpoint": checkpoint, "data_root": data_root,
              "weights": weights or {}}
    return validate_result({**header, **evaluation}, f"run '{run}'")


def format_cityscapes_summary(result: dict[str, Any]) -> str:
    m = result["metrics"]
    seg = f"{result['segmenter']}{result.get('segmenter_mark', '')}"
    fid_mark = "†" if result["backbone"] == "proxy" else "" if result["calibrated"] else "‡"
    lines = [f"Cityscapes protocol: {result['run']} (method {result['method']}, iteration {result['iteration']})",
             f"  segmenter: {seg} — {result.get('segmenter_description', '')}",
             f"  {result['images']} val frames at {result['size'][1]}x{result['size'][0]}, resolution convention "
             f"'{result['resolution']}'",
             f"  {'':<10} {'mIoU':>7} {'accu':>7} {'accu (labelled)':>16} {'FID':>9}",
             f"  {'generated':<10} {m['miou']:>7.3f} {m['accuracy']:>7.3f} {m['accuracy_labelled']:>16.3f} "
             f"{m['fid']:>8.2f}{fid_mark}"]
    if "real" in m:
        r = m["real"]
        lines.append(f"  {'real':<10} {r['miou']:>7.3f} {r['accuracy']:>7.3f} {r['accuracy_labelled']:>16.3f}")
    lines.append(f"  accu: pixel accuracy over all pixels (SPADE's convention); labelled: over non-ignored pixels "
                 f"({result['elapsed_seconds']:.0f} s)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Command line (python -m evaluators cityscapes / train-segmenter)


def add_commands(commands) -> None:
    city = commands.add_parser("cityscapes", help="SPADE's Cityscapes protocol (mIoU, accuracy, FID)",
                               allow_abbrev=False)
    city.add_argument("--run", type=Path, required=True, metavar="RUN", help="a cityscapes run of python -m i2i.train")
    city.add_argument("--checkpoint", type=Path, metavar="FILE", help="one of its checkpoints (default: the latest)")
    city.add_argument("--data", type=Path, metavar="DIR", help="dataset root (default: the run's)")
    city.add_argument("--segmenter", choices=("drn_d_105", "proxy"), default="drn_d_105",
                      help="drn_d_105: the official Cityscapes DRN (weight registry); proxy: a small DRN trained on "
                           "the data set's training photos (cached; results marked †)")
    city.add_argument("--segmenter-steps", type=int, default=500, metavar="N", help="proxy training steps")
    city.add_argument("--resolution", choices=("output", "full"), default="output",
                      help="output: label maps downsampled to the scenes; full: scenes upsampled to the label maps")
    city.add_argument("--backbone", choices=("torchvision", "pytorch-fid", "proxy"), default="torchvision",
                      help="FID features; proxy: the proxy segmenter's trunk (†)")
    city.add_argument("--max-images", type=int, metavar="N", help="only the first N val frames (quick runs)")
    city.add_argument("--batch-size", type=int, default=8)
    city.add_argument("--device", default="auto")
    city.add_argument("--out", type=Path, help="result file (default: RUN/eval/cityscapes.json)")
    city.add_argument("--cache-dir", type=Path, help="proxy cache (default: ~/.cache/i2i/eval)")
    city.add_argument("--no-progress", action="store_true")
    seg = commands.add_parser("train-segmenter", help="train (or find cached) the proxy segmenter of a Cityscapes-"
                                                      "layout data set", allow_abbrev=False)
    seg.add_argument("--data", type=Path, required=True, metavar="DIR")
    seg.add_argument("--steps", type=int, default=500)
    seg.add_argument("--device", default="auto")
    seg.add_argument("--cache-dir", type=Path)


def proxy_segmenter(root, cache_dir, steps: int, device, progress: bool) -> Segmenter:
    """The proxy segmenter of a data set, trained on its training photos and labelIds maps (cached)."""

    index = scan_cityscapes(root, "train")
    return train_segmenter([s.image for s in index.samples], [s.label for s in index.samples],
                           cache_dir=cache_dir / "segmenter", steps=steps, progress=progress, device=device)


def run_command(args) -> int:
    device = select_device(args.device)
    cache_dir = args.cache_dir or Path.home() / ".cache" / "i2i" / "eval"
    if args.command == "train-segmenter":
        segmenter = proxy_segmenter(args.data, cache_dir, args.steps, device, progress=True)
        print(f"proxy segmenter: {segmenter.source} (held-out mIoU {segmenter.val_miou:.3f})")
        return 0
    run = load_run(args.run, args.checkpoint, device=device)
    if run.cfg.task != "cityscapes":
        raise ValueError(f"'{args.run}' is a '{run.cfg.task}' run; the Cityscapes protocol needs a cityscapes run")
    root = Path(args.data or run.cfg.data.root)
    progress = not args.no_progress
    if args.segmenter == "proxy":
        segmenter = proxy_segmenter(root, cache_dir, args.segmenter_steps, device, progress)
    else:
        segmenter = build_segmenter("drn_d_105", device=device)
    backbone = SegmenterBackbone(segmenter) if args.backbone == "proxy" else \
        build_backbone(args.backbone, image_size=run.task.size[1], device=device)
    evaluation = evaluate_cityscapes(run.nets["generator"], scan_cityscapes(root, "val"), size=run.task.size,
                                     segmenter=segmenter, backbone=backbone, resolution=args.resolution,
                                     batch_size=args.batch_size, device=device, max_images=args.max_images,
                                     progress=progress)
    cfg = run.cfg
    result = cityscapes_result(evaluation, run=str(args.run), method=cfg.method, seed=cfg.train.seed,
                               data_frac=cfg.data.frac, iteration=run.iteration, checkpoint=str(run.checkpoint),
                               data_root=str(root), weights={"segmenter": str(segmenter.source)})
    out = write_result(result, args.out or Path(args.run) / "eval" / "cityscapes.json")
    print(format_cityscapes_summary(result))
    print(f"written: {out}")
    return 0
