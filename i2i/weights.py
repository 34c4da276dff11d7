"""Pretrained-weight files: a registry of every network the toolkit loads, where to find it, how to read it.

No network access is assumed at run time. Each `WeightSpec` names the official file, where users download it, the
sha256 (or the sha256 prefix that torch.hub-style names carry) and a loader for the official format. A file is looked up
in this order: an explicit path > the `$I2I_WEIGHTS` folder > `~/.cache/i2i` > the torch hub cache
(`torch.hub.get_dir()/checkpoints`, where torchvision and pytorch-fid put their downloads).

`safe_torch_load` is the one place the project unpickles a file: tensors-only (`weights_only=True`) by default; a full
unpickle, which can run arbitrary code from the file, only when the user passes `trust=True` (`--trust-checkpoint`).

    python -m i2i.weights list            # which files are present, where, and where to put the missing ones
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from i2i.cli import user_errors

ENV_VAR = "I2I_WEIGHTS"


class UntrustedCheckpointError(RuntimeError):
    """The file needs a full unpickle (it stores Python objects besides tensors) and trust was not given."""


class MissingWeightsError(FileNotFoundError):
    """A registered weight file is in none of the searched places (the message says where to get it and put it)."""


class ChecksumError(ValueError):
    """A weight file's sha256 differs from the published one (a corrupt, truncated or different file)."""


class WeightFormatError(ValueError):
    """A weight file loaded, but its content is not the official format of the entry."""


def safe_torch_load(path: str | Path, *, trust: bool = False, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with `weights_only=True`; falls back to a full unpickle only when `trust` is True (with a warning)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: '{path}'")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as safe_error:  # torch raises UnpicklingError or RuntimeError depending on the content
        if not trust:
            raise UntrustedCheckpointError(
                f"'{path}' cannot be loaded as plain tensors ({type(safe_error).__name__}: {str(safe_error).splitlines()[0]}). "
                "It stores Python objects, and unpickling them can run code from the file. If you trust its source, "
                "pass --trust-checkpoint (trust=True)."
            ) from safe_error
    warnings.warn(f"fully unpickling '{path}' because trust was given; only do this for files from a source you trust")
    return torch.load(path, map_location=map_location, weights_only=False)


# ----------------------------------------------------------------------------------------------------------------------
# Official formats


def strip_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """Drops the `module.` prefix that (Distributed)DataParallel adds to every key at save time."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _check_state_dict(state: Any, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not state:
        raise WeightFormatError(f"'{path}': expected {what} (a non-empty dict of tensors), got {type(state).__name__}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightFormatError(f"'{path}': expected {what} of tensors; entries {not_tensors[:5]} are not tensors")
    return strip_module_prefix(state)


def plain_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """torch.save(model.state_dict()) files: torchvision, pytorch-fid, SPADE `latest_net_G.pth`, DRN."""
    return _check_state_dict(obj, path, "a state_dict")


def lightcnn_checkpoint(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """LightCNN's training checkpoint: {'epoch', 'arch', 'prec1', 'state_dict'} saved from a DataParallel model."""
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightFormatError(f"'{path}': expected a LightCNN checkpoint with a 'state_dict' entry, got {keys}")
    return _check_state_dict(obj["state_dict"], path, "LightCNN's ['state_dict']")


def stargan_v2_checkpoint(obj: Any, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """StarGAN v2 `*_nets_ema.ckpt`: {'generator', 'mapping_network', 'style_encoder'[, 'discriminator']: state_dict}."""
    required = ("generator", "mapping_network", "style_encoder")
    if not isinstance(obj, Mapping) or any(k not in obj for k in required):
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise WeightFormatError(f"'{path}': expected a StarGAN v2 checkpoint with entries {list(required)}, got {keys}")
    return {net: _check_state_dict(state, path, f"['{net}']") for net, state in obj.items()}


# ----------------------------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class WeightSpec:
    """One pretrained network file.

    `sha256` is the full hex digest when the publisher gives one, or the leading hex digits that torch.hub-style file
    names (`name-<prefix>.pth`) carry (`sha256_is_prefix=True`); None when nothing is published. `subdir` keeps files
    with generic official names (`latest_net_G.pth`) apart: the file is looked up as `<search dir>/<subdir>/<filename>`.
    """

    name: str
    filename: str
    url: str
    description: str
    loader: Callable[[Any, Path], Any]
    sha256: str | None = None
    sha256_is_prefix: bool = False
    subdir: str = ""
    aliases: tuple[str, ...] = ()
    how_to_get: str = ""

    @property
    def relative_paths(self) -> list[Path]:
        return [Path(self.subdir) / f for f in (self.filename, *self.aliases)]

    @property
    def sha256_label(self) -> str:
        if self.sha256 is None:
            return "not published"
        return f"{self.sha256} (prefix)" if self.sha256_is_prefix else self.sha256


_ENTRIES = (
    WeightSpec(
        name="fid_inception",
        filename="pt_inception-2015-12-05-6726825d.pth",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        description="pytorch-fid's port of the TF FID Inception (evaluators.fid.FIDInceptionV3, --backbone pytorch-fid)",
        loader=plain_state_dict,
        sha256="6726825d",
        sha256_is_prefix=True,
    ),
    WeightSpec(
        name="inception_v3_torchvision",
        filename="inception_v3_google-0cc3c7bd.pth",
        url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        description="torchvision inception_v3 ImageNet weights (StarGAN v2's FID protocol, --backbone torchvision)",
        loader=plain_state_dict,
        sha256="0cc3c7bd",
        sha256_is_prefix=True,
    ),
    WeightSpec(
        name="alexnet",
        filename="alexnet-owt-7be5be79.pth",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        description="torchvision AlexNet, the LPIPS trunk (the v0.1 linear heads ship inside the lpips package)",
        loader=plain_state_dict,
        sha256="7be5be79",
        sha256_is_prefix=True,
    ),
    WeightSpec(
        name="vgg19",
        filename="vgg19-dcbb9e9d.pth",
        url="https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
        description="torchvision VGG19, SPADE's perceptual loss and the Cityscapes content network",
        loader=plain_state_dict,
        sha256="dcbb9e9d",
        sha256_is_prefix=True,
    ),
    WeightSpec(
        name="lightcnn29v2",
        filename="LightCNN_29Layers_V2_checkpoint.pth.tar",
        url="https://drive.google.com/open?id=1Jn6aXtQ84WY-7J3Tpr2_j6sX0ch9yucS",
        description="LightCNN-29v2 face recognition (NIR-VIS encoder and Rank-1/VR evaluation)",
        loader=lightcnn_checkpoint,
        how_to_get="Google Drive link from the AlfredXiangWu/LightCNN README",
    ),
    WeightSpec(
        name="drn_d_105_cityscapes",
        filename="drn-d-105_ms_cityscapes.pth",
        url="http://go.yf.io/drn-cityscapes-models",
        description="DRN-D-105 Cityscapes segmenter (mIoU / accuracy of SPADE outputs)",
        loader=plain_state_dict,
        aliases=("drn_d_105_ms_cityscapes.pth",),
        how_to_get="listed on the fyu/drn README's pretrained Cityscapes models page",
    ),
    WeightSpec(
        name="stargan_v2_afhq",
        filename="100000_nets_ema.ckpt",
        url="https://www.dropbox.com/s/etwm810v25h42sn/100000_nets_ema.ckpt?dl=0",
        description="official StarGAN v2 AFHQ generator, mapping network and style encoder (EMA)",
        loader=stargan_v2_checkpoint,
        subdir="stargan_v2_afhq",
        how_to_get="clovaai/stargan-v2 `bash download.sh pretrained-network-afhq`",
    ),
    WeightSpec(
        name="spade_cityscapes",
        filename="latest_net_G.pth",
        url="https://drive.google.com/file/d/12gvlTbMvUcJewQlSEaZdeb2CdOB-b8kQ/view?usp=sharing",
        description="official SPADE Cityscapes generator",
        loader=plain_state_dict,
        subdir="spade_cityscapes",
        how_to_get="checkpoints.tar.gz from the NVlabs/SPADE README; take checkpoints/cityscapes_pretrained/latest_net_G.pth",
    ),
)
REGISTRY: dict[str, WeightSpec] = {spec.name: spec for spec in _ENTRIES}


def _spec(name: str) -> WeightSpec:
    if name not in REGISTRY:
        raise KeyError(f"unknown weight entry '{name}'; registered: {sorted(REGISTRY)}")
    return REGISTRY[name]


def search_dirs() -> list[Path]:
    """Folders searched after an explicit path, in order: `$I2I_WEIGHTS` (if set), `~/.cache/i2i`, torch hub checkpoints."""
    dirs = []
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]).expanduser())
    dirs.append(Path.home() / ".cache" / "i2i")
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def default_location(name: str) -> Path:
    """Where a missing file should be put: the first searched folder (`$I2I_WEIGHTS` if set, else ~/.cache/i2i)."""
    spec = _spec(name)
    return search_dirs()[0] / spec.subdir / spec.filename


def _missing(spec: WeightSpec, searched: list[Path], explicit: Path | None) -> MissingWeightsError:
    lines = [f"pretrained weights '{spec.name}' ({spec.description}) not found."]
    if explicit is not None:
        lines.append(f"The given path '{explicit}' does not exist (or does not hold '{spec.filename}').")
    else:
        lines.append("Looked for: " + ", ".join(f"'{p}'" for p in searched))
    lines.append(f"Download '{spec.filename}' from {spec.url}" + (f" ({spec.how_to_get})" if spec.how_to_get else ""))
    lines.append(f"and put it at '{default_location(spec.name)}' (folder '{default_location(spec.name).parent}'), "
                 f"or set ${ENV_VAR} to a folder holding it, or pass its path explicitly.")
    return MissingWeightsError("\n".join(lines))


def find_weights(name: str, path: str | Path | None = None) -> Path:
    """The weight file of registry entry `name`.

    `path` (a file, or a folder holding the official file name) wins and is not second-guessed: if it does not exist,
    MissingWeightsError is raised rather than falling back to other folders. Without it, `search_dirs()` are tried.
    """
    spec = _spec(name)
    if path is not None:
        explicit = Path(path).expanduser()
        if explicit.is_file():
            return explicit
        if explicit.is_dir():
            for candidate in (explicit / rel.name for rel in spec.relative_paths):
                if candidate.is_file():
                    return candidate
        raise _missing(spec, [], explicit)
    searched = [folder / rel for folder in search_dirs() for rel in spec.relative_paths]
    for candidate in searched:
        if candidate.is_file():
            return candidate
    raise _missing(spec, searched, None)


def sha256_of(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha256, hashing is slow


def verify_sha256(name: str, path: str | Path) -> None:
    """Raises ChecksumError when the file's sha256 does not match the entry's (full digest or published prefix)."""
    spec = _spec(name)
    if spec.sha256 is None:
        return
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256_of(path)
    actual = _VERIFIED[key]
    expected = spec.sha256.lower()
    if not actual.startswith(expected) or (not spec.sha256_is_prefix and actual != expected):
        kind = "sha256 prefix" if spec.sha256_is_prefix else "sha256"
        raise ChecksumError(
            f"'{path}' is not the official '{spec.filename}': expected {kind} {expected}, actual sha256 {actual}. "
            f"The file is corrupt, truncated or a different release; download it again from {spec.url}."
        )


def load_weights(name: str, path: str | Path | None = None, trust: bool = False, *, verify: bool = True) -> Any:
    """Finds, checks (sha256 when published; `verify=False` skips it) and loads entry `name` in its official format.

    Returns a state dict (`{param name: tensor}`, `module.` prefixes removed); for `stargan_v2_afhq` a dict of state
    dicts keyed by network name. Loading is tensors-only unless `trust=True` (see `safe_torch_load`).
    """
    spec = _spec(name)
    file = find_weights(name, path)
    if verify:
        verify_sha256(name, file)
    return spec.loader(safe_torch_load(file, trust=trust), file)


# ----------------------------------------------------------------------------------------------------------------------
# CLI


def status_rows() -> list[dict[str, str]]:
    rows = []
    for spec in REGISTRY.values():
        try:
            found, status = str(find_weights(spec.name)), "present"
        except MissingWeightsError:
            found, status = f"put it at {default_location(spec.name)}", "missing"
        rows.append({"name": spec.name, "status": status, "file": spec.filename, "location": found,
                     "sha256": spec.sha256_label, "url": spec.url})
    return rows


def format_table(rows: list[dict[str, str]], columns: tuple[str, ...]) -> str:
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns), "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


@user_errors(MissingWeightsError, ChecksumError)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m i2i.weights", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="table of every registered file: present/missing, where found or where to put it")
    listing.add_argument("--urls", action="store_true", help="add the sha256 and download URL columns")
    check = commands.add_parser("verify", help="hash a present file and compare with the published sha256")
    check.add_argument("name", choices=sorted(REGISTRY))
    check.add_argument("--path", default=None, help="explicit file path (default: search the usual folders)")
    args = parser.parse_args(argv)

    if args.command == "list":
        columns = ("name", "status", "file", "location") + (("sha256", "url") if args.urls else ())
        print(format_table(status_rows(), columns))
        print("\nsearched, in order: explicit path > " + " > ".join(str(d) for d in search_dirs()))
        return 0
    file = find_weights(args.name, args.path)
    verify_sha256(args.name, file)
    spec = REGISTRY[args.name]
    verdict = f"matches {spec.sha256_label}" if spec.sha256 else "no published sha256 to compare with"
    print(f"{args.name}: '{file}' sha256 {sha256_of(file)} ({verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
