"""The Task contract: what a translation task gives the trainer and the regularizers.

A task owns its networks, data and losses; the trainer (`i2i.engine.trainer`) owns the loop, the optimisers' steps,
EMA, checkpoints and the regularizers. The generator is split as G = G2 ∘ G1 so that ReMix and its baselines can mix
G1's outputs without knowing the task:

    codes = task.encode(branch)            # G1 of the first and (lazily) the second batch: e1, e2
    fake = task.decode(e, branch)          # G2, with e = e1 or an interpolation of e1 and e2
    phi = task.content(fake, branch)       # φ(s)
    t = task.targets(branch, codes)        # content targets t.first, t.second (lazy) in target space; φ(t) = task.target_content(t, branch)
    d = task.content_distance(phi, phi_t)  # per-sample distances (N,): the task's content loss is d.mean()

The critic is `critic(images, cond) -> logits`, split as `head(features(images, cond), cond)` for AdaptiveMix.
Image-space regularizers need real images that share the fakes' condition: `real_pair(branch)`.

Serving: `export_graphs(nets)` declares what `python -m i2i.export` writes (one `ExportGraph` per ONNX file: a module
and its `i2i.serving.GraphSpec`); `restore(run_dir)` recovers what `build()` needs from a run folder without the
dataset, so a finished run can be exported or evaluated anywhere; `load_official(path, ...)` builds the task and its
inference nets from the official implementation's released checkpoint.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import torch
from torch import Tensor, nn

from i2i.serving import GraphSpec

Critic = Callable[[Tensor, Any], Any]


@dataclass
class Branch:
    """One generator pathway of an iteration (StarGAN v2: 'latent' and 'reference'; SPADE and NIR-VIS: one).

    `lam` is the interpolation weight the feature mixer drew for this branch in this iteration (None: plain batch);
    one draw serves the branch's D step and G step.
    """

    name: str
    inputs: dict[str, Tensor]
    g_nets: tuple[str, ...]  # networks whose optimisers step after this branch's G loss
    cond_fake: Any = None  # the critic condition of this branch's fakes
    step: int = 0
    lam: Tensor | None = None
    translation: tuple[Any, Tensor] | None = None  # (codes, fakes) of the D step, with graph, kept for the G step


class Codes:
    """A value of the first and of the second batch (G1 outputs, content targets); the second is computed only when
    asked for (most iterations do not mix)."""

    def __init__(self, first: Any, second_fn: Callable[[], Any]):
        self.first = first
        self._second_fn = second_fn
        self._second: Any = None

    @property
    def second(self) -> Any:
        if self._second is None:
            self._second = self._second_fn()
        return self._second


@dataclass
class Negatives:
    """Image sets the critic must score as fake: (images, their condition, weight in the D loss).

    Plain: [(fakes, cond_fake, 1)]; with PCR: fakes and real-pair combinations, ½ each (Eq. 13).
    """

    sets: list[tuple[Tensor, Any, float]] = field(default_factory=list)


@dataclass
class ExportGraph:
    """One exported graph: `module(*inputs in spec.inputs order)` returns the outputs in spec.outputs order."""

    spec: GraphSpec
    module: nn.Module


class GraphModule(nn.Module):
    """`fn(nets, *inputs)` as a module with `nets` registered as sub-modules, so a composition of a task's nets
    (mapping network then generator, say) exports as one graph."""

    def __init__(self, fn: Callable[..., Any], nets: dict[str, nn.Module]):
        super().__init__()
        self.fn = fn
        self.parts = nn.ModuleDict(nets)

    def forward(self, *inputs: Tensor) -> Any:
        return self.fn(dict(self.parts), *inputs)


class Task(ABC):
    name: ClassVar[str]
    ModelConfig: ClassVar[type]
    LossConfig: ClassVar[type]
    OptimConfig: ClassVar[type]
    critic_net: ClassVar[str] = "discriminator"
    ema_net_names: ClassVar[tuple[str, ...]] = ()
    branch_names: ClassVar[tuple[str, ...]] = ("main",)  # the names `branches()` gives its branches
    step_order: ClassVar[str] = "d_first"  # d_first: all D steps, then all G steps (StarGAN v2) | g_first (SPADE)
    sync_batchnorm_nets: ClassVar[tuple[str, ...]] = ()  # nets whose BatchNorm uses all ranks' samples under DDP
    # nets a loss differentiates twice (R1's gradient penalty): --compile leaves them eager, since torch.compile's
    # autograd does not support a double backward
    double_backward_nets: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.nets: dict[str, nn.Module] = {}
        self.shard: tuple[int, int] = (0, 1)  # (rank, world size): streams load the rank's part of the global batch

    # -- configuration -------------------------------------------------------------------------------------------
    @classmethod
    def validate_config(cls, cfg) -> None:
        """Task-specific checks of cfg; raise i2i.config.ConfigError naming the key."""

    # -- set-up --------------------------------------------------------------------------------------------------
    @abstractmethod
    def restore(self, run_dir: Path) -> None:
        """Recovers from a run folder what `build()` needs (e.g. the domain names of the data manifest), without
        reading the dataset."""

    @abstractmethod
    def prepare_data(self, run_dir: Path, resume: bool) -> None:
        """Finds/validates the dataset, applies --data-frac and writes (or, on resume, reads) the run's manifest."""

    def data_checks(self) -> list[tuple[Path, Callable[[Path], object]]]:
        """(file, loader) pairs covering every training file of the run, each loader raising DatasetError naming a
        bad file; read once before the first iteration (`i2i.data.check`). Called after `prepare_data`."""
        return []

    @abstractmethod
    def drop_files(self, bad: set[Path]) -> None:
        """--skip-bad-images: removes every training sample that uses a file of `bad` (a file of `data_checks()`)."""

    @abstractmethod
    def write_manifest(self, run_dir: Path) -> None:
        """Records the run's training files in `run_dir/data_manifest.json` (what `prepare_data(resume=True)` reads)."""

    @abstractmethod
    def build(self) -> dict[str, nn.Module]:
        """Creates the networks (PyTorch default init) on self.device; sets and returns self.nets."""

    @abstractmethod
    def initialize(self, nets: dict[str, nn.Module]) -> None:
        """Applies the trained nets' initialisation in place (kept apart from build: the official StarGAN v2 EMA copy
        is taken before it)."""

    @abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per trained network, keyed by the network's name."""

    @abstractmethod
    def train_stream(self, start_step: int) -> Iterator[dict[str, Tensor]]:
        """Training batches (CPU tensors) from step `start_step` on; batch s depends only on (seed, s)."""

    @abstractmethod
    def sample_inputs(self) -> dict[str, Tensor]:
        """Fixed inputs (on self.device) for the sample grids written during training."""

    @abstractmethod
    def sample(self, nets: dict[str, nn.Module], inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Named image grids (3, H, W) in [0, 1] made with `nets` (the EMA nets)."""

    @abstractmethod
    def real_bank(self, max_images: int) -> Tensor:
        """Up to `max_images` training images (M, C, H, W) in [-1, 1], for realism measures (Sample Correction)."""

    # -- one iteration -------------------------------------------------------------------------------------------
    @abstractmethod
    def branches(self, batch: dict[str, Tensor], step: int) -> list[Branch]:
        """The iteration's branches from a batch already on self.device (random codes are drawn here)."""

    @abstractmethod
    def encode(self, branch: Branch) -> Codes:
        """G1 of the branch's first and second batch."""

    @abstractmethod
    def decode(self, e: Any, branch: Branch) -> Tensor:
        """G2: fake images (N, 3, H, W), nominally in [-1, 1]."""

    def fake_condition(self, e: Any, branch: Branch) -> Any:
        """The critic condition of G2(e): by default the branch's (StarGAN v2: the target domain); a task whose G2
        input is the condition (SPADE's label map) returns e, so interpolated fakes are judged under the mixed map."""
        return branch.cond_fake

    def real_condition(self, branch: Branch) -> Any:
        """The condition of `real_pair`'s first images (default: the fakes', which they share unless mixed)."""
        return branch.cond_fake

    def lr_factor(self, step: int) -> float:
        """The learning-rate schedule as a factor on every optimiser's base rate at `step` (default: constant)."""
        return 1.0

    @abstractmethod
    def targets(self, branch: Branch, codes: Codes) -> Codes:
        """Content targets of the two batches, in target space (where the mixup baseline interpolates); the second
        is computed only for a mixed batch (drawing it must not move any RNG on plain iterations)."""

    @abstractmethod
    def content(self, fake: Tensor, branch: Branch) -> Any:
        """φ(s): the content representation of generated images."""

    @abstractmethod
    def target_content(self, t: Any, branch: Branch) -> Any:
        """φ(t): the content representation of a target."""

    @abstractmethod
    def content_distance(self, a: Any, b: Any) -> Tensor:
        """Per-sample content distances (N,); the task's plain content loss is their mean."""

    @property
    @abstractmethod
    def content_weight(self) -> float:
        """Weight of the content loss (plain or relative) in the G loss."""

    @abstractmethod
    def critic(self, images: Tensor, cond: Any) -> Any:
        """The discriminator's output for images under a condition."""

    @abstractmethod
    def features(self, images: Tensor, cond: Any) -> Tensor:
        """The critic's features F(x) (AdaptiveMix): critic(x, c) == head(features(x, c), c)."""

    @abstractmethod
    def head(self, h: Tensor, cond: Any) -> Any:
        """The critic's head J(h)."""

    def critic_groups(self, cond: Any) -> Tensor | None:
        """(N,) group ids of samples sharing a condition (pairs for feature mixing are drawn within groups)."""
        return None

    @abstractmethod
    def real_pair(self, branch: Branch) -> tuple[Tensor, Tensor]:
        """Two real batches whose i-th images share the condition of the branch's i-th fake."""

    @abstractmethod
    def d_loss(self, branch: Branch, critic: Critic, negatives: Negatives) -> tuple[Tensor, dict[str, Tensor]]:
        """The critic's loss: real images of the branch, the weighted negative sets, the task's regularizers (R1...)."""

    @abstractmethod
    def g_loss(self, branch: Branch, critic: Critic, fake: Tensor, codes: Codes) -> tuple[Tensor, dict[str, Tensor]]:
        """The generator's losses other than the content loss (adversarial, cycle, diversity, feature matching...)."""

    # -- serving -------------------------------------------------------------------------------------------------
    @property
    @abstractmethod
    def title(self) -> str:
        """A short human-readable name of the trained model (the app's tab title)."""

    @abstractmethod
    def export_graphs(self, nets: dict[str, nn.Module]) -> list[ExportGraph]:
        """The graphs to export from inference nets (EMA where the task keeps one), in the app's mode order."""

    def example_images(self, max_per_label: int = 2) -> list[tuple[Path, str]]:
        """(image file, caption) pairs a person can click in the app; [] when the dataset is not at hand."""
        return []

    def pretrained_states(self, path: Path, *, trust: bool) -> tuple[str, dict[str, dict[str, Tensor]]]:
        """(format name, {net name: state_dict}) of an official release file, for `--init-from` (i2i checkpoints are
        read by the engine). ValueError naming the file when it is not one."""
        raise ValueError(f"--init-from: '{path}' is not an i2i checkpoint, and task '{self.name}' reads no official "
                         "format")

    @classmethod
    def load_official(cls, path: Path, *, img_size: int | None, labels: list[str] | None, trust: bool,
                      device: torch.device) -> tuple["Task", dict[str, nn.Module]]:
        """The task and its inference nets from the official implementation's released checkpoint."""
        raise ValueError(f"task '{cls.name}' has no released official checkpoint to load; export one of its runs")
