"""Weight registry: search order, clear errors for missing/corrupt files, sha256 checks, official formats, trust."""
import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from i2i import weights
from i2i.weights import (REGISTRY, ChecksumError, MissingWeightsError, UntrustedCheckpointError, WeightFormatError,
                         WeightSpec, find_weights, load_weights, search_dirs)


@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """Empty `$I2I_WEIGHTS`, home cache and torch hub folders; returns them as (env, cache, hub)."""
    env, home, torch_home = tmp_path / "env", tmp_path / "home", tmp_path / "torch"
    monkeypatch.setenv(weights.ENV_VAR, str(env))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return env, home / ".cache" / "i2i", torch_home / "hub" / "checkpoints"


def unverified(monkeypatch, name: str) -> None:
    """Tests write their own files under official names; they cannot carry the official sha256."""
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(REGISTRY[name], sha256=None))


def write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


class TaggedStateDict(dict):
    """A custom class: unpickling it needs code from this module, so weights_only loading must refuse it."""


def test_registry_has_every_network_the_toolkit_uses():
    assert set(REGISTRY) == {"fid_inception", "inception_v3_torchvision", "alexnet", "vgg19", "lightcnn29v2",
                             "drn_d_105_cityscapes", "stargan_v2_afhq", "spade_cityscapes"}
    for spec in REGISTRY.values():
        assert spec.url.startswith("http") and spec.filename and spec.description
    # torchvision-style names end in the sha256 prefix, which is what the entries check.
    for name in ("fid_inception", "inception_v3_torchvision", "alexnet", "vgg19"):
        spec = REGISTRY[name]
        assert spec.sha256_is_prefix and Path(spec.filename).stem.endswith("-" + spec.sha256)
        assert "prefix" in spec.sha256_label


def test_search_dirs_order(isolated_weights, monkeypatch):
    env, cache, hub = isolated_weights
    assert search_dirs() == [env, cache, hub]
    monkeypatch.delenv(weights.ENV_VAR)
    assert search_dirs() == [cache, hub]


def test_search_order_explicit_then_env_then_cache_then_hub(isolated_weights, tmp_path):
    env, cache, hub = isolated_weights
    name = REGISTRY["vgg19"].filename
    placed = {folder: write(folder / name, {"w": torch.zeros(1)}) for folder in (hub, cache, env)}
    explicit = write(tmp_path / "mine" / "custom.pth", {"w": torch.zeros(1)})
    assert find_weights("vgg19", explicit) == explicit
    for folder in (env, cache, hub):
        assert find_weights("vgg19") == placed[folder]
        placed[folder].unlink()
    with pytest.raises(MissingWeightsError):
        find_weights("vgg19")


def test_explicit_folder_and_missing_explicit_path(isolated_weights, tmp_path):
    env, _, _ = isolated_weights
    write(env / REGISTRY["alexnet"].filename, {"w": torch.zeros(1)})
    folder_file = write(tmp_path / "folder" / REGISTRY["alexnet"].filename, {"w": torch.zeros(1)})
    assert find_weights("alexnet", tmp_path / "folder") == folder_file
    with pytest.raises(MissingWeightsError, match="does-not-exist.pth"):  # no silent fallback to $I2I_WEIGHTS
        find_weights("alexnet", tmp_path / "does-not-exist.pth")


def test_missing_file_error_names_file_url_and_folder(isolated_weights):
    env, _, _ = isolated_weights
    with pytest.raises(MissingWeightsError) as info:
        load_weights("lightcnn29v2")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "LightCNN_29Layers_V2_checkpoint.pth.tar" in message
    assert REGISTRY["lightcnn29v2"].url in message
    assert str(env) in message


def test_generic_official_names_live_in_a_subfolder_and_aliases_are_found(isolated_weights):
    env, cache, _ = isolated_weights
    write(env / "latest_net_G.pth", {"w": torch.zeros(1)})  # someone else's generic file: not the SPADE entry
    with pytest.raises(MissingWeightsError, match="spade_cityscapes"):
        find_weights("spade_cityscapes")
    spade = write(cache / "spade_cityscapes" / "latest_net_G.pth", {"w": torch.zeros(1)})
    assert find_weights("spade_cityscapes") == spade
    drn = write(cache / "drn_d_105_ms_cityscapes.pth", {"w": torch.zeros(1)})
    assert find_weights("drn_d_105_cityscapes") == drn


def toy_spec(monkeypatch, sha256=None, is_prefix=False, loader=weights.plain_state_dict) -> str:
    spec = WeightSpec(name="toy", filename="toy.pth", url="https://example.org/toy.pth", description="toy",
                      loader=loader, sha256=sha256, sha256_is_prefix=is_prefix)
    monkeypatch.setitem(REGISTRY, "toy", spec)
    return "toy"


def test_sha256_prefix_and_full_checks(isolated_weights, monkeypatch):
    env, _, _ = isolated_weights
    file = write(env / "toy.pth", {"w": torch.arange(4.0)})
    digest = hashlib.sha256(file.read_bytes()).hexdigest()

    toy_spec(monkeypatch, sha256=digest[:8], is_prefix=True)
    assert torch.equal(load_weights("toy")["w"], torch.arange(4.0))
    toy_spec(monkeypatch, sha256=digest, is_prefix=False)
    assert torch.equal(load_weights("toy")["w"], torch.arange(4.0))

    wrong = ("0" if digest[0] != "0" else "1") + digest[1:8]
    toy_spec(monkeypatch, sha256=wrong, is_prefix=True)
    with pytest.raises(ChecksumError) as info:
        load_weights("toy")
    assert wrong in str(info.value) and digest in str(info.value) and "prefix" in str(info.value)
    assert torch.equal(load_weights("toy", verify=False)["w"], torch.arange(4.0))


def test_official_entry_rejects_a_file_with_another_hash(isolated_weights):
    env, _, _ = isolated_weights
    write(env / REGISTRY["vgg19"].filename, {"features.0.weight": torch.zeros(1)})
    with pytest.raises(ChecksumError, match="dcbb9e9d"):
        load_weights("vgg19")


def test_pickled_code_needs_trust(isolated_weights, monkeypatch):
    env, _, _ = isolated_weights
    toy_spec(monkeypatch)
    write(env / "toy.pth", TaggedStateDict(w=torch.ones(2)))
    with pytest.raises(UntrustedCheckpointError, match="trust"):
        load_weights("toy")
    with pytest.warns(UserWarning, match="fully unpickling"):
        state = load_weights("toy", trust=True)
    assert torch.equal(state["w"], torch.ones(2))


def test_lightcnn_format_strips_dataparallel_prefix(isolated_weights, monkeypatch):
    env, _, _ = isolated_weights
    unverified(monkeypatch, "lightcnn29v2")
    checkpoint = {"epoch": 10, "arch": "LightCNN-29v2", "prec1": 0.99,
                  "state_dict": {"module.conv1.filter.weight": torch.ones(2), "module.fc.bias": torch.zeros(3)}}
    write(env / REGISTRY["lightcnn29v2"].filename, checkpoint)
    state = load_weights("lightcnn29v2")
    assert set(state) == {"conv1.filter.weight", "fc.bias"}
    write(env / REGISTRY["lightcnn29v2"].filename, {"conv1.filter.weight": torch.ones(2)})
    with pytest.raises(WeightFormatError, match="state_dict"):
        load_weights("lightcnn29v2")


def test_stargan_v2_format_is_a_dict_of_state_dicts(isolated_weights, monkeypatch):
    _, cache, _ = isolated_weights
    unverified(monkeypatch, "stargan_v2_afhq")
    nets = {"generator": {"module.from_rgb.weight": torch.ones(1)}, "mapping_network": {"shared.0.weight": torch.ones(1)},
            "style_encoder": {"unshared.1.weight": torch.ones(1)}}
    path = write(cache / "stargan_v2_afhq" / "100000_nets_ema.ckpt", nets)
    state = load_weights("stargan_v2_afhq")
    assert set(state) == set(nets) and list(state["generator"]) == ["from_rgb.weight"]
    write(path, {"generator": nets["generator"]})
    with pytest.raises(WeightFormatError, match="mapping_network"):
        load_weights("stargan_v2_afhq")


def test_plain_state_dict_rejects_non_tensor_entries(isolated_weights, monkeypatch):
    env, _, _ = isolated_weights
    toy_spec(monkeypatch)
    write(env / "toy.pth", {"w": torch.ones(1), "epoch": 3})
    with pytest.raises(WeightFormatError, match="epoch"):
        load_weights("toy")


def test_list_command_shows_present_and_missing(isolated_weights, capsys):
    env, _, _ = isolated_weights
    present = write(env / REGISTRY["alexnet"].filename, {"w": torch.zeros(1)})
    assert weights.main(["list"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in REGISTRY}
    assert set(rows) == set(REGISTRY)
    assert "present" in rows["alexnet"] and str(present) in rows["alexnet"]
    assert "missing" in rows["vgg19"] and str(env / REGISTRY["vgg19"].filename) in rows["vgg19"]
    assert str(env / "stargan_v2_afhq" / "100000_nets_ema.ckpt") in rows["stargan_v2_afhq"]


def test_unknown_entry_names_the_registered_ones():
    with pytest.raises(KeyError, match="fid_inception"):
        find_weights("inception")
