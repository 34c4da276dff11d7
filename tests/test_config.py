"""Configuration: presets, overrides from YAML and the command line, clear errors for bad values."""
from __future__ import annotations

import pytest
import yaml

from i2i.config import CONFIG_DIR, ConfigError, build_config, config_from_dict
from i2i.train import resolve


def test_paper_preset_is_the_official_setting():
    cfg = build_config("afhq", None, {})
    assert (cfg.data.img_size, cfg.train.batch_size, cfg.train.total_iters) == (256, 8, 100_000)
    assert (cfg.loss.lambda_reg, cfg.loss.lambda_sty, cfg.loss.lambda_ds, cfg.loss.ds_iter, cfg.loss.lambda_cyc) == (
        1.0, 1.0, 2.0, 100_000, 1.0)
    assert (cfg.optim.lr, cfg.optim.f_lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay) == (
        1e-4, 1e-6, 0.0, 0.99, 1e-4)
    assert cfg.train.ema_beta == 0.999 and cfg.model.width is None and cfg.method == "baseline"
    assert (cfg.remix.p, cfg.remix.alpha, cfg.remix.momentum, cfg.remix.momentum_form) == (0.25, 0.2, 0.99, "paper")


def test_cli_aliases_and_dotted_keys(tmp_path):
    argv = ["--data", str(tmp_path), "--data-frac", "0.1", "--remix", "--mixer", "cutmix", "--model.width", "32",
            "--train.total-iters", "50", "--remix-p", "0.5", "--run-dir", str(tmp_path / "run")]
    cfg, run_dir, ckpt = resolve(argv)
    assert (cfg.data.root, cfg.data.frac, cfg.remix.method, cfg.regularizers.mixer) == (str(tmp_path), 0.1, "remix", "cutmix")
    assert (cfg.model.width, cfg.train.total_iters, cfg.remix.p) == (32, 50, 0.5)
    assert cfg.method == "remix+cutmix" and run_dir == tmp_path / "run" and ckpt is None
    cfg, _, _ = resolve(["--data", str(tmp_path), "--amp", "--amp-dtype", "float16", "--compile"])
    assert (cfg.train.amp, cfg.train.amp_dtype, cfg.train.compile) == (True, "float16", True)


def test_main_command_falls_back_to_demo_preset_without_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/afhq here
    cfg, run_dir, _ = resolve(["--task", "afhq", "--data-frac", "0.1", "--remix"])
    demo = yaml.safe_load((CONFIG_DIR / "afhq_demo.yaml").read_text())
    assert cfg.data.root == demo["data"]["root"] and cfg.data.synthetic and cfg.data.frac == 0.1
    assert cfg.data.img_size == demo["data"]["img_size"] and cfg.remix.method == "remix"
    assert "procedural dataset" in capsys.readouterr().err
    assert run_dir.parts[0] == "runs" and run_dir.name.startswith("afhq-remix-")


def test_main_command_uses_real_data_when_present(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "afhq").mkdir(parents=True)
    cfg, _, _ = resolve(["--data-frac", "0.1", "--remix"])
    assert cfg.data.root == "data/afhq" and cfg.data.img_size == 256 and not cfg.data.synthetic


@pytest.mark.parametrize("override, message", [
    ({"data.frac": 0.0}, r"data.frac: 0.0 is invalid; expected a fraction in \(0, 1\]"),
    ({"data.frac": "abc"}, "data.frac: 'abc' is not a valid float"),
    ({"data.img_size": 48}, "power of two"),
    ({"remix.method": "remx"}, "remix.method: 'remx' is not one of none, remix, wm, mixup"),
    ({"regularizers.mixer": "blend"}, "none, mixup, cutmix, srmix"),
    ({"regularizers.diffaug": "color,zoom"}, "unknown .*op.*zoom.*color, translation, cutout"),
    ({"train.batch_size": 1}, "batch_size"),
    ({"model.widht": 3}, "unknown config key 'model.widht'.*width"),
    ({"colour.x": 1}, "unknown config key 'colour.x'"),
    ({"train.amp": "maybe"}, "train.amp: 'maybe' is not a valid bool"),
    ({"train.amp_dtype": "fp16"}, "^train.amp_dtype: 'fp16' is not one of bfloat16, float16$"),
])
def test_invalid_values_name_key_and_valid_choices(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config("afhq", None, override)


def test_unknown_task_and_bad_preset(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'horses'; available tasks: afhq"):
        build_config("horses", None, {})
    with pytest.raises(ConfigError, match="config file not found"):
        build_config("afhq", tmp_path / "nope.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: afhq\ntrain:\n  total_iter: 5\n")
    with pytest.raises(ConfigError, match="unknown config key 'train.total_iter'"):
        build_config("afhq", bad, {})


def test_saved_config_round_trip():
    cfg = build_config("afhq", CONFIG_DIR / "afhq_demo.yaml", {"remix.method": "wm", "model.width": None})
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict()
