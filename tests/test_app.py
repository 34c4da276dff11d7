"""The Gradio app: handlers called directly, then the launched app over loopback with gradio_client."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from apps.gradio_app import TranslatorTab, launch, load_tabs, tab_widgets
from i2i.imaging import ImageInputError
from i2i.serving import ExportedModel, ExportError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tab(tiny_export, tmp_path_factory) -> TranslatorTab:
    return TranslatorTab(ExportedModel(tiny_export), tmp_path_factory.mktemp("outputs"), "tiny")


@pytest.fixture(scope="module")
def source(tab) -> str:
    return str(tab.examples[0][0])


def values(tab: TranslatorTab, **given):
    return [given.get(w.key) for w in tab.widgets]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_widgets_come_from_the_manifest(tab):
    assert [(w.key, w.role) for w in tab.widgets] == [("x", "image"), ("y_trg", "domain"), ("seed", "latent"),
                                                      ("num", "latent"), ("x_ref", "image")]
    assert tab.modes == {"Latent-guided": "latent", "Reference-guided": "reference"}
    assert tab.widgets[1].choices == ("cat", "dog", "wild")
    assert tab_widgets(tab.model)[4].graphs == {"reference"}


def test_latent_mode_gives_num_outputs_that_depend_on_the_seed_only(tab, source):
    four = tab.translate("Latent-guided", *values(tab, x=source, y_trg="dog", seed=5, num=4))
    two = tab.translate("Latent-guided", *values(tab, x=source, y_trg="dog", seed=5, num=2))
    other = tab.translate("Latent-guided", *values(tab, x=source, y_trg="dog", seed=6, num=1))
    assert len(four) == 4 and len(two) == 2
    assert pixels(four[0][0]).shape == (32, 32, 3)
    assert (pixels(four[1][0]) == pixels(two[1][0])).all()  # output k of seed s does not depend on num
    assert not (pixels(four[0][0]) == pixels(other[0][0])).all()
    assert four[0][1] == "seed 5 #0"


def test_reference_mode_uses_the_reference(tab, source):
    refs = [str(path) for path, _ in tab.examples]
    a = tab.translate("Reference-guided", *values(tab, x=source, y_trg="dog", x_ref=refs[2]))
    b = tab.translate("Reference-guided", *values(tab, x=source, y_trg="dog", x_ref=refs[3]))
    assert len(a) == 1 and not (pixels(a[0][0]) == pixels(b[0][0])).all()


def test_missing_and_bad_inputs_have_messages(tab, source, tmp_path):
    with pytest.raises(ExportError, match="upload an image for 'source'"):
        tab.translate("Latent-guided", *values(tab, y_trg="dog", seed=0, num=1))
    with pytest.raises(ExportError, match="upload an image for 'reference'"):
        tab.translate("Reference-guided", *values(tab, x=source, y_trg="dog"))
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageInputError, match="not an image"):
        tab.translate("Latent-guided", *values(tab, x=str(text), y_trg="dog", seed=0, num=1))
    with pytest.raises(ExportError, match="mode must be one of"):
        tab.translate("Sideways", *values(tab, x=source))


def test_serving_never_imports_torch(tiny_export, tmp_path):
    script = f"""
import sys
from pathlib import Path
from apps.gradio_app import build_app, load_tabs
tabs = load_tabs({str(tiny_export)!r}, Path({str(tmp_path)!r}))
build_app(tabs)
tab = tabs[0]
source = str(tab.examples[0][0])
tab.translate("Latent-guided", *[dict(x=source, y_trg="dog", seed=1, num=2).get(w.key) for w in tab.widgets])
assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("torch"))
print("ok")
"""
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_cli_refuses_a_folder_without_exports(tmp_path, capsys):
    from apps.gradio_app import main

    assert main(["--exports", str(tmp_path)]) == 2
    assert "no exports under" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------------
# Over loopback


@pytest.fixture(scope="module")
def served(tiny_export, tmp_path_factory):
    os.environ["GRADIO_TEMP_DIR"] = str(tmp_path_factory.mktemp("gradio"))
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from gradio_client import Client

    tabs = load_tabs(tiny_export.parent, tmp_path_factory.mktemp("served_outputs"))
    app, url = launch(tabs, port=None, max_upload_mb=1, concurrency=4, block=False)
    yield Client(url, verbose=False), tabs[0]
    app.close()


def call(client, source, reference=None, **kwargs):
    from gradio_client import handle_file

    mode = "Reference-guided" if reference else "Latent-guided"
    return client.predict(mode=mode, x=handle_file(str(source)), x_ref=handle_file(str(reference)) if reference
                          else None, api_name="/tiny_translate", **kwargs)


def test_api_endpoint_answers_both_modes(served):
    client, tab = served
    src, ref = tab.examples[0][0], tab.examples[3][0]
    latent = call(client, src, y_trg="wild", seed=2, num=3)
    reference = call(client, src, reference=ref, y_trg="dog")
    assert len(latent) == 3 and len(reference) == 1
    assert pixels(latent[0]["image"]).shape == (32, 32, 3)


def _concurrently(n, fn):
    results, errors = [None] * n, []

    def work(i):
        try:
            results[i] = fn(i)
        except Exception as error:  # collected, asserted below
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results, errors


def test_twenty_concurrent_requests_are_all_answered(served):
    client, tab = served
    results, errors = _concurrently(20, lambda i: call(client, tab.examples[i % 6][0], y_trg="cat", seed=i, num=1))
    assert not errors, errors[:3]
    assert all(pixels(r[0]["image"]).shape == (32, 32, 3) for r in results)


def test_concurrent_uploads_of_the_same_file_never_fail(served):
    """Identical requests give identical outputs, which Gradio's numpy-output cache rewrites in place while serving
    them (apps/gradio_app.py docstring); this app returns uniquely named files instead."""
    client, tab = served
    source = tab.examples[0][0]
    for _ in range(3):
        results, errors = _concurrently(20, lambda i: call(client, source, y_trg="dog", seed=1, num=1))
        assert not errors, errors[:3]
        outputs = [pixels(r[0]["image"]) for r in results]
        assert all((o == outputs[0]).all() for o in outputs)


def _bytes(image: Image.Image, fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, message", [
    ("notes.png", b"plain text, not an image", "not an image file"),
    ("empty.png", b"", "empty"),
    ("dot.png", _bytes(Image.new("RGB", (1, 1))), "at least 8x8"),
    ("bomb.png", _bytes(Image.new("1", (9000, 9000))), "pixels"),
])
def test_bad_uploads_get_a_message_and_the_app_keeps_serving(served, tmp_path, name, content, message):
    from gradio_client.exceptions import AppError

    client, tab = served
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(AppError, match=message):
        call(client, path, y_trg="dog", seed=0, num=1)
    assert len(call(client, tab.examples[0][0], y_trg="dog", seed=0, num=1)) == 1


def test_oversized_upload_is_refused(served, tmp_path):
    client, tab = served
    path = tmp_path / "huge.png"
    path.write_bytes(_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (700, 700, 3), np.uint8))))
    assert path.stat().st_size > 2**20  # the app above allows 1 MB
    with pytest.raises(ValueError, match="exceeds the maximum file size"):  # the client checks first
        call(client, path, y_trg="dog", seed=0, num=1)
    import httpx

    with path.open("rb") as f:  # and the server refuses it from any other client
        response = httpx.post(client.src + "gradio_api/upload", files={"files": (path.name, f, "image/png")})
    assert response.status_code == 413
    assert len(call(client, tab.examples[0][0], y_trg="dog", seed=0, num=1)) == 1


def test_binds_to_loopback_by_default(served):
    client, _ = served
    assert client.src.startswith("http://127.0.0.1:")
