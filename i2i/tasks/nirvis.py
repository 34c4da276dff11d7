"""NIR -> VIS face translation on CASIA NIR-VIS 2.0 (ReMix paper, Sec. 4.2): a frozen LightCNN-29v2 encodes the NIR
face into its 256-d identity feature e (G1), a StyleGAN2 generator trained from scratch decodes e into a VIS face
(G2), with the L1 pixel loss to a VIS photo of the same identity as the content loss.

Training follows rosinality/stylegan2-pytorch: non-saturating logistic losses, lazy R1 (gamma 10 every 16 D steps),
Adam with the lazy-regularisation rate and betas, G EMA 0.5 ** (32 / 10000); style mixing off. The code feeds the
mapping network (PixelNorm fixes its scale) unless `model.input_is_latent`. Order: D step, then G step.

ReMix interpolates the two batches' LightCNN codes, e' = lambda e1 + (1 - lambda) e2; phi is the identity on pixels,
t = the paired VIS photo, and the L1 loss takes the relative form.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.utils import make_grid

from i2i.config import ConfigError
from i2i.data.images import DatasetError, load_rgb
from i2i.data.nirvis import (MANIFEST_NAME, NIRVISTrainStream, load_face, load_recognition_protocol, load_train_set,
                             train_set_for_run, write_manifest)
from i2i.data.synthetic import make_nirvis
from i2i.fileio import atomic_write_text
from i2i.nets.lightcnn import FEATURE_DIM, LightCNN29v2, faces_to_lightcnn_input
from i2i.nets.stylegan2 import Discriminator, Generator
from i2i.nets.stylegan2_io import load_rosinality_checkpoint
from i2i.nets.stylegan2_losses import D_REG_EVERY, R1_GAMMA, d_r1_loss, g_nonsaturating_loss, lazy_adam_settings
from i2i.serving import GraphSpec, TensorSpec
from i2i.tasks.base import Branch, Codes, Critic, ExportGraph, GraphModule, Negatives, Task
from i2i.tasks.face_encoder import EncoderTraining, identity_encoder

ENCODER_RECORD = "encoder.json"  # RUN/encoder.json: {"source", "calibrated"} of the frozen encoder


@dataclass
class NIRVISModelConfig:
    n_mlp: int = 8
    channel_multiplier: int = 2
    channel_max: int = 512  # StyleGAN2's widest layer (official 512; smaller for CPU demos)
    input_is_latent: bool = False  # True: the PixelNormed code is w itself (no mapping network)
    encoder_weights: str | None = None  # LightCNN_29Layers_V2_checkpoint.pth.tar; None: the weight registry
    pretrain_encoder: bool = False  # without the file: train a LightCNN-29v2 on the training identities (cached)
    encoder_steps: int = 600
    encoder_width: float = 1.0  # LightCNN's channel scale; 1.0 = the released network (< 1: pretrained here, demos)
    # the pretraining's seed, not the run's: like the one released file, one recognizer serves every run and seed
    encoder_seed: int = 0
    cache_codes: bool = True  # the encoder is frozen: remember each training face's code (exact; saves its forward)


@dataclass
class NIRVISLossConfig:
    lambda_l1: float = 10.0  # the pixel content loss (plain or relative)
    r1_gamma: float = R1_GAMMA
    d_reg_every: int = D_REG_EVERY


@dataclass
class NIRVISOptimConfig:
    lr: float = 0.002


class NIRVISTask(Task):
    name = "nirvis"
    ModelConfig = NIRVISModelConfig
    LossConfig = NIRVISLossConfig
    OptimConfig = NIRVISOptimConfig
    critic_net = "discriminator"
    double_backward_nets = ("discriminator",)  # R1
    ema_net_names = ("generator",)

    @classmethod
    def validate_config(cls, cfg) -> None:
        if cfg.remix.at != "style":
            raise ConfigError("remix.at: nirvis mixes the LightCNN codes; leave remix.at at style")
        if cfg.data.pairs not in ("all", "one"):
            raise ConfigError(f"data.pairs: {cfg.data.pairs!r} is not one of all, one")
        if cfg.loss.d_reg_every < 1:
            raise ConfigError(f"loss.d_reg_every: {cfg.loss.d_reg_every!r} is invalid; expected >= 1")

    # -- set-up --------------------------------------------------------------------------------------------------
    def restore(self, run_dir: Path) -> None:
        """Nothing to recover: the encoder's weights are part of the checkpoint."""

    def prepare_data(self, run_dir: Path, resume: bool) -> None:
        d = self.cfg.data
        if d.root is None:
            raise DatasetError("no dataset root given (--data DIR, or data.root in the config)")
        root = Path(d.root)
        if d.synthetic and not root.exists():
            make_nirvis(root, img_size=max(64, d.img_size))
        self.train_set = train_set_for_run(root, run_dir, fold=d.fold, frac=d.frac, seed=self.cfg.train.seed,
                                           pairs=d.pairs, resume=resume)
        # the stand-in for the released LightCNN learns from the fold's whole training split, whatever part of it the
        # translator gets (--data-frac, --pairs): the released network was trained on other data, and every setting
        # of the study is then scored by the same recognizer
        self.encoder_set = load_train_set(root, d.fold)
        self.protocol = load_recognition_protocol(root, d.fold)
        self.run_dir = Path(run_dir)

    def data_checks(self) -> list[tuple[Path, Callable[[Path], object]]]:
        return [(path, load_rgb) for group in (self.train_set.nir, self.train_set.vis) for paths in group
                for path in paths]

    def drop_files(self, bad: set[Path]) -> None:
        self.train_set = self.train_set.without(bad)

    def write_manifest(self, run_dir: Path) -> None:
        d = self.cfg.data
        write_manifest(Path(run_dir) / MANIFEST_NAME, self.train_set, frac=d.frac, seed=self.cfg.train.seed,
                       pairs=d.pairs, source_root=d.root)

    def build(self) -> dict[str, nn.Module]:
        m, S = self.cfg.model, self.cfg.data.img_size
        self.nets = {
            "encoder": LightCNN29v2(encoder_only=True, width=m.encoder_width).eval().requires_grad_(False).to(
                self.device),
            "generator": Generator(S, FEATURE_DIM, m.n_mlp, m.channel_multiplier, channel_max=m.channel_max
                                   ).to(self.device),
            "discriminator": Discriminator(S, m.channel_multiplier, channel_max=m.channel_max).to(self.device),
        }
        return self.nets

    def initialize(self, nets: dict[str, nn.Module]) -> None:
        """StyleGAN2 keeps PyTorch's init (its equalised layers scale at run time); the encoder gets its weights."""
        m = self.cfg.model
        settings = EncoderTraining(img_size=self.cfg.data.img_size, steps=m.encoder_steps, seed=m.encoder_seed,
                                   width=m.encoder_width)
        encoder, self.encoder_source, self.encoder_calibrated = identity_encoder(
            m.encoder_weights, m.pretrain_encoder, self.encoder_set, settings, Path.home() / ".cache" / "i2i",
            self.device, progress=self.cfg.train.progress)
        with torch.no_grad():
            nets["encoder"].load_state_dict(encoder.state_dict())
        # the evaluator labels recognition numbers by where the encoder came from
        atomic_write_text(self.run_dir / ENCODER_RECORD, json.dumps(
            {"source": self.encoder_source, "calibrated": self.encoder_calibrated}) + "\n")
        if self.cfg.train.progress:
            print(f"encoder: {self.encoder_source} "
                  f"({'LightCNN-29v2 file' if self.encoder_calibrated else 'trained on the training identities: proxy'})")

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr, every = self.cfg.optim.lr, self.cfg.loss.d_reg_every
        return {"generator": torch.optim.Adam(self.nets["generator"].parameters(), lr=lr, betas=(0.0, 0.99)),
                "discriminator": torch.optim.Adam(self.nets["discriminator"].parameters(),
                                                  **lazy_adam_settings(lr, every))}

    def train_stream(self, start_step: int) -> Iterator[dict[str, Tensor]]:
        d, t = self.cfg.data, self.cfg.train
        return iter(NIRVISTrainStream(self.train_set, d.img_size, t.batch_size, t.seed, start_step=start_step,
                                      num_workers=d.num_workers, second_batch=self.cfg.remix.method != "none",
                                      shard=self.shard))

    def real_bank(self, max_images: int) -> Tensor:
        files = [p for paths in self.train_set.vis for p in paths][:max_images]
        return torch.stack([load_face(p, self.cfg.data.img_size, 3) for p in files]).to(self.device)

    # -- one iteration -------------------------------------------------------------------------------------------
    def branches(self, batch: dict[str, Tensor], step: int) -> list[Branch]:
        return [Branch("main", batch, g_nets=("generator",), cond_fake=None, step=step)]

    def code(self, nir: Tensor) -> Tensor:
        """G1: the frozen LightCNN feature (N, 256) of NIR faces (N, 1, S, S) in [-1, 1]. With model.cache_codes the
        feature of a face seen before (same pixels, e.g. the same file and flip) is taken from memory."""
        encode = lambda x: self.nets["encoder"].embed(faces_to_lightcnn_input(x))
        with torch.no_grad():
            if not self.cfg.model.cache_codes:
                return encode(nir)
            cache = self.__dict__.setdefault("_codes", {})
            keys = [hashlib.sha1(face.cpu().numpy().tobytes()).digest() for face in nir]
            for i, key in enumerate(keys):
                if key not in cache:  # one face at a time: the value must not depend on the batch it came in
                    cache[key] = encode(nir[i:i + 1])[0]
            return torch.stack([cache[key] for key in keys])

    def encode(self, branch: Branch) -> Codes:
        return Codes(self.code(branch.inputs["nir"]), lambda: self.code(branch.inputs["nir2"]))

    def decode(self, e: Tensor, branch: Branch) -> Tensor:
        return self.nets["generator"]([e], input_is_latent=self.cfg.model.input_is_latent)[0]

    def targets(self, branch: Branch, codes: Codes) -> Codes:
        return Codes(branch.inputs["vis"], lambda: branch.inputs["vis2"])

    def content(self, fake: Tensor, branch: Branch) -> Tensor:
        return fake

    def target_content(self, t: Tensor, branch: Branch) -> Tensor:
        return t

    def content_distance(self, a: Tensor, b: Tensor) -> Tensor:
        return (a - b).abs().flatten(1).mean(1)

    @property
    def content_weight(self) -> float:
        return self.cfg.loss.lambda_l1

    def critic(self, images: Tensor, cond: Any) -> Tensor:
        return self.nets["discriminator"](images)

    def features(self, images: Tensor, cond: Any) -> Tensor:
        return self.nets["discriminator"].features(images)

    def head(self, h: Tensor, cond: Any) -> Tensor:
        return self.nets["discriminator"].head(h)

    def real_pair(self, branch: Branch) -> tuple[Tensor, Tensor]:
        vis = branch.inputs["vis"]
        return vis, vis.roll(1, 0)

    def d_loss(self, branch: Branch, critic: Critic, negatives: Negatives) -> tuple[Tensor, dict[str, Tensor]]:
        real = branch.inputs["vis"]
        real_logits = critic(real, None)
        loss_real = F.softplus(-real_logits).mean()
        loss_fake = sum(w * F.softplus(critic(images, cond)).mean() for images, cond, w in negatives.sets)
        loss, logs = loss_real + loss_fake, {"real": loss_real.detach(), "fake": loss_fake.detach()}
        every = self.cfg.loss.d_reg_every
        if branch.step % every == 0:  # lazy R1, scaled by the interval as the reference does
            x = real.detach().requires_grad_(True)
            r1 = d_r1_loss(self.nets["discriminator"](x), x)
            loss = loss + self.cfg.loss.r1_gamma / 2 * r1 * every
            logs["r1"] = r1.detach()
        return loss, logs

    def g_loss(self, branch: Branch, critic: Critic, fake: Tensor, codes: Codes) -> tuple[Tensor, dict[str, Tensor]]:
        loss_adv = g_nonsaturating_loss(critic(fake, None))
        return loss_adv, {"adv": loss_adv.detach()}

    # -- samples -------------------------------------------------------------------------------------------------
    def sample_inputs(self) -> dict[str, Tensor]:
        S = self.cfg.data.img_size
        by_subject = {e.subject: e for e in self.protocol.gallery}
        probes = self.protocol.probes[:: max(1, len(self.protocol.probes) // 6)][:6]
        nir = torch.stack([load_face(p.path, S, 1) for p in probes])
        vis = torch.stack([load_face(by_subject[p.subject].path, S, 3) for p in probes])
        return {"nir": nir.to(self.device), "vis": vis.to(self.device)}

    @torch.no_grad()
    def sample(self, nets: dict[str, nn.Module], inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """'faces': per test probe, the NIR face | its translation | the subject's VIS gallery photo."""
        e = nets["encoder"].embed(faces_to_lightcnn_input(inputs["nir"]))
        fake = nets["generator"]([e], input_is_latent=self.cfg.model.input_is_latent, randomize_noise=False)[0]
        rows = torch.stack([inputs["nir"].expand(-1, 3, -1, -1), fake, inputs["vis"]], dim=1).flatten(0, 1)
        return {"faces": make_grid(((rows + 1) / 2).clamp(0, 1), nrow=3, padding=2, pad_value=1.0)}

    def pretrained_states(self, path: Path, *, trust: bool) -> tuple[str, dict[str, dict[str, Tensor]]]:
        """A rosinality/stylegan2-pytorch checkpoint: the generator from g_ema (else g), the discriminator from d.
        The encoder keeps its own source (the LightCNN file or the pretrained cache)."""
        found = load_rosinality_checkpoint(path, trust=trust)
        states = {"generator": found.get("g_ema", found.get("g"))}
        if "d" in found:
            states["discriminator"] = found["d"]
        return "rosinality StyleGAN2", {k: v for k, v in states.items() if v is not None}

    # -- serving ---------------------------------------------------------------------------------------------------
    @property
    def title(self) -> str:
        S = self.cfg.data.img_size
        return f"LightCNN + StyleGAN2 {S} px (NIR face -> VIS face)"

    def export_graphs(self, nets: dict[str, nn.Module]) -> list[ExportGraph]:
        """nir_to_vis: grey NIR face -> VIS face (LightCNN code, StyleGAN2 with its fixed noise, non-grouped
        modulated convs so the batch stays dynamic); face_features: any face -> the 256-d LightCNN feature
        (recognition: verification scores, rank-1 / VR@FAR of uploaded sets)."""
        S = self.cfg.data.img_size
        G = copy.deepcopy(nets["generator"]).eval().set_fused(False)
        face = TensorSpec("nir", "image", "float32", ("N", 1, S, S), (-1.0, 1.0), title="NIR face")
        vis = TensorSpec("image", "image", "float32", ("N", 3, S, S), (-1.0, 1.0), title="VIS face")
        feature = TensorSpec("feature", "embedding", "float32", ("N", FEATURE_DIM), title="LightCNN feature")
        input_is_latent = self.cfg.model.input_is_latent

        def nir_to_vis(n: dict[str, nn.Module], nir: Tensor) -> Tensor:
            e = n["encoder"].embed(faces_to_lightcnn_input(nir))
            return n["generator"]([e], input_is_latent=input_is_latent, randomize_noise=False)[0]

        def face_features(n: dict[str, nn.Module], x: Tensor) -> Tensor:
            return n["encoder"].embed(faces_to_lightcnn_input(x))

        return [
            ExportGraph(GraphSpec("nir_to_vis", "NIR to VIS", (face,), (vis,),
                                  description="StyleGAN2(LightCNN(nir)): the VIS face of a NIR face's identity"),
                        GraphModule(nir_to_vis, {"encoder": nets["encoder"], "generator": G})),
            ExportGraph(GraphSpec("face_features", "Face features", (TensorSpec("x", "image", "float32",
                                                                                ("N", 1, S, S), (-1.0, 1.0),
                                                                                title="face"),), (feature,),
                                  ui=False, description="the recognizer's 256-d feature (compare with cosine)"),
                        GraphModule(face_features, {"encoder": nets["encoder"]})),
        ]

    def example_images(self, max_per_label: int = 2) -> list[tuple[Path, str]]:
        protocol = getattr(self, "protocol", None)
        if protocol is None:
            root = self.cfg.data.root
            try:
                protocol = load_recognition_protocol(root, self.cfg.data.fold) if root else None
            except DatasetError:
                return []
        if protocol is None:
            return []
        return [(p.path, f"NIR {p.subject}") for p in protocol.probes[:3 * max_per_label]]
