"""Bad data fails fast: every training file is read before the first iteration, a bad one is named in one line (also
when it is met inside a DataLoader worker), and files that passed are not read again."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from i2i.cli import error_message
from i2i.config import build_config
from i2i.data.check import check_files
from i2i.data.images import DatasetError, load_rgb
from i2i.engine.trainer import Trainer
from tests.conftest import TINY, TINY_CITYSCAPES, TINY_NIRVIS


def test_good_files_are_read_once_and_a_changed_file_again(tiny_afhq, tmp_path):
    root = tmp_path / "afhq"
    shutil.copytree(tiny_afhq, root)
    files = sorted((root / "train").rglob("*.png"))
    cache = tmp_path / "checked.json"
    assert check_files([(f, load_rgb) for f in files], cache=cache) == len(files)
    assert check_files([(f, load_rgb) for f in files], cache=cache) == 0
    files[0].write_bytes(files[0].read_bytes()[:60])  # truncated: size changes, so it is read again and fails
    with pytest.raises(DatasetError, match=files[0].name):
        check_files([(f, load_rgb) for f in files], cache=cache)
    with pytest.raises(DatasetError, match=files[0].name):  # a bad file is never remembered as good
        check_files([(f, load_rgb) for f in files], cache=cache)


def test_a_bad_image_stops_the_run_before_its_first_iteration(tiny_afhq, tmp_path, monkeypatch):
    monkeypatch.setattr("i2i.data.check.CACHE", tmp_path / "checked.json")
    root = tmp_path / "afhq"
    shutil.copytree(tiny_afhq, root)
    bad = sorted((root / "train" / "wild").glob("*.png"))
    bad[-1].write_bytes(b"")  # zero bytes
    (bad[-2]).write_text("not a png")  # wrong content for its extension
    cfg = build_config("afhq", None, {"data.root": str(root), **TINY})
    trainer = Trainer(cfg, tmp_path / "run")
    with pytest.raises(DatasetError, match=r"1 more bad files") as caught:
        trainer.setup(None)
    assert bad[-2].name in str(caught.value) and "\n" not in str(caught.value)
    assert "--skip-bad-images" in str(caught.value)  # the way out is named
    assert trainer.iteration == 0


@pytest.mark.parametrize("task", ["afhq", "cityscapes", "nirvis"])
def test_skip_bad_images_trains_without_them_and_the_manifest_lists_them(task, tiny_afhq, tiny_streets, tiny_faces,
                                                                          lightcnn_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("i2i.data.check.CACHE", tmp_path / "checked.json")
    source, tiny = {"afhq": (tiny_afhq, TINY), "cityscapes": (tiny_streets, TINY_CITYSCAPES),
                    "nirvis": (tiny_faces, {**TINY_NIRVIS, "model.encoder_weights": str(lightcnn_file)})}[task]
    root = tmp_path / "data"
    shutil.copytree(source, root)
    cfg = build_config(task, None, {"data.root": str(root), **tiny, "data.skip_bad_images": True})
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.task.prepare_data(tmp_path / "probe", resume=False)
    files = [path for path, _ in trainer.task.data_checks()]
    files[-1].write_bytes(files[-1].read_bytes()[:40])  # truncated
    trainer.setup(None)
    kept = [path for path, _ in trainer.task.data_checks()]
    assert files[-1] not in kept and 0 < len(kept) < len(files)
    manifest = json.loads((tmp_path / "run" / "data_manifest.json").read_text())
    assert [entry["file"] for entry in manifest["skipped"]] == [str(files[-1])]
    assert files[-1].name in manifest["skipped"][0]["error"]
    assert f"skipped 1 of {len(files)} training files" in capsys.readouterr().err
    resumed = Trainer(cfg, tmp_path / "run").task  # a resumed run reads the pruned manifest
    resumed.prepare_data(tmp_path / "run", resume=True)
    assert [path for path, _ in resumed.data_checks()] == kept


def test_a_label_id_outside_the_label_set_stops_a_cityscapes_run_at_start(tiny_streets, tmp_path, monkeypatch):
    monkeypatch.setattr("i2i.data.check.CACHE", tmp_path / "checked.json")
    root = tmp_path / "cityscapes"
    shutil.copytree(tiny_streets, root)
    label = sorted((root / "gtFine" / "train").rglob("*_labelIds.png"))[-1]
    ids = np.array(Image.open(label))
    ids[0, 0] = 200
    Image.fromarray(ids).save(label)
    cfg = build_config("cityscapes", None, {"data.root": str(root), **TINY_CITYSCAPES})
    with pytest.raises(DatasetError, match=rf"{label.name}.*\[200\]"):
        Trainer(cfg, tmp_path / "run").setup(None)


class _Unreadable(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        raise DatasetError(f"cannot read image '/data/x{index}.png': OSError: image file is truncated.")


def test_an_error_in_a_dataloader_worker_reads_as_its_own_one_line_message():
    with pytest.raises(DatasetError) as caught:
        next(iter(DataLoader(_Unreadable(), num_workers=1)))
    assert "Traceback" in str(caught.value)  # what PyTorch hands the main process
    assert error_message(caught.value) == "cannot read image '/data/x0.png': OSError: image file is truncated."
