"""StarGAN v2 on AFHQ (multi-domain, latent- and reference-guided), as the official clovaai/stargan-v2 trains it.

Per iteration: D step latent (s = F(z, y_trg)), D step reference (s = E(x_ref, y_trg)), G step latent (steps G, F, E),
G step reference (steps G only); EMA 0.999 on G, F, E; lambda_ds decays linearly to 0 over ds_iter.

ReMix (paper 002, Sec. 4.1) splits G = G2 ∘ G1 at the style code: G1 = the mapping network (latent branch) or the style
encoder (reference branch), G2 = the generator; φ = the style encoder of the output, t = the style code, and the style
reconstruction loss takes the relative form. `remix.at: content` instead mixes the generator's encoder features of two
source images (x and its batch-rolled copy); its content loss is then the cycle loss, made relative (d_k = |G(s', ŝ) - x_k|
with ŝ the interpolated source style), and the style reconstruction loss stays plain.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from i2i.config import ConfigError, default_config
from i2i.data.afhq import AFHQTrainStream, load_eval_images, scan_split
from i2i.data.images import DatasetError, load_rgb
from i2i.data.subset import manifest_domains, read_manifest, select_fraction, write_manifest
from i2i.data.synthetic import make_afhq
from i2i.engine.amp import penalty_grad
from i2i.engine.distributed import shard_slice
from i2i.nets.stargan_v2 import (build_nets, he_init, load_official_checkpoint, load_official_nets,
                                  official_architecture)
from i2i.serving import GraphSpec, TensorSpec
from i2i.tasks.base import Branch, Codes, Critic, ExportGraph, GraphModule, Negatives, Task

GENERATOR_SIDE = ("generator", "mapping_network", "style_encoder")


@dataclass
class AFHQModelConfig:
    style_dim: int = 64
    latent_dim: int = 16
    max_conv_dim: int = 512
    w_hpf: int = 0
    width: int | None = None  # channels of the first conv; None: the official rule 2**14 // img_size


@dataclass
class AFHQLossConfig:
    lambda_reg: float = 1.0  # R1
    lambda_sty: float = 1.0  # style reconstruction
    lambda_ds: float = 2.0  # diversity sensitive, decayed linearly to 0 over ds_iter
    ds_iter: int = 100_000
    lambda_cyc: float = 1.0


@dataclass
class AFHQOptimConfig:
    lr: float = 1e-4  # generator, style encoder, discriminator
    f_lr: float = 1e-6  # mapping network
    beta1: float = 0.0
    beta2: float = 0.99
    weight_decay: float = 1e-4


# -- losses (official StarGAN v2) -----------------------------------------------------------------------------------
def adv_loss(logits: Tensor, target: float) -> Tensor:
    """Non-saturating GAN loss: BCE-with-logits of (N,) logits against a constant target 1 (real) or 0 (fake)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def r1_penalty(d_out: Tensor, x_in: Tensor) -> Tensor:
    """R1 = 0.5 * mean over the batch of |dD(x)/dx|^2 (summed over pixels); x_in must require grad."""
    grad = penalty_grad(d_out, x_in)
    return 0.5 * grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def l1_per_sample(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference per sample: (N, ...) x (N, ...) -> (N,)."""
    return (a - b).abs().reshape(a.shape[0], -1).mean(1)


def lambda_ds_at(step: int, loss: AFHQLossConfig) -> float:
    """The official schedule: lambda_ds decreases by lambda_ds / ds_iter after every iteration, down to 0."""
    return max(0.0, loss.lambda_ds * (1.0 - step / loss.ds_iter)) if loss.ds_iter > 0 else 0.0


# -- translation with a nets dict (sampling, evaluation and serving use these too) ------------------------------------
def translate_latent(nets: dict[str, nn.Module], x: Tensor, y_trg: Tensor, z: Tensor) -> Tensor:
    """x (N, 3, S, S) in [-1, 1], y_trg (N,) target domains, z (N, latent_dim) -> translations (N, 3, S, S)."""
    return nets["generator"](x, nets["mapping_network"](z, y_trg))


def translate_reference(nets: dict[str, nn.Module], x: Tensor, x_ref: Tensor, y_ref: Tensor) -> Tensor:
    """x (N, 3, S, S), x_ref (N, 3, S, S) references of domains y_ref (N,) -> translations (N, 3, S, S)."""
    return nets["generator"](x, nets["style_encoder"](x_ref, y_ref))


def _to_unit(x: Tensor) -> Tensor:
    return ((x + 1) / 2).clamp(0, 1)


class AFHQTask(Task):
    name = "afhq"
    ModelConfig = AFHQModelConfig
    LossConfig = AFHQLossConfig
    OptimConfig = AFHQOptimConfig
    critic_net = "discriminator"
    double_backward_nets = ("discriminator",)  # R1
    ema_net_names = GENERATOR_SIDE
    branch_names = ("latent", "reference")

    @classmethod
    def validate_config(cls, cfg) -> None:
        m = cfg.model
        if m.width is not None and m.width < 1:
            raise ConfigError(f"model.width: {m.width!r} is invalid; expected a positive channel count or null")
        for key in ("style_dim", "latent_dim", "max_conv_dim"):
            if getattr(m, key) < 1:
                raise ConfigError(f"model.{key}: {getattr(m, key)!r} is invalid; expected >= 1")
        if cfg.loss.ds_iter < 0:
            raise ConfigError(f"loss.ds_iter: {cfg.loss.ds_iter!r} is invalid; expected >= 0")

    # -- set-up --------------------------------------------------------------------------------------------------
    def restore(self, run_dir: Path) -> None:
        self.domains = manifest_domains(Path(run_dir) / "data_manifest.json")

    def prepare_data(self, run_dir: Path, resume: bool) -> None:
        d = self.cfg.data
        if d.root is None:
            raise DatasetError("no dataset root given (--data DIR, or data.root in the config)")
        root = Path(d.root)
        if d.synthetic and not root.exists():
            make_afhq(root)
        manifest = Path(run_dir) / "data_manifest.json"
        if resume and manifest.exists():
            self.train_index = read_manifest(manifest, root)
        else:
            self.train_index = select_fraction(scan_split(root, "train"), d.frac, self.cfg.train.seed)
            self.write_manifest(run_dir)
        self.val_index = scan_split(root, "val")
        if self.val_index.domains != self.train_index.domains:
            raise DatasetError(f"'{root}': train domains {self.train_index.domains} differ from val domains "
                               f"{self.val_index.domains}")
        self.domains = list(self.train_index.domains)

    def data_checks(self) -> list[tuple[Path, Callable[[Path], object]]]:
        return [(path, load_rgb) for path in self.train_index.files]

    def drop_files(self, bad: set[Path]) -> None:
        self.train_index = self.train_index.without(bad)

    def write_manifest(self, run_dir: Path) -> None:
        write_manifest(Path(run_dir) / "data_manifest.json", self.train_index, split="train", frac=self.cfg.data.frac,
                       seed=self.cfg.train.seed, source_root=self.cfg.data.root)

    def build(self) -> dict[str, nn.Module]:
        m, S = self.cfg.model, self.cfg.data.img_size
        nets = build_nets(S, len(self.domains), style_dim=m.style_dim, latent_dim=m.latent_dim,
                          max_conv_dim=m.max_conv_dim, w_hpf=m.w_hpf, width=m.width)
        self.nets = {name: net.to(self.device) for name, net in nets.items()}
        return self.nets

    def initialize(self, nets: dict[str, nn.Module]) -> None:
        for net in nets.values():
            net.apply(he_init)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        o = self.cfg.optim
        return {
            name: torch.optim.Adam(net.parameters(), lr=o.f_lr if name == "mapping_network" else o.lr,
                                   betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
            for name, net in self.nets.items()
        }

    def train_stream(self, start_step: int) -> Iterator[dict[str, Tensor]]:
        d, t = self.cfg.data, self.cfg.train
        return iter(AFHQTrainStream(self.train_index, d.img_size, t.batch_size, t.seed, start_step=start_step,
                                    num_workers=d.num_workers, rrc_prob=d.rrc_prob,
                                    third_reference=self.independent_mix_code, shard=self.shard))

    def real_bank(self, max_images: int) -> Tensor:
        per_domain = max(1, max_images // len(self.domains))
        x, _ = load_eval_images(self.train_index, self.cfg.data.img_size, per_domain=per_domain)
        return x.to(self.device)

    # -- one iteration -------------------------------------------------------------------------------------------
    def global_randn(self, n: int, dim: int) -> Tensor:
        """(n, dim) standard normal for this rank's part of the batch: drawn for the global batch on the CPU generator
        (as the official input fetcher does) and sliced, so the codes are the same on any device and rank count."""
        world = self.shard[1]
        return torch.randn(n * world, dim)[shard_slice(n * world, self.shard)].to(self.device)

    def branches(self, batch: dict[str, Tensor], step: int) -> list[Branch]:
        n, latent_dim = batch["x"].shape[0], self.cfg.model.latent_dim
        z, z2 = (self.global_randn(n, latent_dim) for _ in range(2))
        inputs = {**batch, "z": z, "z2": z2}
        return [
            Branch("latent", inputs, g_nets=GENERATOR_SIDE, cond_fake=batch["y_trg"], step=step),
            Branch("reference", inputs, g_nets=("generator",), cond_fake=batch["y_trg"], step=step),
        ]

    @property
    def independent_mix_code(self) -> bool:
        r = self.cfg.remix
        return r.method != "none" and r.second_code == "independent" and r.at == "style"

    def style_code(self, branch: Branch, second: bool = False) -> Tensor:
        """G1 of the paper's split: s = F(z, y_trg) (latent branch) or E(x_ref, y_trg) (reference branch); `second`
        gives the diversity loss's second style (z2 / x_ref2)."""
        i, y = branch.inputs, branch.cond_fake
        if branch.name == "latent":
            return self.nets["mapping_network"](i["z2"] if second else i["z"], y)
        return self.nets["style_encoder"](i["x_ref2"] if second else i["x_ref"], y)

    def mix_code(self, branch: Branch) -> Tensor:
        """The code ReMix mixes with the first: a third z / reference (independent) or the diversity loss's second."""
        if not self.independent_mix_code:
            return self.style_code(branch, second=True)
        i, y = branch.inputs, branch.cond_fake
        if branch.name == "latent":
            if "z3" not in i:  # drawn once per iteration on first use, so the D and G steps mix the same codes
                i["z3"] = self.global_randn(y.shape[0], self.cfg.model.latent_dim)
            return self.nets["mapping_network"](i["z3"], y)
        return self.nets["style_encoder"](i["x_ref3"], y)

    @property
    def mixes_content(self) -> bool:
        return self.cfg.remix.at == "content"

    def encode(self, branch: Branch) -> Codes:
        if not self.mixes_content:
            return Codes(self.style_code(branch), lambda: self.mix_code(branch))
        s, G, x = self.style_code(branch), self.nets["generator"], branch.inputs["x"]
        return Codes({"content": G.encode_content(x), "style": s},
                     lambda: {"content": G.encode_content(x.roll(1, 0)), "style": s})

    def decode(self, e: Any, branch: Branch) -> Tensor:
        if not self.mixes_content:
            return self.nets["generator"](branch.inputs["x"], e)
        return self.nets["generator"].decode_content(e["content"], e["style"])

    def targets(self, branch: Branch, codes: Codes) -> Codes:
        if not self.mixes_content:
            return Codes(codes.first, lambda: codes.second)
        x = branch.inputs["x"]
        return Codes(x, lambda: x.roll(1, 0))

    def content(self, fake: Tensor, branch: Branch) -> Tensor:
        if not self.mixes_content:
            return self.nets["style_encoder"](fake, branch.cond_fake)
        # the cycle reconstruction with the (interpolated) source style
        E, x, y = self.nets["style_encoder"], branch.inputs["x"], branch.inputs["y"]
        s_org = E(x, y)
        if branch.lam is not None:
            w = branch.lam.to(s_org.device).reshape(-1, 1) if branch.lam.dim() else branch.lam.to(s_org.device)
            s_org = torch.lerp(E(x.roll(1, 0), y.roll(1, 0)), s_org, w)
        return self.nets["generator"](fake, s_org)

    def target_content(self, t: Tensor, branch: Branch) -> Tensor:
        return t  # style codes (style mode) and source images (content mode) are already in φ space

    def content_distance(self, a: Tensor, b: Tensor) -> Tensor:
        return l1_per_sample(a, b)

    @property
    def content_weight(self) -> float:
        return self.cfg.loss.lambda_cyc if self.mixes_content else self.cfg.loss.lambda_sty

    def critic(self, images: Tensor, cond: Tensor) -> Tensor:
        return self.nets["discriminator"](images, cond)

    def features(self, images: Tensor, cond: Tensor) -> Tensor:
        return self.nets["discriminator"].features(images)

    def head(self, h: Tensor, cond: Tensor) -> Tensor:
        return self.nets["discriminator"].head(h, cond)

    def critic_groups(self, cond: Tensor) -> Tensor:
        return cond

    def real_pair(self, branch: Branch) -> tuple[Tensor, Tensor]:
        return branch.inputs["x_ref"], branch.inputs["x_ref2"]  # two real images of each fake's target domain

    def d_loss(self, branch: Branch, critic: Critic, negatives: Negatives) -> tuple[Tensor, dict[str, Tensor]]:
        x_real = branch.inputs["x"].detach().requires_grad_()
        out = critic(x_real, branch.inputs["y"])
        loss_real = adv_loss(out, 1.0)
        loss_reg = r1_penalty(out, x_real)
        loss_fake = sum(w * adv_loss(critic(images, cond), 0.0) for images, cond, w in negatives.sets)
        loss = loss_real + loss_fake + self.cfg.loss.lambda_reg * loss_reg
        return loss, {"real": loss_real.detach(), "fake": loss_fake.detach(), "reg": loss_reg.detach()}

    def g_loss(self, branch: Branch, critic: Critic, fake: Tensor, codes: Codes) -> tuple[Tensor, dict[str, Tensor]]:
        loss_cfg, G = self.cfg.loss, self.nets["generator"]
        x, y_trg = branch.inputs["x"], branch.cond_fake
        loss_adv = adv_loss(critic(fake, y_trg), 1.0)
        s2 = codes.second if not (self.mixes_content or self.independent_mix_code) else \
            self.style_code(branch, second=True)
        with torch.no_grad():  # the official code detaches this output: no graph needed
            fake2 = G(x, s2)
        loss_ds = (fake - fake2).abs().mean()
        lambda_ds = lambda_ds_at(branch.step, loss_cfg)
        loss = loss_adv - lambda_ds * loss_ds
        logs = {"adv": loss_adv.detach(), "ds": loss_ds.detach()}
        if self.mixes_content:  # the cycle loss is the content loss; the style reconstruction stays plain
            s_trg = codes.first["style"]
            loss_sty = (self.nets["style_encoder"](fake, y_trg) - s_trg).abs().mean()
            return loss + loss_cfg.lambda_sty * loss_sty, {**logs, "sty": loss_sty.detach()}
        s_org = self.nets["style_encoder"](x, branch.inputs["y"])
        loss_cyc = (G(fake, s_org) - x).abs().mean()
        return loss + loss_cfg.lambda_cyc * loss_cyc, {**logs, "cyc": loss_cyc.detach()}

    # -- samples ---------------------------------------------------------------------------------------------------
    def sample_inputs(self) -> dict[str, Tensor]:
        S, K = self.cfg.data.img_size, len(self.domains)
        x_src, y_src = load_eval_images(self.val_index, S, per_domain=max(1, 8 // K))
        x_ref, y_ref = load_eval_images(self.val_index, S, per_domain=1, seed=1)
        # a private generator: sampling must not move the training RNG (resume would no longer be exact)
        z = torch.randn(2, self.cfg.model.latent_dim, generator=torch.Generator().manual_seed(self.cfg.train.seed))
        return {k: v.to(self.device) for k, v in dict(x_src=x_src, y_src=y_src, x_ref=x_ref, y_ref=y_ref, z=z).items()}

    @torch.no_grad()
    def sample(self, nets: dict[str, nn.Module], inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """'reference': row 0 = the references, then per source its translation with each reference;
        'latent': per source, the source then one translation per (domain, latent code)."""
        x_src, x_ref, y_ref, z = inputs["x_src"], inputs["x_ref"], inputs["y_ref"], inputs["z"]
        n_src, n_ref, K = x_src.shape[0], x_ref.shape[0], len(self.domains)
        rows = [torch.cat([torch.full_like(x_src[:1], -1.0), x_ref])]
        for i in range(n_src):
            out = translate_reference(nets, x_src[i:i + 1].expand(n_ref, -1, -1, -1), x_ref, y_ref)
            rows.append(torch.cat([x_src[i:i + 1], out]))
        reference = make_grid(_to_unit(torch.cat(rows)), nrow=n_ref + 1, padding=2, pad_value=1.0)
        y_all = torch.arange(K, device=x_src.device).repeat_interleave(z.shape[0])
        z_all = z.repeat(K, 1)
        rows = []
        for i in range(n_src):
            out = translate_latent(nets, x_src[i:i + 1].expand(len(y_all), -1, -1, -1), y_all, z_all)
            rows.append(torch.cat([x_src[i:i + 1], out]))
        latent = make_grid(_to_unit(torch.cat(rows)), nrow=len(y_all) + 1, padding=2, pad_value=1.0)
        return {"reference": reference, "latent": latent}

    # -- serving ---------------------------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        return f"StarGAN v2 {self.cfg.data.img_size} px ({', '.join(self.domains)})"

    def export_graphs(self, nets: dict[str, nn.Module]) -> list[ExportGraph]:
        """latent (x, y_trg, z), reference (x, x_ref, y_trg) -> image; and the style encoder, mapping network and
        generator alone, for programs that mix styles."""
        S, m, K = self.cfg.data.img_size, self.cfg.model, self.domains
        image = lambda name, title: TensorSpec(name, "image", "float32", ("N", 3, S, S), (-1.0, 1.0), title=title)
        domain = lambda name, title: TensorSpec(name, "domain", "int64", ("N",), choices=tuple(K), title=title)
        style = TensorSpec("s", "style", "float32", ("N", m.style_dim), title="style code")
        out = TensorSpec("image", "image", "float32", ("N", 3, S, S), (-1.0, 1.0), title="translation")
        G, F_, E = nets["generator"], nets["mapping_network"], nets["style_encoder"]
        specs = [
            (GraphSpec("latent", "Latent-guided", (image("x", "source"), domain("y_trg", "target domain"),
                                                   TensorSpec("z", "latent", "float32", ("N", m.latent_dim),
                                                              title="latent code")), (out,),
                       description="G(x, F(z, y_trg)): a random style of the target domain per latent code"),
             lambda n, x, y, z: translate_latent(n, x, y, z), {"generator": G, "mapping_network": F_}),
            (GraphSpec("reference", "Reference-guided", (image("x", "source"), image("x_ref", "reference"),
                                                         domain("y_trg", "reference's domain")), (out,),
                       description="G(x, E(x_ref, y_trg)): the style of a reference image of the target domain"),
             lambda n, x, x_ref, y: translate_reference(n, x, x_ref, y), {"generator": G, "style_encoder": E}),
            (GraphSpec("style_encoder", "Style encoder", (image("x_ref", "reference"), domain("y", "domain")),
                       (style,), ui=False, description="E(x_ref, y) -> style code"),
             lambda n, x, y: n["style_encoder"](x, y), {"style_encoder": E}),
            (GraphSpec("mapping_network", "Mapping network", (TensorSpec("z", "latent", "float32",
                                                                        ("N", m.latent_dim)), domain("y", "domain")),
                       (style,), ui=False, description="F(z, y) -> style code"),
             lambda n, z, y: n["mapping_network"](z, y), {"mapping_network": F_}),
            (GraphSpec("generator", "Generator", (image("x", "source"), style), (out,), ui=False,
                       description="G(x, s): translate with any style code (mix styles here)"),
             lambda n, x, s: n["generator"](x, s), {"generator": G}),
        ]
        return [ExportGraph(spec, GraphModule(fn, parts)) for spec, fn, parts in specs]

    def example_images(self, max_per_label: int = 2) -> list[tuple[Path, str]]:
        root = self.cfg.data.root
        if root is None or not (Path(root) / "val").is_dir():
            return []
        index = scan_split(root, "val")
        taken: dict[int, int] = {}
        examples = []
        for path, label in zip(index.files, index.labels):
            if taken.get(label, 0) < max_per_label:
                taken[label] = taken.get(label, 0) + 1
                examples.append((path, index.domains[label]))
        return examples

    def pretrained_states(self, path: Path, *, trust: bool) -> tuple[str, dict[str, dict[str, Tensor]]]:
        """An official `*_nets_ema.ckpt` (generator, mapping network, style encoder) or `*_nets.ckpt` (also D)."""
        return "StarGAN v2 official", load_official_checkpoint(path, trust=trust)

    @classmethod
    def load_official(cls, path: Path, *, img_size: int | None, labels: list[str] | None, trust: bool,
                      device: torch.device) -> tuple["AFHQTask", dict[str, nn.Module]]:
        """An official `*_nets_ema.ckpt` (the architecture is read from the file; AFHQ's domains are cat, dog,
        wild unless `labels` names them)."""
        nets = load_official_nets(path, img_size=img_size, trust=trust)
        arch = official_architecture({n: net.state_dict() for n, net in nets.items()}, path)
        cfg = default_config(cls.name)
        cfg.data.img_size = arch["img_size"]
        cfg.model.style_dim, cfg.model.latent_dim = arch["style_dim"], arch["latent_dim"]
        cfg.model.max_conv_dim, cfg.model.width = arch["max_conv_dim"], arch["width"]
        names = list(labels) if labels else (["cat", "dog", "wild"] if arch["num_domains"] == 3 else
                                             [f"domain{k}" for k in range(arch["num_domains"])])
        if len(names) != arch["num_domains"]:
            raise ValueError(f"'{path}' has {arch['num_domains']} domains, but {len(names)} names were given: {names}")
        task = cls(cfg, device)
        task.domains = names
        return task, {name: net.eval().requires_grad_(False).to(device) for name, net in nets.items()}
