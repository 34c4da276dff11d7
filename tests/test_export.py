"""ONNX export: every declared graph exports, matches PyTorch in onnxruntime, and is described by its manifest."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from i2i.engine.inference import load_run
from i2i.export import EagerModel, ParityError, export_model, is_current, main, sha256_of
from i2i.nets.stargan_v2 import build_nets, save_official_checkpoint
from i2i.serving import ExportedModel, ExportError, random_feed, read_manifest, translate


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_manifest_describes_every_graph(tiny_export, tiny_run):
    manifest = read_manifest(tiny_export)
    assert manifest.task == "afhq" and manifest.image_size == 32
    assert list(manifest.graphs) == ["latent", "reference", "style_encoder", "mapping_network", "generator"]
    assert [g.name for g in manifest.ui_graphs] == ["latent", "reference"]
    latent = manifest.graphs["latent"]
    assert [(s.name, s.role, s.dtype, s.shape) for s in latent.inputs] == [
        ("x", "image", "float32", ("N", 3, 32, 32)), ("y_trg", "domain", "int64", ("N",)),
        ("z", "latent", "float32", ("N", 4))]
    assert latent.inputs[1].choices == ("cat", "dog", "wild") and latent.inputs[0].range == (-1.0, 1.0)
    info = manifest.info
    checkpoint = sorted((tiny_run / "checkpoints").glob("*.pt"))[-1]
    assert info["source"]["sha256"] == sha256_of(checkpoint) and info["opset"] >= 18
    assert set(info["versions"]) == {"i2i", "torch", "onnx", "onnxruntime"}
    for name, diffs in info["parity"]["max_abs_diff"].items():
        assert set(diffs) == {"batch_1", "batch_3"} and max(diffs.values()) <= 1e-4, name
    labels = sorted({e["label"] for e in manifest.examples})
    assert labels == ["cat", "dog", "wild"] and all((tiny_export / e["file"]).is_file() for e in manifest.examples)


def test_graphs_are_single_files_with_a_dynamic_batch(tiny_export):
    for path in tiny_export.glob("*.onnx"):
        model = onnx.load(str(path), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer), path.name
        assert model.opset_import[0].version >= 18
        first = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert first.dim_param and not first.dim_value, path.name  # symbolic batch
    assert not list(tiny_export.glob("*.data"))


def test_onnxruntime_equals_pytorch_at_other_batch_sizes(tiny_export, tiny_run):
    run = load_run(tiny_run)
    eager, exported = EagerModel(run.task, run.nets), ExportedModel(tiny_export)
    for name, graph in exported.manifest.graphs.items():
        feed = random_feed(graph, batch=5, seed=7)
        for key, value in exported.run(name, feed).items():
            assert np.abs(value - eager.run(name, feed)[key]).max() <= 1e-4, name


def test_graphs_compose_like_the_nets(tiny_export):
    """latent == generator(x, mapping_network(z, y)): a user can mix styles with the parts."""
    model = ExportedModel(tiny_export)
    feed = random_feed(model.manifest.graphs["latent"], batch=2, seed=3)
    s = model.run("mapping_network", {"z": feed["z"], "y": feed["y_trg"]})["s"]
    composed = model.run("generator", {"x": feed["x"], "s": s})["image"]
    assert np.abs(composed - model.run("latent", feed)["image"]).max() <= 1e-4


def test_feeding_a_graph_wrongly_names_the_problem(tiny_export):
    model = ExportedModel(tiny_export)
    feed = random_feed(model.manifest.graphs["latent"], batch=2, seed=0)
    with pytest.raises(ExportError, match="'x'.*float32"):
        model.run("latent", {**feed, "x": feed["x"][:, :, :16]})
    with pytest.raises(ExportError, match=r"values must be in \[0, 3\)"):
        model.run("latent", {**feed, "y_trg": np.array([0, 5])})
    with pytest.raises(ExportError, match="one of.*horse"):
        translate(model, "latent", images={"x": Image.new("RGB", (40, 40))}, choices={"y_trg": "horse"})


def test_export_from_an_official_format_checkpoint(tmp_path):
    torch.manual_seed(0)
    nets = build_nets(32, 2, style_dim=8, latent_dim=4, max_conv_dim=16, width=8)
    path = tmp_path / "100000_nets_ema.ckpt"
    save_official_checkpoint(path, {k: nets[k] for k in ("generator", "mapping_network", "style_encoder")})
    out = tmp_path / "official"
    code = main(["--task", "afhq", "--official-checkpoint", str(path), "--img-size", "32", "--labels", "cat", "dog",
                 "--graphs", "reference", "--out", str(out)])
    assert code == 0
    manifest = read_manifest(out)
    assert list(manifest.graphs) == ["reference"] and manifest.graphs["reference"].inputs[2].choices == ("cat", "dog")
    feed = random_feed(manifest.graphs["reference"], batch=3, seed=1)
    with torch.no_grad():
        expected = nets["generator"].eval()(torch.from_numpy(feed["x"]), nets["style_encoder"].eval()(
            torch.from_numpy(feed["x_ref"]), torch.from_numpy(feed["y_trg"]))).numpy()
    assert np.abs(ExportedModel(out).run("reference", feed)["image"] - expected).max() <= 1e-4
    assert main(["--task", "afhq", "--official-checkpoint", str(path), "--img-size", "64", "--out", str(out)]) == 2


def test_parity_failure_names_the_graph_and_writes_nothing(tiny_run, tmp_path):
    run = load_run(tiny_run)
    with pytest.raises(ParityError, match="graph 'style_encoder'"):
        export_model(run.task, run.nets, tmp_path / "x", source=run.checkpoint, tolerance=1e-12,
                     graphs=["style_encoder"], log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--run", str(tmp_path / "nowhere")]) == 2
    assert main(["--official-checkpoint", str(tmp_path / "x.ckpt")]) == 2
    assert main([]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines)


def test_an_up_to_date_export_is_skipped(tiny_export, tiny_run, tmp_path, capsys):
    checkpoint = sorted((tiny_run / "checkpoints").glob("*.pt"))[-1]
    assert is_current(tiny_export, checkpoint)
    assert main(["--run", str(tiny_run), "--out", str(tiny_export), "--skip-if-current"]) == 0
    assert "up to date" in capsys.readouterr().err
    assert not is_current(tmp_path, checkpoint)


def test_a_folder_that_is_not_an_export_is_never_replaced(tiny_run, tmp_path):
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    run = load_run(tiny_run)
    with pytest.raises(ExportError, match="refusing"):
        export_model(run.task, run.nets, precious, source=run.checkpoint, graphs=["style_encoder"],
                     log=lambda m: None)
    assert (precious / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_manifest_with_escaping_paths_is_refused(tiny_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_export, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["graphs"][0]["file"] = "../../etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ExportError, match="not a file inside"):
        read_manifest(copy)
