"""The frozen identity encoder of the NIR-VIS task (G1 of the ReMix split, and the recognizer of its evaluation):
the official LightCNN-29v2 file when it is available, or a LightCNN-29v2 trained here as an identity classifier on
the fold's training identities (`--pretrain-encoder`, cached), for data without the released weights.

An encoder trained here knows only the training identities of this data set: recognition numbers computed with it are
proxy numbers (†), never comparable with the paper's.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from i2i.config import ConfigError
from i2i.data.nirvis import NIRVISTrainSet, load_face
from i2i.fileio import atomic_torch_save
from i2i.nets.lightcnn import LightCNN29v2, faces_to_lightcnn_input, load_lightcnn29v2
from i2i.weights import MissingWeightsError, find_weights, safe_torch_load

FORMAT = "i2i-lightcnn-pretrained"
VERSION = 1


@dataclass(frozen=True)
class EncoderTraining:
    """Settings of the identity-classifier pretraining; part of the cache key."""

    img_size: int  # faces are loaded at the task's size, then resized to LightCNN's 128 like generator outputs
    steps: int = 600
    batch_size: int = 16
    lr: float = 3e-4  # 1e-3 left this normalisation-free 29-layer net at chance accuracy (measured: 600 steps)
    seed: int = 0
    width: float = 1.0  # LightCNN29v2's channel scale (1.0: the released network's shape)


def _faces(train_set: NIRVISTrainSet, img_size: int, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training face (NIR and VIS, grey) at img_size: (N, 1, S, S) in [-1, 1] and identity labels (N,)."""
    files = [(k, p) for k, paths in enumerate(train_set.nir) for p in paths]
    files += [(k, p) for k, paths in enumerate(train_set.vis) for p in paths]
    images = [load_face(p, img_size, 1) for _, p in tqdm(files, desc="encoder faces", disable=not progress,
                                                         leave=False)]
    return torch.stack(images), torch.tensor([k for k, _ in files], dtype=torch.long)


def _train(train_set: NIRVISTrainSet, settings: EncoderTraining, path: Path, device: torch.device,
           progress: bool) -> None:
    start = time.perf_counter()
    images, labels = _faces(train_set, settings.img_size, progress)
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    net = LightCNN29v2(num_classes=len(train_set.subjects), width=settings.width).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    net.train()
    accuracy = 0.0
    for _ in tqdm(range(settings.steps), desc="encoder pretraining", disable=not progress, leave=False):
        index = torch.randint(len(images), (settings.batch_size,), generator=generator)
        batch = images[index]
        flip = torch.rand(len(batch), generator=generator) < 0.5
        batch[flip] = batch[flip].flip(-1)
        logits, _ = net(faces_to_lightcnn_input(batch.to(device)))
        loss = F.cross_entropy(logits, labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = 0.9 * accuracy + 0.1 * float((logits.argmax(1).cpu() == labels[index]).float().mean())
    state = {k: v.cpu() for k, v in net.state_dict().items() if not k.startswith("fc2.")}
    atomic_torch_save({"format": FORMAT, "version": VERSION, "settings": asdict(settings),
                       "subjects": list(train_set.subjects), "train_accuracy": accuracy, "state_dict": state}, path)
    if progress:
        print(f"encoder: LightCNN-29v2 trained on {len(train_set.subjects)} identities in "
              f"{time.perf_counter() - start:.0f} s (running train accuracy {accuracy:.2f}), saved to {path}")


def pretrain_encoder(train_set: NIRVISTrainSet, settings: EncoderTraining, cache_dir: Path,
                     device: torch.device, progress: bool = True) -> tuple[LightCNN29v2, Path]:
    """A LightCNN-29v2 trained to classify the training identities from NIR and VIS faces (Adam, flips), cached in
    `cache_dir` by the identities' files and the settings; returns the encoder (fc2 dropped, eval, frozen)."""
    # the files by their place in the data set and their size, not their absolute path: the same data mounted
    # elsewhere (a copy, a git worktree's symlink) reuses the cached encoder
    faces = [[(_relative(p, train_set.root), p.stat().st_size) for p in paths]
             for paths in train_set.nir + train_set.vis]
    key = hashlib.sha256(json.dumps({"faces": faces, "settings": asdict(settings), "version": VERSION}).encode()
                         ).hexdigest()[:16]
    path = Path(cache_dir) / f"lightcnn-pretrained-{key}.pt"
    if not path.is_file():
        with torch.random.fork_rng(devices=[]):  # dropout draws: training here must not move the run's RNG
            _train(train_set, settings, path, device, progress)
    payload = safe_torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not a pretrained encoder file (format '{FORMAT}')")
    encoder = LightCNN29v2(encoder_only=True, width=settings.width)
    encoder.load_state_dict(payload["state_dict"], strict=True)
    return encoder.eval().requires_grad_(False).to(device), path


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:  # a file outside the root (an edited manifest): its own path
        return str(path)


def identity_encoder(weights: str | None, pretrain: bool, train_set: NIRVISTrainSet, settings: EncoderTraining,
                     cache_dir: Path, device: torch.device, progress: bool = True) -> tuple[LightCNN29v2, str, bool]:
    """(encoder, source, calibrated): the official LightCNN-29v2 (explicit file or the weight registry's search
    path), else with `pretrain` one trained on the training identities; neither -> ConfigError naming both ways. A
    narrower network (`settings.width` < 1) has no released file: it is always trained."""
    if settings.width != 1.0:
        if weights is not None or not pretrain:
            raise ConfigError(f"model.encoder_width {settings.width}: only the full-width LightCNN-29v2 (1.0) has "
                              "released weights; use encoder_width 1.0 with the file, or --pretrain-encoder")
        encoder, path = pretrain_encoder(train_set, settings, cache_dir, device, progress)
        return encoder, str(path), False
    try:
        file = find_weights("lightcnn29v2", weights)
    except MissingWeightsError as error:
        if weights is not None or not pretrain:
            raise ConfigError(f"{error}\nOr pass --pretrain-encoder (model.pretrain_encoder true) to train a "
                              "LightCNN-29v2 on the training identities of this data set (its recognition numbers are "
                              "then proxy numbers).") from None
        encoder, path = pretrain_encoder(train_set, settings, cache_dir, device, progress)
        return encoder, str(path), False
    return load_lightcnn29v2(file, encoder_only=True).to(device), str(file), True
