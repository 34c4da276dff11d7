"""python -m i2i.translate: one image or a folder, with a run (PyTorch) or an export (onnxruntime), same results."""
from __future__ import annotations

import numpy as np
from PIL import Image

from i2i.translate import main


def pixels(path):
    return np.asarray(Image.open(path)).astype(int)


def test_run_and_export_give_the_same_translation(tiny_run, tiny_export, tmp_path, capsys):
    source = sorted((tiny_export / "examples").glob("*cat*"))[0]
    for where, out in ((["--run", str(tiny_run)], "eager.png"), (["--exports", str(tiny_export)], "onnx.png")):
        assert main([*where, "--source", str(source), "--domain", "dog", "--seed", "3", "--num", "2",
                     "--out", str(tmp_path / out)]) == 0
    eager, onnx = pixels(tmp_path / "eager.png"), pixels(tmp_path / "onnx.png")
    assert eager.shape == (32, 2 * 32 + 2, 3)  # two outputs side by side
    assert np.abs(eager - onnx).max() <= 1  # 8-bit rounding of a 1e-5 difference


def test_a_folder_with_a_reference(tiny_export, tmp_path):
    examples = tiny_export / "examples"
    reference = sorted(examples.glob("*dog*"))[0]
    assert main(["--exports", str(tiny_export), "--source", str(examples), "--domain", "dog", "--reference",
                 str(reference), "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == len(list(examples.iterdir())) and all(n.endswith("_dog.png") for n in written)


def test_bad_input_is_one_line(tiny_export, tmp_path, capsys):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    assert main(["--exports", str(tiny_export), "--source", str(not_image), "--domain", "dog",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert main(["--exports", str(tiny_export), "--source", str(not_image), "--domain", "horse",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert main(["--exports", str(tmp_path), "--source", str(not_image), "--domain", "dog",
                 "--out", str(tmp_path / "x.png")]) == 2
    lines = [l for l in capsys.readouterr().err.splitlines() if l]
    assert len(lines) == 3 and all(l.startswith("error: ") for l in lines)
