"""The AFHQ protocol and `python -m evaluators`: tiny trained runs scored end to end (6 tasks x 2 modes), FID 0 for a
generator that reproduces the real set, 8-bit rounding equal to a PNG round trip, the reference stream, cached real
statistics, official-format checkpoints, result files feeding the tables, and one-line CLI errors."""
import csv
import io
import json
import os
import shutil
import statistics as stats
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.utils import save_image

from evaluators.__main__ import main
from evaluators.fid import fid_to_statistics, frechet_distance, save_statistics, statistics
from evaluators.lpips import build_lpips
from evaluators.protocols import (ReferenceStream, evaluate_afhq, load_official, load_run, official_architecture,
                                  quantize_8bit)
from evaluators.proxy import random_proxy
from evaluators.tables import load_results
from i2i.config import build_config
from i2i.data.images import DatasetError
from i2i.engine.trainer import Trainer
from i2i.nets.stargan_v2 import build_nets, save_official_checkpoint
from tests.conftest import TINY
from tests.test_weights import isolated_weights  # noqa: F401  (pytest fixture)

REPO = Path(__file__).resolve().parents[1]
PAIRS = {"cat->dog", "cat->wild", "dog->cat", "dog->wild", "wild->cat", "wild->dog"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """At 32 px OpenMP synchronisation costs more than the work (and far more on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tiny_afhq, tmp_path_factory):
    """Two tiny baseline runs trained by the trainer for 2 iterations, seeds 1 and 2."""
    folder = tmp_path_factory.mktemp("runs")
    made = []
    for seed in (1, 2):
        cfg = build_config("afhq", None, {"data.root": str(tiny_afhq), **TINY, "train.total_iters": 2,
                                          "train.seed": seed})
        Trainer(cfg, folder / f"baseline-{seed}").fit()
        made.append(folder / f"baseline-{seed}")
    return made


def without_weight_files(patch: pytest.MonkeyPatch, folder: Path) -> None:
    """Hermetic: every folder the weight registry searches is `folder`, so no file of this machine is picked up."""
    for var in ("I2I_WEIGHTS", "HOME", "TORCH_HOME"):
        patch.setenv(var, str(folder))


@pytest.fixture(scope="module")
def lpips_random(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        without_weight_files(patch, tmp_path_factory.mktemp("no-weights"))
        model = build_lpips(allow_random=True)
    assert not model.calibrated
    return model


def evaluate(run_dir, lpips_model, **kwargs):
    run = load_run(run_dir)
    settings = dict(img_size=run.cfg.data.img_size, latent_dim=run.cfg.model.latent_dim, backbone=random_proxy(3),
                    lpips_model=lpips_model, progress=False, device="cpu", domains=run.domains)
    return evaluate_afhq(run.nets, run.data_root, **{**settings, **kwargs})


# ----------------------------------------------------------------------------------------------------------------------
# Building blocks


def test_quantize_8bit_equals_a_png_round_trip(tmp_path):
    x = torch.linspace(-1.3, 1.3, 3 * 8 * 8).reshape(1, 3, 8, 8)
    save_image((x + 1) / 2, tmp_path / "x.png")  # what the official evaluation writes (utils.save_image)
    pixels = torch.from_numpy(np.array(Image.open(tmp_path / "x.png"))).permute(2, 0, 1)[None]
    assert torch.equal(quantize_8bit(x), pixels.float() / 127.5 - 1)
    # by hand: 0 -> 127.5 + 0.5 -> 128; -1.3 clamps to 0; 0.5 -> 191.25 + 0.5 -> 191
    levels = (quantize_8bit(torch.tensor([0.0, -1.3, 0.5, 1.0]).view(1, 4, 1, 1)) + 1) * 127.5
    assert levels.flatten().round().tolist() == [128, 0, 191, 255]


@pytest.mark.parametrize("n", [5, 40])
def test_fid_to_cached_statistics_equals_the_full_form(n):
    """Fakes vs cached real statistics; below D + 1 samples the (N, N) low-rank form is used (rank-deficient
    covariances: the two forms agree to ~1e-8 relative)."""
    generator = torch.Generator().manual_seed(n)
    fakes = torch.randn(n, 16, generator=generator) + 0.3
    real = torch.randn(50, 16, generator=generator) * torch.linspace(0.5, 2, 16)
    full = frechet_distance(*statistics(fakes), *statistics(real))
    assert fid_to_statistics(fakes, *statistics(real)) == pytest.approx(full, rel=1e-6)
    with pytest.raises(ValueError, match=r"sigma2 has shape \(8, 8\), expected \(16, 16\)"):
        fid_to_statistics(fakes, np.zeros(16), np.eye(8))


def test_reference_stream_cycles_seeded_shuffles_and_cuts_short_batches():
    stream = ReferenceStream(count=5, batch_size=3, seed=7)
    batches = [stream.next_indices(3) for _ in range(5)]
    flat = np.concatenate(batches)
    for start in range(0, 15, 5):  # 15 indices = 3 consecutive shuffles of the 5 images
        assert sorted(flat[start:start + 5].tolist()) == list(range(5))
    again = ReferenceStream(count=5, batch_size=3, seed=7)
    assert np.array_equal(again.next_indices(2), batches[0][:2])  # a short source batch takes the prefix ...
    assert np.array_equal(again.next_indices(3), batches[1])  # ... and the rest of that batch is skipped
    assert not np.array_equal(np.concatenate([ReferenceStream(5, 3, seed=8).next_indices(3) for _ in range(5)]), flat)
    with pytest.raises(ValueError, match="1 to 3 images, 4 were requested"):
        stream.next_indices(4)


def test_official_checkpoint_architecture_is_read_from_the_file(tmp_path):
    nets = build_nets(32, 3, style_dim=8, latent_dim=4, max_conv_dim=16, width=8)
    path = tmp_path / "000010_nets_ema.ckpt"
    save_official_checkpoint(path, {k: nets[k] for k in ("generator", "mapping_network", "style_encoder")})
    loaded = load_official(path)
    assert set(loaded) == {"generator", "mapping_network", "style_encoder"}
    for name, net in loaded.items():
        assert not net.training and not any(p.requires_grad for p in net.parameters())
        for key, value in nets[name].state_dict().items():
            assert torch.equal(net.state_dict()[key], value), key
    assert official_architecture(torch.load(path)) == {"img_size": 32, "num_domains": 3, "style_dim": 8,
                                                       "latent_dim": 4, "max_conv_dim": 16, "width": 8}
    # the official AFHQ shapes: 256 px, 3 domains, style 64, latent 16, width 64, 512 channels at most
    official = {k: v.state_dict() for k, v in build_nets(256, 3).items()}
    assert official_architecture(official) == {"img_size": 256, "num_domains": 3, "style_dim": 64, "latent_dim": 16,
                                               "max_conv_dim": 512, "width": 64}
    with pytest.raises(ValueError, match="img_size 32, but 256 was expected"):
        load_official(path, img_size=256)
    with pytest.raises(ValueError, match="num_domains 3, but 2 was expected"):
        load_official(path, num_domains=2)
    torch.save({"discriminator": nets["discriminator"].state_dict()}, tmp_path / "d.ckpt")
    with pytest.raises(ValueError, match="not a StarGAN v2 nets checkpoint"):
        load_official(tmp_path / "d.ckpt")


def test_high_pass_generators_are_refused():
    state = {k: v.state_dict() for k, v in build_nets(32, 2, w_hpf=1, width=8, max_conv_dim=16).items()}
    with pytest.raises(ValueError, match="w_hpf > 0"):
        official_architecture(state)


# ----------------------------------------------------------------------------------------------------------------------
# The protocol on a trained run


def test_tiny_run_gives_six_tasks_in_both_modes(runs, lpips_random):
    evaluation = evaluate(runs[0], lpips_random)
    assert set(evaluation["metrics"]) == {"latent", "reference"}
    for mode, values in evaluation["metrics"].items():
        assert set(values["per_task"]) == PAIRS
        per_task = values["per_task"].values()
        assert all(np.isfinite(t["fid"]) and t["fid"] > 0 and np.isfinite(t["lpips"]) for t in per_task)
        assert all(t["num_sources"] == 3 for t in per_task)  # every val image of the source domain
        assert values["fid"] == pytest.approx(np.mean([t["fid"] for t in per_task]))
        assert values["lpips"] == pytest.approx(np.mean([t["lpips"] for t in per_task]))
    assert all(t["lpips"] > 0 for t in evaluation["metrics"]["latent"]["per_task"].values())
    assert evaluation["num_real"] == {"cat": 8, "dog": 8, "wild": 8}  # all training images of every target
    assert (evaluation["backbone"], evaluation["calibrated"], evaluation["lpips_calibrated"]) == ("proxy-random",
                                                                                                  False, False)
    # deterministic for a seed; another seed draws other codes, shuffles and references
    assert evaluate(runs[0], lpips_random)["metrics"] == evaluation["metrics"]
    other = evaluate(runs[0], lpips_random, seed=1)["metrics"]
    for mode in ("latent", "reference"):
        assert other[mode]["lpips"] != evaluation["metrics"][mode]["lpips"]


def test_quick_runs_cap_images_and_modes_can_be_chosen(runs, lpips_random):
    evaluation = evaluate(runs[0], lpips_random, modes=("latent",), max_per_domain=2, num_outs=3)
    assert set(evaluation["metrics"]) == {"latent"}
    assert {t["num_sources"] for t in evaluation["metrics"]["latent"]["per_task"].values()} == {2}
    assert evaluation["num_real"] == {"cat": 2, "dog": 2, "wild": 2}
    assert (evaluation["num_outs"], evaluation["max_per_domain"]) == (3, 2)


class Copy(nn.Module):
    """A 'generator' that returns its input whatever the style: shifted by `offset`, optionally red and blue swapped."""

    num_domains = 3

    def __init__(self, offset: float = 0.0, swap_colours: bool = False):
        super().__init__()
        self.offset, self.swap_colours = offset, swap_colours

    def forward(self, x, s):
        return (x.flip(1) if self.swap_colours else x) + self.offset


class NoStyle(nn.Module):
    num_domains = 3

    def forward(self, x, y):
        return x.new_zeros(len(x), 1)


@pytest.fixture(scope="module")
def mirrored_data(tiny_afhq, tmp_path_factory):
    """Every domain holds the same 3 val images, and each of them twice in train: with 2 outputs per source, a
    generator that copies its input makes exactly the real training set of every target domain."""
    root = tmp_path_factory.mktemp("mirrored")
    images = sorted((tiny_afhq / "val" / "cat").iterdir())
    for domain in ("cat", "dog", "wild"):
        for i, image in enumerate(images):
            for split, copies in (("val", 1), ("train", 2)):
                (root / split / domain).mkdir(parents=True, exist_ok=True)
                for c in range(copies):
                    shutil.copy(image, root / split / domain / f"{i}_{c}.png")
    return root


def test_fid_is_zero_when_the_fakes_are_the_real_set(mirrored_data, lpips_random):
    def scores(generator):
        nets = {"generator": generator, "mapping_network": NoStyle(), "style_encoder": NoStyle()}
        return evaluate_afhq(nets, mirrored_data, img_size=32, latent_dim=4, backbone=random_proxy(3),
                             lpips_model=lpips_random, num_outs=2, progress=False, device="cpu")["metrics"]

    # a quarter of an 8-bit level off: the fakes are rounded to 8 bits as the official PNGs, so they are the real set
    same = scores(Copy(offset=0.5 / 255))
    swapped = scores(Copy(swap_colours=True))  # the same images in other colours are another set: the check can fail
    for mode in ("latent", "reference"):
        for task, value in same[mode]["per_task"].items():
            assert 0 <= value["fid"] < 1e-6 * swapped[mode]["per_task"][task]["fid"], (mode, task)
            assert value["lpips"] == 0  # identical outputs have no diversity


def test_real_statistics_are_cached_per_backbone_and_file_list(runs, lpips_random, tmp_path):
    first = evaluate(runs[0], lpips_random, modes=("latent",), cache_dir=tmp_path)
    files = sorted(tmp_path.glob("*.npz"))
    assert [f.name.split("-")[:2] for f in files] == [["cat", "proxy"], ["dog", "proxy"], ["wild", "proxy"]]
    # the cache is read: replace the cat statistics with another Gaussian and the tasks into cat change, only them
    save_statistics(files[0], np.zeros(256), np.eye(256), backbone="proxy-random")
    second = evaluate(runs[0], lpips_random, modes=("latent",), cache_dir=tmp_path)["metrics"]["latent"]["per_task"]
    for task, value in first["metrics"]["latent"]["per_task"].items():
        assert (value["fid"] != second[task]["fid"]) == task.endswith("->cat"), task
    # another backbone or another file list gets statistics of its own
    evaluate(runs[0], lpips_random, modes=("latent",), cache_dir=tmp_path, backbone=random_proxy(3, seed=1))
    evaluate(runs[0], lpips_random, modes=("latent",), cache_dir=tmp_path, max_per_domain=4)
    assert len(list(tmp_path.glob("*.npz"))) == 9


def test_bad_inputs_name_the_problem(runs, lpips_random, tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found: '.*nowhere'"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint in '.*empty/checkpoints'"):
        load_run(tmp_path / "empty")
    with pytest.raises(ValueError, match="num_outs must be an integer >= 2 .LPIPS diversity needs pairs"):
        evaluate(runs[0], lpips_random, num_outs=1)
    with pytest.raises(ValueError, match="modes must be a non-empty selection"):
        evaluate(runs[0], lpips_random, modes=("guided",))
    with pytest.raises(DatasetError, match=r"trained on domains \['a', 'b', 'c'\], but the data has \['cat'"):
        evaluate(runs[0], lpips_random, domains=["a", "b", "c"])


# ----------------------------------------------------------------------------------------------------------------------
# The command line


@pytest.fixture(scope="module")
def cli_results(runs, tmp_path_factory):
    """`python -m evaluators afhq --backbone proxy --allow-random-lpips` on both runs, with no weight files anywhere."""
    cache = tmp_path_factory.mktemp("cache")
    home = tmp_path_factory.mktemp("home")
    args = ["--backbone", "proxy", "--proxy-steps", "10", "--pose-steps", "10", "--allow-random-lpips", "--cache-dir", str(cache),
            "--device", "cpu", "--no-progress"]
    with pytest.MonkeyPatch.context() as patch:
        without_weight_files(patch, home)
        for run in runs:
            assert main(["afhq", "--run", str(run), *args]) == 0
    return args, [json.loads((run / "eval" / "afhq.json").read_text()) for run in runs]


def test_cli_writes_a_result_file_the_tables_read(runs, cli_results):
    _, results = cli_results
    assert [r["seed"] for r in results] == [1, 2]
    for run, result in zip(runs, results):
        assert load_results([run]) == [result]
        assert (result["format"], result["version"], result["task"], result["method"]) == ("i2i-eval", 1, "afhq",
                                                                                          "baseline")
        assert (result["iteration"], result["data_frac"], result["num_outs"]) == (2, 1.0, 10)
        assert (result["backbone"], result["calibrated"], result["lpips_calibrated"]) == ("proxy", False, False)
        assert (result["classifier"], result["pose_regressor"]) == ("proxy", "proxy")
        assert Path(result["weights"]["fid"]).name.startswith("proxy-") and "random" in result["weights"]["lpips"]
        assert result["checkpoint"].endswith("000002.pt") and result["elapsed_seconds"] >= 0
        assert {mode: set(v["per_task"]) for mode, v in result["metrics"].items()} == {"latent": PAIRS,
                                                                                       "reference": PAIRS}
    # one proxy for both runs: they trained on the same files
    assert results[0]["weights"]["fid"] == results[1]["weights"]["fid"]


def test_cli_table_renders_mean_and_std_over_the_two_seeds(runs, cli_results, capsys):
    _, results = cli_results
    capsys.readouterr()
    assert main(["table", *map(str, runs), "--format", "md"]) == 0
    markdown = capsys.readouterr().out
    row = next(line for line in markdown.splitlines() if line.startswith("| baseline"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    expected = []
    for mode in ("latent", "reference"):
        for metric, digits, mark in (("fid", 2, "†"), ("lpips", 4, "‡"), ("domain_accuracy", 3, "†"),
                                     ("content", 3, "†")):
            values = [r["metrics"][mode][metric] for r in results]
            expected.append(f"{stats.fmean(values):.{digits}f} ± {stats.stdev(values):.{digits}f}{mark}")
    assert cells == expected  # the proxy metrics come by default on data that records poses
    assert main(["table", *map(str, runs), "--format", "csv"]) == 0
    records = {r["metric"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    fids = [r["metrics"]["reference"]["fid"] for r in results]
    assert float(records["reference FID"]["mean"]) == pytest.approx(stats.fmean(fids))
    assert float(records["reference FID"]["std"]) == pytest.approx(stats.stdev(fids))
    assert records["reference FID"]["n"] == "2" and records["reference FID"]["backbone"] == "proxy"


def test_cli_scores_an_official_format_checkpoint_like_the_run(runs, cli_results, tiny_afhq, tmp_path):
    args, results = cli_results
    checkpoint = tmp_path / "000002_nets_ema.ckpt"
    save_official_checkpoint(checkpoint, load_run(runs[0]).nets)
    with pytest.MonkeyPatch.context() as patch:
        without_weight_files(patch, tmp_path / "home")
        assert main(["afhq", "--checkpoint", str(checkpoint), "--data", str(tiny_afhq), *args]) == 0
        result = json.loads((tmp_path / "eval" / "afhq.json").read_text())
        assert (result["method"], result["iteration"], result["seed"]) == ("official", 2, None)
        assert result["metrics"] == results[0]["metrics"]  # the same nets, proxy and seed: the same numbers
        # a run's own checkpoint file given alone is recognised as that run's
        own = runs[0] / "checkpoints" / "000002.pt"
        assert main(["afhq", "--checkpoint", str(own), "--out", str(tmp_path / "own.json"), *args]) == 0
    result = json.loads((tmp_path / "own.json").read_text())
    assert (result["method"], result["seed"], result["run"]) == ("baseline", 1, str(runs[0]))
    assert result["metrics"] == results[0]["metrics"]


def test_cli_names_a_missing_inception_file_without_a_traceback(runs, tmp_path):
    env = {**os.environ, "I2I_WEIGHTS": str(tmp_path), "HOME": str(tmp_path), "TORCH_HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "evaluators", "afhq", "--run", str(runs[0]), "--allow-random-lpips",
                           "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error: pretrained weights 'inception_v3_torchvision'")
    assert "inception_v3_google-0cc3c7bd.pth" in done.stderr
    assert "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth" in done.stderr
    assert str(tmp_path) in done.stderr and "--backbone proxy" in done.stderr


@pytest.mark.parametrize("argv, message", [
    (["afhq"], "nothing to evaluate: pass --run RUN"),
    (["afhq", "--checkpoint", "x.ckpt"], "--checkpoint 'x.ckpt' needs --data DIR"),
    (["afhq", "--run", "{tmp}/run"], "run folder not found: '{tmp}/run'"),
    (["afhq", "--checkpoint", "{tmp}/x.ckpt", "--data", "{tmp}"], "AFHQ root '{tmp}' has no 'val' folder"),
    (["afhq", "--run", "{tmp}", "--device", "tpu"], "train.device: 'tpu' is not a device"),
    (["table", "{tmp}/run"], "result file or run folder not found: '{tmp}/run'"),
])
def test_cli_user_errors_are_one_message_and_status_2(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message.format(tmp=tmp_path) in err


def test_cli_missing_alexnet_suggests_random_lpips(runs, isolated_weights, capsys):  # noqa: F811
    assert main(["afhq", "--run", str(runs[0]), "--backbone", "proxy", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "alexnet-owt-7be5be79.pth" in err and "--allow-random-lpips" in err


def test_cli_rejects_unknown_modes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["afhq", "--run", "x", "--mode", "latent,guided"])
    assert exit_info.value.code == 2
    assert "'latent,guided': expected a comma-separated subset of latent,reference" in capsys.readouterr().err
