"""StarGAN v2's AFHQ evaluation protocol (what the ReMix paper's Table 1 reports), from a run or an official checkpoint.

For each mode ("latent", "reference") and each ordered domain pair src -> trg (6 tasks for cat/dog/wild), as in
clovaai/stargan-v2 `metrics/eval.py`:
- the val images of src, in a seeded shuffle, go through the EMA nets in batches of `batch_size` (official: 32);
- every source image gets `num_outs` (10) outputs: latent mode draws a fresh z per output; reference mode styles each
  output with the next batch of trg's shuffled val images (`ReferenceStream`, one stream per target domain);
- LPIPS diversity of a source batch = mean LPIPS over the K(K-1)/2 pairs of its raw outputs; task value = mean over
  the task's batches;
- FID of a task = its fakes, rounded to 8 bits first (the official code scores the PNGs it saved), against ALL
  TRAINING images of trg (not the run's data fraction); the real statistics are cached per backbone and file list;
- reported FID / LPIPS = mean over the tasks.
Optional proxy metrics (†, `evaluators.content`): target-domain accuracy of the fakes under a domain classifier
(`classifier`), and content preservation under a pose regressor (`pose_regressor`, on data that records poses).
Every random draw comes from a generator seeded by (seed, mode, task or target domain), so results are deterministic
and do not depend on which modes are evaluated. Runs on CPU; fakes and features are streamed batch by batch (the val
images are held as 8-bit tensors: ~300 MB for AFHQ at 256 px).

    run = load_run("runs/x")                                     # EMA nets of the latest checkpoint
    S = run.cfg.data.img_size
    evaluation = evaluate_afhq(run.nets, run.data_root, img_size=S, latent_dim=run.cfg.model.latent_dim,
                               backbone=build_backbone("torchvision", image_size=S), lpips_model=build_lpips())
    write_result(afhq_result(evaluation, run="runs/x", ...), "runs/x/eval/afhq.json")
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from evaluators.content import PoseRegressor, chance_distance, content_preservation, pose_distance
from evaluators.fid import FeatureBackbone, dataset_statistics, extract_features, fid_to_statistics
from evaluators.lpips import LPIPS, lpips_diversity
from evaluators.tables import FORMAT, PROXY_MARK, UNCALIBRATED_MARK, VERSION, validate_result
from i2i.config import Config, config_from_dict
from i2i.data.afhq import ImageIndex, resize_square, scan_split, seeded_choice
from i2i.data.images import DatasetError, load_rgb
from i2i.data.subset import read_manifest
from i2i.engine.checkpoint import latest_checkpoint, load_checkpoint
from i2i.fileio import atomic_write_text
from i2i.nets.stargan_v2 import build_nets, load_into, load_official_nets, official_architecture  # noqa: F401 (re-exported)
from i2i.tasks.afhq import GENERATOR_SIDE, translate_latent, translate_reference

MODES = ("latent", "reference")
OFFICIAL_BATCH_SIZE = 32  # the official `val_batch_size`; LPIPS is averaged per batch, so it is part of the protocol
LPIPS_BACKBONE = "alex"


# ----------------------------------------------------------------------------------------------------------------------
# Loading the nets


class LoadedRun(NamedTuple):
    """A training run ready to evaluate: `nets` are its EMA generator, mapping network and style encoder (eval mode,
    frozen); `domains` its label order; `data_root` the dataset it was trained on."""

    cfg: Config
    nets: dict[str, nn.Module]
    domains: list[str]
    data_root: Path
    iteration: int
    checkpoint: Path


def _frozen(nets: dict[str, nn.Module], device: str | torch.device) -> dict[str, nn.Module]:
    return {name: net.eval().requires_grad_(False).to(device) for name, net in nets.items()}


def load_run(run_dir: str | Path, checkpoint: str | Path | None = None, device: str | torch.device = "cpu",
             data_root: str | Path | None = None) -> LoadedRun:
    """The EMA nets of a run's checkpoint (default: the latest `RUN/checkpoints/NNNNNN.pt`) with the configuration it
    was trained with. `data_root` overrides the dataset location recorded in the run (the dataset moved)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: '{run_dir}'")
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"no checkpoint in '{run_dir / 'checkpoints'}' (expected NNNNNN.pt files written by "
                                "python -m i2i.train)")
    state = load_checkpoint(path)
    if state["task"] != "afhq":
        raise ValueError(f"'{path}' is a checkpoint of task '{state['task']}'; the AFHQ protocol needs an afhq run")
    cfg = config_from_dict(state["config"])
    train_index = read_manifest(run_dir / "data_manifest.json", data_root)
    m = cfg.model
    nets = build_nets(cfg.data.img_size, len(train_index.domains), style_dim=m.style_dim, latent_dim=m.latent_dim,
                      max_conv_dim=m.max_conv_dim, w_hpf=m.w_hpf, width=m.width)
    nets = {name: nets[name] for name in GENERATOR_SIDE}
    load_into(nets, state["nets_ema"], strict=True, source=path)
    return LoadedRun(cfg, _frozen(nets, device), list(train_index.domains), train_index.root, int(state["iteration"]),
                     path)


def load_official(path: str | Path, img_size: int | None = None, num_domains: int | None = None, *,
                  trust: bool = False, device: str | torch.device = "cpu") -> dict[str, nn.Module]:
    """The generator, mapping network and style encoder of an official `*_nets_ema.ckpt`, eval mode and frozen
    (see `i2i.nets.stargan_v2.load_official_nets`)."""
    return _frozen(load_official_nets(path, img_size, num_domains, trust=trust), device)


# ----------------------------------------------------------------------------------------------------------------------
# Images


class _ImageFiles(Dataset):
    """Image files resized to (S, S) as the official eval loader does, kept 8-bit: item -> (3, S, S) uint8."""

    def __init__(self, files: Sequence[Path], img_size: int) -> None:
        self.files, self.img_size = list(files), img_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Tensor:
        image = resize_square(load_rgb(self.files[i]), self.img_size)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def _pixel_batches(files: Sequence[Path], img_size: int, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(_ImageFiles(files, img_size), batch_size=batch_size, num_workers=num_workers)


def _to_float(pixels: Tensor, device: torch.device | None = None) -> Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, H, W) in [-1, 1]."""
    return pixels.to(device).float() / 127.5 - 1


def quantize_8bit(images: Tensor) -> Tensor:
    """Generated images as the official evaluation reads them back from PNG: (x + 1) / 2 clamped to [0, 1], then
    torchvision's save_image rounding floor(255 v + 0.5). (N, 3, H, W) float -> same shape in [-1, 1], 256 levels."""
    levels = ((images + 1) / 2).clamp(0, 1).mul(255).add(0.5).floor()
    return levels / 127.5 - 1


def _derived_seed(seed: int, *keys: str) -> int:
    """A 63-bit seed of its own for each random stream (keys name the mode, task and purpose)."""
    digest = hashlib.sha256(json.dumps([seed, *keys]).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class ReferenceStream:
    """Reference indices for one target domain: consecutive batches of `batch_size` from seeded shuffles of its
    `count` val images, a new shuffle whenever one is used up (the official shuffled DataLoader, re-iterated).

    The official loader drops each shuffle's last partial batch (and fails when a domain has fewer val images than
    the batch size); here a batch continues into the next shuffle instead, so every image is used equally often.
    """

    def __init__(self, count: int, batch_size: int, seed: int) -> None:
        if count < 1 or batch_size < 1:
            raise ValueError(f"a reference stream needs count >= 1 and batch_size >= 1, got {count} and {batch_size}")
        self.count, self.batch_size = count, batch_size
        self._rng = np.random.default_rng(seed)
        self._queue = np.empty(0, dtype=np.int64)

    def next_indices(self, n: int) -> np.ndarray:
        """The next batch cut to its first `n` indices (the official `x_ref[:N]` for a smaller last source batch)."""
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"a reference batch holds 1 to {self.batch_size} images, {n} were requested")
        while len(self._queue) < self.batch_size:
            self._queue = np.concatenate([self._queue, self._rng.permutation(self.count)])
        batch, self._queue = self._queue[:self.batch_size], self._queue[self.batch_size:]
        return batch[:n]


# ----------------------------------------------------------------------------------------------------------------------
# Real statistics


def backbone_fingerprint(backbone: FeatureBackbone) -> str:
    """sha256 of what makes a backbone's features: its type, name, preprocessing sizes and every weight."""
    settings = [type(backbone).__qualname__, backbone.name, getattr(backbone, "image_size", None),
                repr(getattr(backbone, "config", None))]
    digest = hashlib.sha256(json.dumps(settings).encode())
    for key, tensor in backbone.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _files_key(files: Sequence[Path]) -> list:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in map(Path, files)]


def real_statistics(backbone: FeatureBackbone, files: Sequence[Path], img_size: int, *, name: str = "real",
                    cache_dir: str | Path | None = None, batch_size: int = OFFICIAL_BATCH_SIZE, num_workers: int = 0,
                    progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the backbone features of image files resized to `img_size`, as the fakes are scored.

    Cached as `<cache_dir>/<name>-<backbone>-<key>.npz`, the key hashing the backbone (`backbone_fingerprint`),
    img_size and the files (path, size, mtime): a changed file list or backbone computes new statistics.
    """
    files = [Path(f) for f in files]
    if len(files) < 2:
        raise ValueError(f"real statistics of '{name}' need at least 2 images, got {len(files)}")
    cache_path = None
    if cache_dir is not None:
        key = json.dumps({"backbone": backbone_fingerprint(backbone), "img_size": img_size, "files": _files_key(files)})
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache_path = Path(cache_dir) / f"{name}-{backbone.name}-{digest}.npz"
    batches = (_to_float(pixels) for pixels in _pixel_batches(files, img_size, batch_size, num_workers))
    return dataset_statistics(backbone, batches, cache_path=cache_path, batch_size=batch_size, progress=progress)


# ----------------------------------------------------------------------------------------------------------------------
# The protocol


@dataclass(frozen=True)
class _Context:
    nets: dict[str, nn.Module]
    device: torch.device
    domains: list[str]
    sources: dict[str, Tensor]  # val images per domain, uint8 (M, 3, S, S) on the CPU
    real: dict[str, tuple[np.ndarray, np.ndarray]]
    backbone: FeatureBackbone
    lpips_model: LPIPS
    num_outs: int
    batch_size: int
    latent_dim: int
    seed: int
    classifier: Callable[[Tensor], Tensor] | None = None
    pose_regressor: PoseRegressor | None = None
    source_poses: dict[str, Tensor] | None = None  # f(x) of the sources per domain, aligned with `sources`
    chance: dict[str, float] | None = None  # pose distance of unrelated source pairs per domain


def _check_settings(modes: Sequence[str], num_outs: int, batch_size: int,
                    max_per_domain: int | None) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(modes))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty selection of {MODES}, got {list(modes)}")
    for label, value, minimum in (("num_outs", num_outs, 2), ("batch_size", batch_size, 1),
                                  ("max_per_domain", max_per_domain, 1)):
        if label == "max_per_domain" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            why = " (LPIPS diversity needs pairs of outputs)" if label == "num_outs" else ""
            raise ValueError(f"{label} must be an integer >= {minimum}{why}, got {value!r}")
    return modes


def _indices(data: str | Path | tuple[ImageIndex, ImageIndex]) -> tuple[ImageIndex, ImageIndex]:
    if isinstance(data, (str, Path)):
        return scan_split(data, "train"), scan_split(data, "val")
    train, val = data
    if train.domains != val.domains:
        raise DatasetError(f"train domains {train.domains} differ from val domains {val.domains}")
    return train, val


def _limited(index: ImageIndex, max_per_domain: int | None, seed: int) -> dict[str, list[Path]]:
    """Files per domain, at most `max_per_domain` of each (a seeded choice) for quick runs."""
    files = index.per_domain()
    if max_per_domain is None:
        return files
    return {d: seeded_choice(f, min(max_per_domain, len(f)), seed, f"eval:{d}") for d, f in files.items()}


def _check_nets(nets: dict[str, nn.Module], domains: list[str], expected_domains: Sequence[str] | None) -> None:
    missing = [name for name in GENERATOR_SIDE if name not in nets]
    if missing:
        raise ValueError(f"nets lack {missing}; expected the EMA {list(GENERATOR_SIDE)}")
    if expected_domains is not None and list(expected_domains) != domains:
        raise DatasetError(f"the model was trained on domains {list(expected_domains)}, but the data has {domains}")
    trained = getattr(nets["mapping_network"], "num_domains", len(domains))
    if trained != len(domains):
        raise DatasetError(f"the model has {trained} domains, but the data has {len(domains)}: {domains}")


@torch.no_grad()
def _evaluate_task(ctx: _Context, mode: str, src: str, trg: str, refs: ReferenceStream | None, bar: tqdm) -> dict:
    task = f"{src}->{trg}"
    pixels, bs = ctx.sources[src], ctx.batch_size
    shuffle = np.random.default_rng(_derived_seed(ctx.seed, "sources", mode, task))
    order = torch.from_numpy(shuffle.permutation(len(pixels)))
    z_generator = torch.Generator().manual_seed(_derived_seed(ctx.seed, "latent", task))
    trg_label = ctx.domains.index(trg)
    features, diversities, correct, pose_errors = [], [], 0, []
    for start in range(0, len(order), bs):
        index = order[start:start + bs]
        x = _to_float(pixels[index], ctx.device)
        y = torch.full((len(x),), trg_label, dtype=torch.long, device=ctx.device)
        outputs = []
        for _ in range(ctx.num_outs):
            if refs is None:  # z is drawn on the CPU: the same codes on every device
                z = torch.randn(len(x), ctx.latent_dim, generator=z_generator).to(ctx.device)
                fake = translate_latent(ctx.nets, x, y, z)
            else:
                x_ref = _to_float(ctx.sources[trg][torch.from_numpy(refs.next_indices(len(x)))], ctx.device)
                fake = translate_reference(ctx.nets, x, x_ref, y)
            if not torch.isfinite(fake).all():
                raise ValueError(f"{mode} {task}: the generator produced NaN or Inf outputs (a diverged checkpoint?)")
            saved = quantize_8bit(fake)
            features.append(extract_features(ctx.backbone, saved, batch_size=bs, progress=False))
            if ctx.classifier is not None:
                correct += int((ctx.classifier(saved).argmax(1) == trg_label).sum())
            if ctx.pose_regressor is not None:
                pose_errors.append(pose_distance(ctx.pose_regressor.predict(saved).cpu(), ctx.source_poses[src][index]))
            outputs.append(fake)
        diversities.append(lpips_diversity(torch.stack(outputs), ctx.lpips_model))
        bar.update(1)
    fid = fid_to_statistics(torch.cat(features), *ctx.real[trg])
    result = {"fid": fid, "lpips": float(np.mean(diversities)), "num_sources": len(pixels)}
    if ctx.classifier is not None:
        result["domain_accuracy"] = correct / (len(pixels) * ctx.num_outs)
    if ctx.pose_regressor is not None:
        result["content"] = content_preservation(float(torch.cat(pose_errors).mean()), ctx.chance[src])
    return result


def _evaluate_mode(ctx: _Context, mode: str, progress: bool) -> dict:
    """All ordered pairs in the official order (target-major); one reference stream per target domain."""
    batches = sum(math.ceil(len(ctx.sources[d]) / ctx.batch_size) for d in ctx.domains) * (len(ctx.domains) - 1)
    per_task = {}
    with tqdm(total=batches, desc=f"afhq {mode}", unit="batch", disable=not progress, leave=False) as bar:
        for trg in ctx.domains:
            refs = None if mode == "latent" else ReferenceStream(len(ctx.sources[trg]), ctx.batch_size,
                                                                 _derived_seed(ctx.seed, "references", trg))
            for src in ctx.domains:
                if src != trg:
                    bar.set_postfix_str(f"{src}->{trg}", refresh=False)
                    per_task[f"{src}->{trg}"] = _evaluate_task(ctx, mode, src, trg, refs, bar)
    means = {key: float(np.mean([t[key] for t in per_task.values()]))
             for key in ("fid", "lpips", "domain_accuracy", "content") if key in next(iter(per_task.values()))}
    return {**means, "per_task": per_task}


def evaluate_afhq(nets: dict[str, nn.Module], data: str | Path | tuple[ImageIndex, ImageIndex], *, img_size: int,
                  latent_dim: int, backbone: FeatureBackbone, lpips_model: LPIPS, modes: Sequence[str] = MODES,
                  num_outs: int = 10, batch_size: int = OFFICIAL_BATCH_SIZE, seed: int = 0,
                  device: str | torch.device | None = None, progress: bool = True, max_per_domain: int | None = None,
                  cache_dir: str | Path | None = None, num_workers: int = 0,
                  domains: Sequence[str] | None = None, classifier: Callable[[Tensor], Tensor] | None = None,
                  pose_regressor: PoseRegressor | None = None) -> dict[str, Any]:
    """The StarGAN v2 AFHQ protocol (module docstring) for EMA `nets` {generator, mapping_network, style_encoder}.

    `data`: the dataset root (ROOT/{train,val}/<domain>/*) or (train_index, val_index). `domains`, when given, is the
    label order the nets were trained with, checked against the data. `max_per_domain` caps the val and the real
    training images of every domain (quick runs; recorded). `cache_dir` caches the real statistics (None: no cache).
    `device` defaults to the generator's; the nets, backbone and LPIPS model are moved there and put in eval mode.
    `classifier` (images in [-1, 1] -> domain logits, labels in the data's order) adds "domain_accuracy";
    `pose_regressor` (needs the data's poses.json) adds "content" (`evaluators.content`).

    Returns {"metrics": {mode: {"fid", "lpips", ["domain_accuracy", "content"],
    "per_task": {"src->trg": {"fid", "lpips", "num_sources", ...}}}},
    "domains", "num_outs", "batch_size", "eval_seed", "max_per_domain", "num_real" {domain: n}, "backbone",
    "calibrated", "lpips_backbone", "lpips_calibrated", "elapsed_seconds"}.
    """
    start = time.perf_counter()
    modes = _check_settings(modes, num_outs, batch_size, max_per_domain)
    train_index, val_index = _indices(data)
    names = list(val_index.domains)
    _check_nets(nets, names, domains)
    if device is None:
        device = next(nets["generator"].parameters(), torch.empty(0)).device
    device = torch.device(device)
    nets = _frozen({name: nets[name] for name in GENERATOR_SIDE}, device)
    backbone, lpips_model = backbone.to(device).eval(), lpips_model.to(device).eval()
    real_files = _limited(train_index, max_per_domain, seed)
    real = {d: real_statistics(backbone, real_files[d], img_size, name=d, cache_dir=cache_dir, batch_size=batch_size,
                               num_workers=num_workers, progress=progress) for d in names}
    val_files = _limited(val_index, max_per_domain, seed)
    sources = {d: torch.cat(list(_pixel_batches(files, img_size, batch_size, num_workers)))
               for d, files in val_files.items()}
    source_poses = chance = None
    if pose_regressor is not None:
        pose_regressor.to(device)
        source_poses = {d: torch.cat([pose_regressor.predict(_to_float(chunk, device)).cpu()
                                      for chunk in pixels.split(batch_size)]) for d, pixels in sources.items()}
        chance = {d: chance_distance(poses, _derived_seed(seed, "chance", d)) for d, poses in source_poses.items()}
    ctx = _Context(nets, device, names, sources, real, backbone, lpips_model, num_outs, batch_size, latent_dim, seed,
                   classifier, pose_regressor, source_poses, chance)
    metrics = {mode: _evaluate_mode(ctx, mode, progress) for mode in modes}
    return {"metrics": metrics, "domains": names, "num_outs": num_outs, "batch_size": batch_size, "eval_seed": seed,
            "max_per_domain": max_per_domain, "num_real": {d: len(f) for d, f in real_files.items()},
            "backbone": backbone.name, "calibrated": bool(backbone.calibrated), "lpips_backbone": LPIPS_BACKBONE,
            "lpips_calibrated": bool(lpips_model.calibrated),
            **({"classifier": "proxy", "classifier_calibrated": False} if classifier is not None else {}),
            **({"pose_regressor": "proxy", "pose_regressor_calibrated": False,
                "pose_regressor_r2": pose_regressor.val_r2} if pose_regressor is not None else {}),
            "elapsed_seconds": round(time.perf_counter() - start, 1)}


# ----------------------------------------------------------------------------------------------------------------------
# Result files


def afhq_result(evaluation: dict[str, Any], *, run: str, method: str, seed: int | None, data_frac: float | None,
                iteration: int | None, checkpoint: str | None = None, data_root: str | None = None,
                weights: dict[str, str] | None = None) -> dict[str, Any]:
    """An i2i-eval v1 result (the format `evaluators.tables` reads): the run's identity, then `evaluation`.

    `seed` is the run's training seed (tables average over it); the evaluation's own seed is `eval_seed`. `weights`
    names the files behind the numbers (FID backbone, LPIPS trunk)."""
    header = {"format": FORMAT, "version": VERSION, "task": "afhq", "run": run, "method": method, "seed": seed,
              "data_frac": data_frac, "iteration": iteration, "checkpoint": checkpoint, "data_root": data_root,
              "weights": weights or {}}
    return validate_result({**header, **evaluation}, f"run '{run}'")


def write_result(result: dict[str, Any], path: str | Path) -> Path:
    """Writes a result as JSON atomically (a crash never leaves a truncated file)."""
    path = Path(path)
    validate_result(result, f"'{path}'")
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    return path


def _mark(name: str, calibrated: bool) -> str:
    """The tables' marks: † proxy backbone, ‡ random (uncalibrated) weights."""
    return PROXY_MARK if name == "proxy" else "" if calibrated else UNCALIBRATED_MARK


def _network_label(name: str, calibrated: bool) -> str:
    notes = {PROXY_MARK: " (trained on this data set: comparable only between runs scored with the same proxy)",
             UNCALIBRATED_MARK: " (random weights: uncalibrated, not comparable with published numbers)", "": ""}
    mark = _mark(name, calibrated)
    return name + mark + notes[mark]


def format_summary(result: dict[str, Any]) -> str:
    """A few lines for people: per-mode FID and LPIPS, and which networks (marked when proxy/uncalibrated)."""
    tasks = next(iter(result["metrics"].values()))["per_task"]
    sources = sorted({t["num_sources"] for t in tasks.values()})
    lines = [f"AFHQ protocol: {result['run']} (method {result['method']}, iteration {result['iteration']})",
             f"  FID backbone: {_network_label(result['backbone'], result['calibrated'])}",
             f"  LPIPS: {_network_label(result['lpips_backbone'], result['lpips_calibrated'])}",
             f"  {len(tasks)} tasks, {'/'.join(map(str, sources))} source images per task, {result['num_outs']} "
             "outputs each" + (f" (at most {result['max_per_domain']} images per domain)" if result["max_per_domain"]
                               else ""),
             f"  {'mode':<10} {'FID':>9} {'LPIPS':>8}" + (f" {'target acc':>11}" if "classifier" in result else "")
             + (f" {'content':>9}" if "pose_regressor" in result else "")]
    fid_mark = _mark(result["backbone"], result["calibrated"])
    lpips_mark = _mark(result["lpips_backbone"], result["lpips_calibrated"])
    for mode, values in result["metrics"].items():
        line = f"  {mode:<10} {values['fid']:>9.2f}{fid_mark:1} {values['lpips']:>8.4f}{lpips_mark}"
        if "domain_accuracy" in values:
            line += f" {values['domain_accuracy']:>10.3f}{PROXY_MARK}"
        if "content" in values:
            line += f" {values['content']:>8.3f}{PROXY_MARK}"
        lines.append(line)
    if "pose_regressor" in result:
        lines.append(f"  target acc: share of fakes the domain classifier† assigns to the target domain; content: "
                     f"1 - pose error / unrelated-pair error under a pose regressor† (held-out R² "
                     f"{result['pose_regressor_r2']:.2f})")
    lines.append(f"  ({result['elapsed_seconds']:.0f} s)")
    return "\n".join(lines)
