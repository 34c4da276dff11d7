"""Time of one training iteration of the OFFICIAL implementation vs ours at the same configuration, measured in one run.

    python benchmarks/official_step.py --task afhq                 # clovaai/stargan-v2 vs ours, 64 px, batch 2
    python benchmarks/official_step.py --task cityscapes           # NVlabs/SPADE vs ours, 128 x 64, ngf 64, batch 2
    python benchmarks/official_step.py --task afhq --out official_afhq.json --rounds 5 --iters 2 --threads 2
    python benchmarks/official_step.py --task cityscapes --official ~/src/SPADE   # a checkout instead of the mirror

The official code is extracted at run time from the bare mirror in /work/.mirror (or copied from `--official DIR`)
into a temporary directory and imported from there; none of it is kept. Both sides are built up front and timed in
interleaved rounds (official, ours, official, ours, ...) on the CPU, so drifts of the machine's speed hit both alike;
the report gives the median seconds per iteration of each and the ratio ours / official.

Timed: one whole iteration from a batch already in memory: every D and G forward, backward and optimiser step, the
EMA update (StarGAN v2), the loss logging (`.item()`) and, for SPADE, their in-model one-hot + instance edges. Not
timed: data loading, decoding and augmentation (each chunk's batches are drawn before the clock starts; ours from a
small procedural set, the official side random tensors of the same shapes), sampling, checkpoints. The JSON lists each
runtime patch of the official code ("patches"), each difference left between the two sides ("differences") and the
parameter counts of both. A benchmark, not a test: absolute times depend on the machine.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import itertools
import json
import pickle
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import describe  # noqa: E402
from i2i.config import CONFIG_DIR, build_config  # noqa: E402
from i2i.data.synthetic import make_afhq, make_cityscapes  # noqa: E402
from i2i.engine.trainer import Trainer  # noqa: E402
from i2i.nets.spade import output_size  # noqa: E402

MIRRORS = Path("/work/.mirror")
OFFICIAL = {  # task -> (GitHub repo, the code paths a training iteration needs)
    "afhq": ("clovaai/stargan-v2", ["core"]),
    "cityscapes": ("NVlabs/SPADE", ["data", "models", "options", "trainers", "util"]),
}
SYNC_BN = "vacancy/Synchronized-BatchNorm-PyTorch"  # SPADE's README: copy its sync_batchnorm/ into models/networks/
PATCHES: list[str] = []
Side = tuple[Callable[[Any], None], Callable[[], Any]]  # (one iteration on a batch, draw a batch)


def param_counts(nets: dict[str, nn.Module]) -> dict[str, int]:  # equal on both sides: the widths match
    return {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}


def git_head(git_dir: Path) -> str | None:
    out = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def extract(git_dir: Path, paths: list[str], dest: Path) -> None:
    """`git archive HEAD paths | tar -x`: only the code, since the mirrors may lack large asset blobs."""
    tar = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "--format=tar", "HEAD", *paths],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")


def official_source(task: str, given: str | None, tmp: Path) -> dict[str, Any]:
    """A private copy of the official code paths under tmp (we may add sync_batchnorm to it); its provenance."""
    repo, paths = OFFICIAL[task]
    src = tmp / "official"
    src.mkdir()
    if given:
        root = Path(given).expanduser().resolve()
        missing = [f"{p}/" for p in paths if not (root / p).is_dir()]
        if missing:
            sys.exit(f"error: --official {root} has no {', '.join(missing)}; it must be a checkout of {repo}")
        for p in paths:
            shutil.copytree(root / p, src / p)
        info = {"repo": repo, "source": str(root), "commit": git_head(root / ".git")}
    else:
        mirror = MIRRORS / repo.replace("/", "+") / "repo"
        if not mirror.is_dir():
            sys.exit(f"error: no mirror of {repo} at {mirror}; pass --official DIR (a checkout of {repo})")
        extract(mirror, paths, src)
        info = {"repo": repo, "source": str(mirror), "commit": git_head(mirror)}
    if task == "cityscapes" and not (src / "models/networks/sync_batchnorm").is_dir():
        sbn = MIRRORS / SYNC_BN.replace("/", "+") / "repo"
        if sbn.is_dir():
            extract(sbn, ["sync_batchnorm"], src / "models/networks")
            info["sync_batchnorm"] = {"repo": SYNC_BN, "commit": git_head(sbn)}
        else:  # single process on the CPU: their SynchronizedBatchNorm2d runs exactly F.batch_norm, as BatchNorm2d
            stub("models.networks.sync_batchnorm", f"{SYNC_BN} not found; single-process equivalent",
                 probe=False, SynchronizedBatchNorm2d=nn.BatchNorm2d, DataParallelWithCallback=nn.DataParallel)
    sys.path.insert(0, str(src))  # first: their top-level packages (data, models, ...) must win over any namesake
    return info


def stub(name: str, why: str, probe: bool = True, module: types.ModuleType | None = None, **attrs: Any) -> None:
    """Makes `name` importable when the real module is not (a dependency the timed path never uses)."""
    if probe:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
            return
    if module is None:
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
    sys.modules[name] = module
    PATCHES.append(f"stub module '{name}': {why}")


class Munch(dict):
    """The part of `munch.Munch` the official StarGAN v2 uses: a dict with attribute access."""

    def __getattr__(self, key: str) -> Any:
        if key in self:
            return self[key]
        raise AttributeError(key)

    __setattr__ = dict.__setitem__


def official_afhq(a: argparse.Namespace, n_domains: int) -> tuple[Side, dict[str, Any]]:
    """clovaai/stargan-v2 `Solver.train`, one iteration, through their build_model / compute_*_loss / moving_average."""
    stub("munch", "not installed; a dict with attribute access", Munch=Munch)
    stub("ffmpeg", "not installed; core.utils uses it for videos only")
    stub("metrics.eval", "evaluation only (FID/LPIPS), not extracted", calculate_metrics=None)
    stub("core.wing", "FAN needs cv2/skimage; unused at w_hpf=0", FAN=None)
    import core.model
    from core.solver import compute_d_loss, compute_g_loss, moving_average
    from core.utils import he_init

    if a.max_conv_dim != 512:  # their build_model leaves max_conv_dim at the classes' default, 512
        for cls in ("Generator", "StyleEncoder", "Discriminator"):
            original = getattr(core.model, cls)
            setattr(core.model, cls, lambda *args, _c=original, **kw: _c(*args, max_conv_dim=a.max_conv_dim, **kw))
        PATCHES.append(f"core.model build_model: max_conv_dim={a.max_conv_dim} passed to G, E, D (official: 512)")
    args = Munch(img_size=a.img_size, num_domains=n_domains, latent_dim=16, hidden_dim=512, style_dim=64, w_hpf=0,
                 lambda_reg=1.0, lambda_cyc=1.0, lambda_sty=1.0, lambda_ds=2.0, ds_iter=100_000, lr=1e-4,
                 f_lr=1e-6, beta1=0.0, beta2=0.99, weight_decay=1e-4)  # their README's AFHQ command
    torch.manual_seed(0)
    nets, nets_ema = core.model.build_model(args)
    for net in nets.values():  # Solver.__init__: He init of the trained nets, the EMA copies keep the default init
        net.apply(he_init)
    optims = Munch({name: torch.optim.Adam(net.parameters(), lr=args.f_lr if name == "mapping_network" else args.lr,
                                           betas=[args.beta1, args.beta2], weight_decay=args.weight_decay)
                    for name, net in nets.items()})
    initial_lambda_ds = args.lambda_ds

    def backward(loss: torch.Tensor, *names: str) -> None:
        for opt in optims.values():
            opt.zero_grad()
        loss.backward()
        for name in names:
            optims[name].step()

    def step(b: dict[str, torch.Tensor]) -> None:  # the loop body of Solver.train without logs/samples/checkpoints
        x, y, y_trg = b["x"], b["y"], b["y_trg"]
        backward(compute_d_loss(nets, args, x, y, y_trg, z_trg=b["z"], masks=None)[0], "discriminator")
        backward(compute_d_loss(nets, args, x, y, y_trg, x_ref=b["x_ref"], masks=None)[0], "discriminator")
        backward(compute_g_loss(nets, args, x, y, y_trg, z_trgs=[b["z"], b["z2"]], masks=None)[0],
                 "generator", "mapping_network", "style_encoder")
        backward(compute_g_loss(nets, args, x, y, y_trg, x_refs=[b["x_ref"], b["x_ref2"]], masks=None)[0], "generator")
        for name in ("generator", "mapping_network", "style_encoder"):
            moving_average(nets[name], nets_ema[name], beta=0.999)
        if args.lambda_ds > 0:
            args.lambda_ds -= initial_lambda_ds / args.ds_iter

    def batch() -> dict[str, torch.Tensor]:  # fresh tensors: compute_d_loss sets requires_grad on x in place
        n, s = a.batch, a.img_size
        image = lambda: torch.rand(n, 3, s, s) * 2 - 1
        return {"x": image(), "y": torch.randint(n_domains, (n,)), "x_ref": image(), "x_ref2": image(),
                "y_trg": torch.randint(n_domains, (n,)), "z": torch.randn(n, 16), "z2": torch.randn(n, 16)}

    config = {"img_size": a.img_size, "batch": a.batch, "num_domains": n_domains, "max_conv_dim": a.max_conv_dim,
              "width": 2**14 // a.img_size, "style_dim": 64, "latent_dim": 16, "w_hpf": 0,
              "losses": "non-saturating GAN + R1 1 + style 1 + diversity 2 (decayed) + cycle 1", "ema": 0.999,
              "parameters": param_counts(nets)}
    return (step, batch), config


def official_cityscapes(a: argparse.Namespace, tmp: Path, size: tuple[int, int]) -> tuple[Side, dict[str, Any]]:
    """NVlabs/SPADE train.py, one iteration: Pix2PixTrainer.run_generator_one_step + run_discriminator_one_step."""
    stub("dill", "not installed; util.util imports it as pickle", module=pickle)
    import torchvision.models
    import models.networks.loss as spade_loss
    from options.train_options import TrainOptions
    from trainers.pix2pix_trainer import Pix2PixTrainer

    (h, w), vgg19 = size, torchvision.models.vgg19
    argv = ["train.py", "--name", "bench", "--dataset_mode", "cityscapes", "--gpu_ids", "-1", "--checkpoints_dir",
            str(tmp / "checkpoints"), "--batchSize", str(a.batch), "--crop_size", str(w), "--load_size", str(w),
            "--aspect_ratio", "2", "--ngf", str(a.ngf), "--ndf", str(a.ndf), "--num_upsampling_layers", "more"]
    # their VGGLoss calls VGG19().cuda(), and torchvision cannot download the pretrained weights here
    spade_loss.VGG19 = type("VGG19", (spade_loss.VGG19,), {"cuda": lambda self, *args, **kw: self})
    PATCHES.append("models.networks.loss.VGGLoss: VGG19().cuda() made a no-op (CUDA-only call)")
    PATCHES.append("torchvision.models.vgg19(pretrained=True) -> vgg19(weights=None) while building: random VGG19 "
                   "(no download here; the timing does not depend on the weights)")
    saved_argv = sys.argv
    try:
        sys.argv, torchvision.models.vgg19 = argv, lambda pretrained=False, **kw: vgg19(weights=None)
        torch.manual_seed(0)
        with contextlib.redirect_stdout(io.StringIO()):  # their option and network printouts
            opt = TrainOptions().parse()
            trainer = Pix2PixTrainer(opt)
    finally:
        sys.argv, torchvision.models.vgg19 = saved_argv, vgg19

    def step(data: dict[str, Any]) -> None:
        trainer.run_generator_one_step(data)  # D_steps_per_G = 1: every iteration
        trainer.run_discriminator_one_step(data)

    def batch() -> dict[str, Any]:  # what their CityscapesDataset yields (preprocess_input turns label to long)
        n = a.batch
        return {"label": torch.randint(opt.label_nc, (n, 1, h, w)).float(),
                "instance": torch.randint(30, (n, 1, h, w)).float(), "image": torch.rand(n, 3, h, w) * 2 - 1,
                "path": [f"frame_{i}.png" for i in range(n)]}

    keys = ("batchSize", "ngf", "ndf", "num_upsampling_layers", "norm_G", "norm_D", "n_layers_D", "num_D",
            "semantic_nc", "gan_mode", "lambda_feat", "lambda_vgg", "use_vae", "no_vgg_loss", "no_ganFeat_loss")
    config = {"width": w, "height": h, **{k: getattr(opt, k) for k in keys},
              "parameters": param_counts({"generator": trainer.pix2pix_model.netG,
                                          "discriminator": trainer.pix2pix_model.netD})}
    return (step, batch), config


def ours(a: argparse.Namespace, tmp: Path, size: tuple[int, int] | None) -> tuple[Side, Trainer]:
    """Our Trainer at the same configuration, on a small procedural set of the same image size."""
    root = tmp / "data"
    if a.task == "afhq":
        make_afhq(root, img_size=a.img_size, n_train=8, n_val=4)
        overrides = {"data.img_size": a.img_size, "model.max_conv_dim": a.max_conv_dim, "model.style_dim": 64,
                     "model.latent_dim": 16, "model.w_hpf": 0}
    else:
        make_cityscapes(root, n_train=8, n_val=4, width=size[1], height=size[0])
        overrides = {"data.img_size": a.img_size, "model.ngf": a.ngf, "model.ndf": a.ndf,
                     "model.num_upsampling_layers": "more", "model.allow_random_vgg": True}
    overrides |= {"data.root": str(root), "data.num_workers": 0, "train.batch_size": a.batch, "train.device": "cpu",
                  "train.progress": False}
    overrides |= dict(item.split("=", 1) for item in a.set)
    cfg = build_config(a.task, CONFIG_DIR / f"{a.task}.yaml", overrides)
    trainer = Trainer(cfg, tmp / "run")
    stream = iter(trainer.task.train_stream(trainer.setup(None)))
    if a.task == "cityscapes":
        trainer.task.vgg  # built lazily on first use: not inside the first timed iteration
    steps = itertools.count()
    return (lambda b: trainer.train_iteration(b, next(steps)), lambda: next(stream)), trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="afhq", choices=sorted(OFFICIAL))
    parser.add_argument("--official", metavar="DIR", help="a checkout of the official repo (default: the mirror)")
    parser.add_argument("--img-size", type=int, help="afhq: 64; cityscapes: the width, 128 (a multiple of 128)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-conv-dim", type=int, default=512, help="afhq")
    parser.add_argument("--ngf", type=int, default=64, help="cityscapes")
    parser.add_argument("--ndf", type=int, default=64, help="cityscapes")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per side per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per side first")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for ours")
    parser.add_argument("--out", help="write the JSON report here too")
    a = parser.parse_args(argv)
    a.img_size = a.img_size or (64 if a.task == "afhq" else 128)
    torch.set_num_threads(a.threads)
    # Our Trainer sets this process-wide on the CPU (denormal gradients slow x86 up to 100x): both sides run with it.
    torch.set_flush_denormal(True)
    size = output_size(a.img_size, 2.0, "more") if a.task == "cityscapes" else None

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        source = official_source(a.task, a.official, tmp)
        ours_side, trainer = ours(a, tmp, size)
        if a.task == "afhq":
            official_side, config = official_afhq(a, len(trainer.task.domains))
        else:
            official_side, config = official_cityscapes(a, tmp, size)
        sides = {"official": official_side, "ours": ours_side}

        def timed(side: str, n: int) -> float:
            step, draw = sides[side]
            batches = [draw() for _ in range(n)]  # data loading stays outside the clock
            tic = time.perf_counter()
            for b in batches:
                step(b)
            return (time.perf_counter() - tic) / max(n, 1)

        for side in sides:
            timed(side, a.warmup)
        samples: dict[str, list[float]] = {side: [] for side in sides}
        for _ in range(a.rounds):
            for side in sides:
                samples[side].append(timed(side, a.iters))
        cfg, ours_params = trainer.cfg, param_counts(trainer.task.nets)
        vgg_calibrated = getattr(trainer.task.vgg, "calibrated", None) if a.task == "cityscapes" else None

    differences = [
        "data: ours trains on procedural images from i2i.data.synthetic, the official side on random tensors of "
        "the same shapes (both drawn before the clock starts)",
        f"memory format: ours train.channels_last={cfg.train.channels_last} (our default; --set "
        "train.channels_last=false for NCHW), the official code NCHW",
    ]
    if ours_params != config["parameters"]:
        differences.append(f"parameter counts differ: official {config['parameters']}, ours {ours_params}")
    if a.task == "afhq":
        differences.append("the official nets are wrapped in nn.DataParallel (a pass-through on the CPU); ours draws "
                           "z, z2 inside the timed iteration, the official input fetcher before it")
    else:
        differences += [
            "the official iteration builds the one-hot semantics and instance edges inside the timed model call "
            "(preprocess_input, in both the G and the D step); ours builds them in the data loader (not timed)",
            f"VGG19 of the perceptual loss: random weights on the official side (patched); ours "
            f"{'torchvision weights' if vgg_calibrated else 'random weights (model.allow_random_vgg)'}",
            "SyncBatchNorm in G: in one CPU process both run plain batch norm",
        ]
    median = {side: statistics.median(s) for side, s in samples.items()}
    report = {
        "benchmark": "official_step", "task": a.task, "official_source": source, "config": config,
        "ours_overrides": dict(item.split("=", 1) for item in a.set), "ours_parameters": ours_params,
        "same_parameter_counts": ours_params == config["parameters"],
        "device": str(trainer.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": describe(trainer.device), "flush_denormal": True,
        "rounds": a.rounds, "iters_per_round": a.iters, "warmup": a.warmup,
        "timed": "one iteration from a batch in memory: all D/G forward, backward, optimiser steps, EMA, loss "
                 "logging (SPADE: also their in-model one-hot + edges); no data loading, sampling or checkpoints",
        "results": {side: {"median_sec_per_iter": median[side], "round_means": s} for side, s in samples.items()},
        "ratio_ours_to_official": median["ours"] / median["official"],
        "patches": PATCHES, "differences": differences,
    }
    print(f"official {median['official']:.3f} s/iter, ours {median['ours']:.3f} s/iter, "
          f"ours / official {report['ratio_ours_to_official']:.3f}")
    text = json.dumps(report, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
