"""SPADE on Cityscapes (label map -> photo), as NVlabs/SPADE trains it, with ReMix on the label maps (paper 002,
Sec. 4.3).

Per iteration (the official order): G step (hinge adversarial + feature matching + VGG), then D step (hinge on
real / fake pairs cat([semantics, image])). TTUR: G lr = lr / 2, D lr = 2 lr, Adam betas (0, 0.9); the learning
rate is constant for the first half of training, then decays linearly to 0 (Cityscapes: 100 + 100 epochs). No EMA.

ReMix: G1 is the identity, so the semantics (one-hot labelIds + instance edges) of two batches are interpolated,
e' = lambda sem1 + (1 - lambda) sem2, G2 = the generator; phi = VGG19 features, t = the real photos, and the VGG loss
takes the relative form. The critic judges the fake under e'. Feature matching needs real features under the same
input, which a mixed map does not have: `loss.fm_on_mixed` "relative" (default) asks the fake's D features under e'
to be closer to real photo 1's than to real photo 2's (relu(d1 - d2), both under e'), the ordering ReMix asks of the
content; "drop" skips feature matching on mixed batches.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from i2i.config import ConfigError, default_config
from i2i.data.cityscapes import (MANIFEST_NAME, SEMANTIC_CHANNELS, CityscapesTrainStream, colorize_labels,
                                 eval_loader, instance_edges, load_instance_ids, load_label_ids, make_semantics,
                                 scan_cityscapes, train_index_for_run, write_manifest)
from i2i.data.images import DatasetError, load_rgb
from i2i.data.cityscapes_labels import CITYSCAPES_LABELS, CITYSCAPES_PALETTE, NUM_LABEL_IDS
from i2i.data.synthetic.streets import make_cityscapes
from i2i.nets.spade import (MultiscaleDiscriminator, SPADEGenerator, bake_spectral_norm, load_official_generator,
                            output_size, parse_norm_G, revert_sync_batchnorm, xavier_init)
from i2i.nets.vgg import load_vgg19, vgg_distance
from i2i.serving import GraphSpec, TensorSpec
from i2i.weights import plain_state_dict, safe_torch_load
from i2i.tasks.base import Branch, Codes, Critic, ExportGraph, GraphModule, Negatives, Task

FM_ON_MIXED = ("relative", "drop")


@dataclass
class CityscapesModelConfig:
    ngf: int = 64
    num_upsampling_layers: str = "more"  # the Cityscapes setting (the repository default is "normal")
    aspect_ratio: float = 2.0  # image width / height: data.img_size is the width (512 -> 512 x 256)
    norm_G: str = "spectralspadesyncbatch3x3"
    spade_hidden: int = 128  # SPADE's hidden conv width (official 128; smaller for CPU demos)
    ndf: int = 64
    n_layers_D: int = 4
    num_D: int = 2
    norm_D: str = "spectralinstance"
    vgg_weights: str | None = None  # torchvision vgg19-dcbb9e9d.pth; None: the weight registry's search path
    allow_random_vgg: bool = False  # without the file, a seeded random VGG19 (demo only; the loss is then no longer SPADE's)


@dataclass
class CityscapesLossConfig:
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    fm_on_mixed: str = "relative"  # relative | drop (see the module docstring)


@dataclass
class CityscapesOptimConfig:
    lr: float = 2e-4  # TTUR: G lr / 2, D lr * 2
    beta1: float = 0.0
    beta2: float = 0.9
    decay_start: float = 0.5  # fraction of total_iters after which the rate decays linearly to 0


# -- losses (official SPADE) ----------------------------------------------------------------------------------------
def hinge_d(logits: list[Tensor], real: bool) -> Tensor:
    """mean over scales of mean(relu(1 - D)) (real) or mean(relu(1 + D)) (fake)."""
    return torch.stack([F.relu(1 - l if real else 1 + l).mean() for l in logits]).mean()


def hinge_g(logits: list[Tensor]) -> Tensor:
    return torch.stack([-l.mean() for l in logits]).mean()


def feature_matching(fake: list[list[Tensor]], real: list[list[Tensor]]) -> Tensor:
    """Per-sample L1 between D's intermediate outputs (final logits excluded), summed over layers, averaged over
    scales: (N,); `.mean()` is SPADE's GAN feature loss / lambda_feat."""
    total = 0
    for fake_scale, real_scale in zip(fake, real):
        for f, r in zip(fake_scale[:-1], real_scale[:-1]):
            total = total + (f - r.detach()).abs().flatten(1).mean(1)
    return total / len(fake)


class CityscapesTask(Task):
    name = "cityscapes"
    ModelConfig = CityscapesModelConfig
    LossConfig = CityscapesLossConfig
    OptimConfig = CityscapesOptimConfig
    critic_net = "discriminator"
    ema_net_names = ()  # SPADE keeps no EMA
    step_order = "g_first"
    sync_batchnorm_nets = ("generator",)  # SPADE's param-free BatchNorms: SyncBatchNorm under DDP, as the official code

    @classmethod
    def validate_config(cls, cfg) -> None:
        if cfg.loss.fm_on_mixed not in FM_ON_MIXED:
            raise ConfigError(f"loss.fm_on_mixed: {cfg.loss.fm_on_mixed!r} is not one of {', '.join(FM_ON_MIXED)}")
        if not 0.0 <= cfg.optim.decay_start <= 1.0:
            raise ConfigError(f"optim.decay_start: {cfg.optim.decay_start!r} is invalid; expected a fraction in [0, 1]")
        if cfg.remix.at != "style":
            raise ConfigError("remix.at: cityscapes mixes its label maps (G1 is the identity); leave remix.at at style")
        try:
            output_size(cfg.data.img_size, cfg.model.aspect_ratio, cfg.model.num_upsampling_layers)
            parse_norm_G(cfg.model.norm_G)
        except ValueError as error:
            raise ConfigError(f"model: {error}") from None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images: the generator's output size for data.img_size and the aspect ratio."""
        m = self.cfg.model
        return output_size(self.cfg.data.img_size, m.aspect_ratio, m.num_upsampling_layers)

    # -- set-up --------------------------------------------------------------------------------------------------
    def restore(self, run_dir: Path) -> None:
        """Nothing to recover: the networks depend on the configuration only."""

    def prepare_data(self, run_dir: Path, resume: bool) -> None:
        d = self.cfg.data
        if d.root is None:
            raise DatasetError("no dataset root given (--data DIR, or data.root in the config)")
        root = Path(d.root)
        if d.synthetic and not root.exists():
            make_cityscapes(root)
        self.train_index = train_index_for_run(root, run_dir, frac=d.frac, seed=self.cfg.train.seed, resume=resume)
        self.val_index = scan_cityscapes(root, "val")

    def data_checks(self) -> list[tuple[Path, Callable[[Path], object]]]:
        return [check for s in self.train_index.samples
                for check in ((s.image, load_rgb), (s.label, load_label_ids), (s.instance, load_instance_ids))]

    def drop_files(self, bad: set[Path]) -> None:
        self.train_index = self.train_index.without(bad)

    def write_manifest(self, run_dir: Path) -> None:
        write_manifest(Path(run_dir) / MANIFEST_NAME, self.train_index, frac=self.cfg.data.frac,
                       seed=self.cfg.train.seed, source_root=self.cfg.data.root)

    def build(self) -> dict[str, nn.Module]:
        m = self.cfg.model
        G = SPADEGenerator(SEMANTIC_CHANNELS, m.ngf, m.num_upsampling_layers, self.cfg.data.img_size, m.aspect_ratio,
                           m.norm_G, spade_hidden=m.spade_hidden)
        D = MultiscaleDiscriminator(SEMANTIC_CHANNELS + 3, m.ndf, m.n_layers_D, m.num_D, m.norm_D)
        self.nets = {"generator": G.to(self.device), "discriminator": D.to(self.device)}
        return self.nets

    @property
    def vgg(self) -> nn.Module:
        """The frozen VGG19 of the perceptual loss (loaded on first use; not part of checkpoints)."""
        if getattr(self, "_vgg", None) is None:
            m = self.cfg.model
            self._vgg = load_vgg19(m.vgg_weights, allow_random=m.allow_random_vgg, device=self.device)
        return self._vgg

    def initialize(self, nets: dict[str, nn.Module]) -> None:
        for net in nets.values():
            net.apply(xavier_init)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        betas = (o.beta1, o.beta2)
        return {"generator": torch.optim.Adam(self.nets["generator"].parameters(), lr=o.lr / 2, betas=betas),
                "discriminator": torch.optim.Adam(self.nets["discriminator"].parameters(), lr=o.lr * 2, betas=betas)}

    def lr_factor(self, step: int) -> float:
        total = self.cfg.train.total_iters
        start = int(self.cfg.optim.decay_start * total)
        return 1.0 if step < start or total == start else max(0.0, (total - step) / (total - start))

    def train_stream(self, start_step: int) -> Iterator[dict[str, Tensor]]:
        (h, w), d, t = self.size, self.cfg.data, self.cfg.train
        return iter(CityscapesTrainStream(self.train_index, w, h, t.batch_size, t.seed, start_step=start_step,
                                          num_workers=d.num_workers,
                                          second_batch=self.cfg.remix.method != "none", shard=self.shard))

    def real_bank(self, max_images: int) -> Tensor:
        (h, w) = self.size
        index = replace(self.train_index, samples=self.train_index.samples[:max_images])
        return torch.cat([batch["image"] for batch in eval_loader(index, w, h, batch_size=16)]).to(self.device)

    # -- one iteration -------------------------------------------------------------------------------------------
    def branches(self, batch: dict[str, Tensor], step: int) -> list[Branch]:
        return [Branch("main", batch, g_nets=("generator",), cond_fake=batch["semantics"], step=step)]

    def encode(self, branch: Branch) -> Codes:
        return Codes(branch.inputs["semantics"], lambda: branch.inputs["semantics2"])

    def decode(self, e: Tensor, branch: Branch) -> Tensor:
        return self.nets["generator"](e)

    def fake_condition(self, e: Tensor, branch: Branch) -> Tensor:
        return e

    def targets(self, branch: Branch, codes: Codes) -> Codes:
        return Codes(branch.inputs["image"], lambda: branch.inputs["image2"])

    def content(self, fake: Tensor, branch: Branch) -> list[Tensor]:
        return self.vgg(fake)

    def target_content(self, t: Tensor, branch: Branch) -> list[Tensor]:
        with torch.no_grad():
            return self.vgg(t)

    def content_distance(self, a: list[Tensor], b: list[Tensor]) -> Tensor:
        return vgg_distance(a, b)

    @property
    def content_weight(self) -> float:
        return self.cfg.loss.lambda_vgg

    def discriminate(self, images: Tensor, semantics: Tensor) -> list[list[Tensor]]:
        """Every intermediate output of every scale (feature matching)."""
        return self.nets["discriminator"](torch.cat([semantics, images], dim=1))

    def critic(self, images: Tensor, cond: Tensor) -> list[Tensor]:
        return self.head(self.features(images, cond), cond)

    def features(self, images: Tensor, cond: Tensor) -> list[Tensor]:
        return self.nets["discriminator"].features(torch.cat([cond, images], dim=1))

    def head(self, h: list[Tensor], cond: Tensor) -> list[Tensor]:
        return self.nets["discriminator"].head(h)

    def real_pair(self, branch: Branch) -> tuple[Tensor, Tensor]:
        image = branch.inputs["image"]  # shares the (unmixed) label map of the branch's fakes
        return image, image.roll(1, 0)

    def real_condition(self, branch: Branch) -> Tensor:
        return branch.inputs["semantics"]

    def d_loss(self, branch: Branch, critic: Critic, negatives: Negatives) -> tuple[Tensor, dict[str, Tensor]]:
        pairs = [(branch.inputs["image"], branch.inputs["semantics"]), *((x, c) for x, c, _ in negatives.sets)]
        if critic == self.critic:  # one D pass over reals and fakes, as the official code (one power iteration)
            sizes = [x.shape[0] for x, _ in pairs]
            scales = [l.split(sizes) for l in critic(torch.cat([x for x, _ in pairs]), torch.cat([c for _, c in pairs]))]
            logits = [[scale[k] for scale in scales] for k in range(len(pairs))]
        else:  # a wrapped critic (DiffAugment, AdaptiveMix) draws its augmentation / mixing per set
            logits = [critic(x, c) for x, c in pairs]
        loss_real = hinge_d(logits[0], real=True)
        loss_fake = sum(w * hinge_d(l, real=False) for l, (_, _, w) in zip(logits[1:], negatives.sets))
        return loss_real + loss_fake, {"real": loss_real.detach(), "fake": loss_fake.detach()}

    def g_loss(self, branch: Branch, critic: Critic, fake: Tensor, codes: Codes) -> tuple[Tensor, dict[str, Tensor]]:
        i = branch.inputs
        if branch.lam is None:
            reals = [(i["image"], i["semantics"])]
        elif self.cfg.loss.fm_on_mixed == "relative":
            reals = [(i["image"], branch.cond_fake), (i["image2"], branch.cond_fake)]
        else:
            reals = []
        # one D pass over fakes and reals together, as the official code (and one spectral-norm power iteration)
        outputs = self.discriminate(torch.cat([fake, *(r for r, _ in reals)]),
                                    torch.cat([branch.cond_fake, *(c for _, c in reals)]))
        n = 1 + len(reals)
        fake_features, *real_features = [[[t.chunk(n)[k] for t in scale] for scale in outputs] for k in range(n)]
        # the plain critic's logits are the last output of each scale; a wrapped one (DiffAugment, AdaptiveMix) runs
        logits = [scale[-1] for scale in fake_features] if critic == self.critic else critic(fake, branch.cond_fake)
        loss_adv = hinge_g(logits)
        if branch.lam is None:
            loss_fm = feature_matching(fake_features, real_features[0]).mean()
        elif reals:
            loss_fm = F.relu(feature_matching(fake_features, real_features[0])
                             - feature_matching(fake_features, real_features[1])).mean()
        else:
            loss_fm = fake.new_zeros(())
        loss = loss_adv + self.cfg.loss.lambda_feat * loss_fm
        return loss, {"adv": loss_adv.detach(), "fm": loss_fm.detach()}

    # -- samples -------------------------------------------------------------------------------------------------
    def sample_inputs(self) -> dict[str, Tensor]:
        (h, w) = self.size
        batch = next(iter(eval_loader(self.val_index, w, h, batch_size=4)))
        return {k: batch[k].to(self.device) for k in ("label", "semantics", "image")}

    @torch.no_grad()
    def sample(self, nets: dict[str, nn.Module], inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """'scenes': per val frame, the colour-coded label map | the generated photo | the real photo."""
        G = nets["generator"]
        was_training = G.training
        fake = G.eval()(inputs["semantics"])
        G.train(was_training)
        colours = torch.from_numpy(np.stack([colorize_labels(l.cpu().numpy()) for l in inputs["label"]]))
        colours = colours.permute(0, 3, 1, 2).float().div(255).to(fake.device)
        rows = torch.stack([colours, (fake + 1) / 2, (inputs["image"] + 1) / 2], dim=1).flatten(0, 1)
        return {"scenes": make_grid(rows.clamp(0, 1), nrow=3, padding=2, pad_value=1.0)}

    # -- serving ---------------------------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        h, w = self.size
        return f"SPADE {w}x{h} (label map -> street scene)"

    def export_graphs(self, nets: dict[str, nn.Module]) -> list[ExportGraph]:
        """label_to_photo: labelIds (N, H, W) int64 -> photo; one-hot and edges are built inside the graph. The
        edges come from the label boundaries (an uploaded map has no instance ids), which misses only the borders
        between touching objects of one class. Spectral norm is baked in, SyncBatchNorm made plain BatchNorm."""
        h, w = self.size
        G = bake_spectral_norm(revert_sync_batchnorm(_copy_eval(nets["generator"])))
        labels = TensorSpec("label", "label_map", "int64", ("N", h, w), (0, NUM_LABEL_IDS - 1),
                            choices=tuple(name for _, name, *_ in CITYSCAPES_LABELS),
                            palette=tuple(tuple(int(c) for c in rgb) for rgb in CITYSCAPES_PALETTE),
                            title="label map")
        photo = TensorSpec("image", "image", "float32", ("N", 3, h, w), (-1.0, 1.0), title="photo")
        spec = GraphSpec("label_to_photo", "Label map to photo", (labels,), (photo,),
                         description="SPADE(one_hot(label) + edges(label)): a street scene for a Cityscapes labelIds map")
        return [ExportGraph(spec, GraphModule(_label_to_photo, {"generator": G}))]

    def example_images(self, max_per_label: int = 2) -> list[tuple[Path, str]]:
        root = self.cfg.data.root
        if root is None or not (Path(root) / "gtFine" / "val").is_dir():
            return []
        index = scan_cityscapes(root, "val")
        return [(sample.label.with_name(sample.label.name.replace("labelIds", "color")), sample.name)
                for sample in index.samples[: 3 * max_per_label]
                if sample.label.with_name(sample.label.name.replace("labelIds", "color")).is_file()]

    def pretrained_states(self, path: Path, *, trust: bool) -> tuple[str, dict[str, dict[str, Tensor]]]:
        """An official `*_net_G.pth` or `*_net_D.pth`, with its partner file when it lies beside it."""
        states = {}
        for name, file in _spade_pair(path).items():
            state = plain_state_dict(safe_torch_load(file, trust=trust), file)
            states["generator" if "conv_img.weight" in state else "discriminator"] = state
        return "SPADE official", states

    @classmethod
    def load_official(cls, path: Path, *, img_size: int | None, labels: list[str] | None, trust: bool,
                      device: torch.device) -> tuple["CityscapesTask", dict[str, nn.Module]]:
        """The released `latest_net_G.pth` (Cityscapes options: 36 input channels, ngf 64, 'more', 512 x 256)."""
        cfg = default_config(cls.name)
        cfg.data.img_size = img_size or 512
        G = SPADEGenerator(SEMANTIC_CHANNELS, 64, "more", cfg.data.img_size, 2.0, "spectralspadesyncbatch3x3")
        load_official_generator(path, G, trust=trust)
        return cls(cfg, device), {"generator": G.eval().requires_grad_(False).to(device)}


def _spade_pair(path: Path) -> dict[str, Path]:
    """{"given": path[, "partner": the *_net_D.pth beside a *_net_G.pth, or the reverse]}."""
    files = {"given": path}
    for mine, other in (("_net_G", "_net_D"), ("_net_D", "_net_G")):
        if mine in path.stem:
            partner = path.with_name(path.name.replace(mine, other))
            if partner.is_file():
                files["partner"] = partner
    return files


def _copy_eval(net: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(net).eval()


def _label_to_photo(nets: dict[str, nn.Module], label: Tensor) -> Tensor:
    return nets["generator"](make_semantics(label, instance_edges(label)))
