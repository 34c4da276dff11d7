"""Configuration as plain data: dataclasses, YAML presets in `configs/`, command-line overrides.

Resolution order: dataclass defaults < the task's YAML preset (or `--config FILE`) < command-line flags.
Every field can be set from the command line as `--section.field VALUE` (e.g. `--train.total_iters 500`,
`--model.width 32`); the common ones also have short flags (`--data`, `--data-frac`, `--remix`, `--mixer`, ...).
Task-specific sections (`model`, `loss`, `optim`) are dataclasses declared by the task module.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from i2i.engine.amp import AMP_DTYPES
from i2i.mixing.adaptivemix import DISTANCES, PAIRINGS, PAIRS
from i2i.mixing.diffaug import parse_policy
from i2i.mixing.image_mix import MIX_KINDS
from i2i.mixing.pcr import COMBINE_OPS
from i2i.mixing.remix import A_BAR_MODES, DRAWS, FEATURE_MIX_METHODS, MOMENTUM_FORMS

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs"


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key, the value and what is allowed."""


@dataclass
class DataConfig:
    root: str | None = None  # dataset root; None: data/<task> if present, else the procedural set
    frac: float = 1.0  # --data-frac: seeded per-domain fraction of the training set
    img_size: int = 256
    num_workers: int = 4
    rrc_prob: float = 0.5  # probability of RandomResizedCrop (official StarGAN v2 augmentation)
    synthetic: bool = False  # generate the procedural dataset at `root` when it is missing
    fold: str = "1"  # nirvis: the CASIA NIR-VIS 2.0 protocol fold (1..10, or dev for View 1)
    pairs: str = "all"  # nirvis: all training pairs, or one NIR-VIS pair per identity (the paper's extreme setting)
    skip_bad_images: bool = False  # train without the training files that fail the start-up check (listed in the manifest)


@dataclass
class TrainConfig:
    total_iters: int = 100_000
    batch_size: int = 8  # the global batch (split over the ranks under torchrun)
    batch_per_rank: int | None = None  # under torchrun: the batch of each rank instead (global = this x ranks)
    seed: int = 777
    device: str = "auto"  # auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps
    amp: bool = False  # mixed precision: autocast to amp_dtype
    # bfloat16: on CUDA and on CPUs with bfloat16 instructions (float32 elsewhere); float16: with a GradScaler (dynamic
    # loss scaling), meant for CUDA (on a CPU it runs, slowly: for testing)
    amp_dtype: str = "bfloat16"
    compile: bool = False  # torch.compile the trained nets (eager, with a warning, when the first iteration fails)
    # keep the first branch's D-step fakes with their graph for its G step (G has not changed in between): one
    # generator forward per iteration saved, for holding those activations through the D steps; false: translate
    # again, as the official code does (same results)
    reuse_fakes: bool = True
    channels_last: bool = True  # NHWC memory format for nets and image batches (faster convolutions on CPU and GPU)
    ema_beta: float = 0.999
    # "official": the EMA copy starts from PyTorch's default init, as in clovaai/stargan-v2 (the copy is made before
    # he_init); "trained": it starts as a copy of the he-initialised trained nets (better for short runs).
    ema_start: str = "official"
    log_every: int = 10
    sample_every: int = 5000
    save_every: int = 10_000
    keep_checkpoints: int = 3
    progress: bool = True
    init_from: str | None = None  # a new run starts from these weights (i2i checkpoint or an official release file)
    trust_checkpoint: bool = False  # allow a full unpickle of init_from (only for files from a source you trust)


@dataclass
class FeatureMixConfig:
    """ReMix and its baselines (paper 002): interpolation of G1 features, and the content loss for the mixed batch."""

    method: str = "none"  # none | remix | wm | mixup
    p: float = 0.25  # probability that a branch's batch is interpolated in an iteration
    alpha: float = 0.2  # mu ~ Beta(alpha, alpha); lambda = max(mu, 1 - mu)
    per_sample: bool = False  # one lambda per sample instead of per batch (Algorithm 1 uses per batch)
    momentum: float = 0.99
    momentum_form: str = "paper"  # paper: a <- m a + (1-m)(a_new - a) (Eq. 11);  ema: a <- m a + (1-m) a_new
    at: str = "style"  # afhq only: style (style codes, as the paper) | content (generator encoder features)
    # afhq: the second code mixed with the first: "independent" (a third latent / reference, drawn for mixing only) or
    # "shared" (the diversity loss's second code, which then compares G(x, s') with G(x, s2) and shrinks by ~lambda)
    second_code: str = "independent"
    branches: str = "all"  # the branches that mix: all, or comma-separated names (afhq: latent, reference)
    draw: str = "per_branch"  # per_branch: independent draws per branch | per_iteration: one draw for all
    a_bar: str = "per_branch"  # per_branch: one a_bar per branch | shared: one a_bar for all branches


@dataclass
class RegularizerConfig:
    """Discriminator-side regularizers (papers 000, 001, 003, and DiffAugment)."""

    mixer: str = "none"  # none | mixup | cutmix | srmix
    mix_ratio: float = 0.25
    mix_alpha: float = 1.0
    adaptivemix: bool = False
    adaptivemix_pairs: str = "within"  # within (official code) | real_fake (paper text)
    adaptivemix_pairing: str = "derangement"  # within pairs: derangement per condition | batch (official) | permutation
    adaptivemix_distance: str = "cos"  # cos (official code) | mse (paper text)
    adaptivemix_alpha: float = 1.0
    adaptivemix_noise: float = 0.05
    adaptivemix_weight: float = 1.0
    adaptivemix_on_generator: bool = True
    pcr: bool = False
    pcr_op: str = "mean"  # mean | and | or
    sample_correction: bool = False
    sc_threshold: float = 0.1
    sc_bank_size: int = 2000  # training images held in memory for the DIF realism measure
    diffaug: str = ""  # e.g. "color,translation,cutout"; empty = off


# The valid values come from the modules that implement them (one source of truth).
CHOICES: dict[str, tuple[str, ...]] = {
    "train.ema_start": ("official", "trained"),
    "train.amp_dtype": tuple(AMP_DTYPES),
    "remix.method": FEATURE_MIX_METHODS,
    "remix.momentum_form": MOMENTUM_FORMS,
    "remix.at": ("style", "content"),
    "remix.second_code": ("independent", "shared"),
    "remix.draw": DRAWS,
    "remix.a_bar": A_BAR_MODES,
    "regularizers.mixer": MIX_KINDS,
    "regularizers.adaptivemix_pairs": PAIRS,
    "regularizers.adaptivemix_pairing": PAIRINGS,
    "regularizers.adaptivemix_distance": DISTANCES,
    "regularizers.pcr_op": COMBINE_OPS,
}


@dataclass
class Config:
    task: str
    model: Any
    loss: Any
    optim: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    remix: FeatureMixConfig = field(default_factory=FeatureMixConfig)
    regularizers: RegularizerConfig = field(default_factory=RegularizerConfig)

    SECTIONS = ("data", "model", "loss", "optim", "train", "remix", "regularizers")

    def to_dict(self) -> dict:
        return {"task": self.task, **{s: dataclasses.asdict(getattr(self, s)) for s in self.SECTIONS}}

    @property
    def method(self) -> str:
        """A short name of the regularizer settings, used to group runs in the metric tables."""
        reg = self.regularizers
        # the feature-mixing mixup baseline (interpolated target) is "mixup-target", apart from the image mixer "mixup"
        names = {"none": None, "mixup": "mixup-target"}
        parts = [names.get(self.remix.method, self.remix.method)] if self.remix.method != "none" else []
        parts += [reg.mixer] if reg.mixer != "none" else []
        parts += ["adaptivemix"] if reg.adaptivemix else []
        parts += ["pcr"] if reg.pcr else []
        parts += ["sc"] if reg.sample_correction else []
        parts += ["diffaug"] if reg.diffaug else []
        return "+".join(parts) or "baseline"


def default_config(task: str) -> Config:
    from i2i.tasks import task_class

    cls = task_class(task)
    return Config(task=task, model=cls.ModelConfig(), loss=cls.LossConfig(), optim=cls.OptimConfig())


# ---------------------------------------------------------------------------------------------------------------------
# Setting values (from YAML or the command line), with type conversion and validation


def _field_types(section_obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section_obj))


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Converts a YAML/CLI value to the field's annotated type; raises ConfigError naming the key."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        optional = type(None) in args
        if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null", "")):
            if optional:
                return None
            raise ConfigError(f"{key} cannot be null")
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], key)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if annotation is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}") from None
    return value


def set_value(cfg: Config, key: str, value: Any) -> None:
    """Sets `section.field` (dashes allowed for underscores) with type conversion; unknown keys are errors."""
    key = key.replace("-", "_")
    if key == "task":
        raise ConfigError("the task is chosen with --task, not as an override")
    section, _, name = key.partition(".")
    if section not in Config.SECTIONS or not name:
        raise ConfigError(f"unknown config key '{key}'; keys look like 'section.field' with section in {Config.SECTIONS}")
    obj = getattr(cfg, section)
    types_ = _field_types(obj)
    if name not in types_:
        raise ConfigError(f"unknown config key '{key}'; fields of '{section}': {', '.join(types_)}")
    setattr(obj, name, _convert(value, types_[name], key))


def apply_mapping(cfg: Config, mapping: dict, source: str) -> None:
    for section, values in mapping.items():
        if section == "task":
            if values != cfg.task:
                raise ConfigError(f"{source} is a preset for task '{values}', not '{cfg.task}'")
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of field: value")
        for name, value in values.items():
            set_value(cfg, f"{section}.{name}", value)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: '{path}'")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}' must hold a mapping of sections")
    return data


def validate(cfg: Config) -> None:
    """Checks choices and ranges; every message names the key, the bad value and the valid ones."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")

    def check(key: str, ok: bool, expected: str) -> None:
        if not ok:
            section, name = key.split(".")
            raise ConfigError(f"{key}: {getattr(getattr(cfg, section), name)!r} is invalid; expected {expected}")

    d, t, r, g = cfg.data, cfg.train, cfg.remix, cfg.regularizers
    check("data.frac", 0.0 < d.frac <= 1.0, "a fraction in (0, 1]")
    check("data.img_size", d.img_size >= 16 and d.img_size & (d.img_size - 1) == 0, "a power of two >= 16")
    check("data.num_workers", d.num_workers >= 0, ">= 0")
    check("data.rrc_prob", 0.0 <= d.rrc_prob <= 1.0, "a probability in [0, 1]")
    check("train.total_iters", t.total_iters >= 1, ">= 1")
    check("train.batch_size", t.batch_size >= 2, ">= 2 (ReMix, mixers and R1 need pairs)")
    check("train.ema_beta", 0.0 <= t.ema_beta < 1.0, "a value in [0, 1)")
    for every in ("log_every", "sample_every", "save_every", "keep_checkpoints"):
        check(f"train.{every}", getattr(t, every) >= 1, ">= 1")
    check("remix.p", 0.0 <= r.p <= 1.0, "a probability in [0, 1]")
    check("remix.alpha", r.alpha > 0.0, "> 0 (Beta distribution parameter)")
    check("remix.momentum", 0.0 <= r.momentum < 1.0, "a value in [0, 1)")
    check("regularizers.mix_ratio", 0.0 <= g.mix_ratio <= 1.0, "a fraction in [0, 1]")
    check("regularizers.mix_alpha", g.mix_alpha > 0.0, "> 0")
    check("regularizers.adaptivemix_alpha", g.adaptivemix_alpha > 0.0, "> 0")
    check("regularizers.adaptivemix_noise", g.adaptivemix_noise >= 0.0, ">= 0")
    check("regularizers.sc_threshold", g.sc_threshold >= 0.0, ">= 0")
    check("regularizers.sc_bank_size", g.sc_bank_size >= 1, ">= 1")
    try:
        parse_policy(g.diffaug)
    except ValueError as error:
        raise ConfigError(f"regularizers.diffaug: {error}") from None
    from i2i.tasks import task_class

    cls = task_class(cfg.task)
    if r.branches != "all":
        unknown = [b for b in r.branches.split(",") if b not in cls.branch_names]
        if unknown or not r.branches:
            raise ConfigError(f"remix.branches: {r.branches!r} names no branch of task '{cfg.task}'; expected 'all' or "
                              f"a comma-separated list of {', '.join(cls.branch_names)}")
    cls.validate_config(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# Command line

# short flag -> (config key, argparse kwargs). Flags without a value set a constant.
ALIASES: dict[str, tuple[str, dict]] = {
    "--data": ("data.root", {"metavar": "DIR", "help": "dataset root (AFHQ layout ROOT/{train,val}/<domain>/*)"}),
    "--data-frac": ("data.frac", {"metavar": "F", "help": "keep a seeded per-domain fraction of the training set"}),
    "--img-size": ("data.img_size", {"metavar": "S"}),
    "--fold": ("data.fold", {"metavar": "K", "help": "nirvis: protocol fold 1..10 or dev"}),
    "--pairs": ("data.pairs", {"metavar": "P", "help": "nirvis: all | one (one NIR-VIS pair per identity)"}),
    "--workers": ("data.num_workers", {"metavar": "N"}),
    "--iters": ("train.total_iters", {"metavar": "N"}),
    "--batch-size": ("train.batch_size", {"metavar": "N"}),
    "--seed": ("train.seed", {"metavar": "N"}),
    "--device": ("train.device", {"metavar": "DEV", "help": "auto | cpu | cuda[:i] | mps"}),
    "--amp-dtype": ("train.amp_dtype", {"metavar": "DTYPE", "help": "with --amp: bfloat16 | float16 (with a "
                                        "GradScaler; for CUDA)"}),
    "--feature-mix": ("remix.method", {"metavar": "M", "help": "none | remix | wm | mixup"}),
    "--remix-p": ("remix.p", {"metavar": "P"}),
    "--remix-alpha": ("remix.alpha", {"metavar": "A"}),
    "--remix-at": ("remix.at", {"metavar": "WHERE", "help": "style | content (afhq)"}),
    "--mixer": ("regularizers.mixer", {"metavar": "M", "help": "none | mixup | cutmix | srmix"}),
    "--mix-ratio": ("regularizers.mix_ratio", {"metavar": "R"}),
    "--mix-alpha": ("regularizers.mix_alpha", {"metavar": "A"}),
    "--adaptivemix-pairs": ("regularizers.adaptivemix_pairs", {"metavar": "P", "help": "within | real_fake"}),
    "--adaptivemix-distance": ("regularizers.adaptivemix_distance", {"metavar": "D", "help": "cos | mse"}),
    "--adaptivemix-noise": ("regularizers.adaptivemix_noise", {"metavar": "SIGMA"}),
    "--adaptivemix-weight": ("regularizers.adaptivemix_weight", {"metavar": "W"}),
    "--pcr-op": ("regularizers.pcr_op", {"metavar": "OP", "help": "mean | and | or"}),
    "--sc-threshold": ("regularizers.sc_threshold", {"metavar": "T"}),
    "--diffaug": ("regularizers.diffaug", {"metavar": "POLICY", "help": "e.g. color,translation,cutout"}),
    "--init-from": ("train.init_from", {"metavar": "FILE", "help": "fine-tune: start from these weights (i2i "
                                        "checkpoint, StarGAN v2 *_nets_ema.ckpt, SPADE *_net_G.pth, rosinality .pt)"}),
}
SWITCHES: dict[str, tuple[str, Any, str]] = {
    "--remix": ("remix.method", "remix", "ReMix: feature interpolation + relative content loss (= --feature-mix remix)"),
    "--adaptivemix": ("regularizers.adaptivemix", True, "AdaptiveMix feature-space shrinkage on D"),
    "--pcr": ("regularizers.pcr", True, "PCR: pixel-wise combinations of real pairs as extra negatives"),
    "--sample-correction": ("regularizers.sample_correction", True, "swap too-realistic fakes out of D's batch"),
    "--amp": ("train.amp", True, "mixed precision: bfloat16 autocast (CUDA, and CPUs with AVX-512 BF16), or "
                                 "--amp-dtype float16"),
    "--compile": ("train.compile", True, "torch.compile the trained nets (eager, with a warning, if that fails)"),
    "--skip-bad-images": ("data.skip_bad_images", True,
                          "drop training files that fail the start-up check (logged, recorded in the manifest)"),
    "--trust-checkpoint": ("train.trust_checkpoint", True,
                           "allow --init-from to fully unpickle its file (can run code from it: trusted files only)"),
    "--pretrain-encoder": ("model.pretrain_encoder", True,
                           "nirvis: without the LightCNN-29v2 file, train one on the training identities"),
}


def add_config_arguments(parser: argparse.ArgumentParser, task: str) -> None:
    """Adds the short flags and one `--section.field` flag per config field (all default to 'not given')."""
    group = parser.add_argument_group("configuration (any field: --section.field VALUE)")
    for flag, (key, kwargs) in ALIASES.items():
        group.add_argument(flag, dest=key, default=argparse.SUPPRESS, **kwargs)
    for flag, (key, const, help_) in SWITCHES.items():
        group.add_argument(flag, dest=key, action="store_const", const=const, default=argparse.SUPPRESS, help=help_)
    cfg = default_config(task)
    for section in Config.SECTIONS:
        for name in _field_types(getattr(cfg, section)):
            key = f"{section}.{name}"
            flags = [f"--{key}"] + ([f"--{key.replace('_', '-')}"] if "_" in name else [])
            group.add_argument(*flags, dest=key, default=argparse.SUPPRESS, metavar="V", help=argparse.SUPPRESS)


def describe_keys(task: str) -> str:
    """Every config key with its default, one section per line (for --help)."""
    cfg = default_config(task)
    lines = []
    for section in Config.SECTIONS:
        values = dataclasses.asdict(getattr(cfg, section))
        lines.append(f"  {section}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return "all keys (--section.field VALUE) and their defaults before the preset:\n" + "\n".join(lines)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if "." in k}


def build_config(task: str, preset: str | Path | None, overrides: dict[str, Any]) -> Config:
    """Defaults < preset YAML (None: configs/<task>.yaml) < overrides; validated."""
    cfg = default_config(task)
    preset = Path(preset) if preset is not None else CONFIG_DIR / f"{task}.yaml"
    apply_mapping(cfg, load_yaml(preset), str(preset))
    for key, value in overrides.items():
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def config_from_dict(mapping: dict) -> Config:
    """Rebuilds a Config saved with `to_dict` (e.g. a run's config.yaml)."""
    if "task" not in mapping:
        raise ConfigError("saved config has no 'task' key")
    cfg = default_config(mapping["task"])
    apply_mapping(cfg, mapping, "saved config")
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    from i2i.fileio import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
