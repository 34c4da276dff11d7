"""FID speed benchmark (not a test): our implementations against pytorch-fid's, each pair measured in one run.

1. Fréchet distance at D=2048: pytorch-fid's `calculate_frechet_distance` (scipy sqrtm) vs our eigh form, plus our
   low-rank form from features when one set has fewer samples than dimensions.
2. Feature extraction: images/s of our `FIDInceptionV3` vs pytorch-fid's `InceptionV3`, both with the same
   deterministic weights (the parity fixture's fill rule, no download), interleaved batch by batch so that load from
   other processes affects both alike.

    python benchmarks/fid_bench.py                       # ~1-3 min on 2 CPU cores
    python benchmarks/fid_bench.py --dim 512 --images 8  # quick
Prints JSON and writes it to --output.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import describe  # noqa: E402

from evaluators.fid import FIDInceptionV3, fid_from_features, frechet_distance, statistics  # noqa: E402
from tests.fixture_weights import FIXTURES, filled  # noqa: E402


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - start


def feature_sets(dim: int, samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two correlated Gaussian feature sets with different means and covariances (full rank when samples > dim)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((dim, dim)) / math.sqrt(dim)
    real = rng.standard_normal((samples, dim)) @ mixing
    fake = rng.standard_normal((samples, dim)) @ (mixing + 0.1 * rng.standard_normal((dim, dim)) / math.sqrt(dim)) + 0.05
    return real, fake


def bench_distance(dim: int, samples: int, low_rank_samples: int) -> dict:
    from pytorch_fid.fid_score import calculate_frechet_distance

    real, fake = feature_sets(dim, samples)
    mu1, sigma1 = statistics(real)
    mu2, sigma2 = statistics(fake)
    with warnings.catch_warnings():  # pytorch-fid passes sqrtm's deprecated `disp`
        warnings.simplefilter("ignore")
        reference, scipy_seconds = timed(calculate_frechet_distance, mu1, sigma1, mu2, sigma2)
    ours, ours_seconds = timed(frechet_distance, mu1, sigma1, mu2, sigma2)
    few = fake[:low_rank_samples]
    low_rank, low_rank_seconds = timed(fid_from_features, real, few)
    few_reference = frechet_distance(mu1, sigma1, *statistics(few))
    return {
        "dim": dim, "samples": samples,
        "pytorch_fid_sqrtm": {"seconds": scipy_seconds, "value": float(reference)},
        "ours_eigh": {"seconds": ours_seconds, "value": ours,
                      "relative_difference": abs(ours - reference) / abs(reference)},
        "speedup_eigh_vs_sqrtm": scipy_seconds / ours_seconds,
        "ours_low_rank": {"samples": [samples, low_rank_samples], "seconds": low_rank_seconds, "value": low_rank,
                          "relative_difference_vs_eigh": abs(low_rank - few_reference) / abs(few_reference)},
    }


def inception_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our FIDInceptionV3 and pytorch-fid's InceptionV3, loaded with the same deterministic (gain sqrt 2) weights."""
    import pytorch_fid.inception

    shapes = json.loads((FIXTURES / "fid_inception" / "keys.json").read_text())
    gain = torch.tensor(math.sqrt(2), dtype=torch.float32)
    state = {k: v * gain if v.ndim >= 2 and k.endswith("weight") else v for k, v in filled(shapes).items()}
    pytorch_fid.inception.load_state_dict_from_url = lambda *args, **kwargs: state  # no download
    theirs = pytorch_fid.inception.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    ours = FIDInceptionV3().eval()
    ours.load_official_state_dict(state)
    return ours, theirs


@torch.no_grad()
def bench_extraction(images: int, batch_size: int, image_size: int) -> dict:
    ours, theirs = inception_pair()
    batches = torch.rand(images, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).split(batch_size)
    for warm_up in (ours, theirs):  # first-call allocations
        warm_up(batches[0][:1])
    runners = {"ours": ours, "pytorch_fid": lambda x: theirs(x)[0].flatten(1)}
    seconds = dict.fromkeys(runners, 0.0)
    max_diff = 0.0
    for index, batch in enumerate(batches):
        order = list(runners) if index % 2 == 0 else list(runners)[::-1]  # alternate who runs first
        features = {}
        for name in order:
            features[name], elapsed = timed(runners[name], batch)
            seconds[name] += elapsed
        max_diff = max(max_diff, (features["ours"] - features["pytorch_fid"]).abs().max().item())
    return {
        "images": images, "batch_size": batch_size, "image_size": image_size,
        "ours_images_per_s": images / seconds["ours"], "pytorch_fid_images_per_s": images / seconds["pytorch_fid"],
        "speed_ratio_ours_vs_pytorch_fid": seconds["pytorch_fid"] / seconds["ours"],
        "max_abs_feature_difference": max_diff,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension for the distance benchmark")
    parser.add_argument("--samples", type=int, default=2500, help="samples per set (> dim for full-rank covariances)")
    parser.add_argument("--low-rank-samples", type=int, default=500, help="the smaller set for the low-rank form")
    parser.add_argument("--images", type=int, default=16, help="images per implementation for feature extraction")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128, help="input size (resized to 299 inside)")
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "bench" / "fid_bench.json")
    args = parser.parse_args(argv)

    report = {
        "benchmark": "fid", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": describe("cpu"), "load_average_at_start": os.getloadavg(),
        "frechet_distance": bench_distance(args.dim, args.samples, args.low_rank_samples),
        "feature_extraction": bench_extraction(args.images, args.batch_size, args.image_size),
    }
    text = json.dumps(report, indent=1)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
