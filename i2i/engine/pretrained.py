"""Fine-tuning from released weights: `python -m i2i.train ... --init-from FILE`.

A new run starts from the weights of FILE (fresh optimisers, iteration 0): an i2i training checkpoint of the same task,
or the official format the task reads (`Task.pretrained_states`: StarGAN v2 `*_nets_ema.ckpt` / `*_nets.ckpt`, SPADE
`*_net_G.pth` with its `*_net_D.pth` beside it, rosinality StyleGAN2 `{g, d, g_ema}`). Loading is per tensor: a tensor
is taken when the file has it under the same name with the same shape, and keeps its initialisation otherwise, so the
number of domains or labels may change (StarGAN v2's per-domain heads and D's output, SPADE's label-map convs) and a
net the file lacks (the released StarGAN v2 and SPADE files have no usable D) starts from its initialisation. The
report says, per net, what was loaded and what was not; the run keeps it as `RUN/init_from.json`.

For nets with an EMA copy the file's EMA weights are used where it has them (StarGAN v2 releases only those), and the
EMA copy starts equal to the loaded net.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from i2i.engine.checkpoint import FORMAT
from i2i.fileio import atomic_write_text
from i2i.weights import UntrustedCheckpointError, safe_torch_load

INIT_RECORD = "init_from.json"
_SHOWN = 4  # key names shown per category in the printed report


@dataclass
class NetReport:
    loaded: int  # tensors taken from the file
    total: int  # tensors of the net (parameters and buffers)
    kept: list[str] = field(default_factory=list)  # the net's tensors left at their initialisation
    unused: list[str] = field(default_factory=list)  # the file's tensors with no place in the net


@dataclass
class InitReport:
    source: str
    format: str
    nets: dict[str, NetReport]
    absent: list[str]  # nets the file has no weights for (left at their initialisation)

    def summary(self) -> str:
        lines = [f"init from '{self.source}' ({self.format}):"]
        for name, net in self.nets.items():
            line = f"  {name}: {net.loaded}/{net.total} tensors loaded"
            if net.kept:
                line += f"; kept at init: {', '.join(net.kept[:_SHOWN])}" + (" ..." if len(net.kept) > _SHOWN else "")
            if net.unused:
                line += f"; not used from the file: {', '.join(net.unused[:_SHOWN])}" + (
                    " ..." if len(net.unused) > _SHOWN else "")
            lines.append(line)
        lines += [f"  {name}: not in the file, kept at init" for name in self.absent]
        return "\n".join(lines)

    def save(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / INIT_RECORD, json.dumps(asdict(self), indent=1) + "\n")


def _fitting(net: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The tensors of `state` that `net` has under the same name and shape."""
    own = net.state_dict()
    return {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}


def load_matching(net: nn.Module, state: Mapping[str, Tensor]) -> NetReport:
    """Copy into `net` every tensor of `state` whose name and shape match; the rest of `net` is left as it is."""
    own, taken = net.state_dict(), _fitting(net, state)
    with torch.no_grad():
        for key, value in taken.items():
            own[key].copy_(value.to(own[key].dtype))
    return NetReport(loaded=len(taken), total=len(own), kept=[k for k in own if k not in taken],
                     unused=[k for k in state if k not in taken])


def i2i_checkpoint_states(content: Mapping, task_name: str, ema_net_names: tuple[str, ...],
                          path: Path) -> dict[str, dict[str, Tensor]]:
    """{net: state_dict} of an i2i training checkpoint: the EMA weights of the EMA'd nets, the trained ones else."""
    if content.get("task") != task_name:
        raise ValueError(f"--init-from: '{path}' is a '{content.get('task')}' checkpoint, this run is '{task_name}'")
    states = dict(content["nets"])
    states.update({name: content["nets_ema"][name] for name in ema_net_names if name in content.get("nets_ema", {})})
    return states


def read_pretrained(task, path: str | Path, trust: bool = False) -> tuple[str, dict[str, dict[str, Tensor]]]:
    """(format name, {net name: state_dict}) of FILE for `task`; ValueError naming the file when it is neither an
    i2i checkpoint nor an official format of the task. Tensors-only unpickling unless `trust`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--init-from: no such file '{path}'")
    with path.open("rb") as f:
        magic = f.read(2)
    if magic not in (b"PK", b"\x80\x02"):  # torch.save's zip format, or the legacy pickle protocol 2 (old releases)
        raise ValueError(f"--init-from: '{path}' is not a PyTorch weights file (neither torch.save's zip format nor a "
                         "legacy pickle)")
    try:
        content = safe_torch_load(path, trust=trust)
    except UntrustedCheckpointError:  # i2i checkpoints hold tensors and plain values only: an official file
        content = None
    if isinstance(content, Mapping) and content.get("format") == FORMAT:
        return "i2i checkpoint", i2i_checkpoint_states(content, task.name, task.ema_net_names, path)
    return task.pretrained_states(path, trust=trust)


def init_from(task, nets: dict[str, nn.Module], path: str | Path, trust: bool = False) -> InitReport:
    """Loads FILE into `nets` (see the module docstring) and returns what was loaded. Nothing is changed when the
    file shares no tensor with the nets (a ValueError says so)."""
    fmt, states = read_pretrained(task, path, trust)
    targets = {name: states[name] for name in nets if name in states}
    if not any(_fitting(nets[name], state) for name, state in targets.items()):
        raise ValueError(f"--init-from: '{path}' ({fmt}) has no tensor that fits this run's nets {sorted(nets)} "
                         f"(it holds weights for {sorted(states)}); check the task and the model options")
    reports = {name: load_matching(nets[name], state) for name, state in targets.items()}
    absent = [name for name in nets if name not in states and not _frozen(nets[name])]
    return InitReport(str(path), fmt, reports, absent)


def _frozen(net: nn.Module) -> bool:
    """A net with no trainable parameters (e.g. NIR-VIS's LightCNN encoder) has its own source of weights."""
    return not any(p.requires_grad for p in net.parameters())
