"""Recognition via generation on CASIA NIR-VIS 2.0 (what the ReMix paper's Table 2 reports): translate every NIR probe
of the fold's test subjects to VIS, extract LightCNN-29v2 features of the translated probes and of the VIS gallery
(one image per subject), score all pairs by cosine similarity; Rank-1 and the verification rate at FAR = 1% and
0.1%. The "raw input" row matches the NIR probes directly. The ROC curves of both are saved as a PNG.

The recognizer is the official LightCNN-29v2 when the run's encoder came from that file (or `--recognizer FILE`),
otherwise the LightCNN trained on the run's training identities (`--pretrain-encoder`): its numbers are proxy
numbers (†). Metrics are reported in percent, as the paper does.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from evaluators.face_recognition import cosine_scores, far_key, genuine_impostor, plot_roc, rank1_vr, roc_curve
from evaluators.protocols.afhq import write_result
from evaluators.tables import FORMAT, VERSION, validate_result
from i2i.data.nirvis import RecognitionProtocol, eval_loaders, load_recognition_protocol
from i2i.engine.inference import load_run
from i2i.engine.trainer import select_device
from i2i.nets.lightcnn import faces_to_lightcnn_input, load_lightcnn29v2
from i2i.tasks.nirvis import ENCODER_RECORD

FARS = (1e-2, 1e-3)


def _features(recognizer: nn.Module, images: Tensor) -> Tensor:
    return recognizer.embed(faces_to_lightcnn_input(images)).cpu()


def _percent(scores: dict[str, Any]) -> dict[str, float]:
    return {key: 100.0 * scores[key] for key in ("rank1", *(far_key(f) for f in FARS))}


@torch.no_grad()
def evaluate_nirvis(encoder: nn.Module, generator: nn.Module, protocol: RecognitionProtocol, *, img_size: int,
                    recognizer: nn.Module, input_is_latent: bool = False, batch_size: int = 16,
                    device: str | torch.device = "cpu", max_probes: int | None = None, roc_path: Path | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Scores the translator (encoder -> generator, fixed noise) on a fold's gallery and probes; see the module
    docstring. Returns {"metrics": {"rank1", "vr_far_1e-2", "vr_far_1e-3" (percent), "raw": {same},
    "details": rank1_vr's counts}, "probes", "gallery", "elapsed_seconds"}."""
    start = time.perf_counter()
    device = torch.device(device)
    encoder, generator, recognizer = (n.eval().to(device) for n in (encoder, generator, recognizer))
    if max_probes is not None:
        protocol = RecognitionProtocol(protocol.fold, protocol.subjects, protocol.gallery, protocol.probes[:max_probes])
    gallery_loader, probe_loader = eval_loaders(protocol, img_size, batch_size)
    gallery = torch.cat([_features(recognizer, x.to(device)) for x, _, _ in gallery_loader])
    translated, raw = [], []
    for nir, _, _ in tqdm(probe_loader, desc="nirvis probes", disable=not progress, leave=False):
        nir = nir.to(device)
        e = encoder.embed(faces_to_lightcnn_input(nir))
        fake = generator([e], input_is_latent=input_is_latent, randomize_noise=False)[0]
        if not torch.isfinite(fake).all():
            raise ValueError("the generator produced NaN or Inf outputs (a diverged checkpoint?)")
        translated.append(_features(recognizer, fake.clamp(-1, 1)))
        raw.append(_features(recognizer, nir))
    probe_ids, gallery_ids = protocol.probe_labels, protocol.gallery_labels
    scores = {name: rank1_vr(torch.cat(f).numpy(), probe_ids, gallery.numpy(), gallery_ids, FARS)
              for name, f in (("translated", translated), ("raw", raw))}
    if roc_path is not None:
        curves = {}
        for name, f in (("NIR -> VIS translation", translated), ("raw NIR input", raw)):
            genuine, impostor = genuine_impostor(cosine_scores(torch.cat(f).numpy(), gallery.numpy()), probe_ids,
                                                 gallery_ids)
            curves[name] = roc_curve(genuine, impostor)
        plot_roc(curves, roc_path, fars=FARS)
    metrics = {**_percent(scores["translated"]), "raw": _percent(scores["raw"]),
               "details": {k: v for k, v in scores["translated"].items() if not k.startswith(("rank1", "vr_"))}}
    return {"metrics": metrics, "fold": protocol.fold, "probes": len(probe_ids), "gallery": len(gallery_ids),
            "elapsed_seconds": round(time.perf_counter() - start, 1)}


def nirvis_result(evaluation: dict[str, Any], *, recognizer: str, calibrated: bool, run: str, method: str,
                  seed: int | None, data_frac: float | None, iteration: int | None, checkpoint: str | None,
                  data_root: str | None, weights: dict[str, str]) -> dict[str, Any]:
    header = {"format": FORMAT, "version": VERSION, "task": "nirvis", "run": run, "method": method, "seed": seed,
              "data_frac": data_frac, "iteration": iteration, "checkpoint": checkpoint, "data_root": data_root,
              "weights": weights, "recognizer": "lightcnn29v2" if calibrated else "proxy",
              "recognizer_source": recognizer, "backbone": "lightcnn29v2" if calibrated else "proxy",
              "calibrated": calibrated}
    return validate_result({**header, **evaluation}, f"run '{run}'")


def format_nirvis_summary(result: dict[str, Any]) -> str:
    m, mark = result["metrics"], "" if result["calibrated"] else "†"
    lines = [f"NIR-VIS recognition via generation: {result['run']} (method {result['method']}, iteration "
             f"{result['iteration']}), fold {result['fold']}",
             f"  recognizer: {result['recognizer']}{mark} ({result['recognizer_source']})",
             f"  {result['probes']} probes, {result['gallery']} gallery images",
             f"  {'':<22} {'Rank-1':>8} {'VR@1%':>8} {'VR@0.1%':>8}"]
    for name, row in (("translated (NIR->VIS)", m), ("raw NIR input", m["raw"])):
        lines.append(f"  {name:<22} {row['rank1']:>7.2f}{mark} {row['vr_far_1e-2']:>7.2f}{mark} "
                     f"{row['vr_far_1e-3']:>7.2f}{mark}")
    lines.append(f"  (%; {result['elapsed_seconds']:.0f} s)")
    return "\n".join(lines)


def add_commands(commands) -> None:
    nv = commands.add_parser("nirvis", help="recognition via generation on CASIA NIR-VIS 2.0 (Rank-1, VR@FAR)",
                             allow_abbrev=False)
    nv.add_argument("--run", type=Path, required=True, metavar="RUN")
    nv.add_argument("--checkpoint", type=Path, metavar="FILE")
    nv.add_argument("--data", type=Path, metavar="DIR", help="dataset root (default: the run's)")
    nv.add_argument("--fold", help="protocol fold (default: the run's)")
    nv.add_argument("--recognizer", metavar="FILE", help="a LightCNN-29v2 checkpoint (default: the run's encoder)")
    nv.add_argument("--max-probes", type=int, metavar="N", help="only the first N probes (quick runs)")
    nv.add_argument("--batch-size", type=int, default=16)
    nv.add_argument("--device", default="auto")
    nv.add_argument("--out", type=Path, help="result file (default: RUN/eval/nirvis.json; the ROC plot beside it)")
    nv.add_argument("--no-progress", action="store_true")


def run_command(args) -> int:
    device = select_device(args.device)
    run = load_run(args.run, args.checkpoint, device=device)
    if run.cfg.task != "nirvis":
        raise ValueError(f"'{args.run}' is a '{run.cfg.task}' run; recognition via generation needs a nirvis run")
    root = Path(args.data or run.cfg.data.root)
    fold = args.fold or run.cfg.data.fold
    if args.recognizer:
        recognizer, source, calibrated = load_lightcnn29v2(args.recognizer).to(device), args.recognizer, True
    else:
        record = Path(args.run) / ENCODER_RECORD
        info = json.loads(record.read_text()) if record.is_file() else {"source": "unknown", "calibrated": False}
        recognizer, source, calibrated = run.nets["encoder"], info["source"], bool(info["calibrated"])
    out = args.out or Path(args.run) / "eval" / "nirvis.json"
    evaluation = evaluate_nirvis(run.nets["encoder"], run.nets["generator"], load_recognition_protocol(root, fold),
                                 img_size=run.cfg.data.img_size, recognizer=recognizer,
                                 input_is_latent=run.cfg.model.input_is_latent, batch_size=args.batch_size,
                                 device=device, max_probes=args.max_probes, roc_path=out.with_name(out.stem + "_roc.png"),
                                 progress=not args.no_progress)
    cfg = run.cfg
    result = nirvis_result(evaluation, recognizer=source, calibrated=calibrated, run=str(args.run), method=cfg.method,
                           seed=cfg.train.seed, data_frac=cfg.data.frac, iteration=run.iteration,
                           checkpoint=str(run.checkpoint), data_root=str(root), weights={"recognizer": source})
    write_result(result, out)
    print(format_nirvis_summary(result))
    print(f"written: {out} and {out.with_name(out.stem + '_roc.png')}")
    return 0
