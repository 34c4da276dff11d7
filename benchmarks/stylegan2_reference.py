"""StyleGAN2 G and D forward + backward time: ours (`i2i.nets.stylegan2`) vs rosinality/stylegan2-pytorch, one run.

    python benchmarks/stylegan2_reference.py                              # 64 px, batch 2, channel_multiplier 2
    python benchmarks/stylegan2_reference.py --out sg2_ref.json --rounds 7 --iters 3 --threads 2
    python benchmarks/stylegan2_reference.py --size 32 --batch 1 --rounds 1 --iters 1 --warmup 0 --threads 1  # smoke
    python benchmarks/stylegan2_reference.py --reference ~/src/stylegan2-pytorch   # a checkout instead of the mirror

The reference's `model.py` and `op/` are extracted at run time from the bare mirror in /work/.mirror (or read from
`--reference DIR`) into a temporary directory; none of it is kept. Its `op` package builds CUDA extensions on import,
so a substitute `op` module is put into `sys.modules` first, made of the reference's OWN pure-PyTorch CPU fallbacks
(`upfirdn2d` / `upfirdn2d_native`, `fused_leaky_relu` / `FusedLeakyReLU`), taken from their files with `ast` and
executed as they are; conv2d_gradfix becomes plain F.conv2d / F.conv_transpose2d (what it falls back to on the CPU).
The reference nets are built with a fixed seed and their state dicts loaded strictly into ours, so both sides time the
same weights. Timed units, in interleaved rounds (reference, ours, reference, ours, ...): G([z]) with fresh noise, then
backward of image.square().mean(); D(images), then backward of its mean logit. The report gives the median seconds
per iteration over rounds and the ratio ours / reference. A benchmark, not a test: absolute times depend on the machine.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import json
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
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import describe  # noqa: E402
from i2i.nets.stylegan2 import Discriminator, Generator  # noqa: E402
from i2i.nets.stylegan2_io import load_into  # noqa: E402

MIRROR = Path("/work/.mirror/rosinality+stylegan2-pytorch/repo")
STYLE_DIM, N_MLP, SEED = 512, 8, 0  # the official config-f mapping network
PATCHES = [
    "op: a substitute module in sys.modules instead of their package, whose import compiles CUDA extensions "
    "(torch.utils.cpp_extension.load); model.py is their file, unchanged",
    "op.upfirdn2d: their upfirdn2d + upfirdn2d_native from op/upfirdn2d.py, extracted with ast and executed as "
    "written; the CUDA branch's UpFirDn2d (compiled op) is left undefined, it is never reached on the CPU",
    "op.fused_leaky_relu / op.FusedLeakyReLU: their function and module from op/fused_act.py, extracted with ast; "
    "the CUDA branch's FusedLeakyReLUFunction (compiled op) is left undefined, it is never reached on the CPU",
    "op.conv2d_gradfix.conv2d / conv_transpose2d -> F.conv2d / F.conv_transpose2d: their own fallback "
    "(could_use_op is False on the CPU and on torch other than 1.7/1.8)",
]


def extract(git_dir: Path, paths: list[str], dest: Path) -> None:
    """`git archive HEAD paths | tar -x`: only the code, since the mirror may lack large asset blobs."""
    tar = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "--format=tar", "HEAD", *paths],
                         check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")


def git_head(git_dir: Path) -> str | None:
    out = subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def fallbacks(path: Path, names: set[str]) -> dict[str, Any]:
    """Execute only the imports and the named top-level defs of `path`: their code, without the `load(...)` call."""
    tree = ast.parse(path.read_text(), str(path))
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
               and getattr(node, "module", None) != "torch.utils.cpp_extension"]
    body = imports + [node for node in tree.body
                      if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names]
    missing = names - {node.name for node in body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    if missing:
        sys.exit(f"error: {path} no longer defines {sorted(missing)}; the reference changed")
    namespace: dict[str, Any] = {"__name__": f"reference_op.{path.stem}"}
    # compiled with their file name, so tracebacks and profiles point into their source
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


def load_reference(src: Path) -> types.ModuleType:
    """Their model.py imported against a substitute `op` built from their CPU fallbacks."""
    act = fallbacks(src / "op" / "fused_act.py", {"FusedLeakyReLU", "fused_leaky_relu"})
    fir = fallbacks(src / "op" / "upfirdn2d.py", {"upfirdn2d", "upfirdn2d_native"})
    gradfix = types.ModuleType("op.conv2d_gradfix")
    gradfix.conv2d, gradfix.conv_transpose2d = F.conv2d, F.conv_transpose2d
    op = types.ModuleType("op")
    op.FusedLeakyReLU, op.fused_leaky_relu = act["FusedLeakyReLU"], act["fused_leaky_relu"]
    op.upfirdn2d, op.conv2d_gradfix = fir["upfirdn2d"], gradfix
    saved = sys.modules.get("op")
    sys.modules["op"] = op
    try:
        spec = importlib.util.spec_from_file_location("stylegan2_reference_model", src / "model.py")
        model = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(model)
    finally:  # model.py holds its own references; do not leave a global `op` behind
        if saved is None:
            sys.modules.pop("op", None)
        else:
            sys.modules["op"] = saved
    return model


def g_step(net: nn.Module, z: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)  # both sides pay the same fresh-gradient allocation
    image, _ = net([z], input_is_latent=False, randomize_noise=True)
    image.square().mean().backward()


def d_step(net: nn.Module, images: torch.Tensor) -> None:
    net.zero_grad(set_to_none=True)
    net(images).mean().backward()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", metavar="DIR", help="a checkout of rosinality/stylegan2-pytorch "
                        f"(default: the mirror {MIRROR})")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--channel-multiplier", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per side and net per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", help="write the JSON report here too")
    a = parser.parse_args(argv)
    if a.batch % min(a.batch, 4):  # both discriminators split the batch into minibatch-stddev groups of min(N, 4)
        parser.error("--batch must be 1, 2, 3 or a multiple of 4")
    torch.set_num_threads(a.threads)

    with tempfile.TemporaryDirectory() as tmp:
        if a.reference:
            src, info = Path(a.reference), {"source": str(Path(a.reference).resolve())}
        else:
            if not MIRROR.is_dir():
                sys.exit(f"error: no mirror of rosinality/stylegan2-pytorch at {MIRROR}; pass --reference DIR")
            src = Path(tmp)
            extract(MIRROR, ["model.py", "op"], src)
            info = {"source": str(MIRROR), "commit": git_head(MIRROR)}
        model = load_reference(src)

    torch.manual_seed(SEED)
    ref = {"generator": model.Generator(a.size, STYLE_DIM, N_MLP, channel_multiplier=a.channel_multiplier),
           "discriminator": model.Discriminator(a.size, channel_multiplier=a.channel_multiplier)}
    ours = {"generator": Generator(a.size, STYLE_DIM, N_MLP, channel_multiplier=a.channel_multiplier),
            "discriminator": Discriminator(a.size, channel_multiplier=a.channel_multiplier)}
    # strict, all-or-nothing load of the reference's weights and noise buffers into ours: the same net on both sides
    load_into({"g": ours["generator"], "d": ours["discriminator"]},
              {"g": ref["generator"].state_dict(), "d": ref["discriminator"].state_dict()}, source="the reference nets")

    gen = torch.Generator().manual_seed(SEED + 1)
    z = torch.randn(a.batch, STYLE_DIM, generator=gen)
    with torch.no_grad():  # fixed noise buffers: the two generators must agree up to float rounding
        ref_image, _ = ref["generator"]([z], randomize_noise=False)
        our_image, _ = ours["generator"]([z], randomize_noise=False)
        g_diff = (ref_image - our_image).abs().max().item()
        d_diff = (ref["discriminator"](ref_image) - ours["discriminator"](ref_image)).abs().max().item()
    images = torch.randn(a.batch, 3, a.size, a.size, generator=gen)

    units: dict[str, tuple[Callable[[nn.Module, torch.Tensor], None], torch.Tensor]] = {
        "generator": (g_step, z), "discriminator": (d_step, images)}
    sides = {"reference": ref, "ours": ours}

    def timed(side: str, net: str, n: int) -> float:
        step, data = units[net]
        tic = time.perf_counter()
        for _ in range(n):
            step(sides[side][net], data)
        return (time.perf_counter() - tic) / max(n, 1)

    for net in units:
        for side in sides:
            timed(side, net, a.warmup)
    samples = {net: {side: [] for side in sides} for net in units}
    for _ in range(a.rounds):
        for net in units:
            for side in sides:  # reference, ours, reference, ours, ...: speed drifts hit both sides alike
                samples[net][side].append(timed(side, net, a.iters))

    nets: dict[str, dict[str, Any]] = {}
    for net, s in samples.items():
        r, o = statistics.median(s["reference"]), statistics.median(s["ours"])
        nets[net] = {"reference_s": r, "ours_s": o, "ratio_ours_to_reference": o / r,
                     "round_s": s, "parameters": sum(p.numel() for p in ours[net].parameters())}
    report = {
        "benchmark": "stylegan2_reference",
        "reference": {"repo": "rosinality/stylegan2-pytorch", **info},
        "machine": describe("cpu"),
        "config": {"size": a.size, "batch": a.batch, "style_dim": STYLE_DIM, "n_mlp": N_MLP,
                   "channel_multiplier": a.channel_multiplier, "rounds": a.rounds, "iters_per_round": a.iters,
                   "warmup": a.warmup, "seed": SEED,
                   "timed": {"generator": "G([z], randomize_noise=True) + backward of image.square().mean()",
                             "discriminator": "D(images) + backward of logits.mean()"}},
        "nets": nets,
        "max_abs_output_difference": g_diff,  # generator images, same z, fixed noise buffers
        "max_abs_discriminator_difference": d_diff,  # logits on the reference generator's images
        "patches": PATCHES,
    }
    print(f"{'net':<14} {'reference s':>12} {'ours s':>9} {'ours/ref':>9}")
    for net, row in nets.items():
        print(f"{net:<14} {row['reference_s']:>12.4f} {row['ours_s']:>9.4f} {row['ratio_ours_to_reference']:>9.3f}")
    print(f"max |G_ref - G_ours| = {g_diff:.3g}, max |D_ref - D_ours| = {d_diff:.3g}")
    text = json.dumps(report, indent=1)
    if a.out:
        Path(a.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
