"""The i2i web app: every exported translator in a folder, one tab each, served with onnxruntime (no torch).

    python -m apps.gradio_app --exports exports/ [--host 127.0.0.1] [--port 7860]

Each tab is built from an export's `manifest.json` alone: its UI graphs are the modes, and each graph input's role
picks a widget (image -> upload, domain -> dropdown, latent -> seed and number of outputs). A tab's translate
function is an API endpoint named `<tab>_translate` (see the README for a gradio_client example).

Two Gradio behaviours are designed around:
- Uploads reach the handler untouched (`upload_image`), so `i2i.imaging` decodes them and a bad file gets a message
  in the page instead of failing inside Gradio's preprocessing.
- Outputs are written by the handler as uniquely named PNGs (atomic rename) and returned as paths. Gradio 6.31 writes
  numpy/PIL outputs to a content-addressed cache file with a plain truncate-and-write, so concurrent requests with the
  same output (the same upload twice) rewrite one file while it is being served: 5 of 180 requests failed here with
  an empty or partial download (benchmarks/gradio_output_race.py); file outputs are copied with a rename instead.
"""
from __future__ import annotations

import argparse
import base64
import inspect
import os
import re
import secrets
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from apps import recognition
from i2i.imaging import ImageInputError, MAX_UPLOAD_BYTES, save_png
from i2i.serving import MAX_OUTPUTS, ExportedModel, ExportError, find_exports, translate

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
OUTPUT_MAX_AGE_S = 15 * 60


@dataclass
class Widget:
    """One input control of a tab: `key` is the graph input's name (image, domain) or 'seed' / 'num' (latent)."""

    key: str
    role: str
    label: str
    choices: tuple[str, ...] = ()
    graphs: set[str] = field(default_factory=set)


def tab_widgets(model: ExportedModel) -> list[Widget]:
    """The union of the UI graphs' inputs, one widget per input name, in first-use order."""
    widgets: dict[str, Widget] = {}
    for graph in model.manifest.ui_graphs:
        for spec in graph.inputs:
            keys = [("seed", "latent seed"), ("num", "number of outputs")] if spec.role == "latent" else \
                [(spec.name, spec.label)]
            for key, label in keys:
                widget = widgets.setdefault(key, Widget(key, "latent" if spec.role == "latent" else spec.role, label,
                                                        spec.choices))
                widget.graphs.add(graph.name)
    return list(widgets.values())


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "model"


class TranslatorTab:
    """The handlers of one export's tab, callable without Gradio (tests call them directly)."""

    def __init__(self, model: ExportedModel, output_dir: Path, name: str | None = None):
        self.model = model
        self.name = slug(name or model.folder.name)
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.widgets = tab_widgets(model)
        self.modes = {graph.title: graph.name for graph in model.manifest.ui_graphs}
        self.feature_graph = recognition.feature_graph(model)
        if not self.modes:
            raise ExportError(f"'{model.folder}' exports no graph meant for the app (no graph with ui: true)")

    @property
    def input_note(self) -> str:
        """What happens to an upload, from the first UI graph's inputs."""
        spec = next(s for g in self.model.manifest.ui_graphs for s in g.inputs if s.role in ("image", "label_map"))
        h, w = spec.shape[-2:]
        if spec.role == "label_map":
            return (f"{w}x{h} px. Label maps of any size are centre-cropped to {w}:{h} and resized with nearest "
                    "neighbours; grey PNGs hold label ids, colour images are read with the official palette.")
        return (f"{w}x{h} px. Uploads of any size and aspect are resized (shorter side to {min(h, w)} px) and "
                f"centre-cropped to {w}x{h}; transparent areas become black.")

    @property
    def examples(self) -> list[tuple[Path, str]]:
        folder = self.model.folder
        return [(folder / e["file"], e.get("label", "")) for e in self.model.manifest.examples]

    def translate(self, mode: str, *values: Any) -> list[tuple[str, str]]:
        """(mode title, widget values in `self.widgets` order) -> [(png path, caption)]; bad input raises
        ImageInputError or ExportError with a message for the user."""
        if mode not in self.modes:
            raise ExportError(f"mode must be one of {list(self.modes)}, got {mode!r}")
        graph = self.modes[mode]
        given = {w.key: v for w, v in zip(self.widgets, values) if graph in w.graphs}
        images, choices = {}, {}
        for widget in self.widgets:
            if graph not in widget.graphs or widget.role not in ("image", "label_map", "domain"):
                continue
            value = given.get(widget.key)
            if value is None or value == "":
                raise ExportError(f"please {'choose' if widget.role == 'domain' else 'upload an image'} for "
                                  f"'{widget.label}'")
            (choices if widget.role == "domain" else images)[widget.key] = value
        seed, num = given.get("seed", 0), given.get("num", 1)
        try:
            seed, num = int(seed if seed is not None else 0), int(num if num is not None else 1)
        except (TypeError, ValueError):
            raise ExportError(f"seed and number of outputs must be integers, got {seed!r} and {num!r}") from None
        pictures = translate(self.model, graph, images=images, choices=choices, seed=seed, num=num)
        self._prune_outputs()
        captions = [f"seed {seed} #{k}" if "seed" in given else mode for k in range(len(pictures))]
        return [(str(save_png(p, self.output_dir / f"{secrets.token_hex(12)}.png")), c)
                for p, c in zip(pictures, captions)]

    def verify(self, face_a: Any, face_b: Any) -> float:
        """Cosine similarity of two uploaded faces under the export's feature graph."""
        if face_a is None or face_b is None:
            raise ExportError("please upload two faces")
        return recognition.verify(self.model, self.feature_graph, face_a, face_b)

    def evaluate_set(self, archive: Any) -> tuple[str, dict]:
        """Rank-1 / VR@FAR of a zipped gallery/probe set: (markdown table, the numbers)."""
        if archive is None:
            raise ExportError("please upload a zip with gallery/<id>/<file> and probe/<id>/<file> images")
        result = recognition.evaluate_set(self.model, self.feature_graph, archive)
        return recognition.summary_markdown(result), result

    def _prune_outputs(self) -> None:
        """Delete this tab's outputs older than OUTPUT_MAX_AGE_S (Gradio has copied them to its cache by then)."""
        cutoff = time.time() - OUTPUT_MAX_AGE_S
        for path in self.output_dir.glob("*.png"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass


def user_facing(fn):
    """Run a handler; user errors become gr.Error with their message, anything else a short message (the traceback
    goes to the server log), so the page never shows a traceback and the app keeps serving."""
    import functools

    import gradio as gr

    @functools.wraps(fn)
    def run(*args):
        try:
            return fn(*args)
        except (ImageInputError, ExportError, ValueError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Exception as error:
            traceback.print_exc(file=sys.stderr)
            raise gr.Error(f"internal error ({type(error).__name__}); the server log has the details",
                           print_exception=False) from None

    return run


def _named(handler, tab: TranslatorTab, defaults: list[Any]):
    """Give a tab's handler a signature with the widgets' names and defaults: Gradio names the API parameters after
    it (mode, x, y_trg, seed, num, x_ref for StarGAN v2) instead of param_0, param_1, ..."""
    parameters = [inspect.Parameter("mode", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=next(iter(tab.modes)))]
    parameters += [inspect.Parameter(w.key, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d)
                   for w, d in zip(tab.widgets, defaults)]
    handler.__signature__ = inspect.Signature(parameters)
    return handler


def upload_image(**kwargs):
    """A gr.Image whose handler gets the uploaded file's path (or the bytes of a data URL) untouched: Gradio's own
    preprocessing would open it with PIL first, where a non-image fails without a message for the user. (An instance
    override, not a subclass: Gradio writes a .pyi stub beside the module of every component subclass.)"""
    import gradio as gr

    component = gr.Image(type="filepath", image_mode=None, **kwargs)

    def preprocess(payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return base64.b64decode(payload.url.split(",", 1)[1])
        return payload.path

    component.preprocess = preprocess
    return component


def build_app(tabs: Sequence[TranslatorTab]):
    """A gr.Blocks with one tab per export."""
    import gradio as gr

    with gr.Blocks(title="i2i — image-to-image translation", analytics_enabled=False,
                   delete_cache=(3600, 3600)) as app:
        gr.Markdown("# i2i — image-to-image translation\nTranslators exported with `python -m i2i.export`, run by "
                    "onnxruntime.")
        for tab in tabs:
            manifest = tab.model.manifest
            with gr.Tab(manifest.title, id=tab.name, elem_id=tab.name):
                gr.Markdown(f"**{manifest.title}** — task `{manifest.task}`. {tab.input_note}")
                with gr.Row():
                    with gr.Column():
                        first_mode = next(iter(tab.modes))
                        mode = gr.Radio(list(tab.modes), value=first_mode, label="mode",
                                        visible=len(tab.modes) > 1)
                        components = []
                        for widget in tab.widgets:
                            visible = tab.modes[first_mode] in widget.graphs
                            if widget.role in ("image", "label_map"):
                                label = widget.label + (" (a labelIds PNG or a map in the official colours)"
                                                        if widget.role == "label_map" else "")
                                component = upload_image(label=label, sources=["upload", "clipboard"], height=240,
                                                         visible=visible)
                            elif widget.role == "domain":
                                component = gr.Dropdown(list(widget.choices), value=widget.choices[-1],
                                                        label=widget.label, visible=visible)
                            elif widget.key == "seed":
                                component = gr.Number(value=0, precision=0, minimum=0, label=widget.label,
                                                      visible=visible)
                            else:
                                component = gr.Slider(1, min(8, MAX_OUTPUTS), value=4, step=1, label=widget.label,
                                                      visible=visible)
                            components.append(component)
                        button = gr.Button("Translate", variant="primary")
                    with gr.Column():
                        gallery = gr.Gallery(label="translation", columns=4, height=360, format="png",
                                             elem_id=f"{tab.name}_output")
                if tab.examples:
                    source = next(c for w, c in zip(tab.widgets, components) if w.role in ("image", "label_map"))
                    gr.Examples([[str(path)] for path, _ in tab.examples], inputs=[source],
                                label="examples (click one to use it as the source: "
                                      + ", ".join(label for _, label in tab.examples) + ")", examples_per_page=12)

                if tab.feature_graph is not None:
                    _recognition_panel(gr, tab)

                def show_for(selected, _tab=tab):
                    graph = _tab.modes[selected]
                    return [gr.update(visible=graph in w.graphs) for w in _tab.widgets]

                mode.change(show_for, mode, components, api_visibility="private")
                button.click(_named(user_facing(tab.translate), tab, [c.value for c in components]),
                             [mode, *components], gallery, api_name=f"{tab.name}_translate")
    return app


def _recognition_panel(gr, tab: TranslatorTab) -> None:
    """Verification of two faces and Rank-1 / VR@FAR of an uploaded set, with the export's feature graph."""
    with gr.Accordion("Recognition evaluation (the recognizer of this export)", open=False):
        gr.Markdown("Two faces: the cosine similarity of their features (1 = same direction). A set: a zip holding "
                    "`gallery/<identity>/<file>` and `probe/<identity>/<file>`; Rank-1 and VR@FAR in percent.")
        with gr.Row():
            face_a = upload_image(label="face A", height=160)
            face_b = upload_image(label="face B", height=160)
            score = gr.Number(label="cosine similarity", precision=4)
        gr.Button("Verify").click(user_facing(tab.verify), [face_a, face_b], score, api_name=f"{tab.name}_verify")
        with gr.Row():
            archive = gr.File(label="gallery/probe zip", file_types=[".zip"], type="filepath")
            table = gr.Markdown()
            numbers = gr.JSON(label="result")
        gr.Button("Evaluate set").click(user_facing(tab.evaluate_set), archive, [table, numbers],
                                        api_name=f"{tab.name}_evaluate")


def load_tabs(exports: str | os.PathLike, output_dir: Path) -> list[TranslatorTab]:
    folders = find_exports(exports)
    return [TranslatorTab(ExportedModel(folder), output_dir / slug(folder.name), folder.name) for folder in folders]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m apps.gradio_app", description=__doc__.splitlines()[0])
    parser.add_argument("--exports", default="exports", help="an export folder, or a folder of them (default exports/)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20)
    parser.add_argument("--concurrency", type=int, default=2, help="requests run at once (default 2)")
    parser.add_argument("--queue-size", type=int, default=64, help="requests waiting before new ones are refused")
    return parser


def launch(tabs: Sequence[TranslatorTab], *, host: str = DEFAULT_HOST, port: int | None = DEFAULT_PORT,
           max_upload_mb: float = MAX_UPLOAD_BYTES / 2**20, concurrency: int = 2, queue_size: int = 64,
           block: bool = True):
    """Build and launch the app; returns (app, local url). With block=False it serves from a thread."""
    app = build_app(tabs)
    app.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    allowed = sorted({str(tab.model.folder.resolve()) for tab in tabs} | {str(t.output_dir.resolve()) for t in tabs})
    _, url, _ = app.launch(server_name=host, server_port=port, share=False, max_file_size=int(max_upload_mb * 2**20),
                           allowed_paths=allowed, prevent_thread_lock=not block, quiet=not block,
                           footer_links=["api"])
    return app, url


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    work = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "i2i-app")
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
    try:
        tabs = load_tabs(args.exports, work / "outputs")
    except ExportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"serving {len(tabs)} model(s) from '{args.exports}' at http://{args.host}:{args.port}", file=sys.stderr)
    launch(tabs, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb, concurrency=args.concurrency,
           queue_size=args.queue_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
