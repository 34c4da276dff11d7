"""The recognition evaluation service of the app: verification and set evaluation with an exported feature graph,
called directly and over loopback, including bad zips."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from apps import recognition
from apps.gradio_app import TranslatorTab, launch, load_tabs
from i2i.data.nirvis import load_recognition_protocol
from i2i.imaging import ImageInputError
from i2i.serving import ExportedModel


@pytest.fixture(scope="module")
def tab(tiny_nirvis_export, tmp_path_factory) -> TranslatorTab:
    return TranslatorTab(ExportedModel(tiny_nirvis_export), tmp_path_factory.mktemp("out"), "faces")


@pytest.fixture(scope="module")
def face_zip(tiny_faces, tmp_path_factory) -> Path:
    """The fold-1 gallery and probes of the procedural set, zipped in the service's layout."""
    protocol = load_recognition_protocol(tiny_faces, 1)
    path = tmp_path_factory.mktemp("zips") / "set.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for role, entries in (("gallery", protocol.gallery), ("probe", protocol.probes)):
            for i, entry in enumerate(entries):
                archive.write(entry.path, f"faces/{role}/{entry.subject}/{i:03d}{entry.path.suffix}")
    return path


def zipped(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_the_export_has_a_feature_graph(tab):
    assert tab.feature_graph is not None and tab.feature_graph.name == "face_features"
    assert list(tab.modes) == ["NIR to VIS"]


def test_a_face_verifies_with_itself(tab, tiny_faces):
    protocol = load_recognition_protocol(tiny_faces, 1)
    a, b = str(protocol.gallery[0].path), str(protocol.gallery[1].path)
    assert tab.verify(a, a) == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= tab.verify(a, b) < 1.0 - 1e-4


def test_a_zipped_set_gives_rank1_and_vr(tab, face_zip, tiny_faces):
    markdown, result = tab.evaluate_set(str(face_zip))
    protocol = load_recognition_protocol(tiny_faces, 1)
    assert result["probes"] == len(protocol.probes) and result["gallery"] == len(protocol.gallery)
    assert all(0 <= result[k] <= 100 for k in ("rank1", "vr_far_1e-2", "vr_far_1e-3"))
    assert "Rank-1" in markdown


@pytest.mark.parametrize("content, message", [
    (b"not a zip at all", "not a zip file"),
    (zipped({"gallery/1/a.png": b"x"}), "no probe images"),
    (zipped({"../../etc/passwd": b"x", "gallery/1/a.png": b"x"}), "outside the archive"),
    (zipped({"/abs/probe/1/a.png": b"x"}), "outside the archive"),
])
def test_bad_zips_are_refused_with_a_message(tab, tmp_path, content, message):
    path = tmp_path / "bad.zip"
    path.write_bytes(content)
    with pytest.raises(ImageInputError, match=message):
        tab.evaluate_set(str(path))


def test_too_many_files_are_refused(tab, tmp_path, monkeypatch):
    monkeypatch.setattr(recognition, "MAX_FILES", 3)
    path = tmp_path / "many.zip"
    path.write_bytes(zipped({f"gallery/{i}/a.png": b"x" for i in range(5)}))
    with pytest.raises(ImageInputError, match="limit is 3"):
        tab.evaluate_set(str(path))


def test_endpoints_over_loopback(tiny_nirvis_export, face_zip, tiny_faces, tmp_path_factory, tmp_path):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    tabs = load_tabs(tiny_nirvis_export, tmp_path_factory.mktemp("served"))
    app, url = launch(tabs, port=None, block=False)
    try:
        client = Client(url, verbose=False)
        name = tabs[0].name
        face = str(load_recognition_protocol(tiny_faces, 1).gallery[0].path)
        score = client.predict(handle_file(face), handle_file(face), api_name=f"/{name}_verify")
        assert score == pytest.approx(1.0, abs=1e-4)
        markdown, result = client.predict(handle_file(str(face_zip)), api_name=f"/{name}_evaluate")
        assert "Rank-1" in markdown and 0 <= result["rank1"] <= 100
        bad = tmp_path / "bad.zip"
        bad.write_bytes(zipped({"../x": b"x"}))
        with pytest.raises(AppError, match="outside the archive"):
            client.predict(handle_file(str(bad)), api_name=f"/{name}_evaluate")
        translated = client.predict(mode="NIR to VIS", nir=handle_file(face), api_name=f"/{name}_translate")
        assert len(translated) == 1
    finally:
        app.close()
