"""Reading rosinality/stylegan2-pytorch checkpoints (`{'g', 'd', 'g_ema', 'args', ...}`) into `i2i.nets.stylegan2`
nets: tensors-only unpickling, `module.` prefixes stripped, strict loads whose errors name the net, the file and the
constructor arguments the file fits."""
from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from i2i.nets.stylegan2 import Generator
from i2i.weights import safe_torch_load, strip_module_prefix

CHECKPOINT_NETS = ("g", "d", "g_ema")  # rosinality's train.py; convert_weight.py writes g_ema (+ g, d) and latent_avg
_SHOWN_KEYS = 5


def load_rosinality_checkpoint(path: str | os.PathLike, *, trust: bool = False) -> dict[str, dict[str, Tensor]]:
    """{net: state_dict} for the entries 'g', 'd', 'g_ema' found in a rosinality checkpoint, `module.` stripped.

    train.py also stores the argparse options ('args'); that Namespace of plain values is allowed in the tensors-only
    unpickling, so no trust is needed for the reference's own files. Anything else that needs a full unpickle
    requires `trust` (see `i2i.weights.safe_torch_load`). Tensors are loaded on the CPU.
    """
    path = Path(path)
    with torch.serialization.safe_globals([argparse.Namespace]):
        content = safe_torch_load(path, trust=trust)
    if not isinstance(content, Mapping):
        raise ValueError(f"'{path}' is not a rosinality StyleGAN2 checkpoint: expected a dict with entries "
                         f"{list(CHECKPOINT_NETS)}, got {type(content).__name__}")
    found = [name for name in CHECKPOINT_NETS if name in content]
    if not found:
        shown = [str(k) for k in list(content)[:_SHOWN_KEYS]]
        bare = any(k.startswith(("style.", "convs.")) for k in shown)
        hint = " (a bare state_dict? load it with net.load_state_dict)" if bare else ""
        raise ValueError(f"'{path}' is not a rosinality StyleGAN2 checkpoint: none of {list(CHECKPOINT_NETS)} in it, "
                         f"it holds {shown}{hint}")
    state: dict[str, dict[str, Tensor]] = {}
    for name in found:
        entry = content[name]
        if not isinstance(entry, Mapping) or not all(isinstance(v, Tensor) for v in entry.values()):
            raise ValueError(f"'{path}': entry '{name}' is not a state_dict of tensors")
        state[name] = strip_module_prefix(entry)
    return state


def generator_args_from_state(state: Mapping[str, Tensor]) -> dict[str, int]:
    """Generator constructor arguments implied by a generator state dict: size, style_dim, n_mlp and, for sizes >= 64
    (below, every layer has 512 channels), channel_multiplier."""
    noises = [k for k in state if re.fullmatch(r"noises\.noise_\d+", k)]
    if "conv1.conv.modulation.weight" not in state or not noises:
        raise ValueError("not a StyleGAN2 generator state dict (no conv1.conv.modulation.weight / noises.noise_k)")
    args = {"size": 2 ** ((len(noises) - 1) // 2 + 2), "style_dim": int(state["conv1.conv.modulation.weight"].shape[1]),
            "n_mlp": sum(1 for k in state if re.fullmatch(r"style\.\d+\.weight", k))}
    if "convs.6.conv.weight" in state:  # the first conv at 64 px
        args["channel_multiplier"] = int(state["convs.6.conv.weight"].shape[1]) // 256
    return args


def _state_problems(net: nn.Module, state: Mapping[str, Tensor]) -> list[str]:
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = [f"{k} {shape}" for k, shape in expected.items() if k not in state]
    unexpected = [f"{k} {tuple(v.shape)}" for k, v in state.items() if k not in expected]
    mismatched = [f"{k}: file {tuple(v.shape)} vs net {expected[k]}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != expected[k]]
    return [f"{len(keys)} {kind} (e.g. {'; '.join(keys[:_SHOWN_KEYS])})"
            for kind, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", mismatched)) if keys]


def _describe(net: nn.Module, state: Mapping[str, Tensor]) -> str:
    if isinstance(net, Generator):
        mine = f"size={net.size}, style_dim={net.style_dim}, n_mlp={len(net.style) - 1}"
        try:
            theirs = ", ".join(f"{k}={v}" for k, v in generator_args_from_state(state).items())
        except ValueError:
            return f" The net is Generator({mine}); the file's entry is not a generator."
        return f" The net is Generator({mine}, ...); the file's entry fits Generator({theirs})."
    return " Check size, channel_multiplier and channel_max."


def load_into(nets: Mapping[str, nn.Module], state: Mapping[str, Mapping[str, Tensor]], *,
              source: str | os.PathLike | None = None) -> None:
    """Strict load of `state` ({'g'|'d'|'g_ema': state_dict}, e.g. from `load_rosinality_checkpoint`) into `nets`
    (same keys, e.g. {'g_ema': G, 'd': D}). Every net is checked before any changes; errors name the net and file."""
    origin = f"'{source}'" if source is not None else "the given state"
    absent = [name for name in nets if name not in state]
    if absent:
        raise ValueError(f"{origin} has no weights for {absent}; it holds {sorted(state)}")
    for name, net in nets.items():
        problems = _state_problems(net, state[name])
        if problems:
            raise ValueError(f"cannot load '{name}' ({type(net).__name__}) from {origin}: " + "; ".join(problems) + "."
                             + _describe(net, state[name]))
    for name, net in nets.items():
        net.load_state_dict(state[name], strict=True)
