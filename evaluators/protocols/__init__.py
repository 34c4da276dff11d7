"""The papers' evaluation protocols, one module per task: `afhq` (StarGAN v2: FID / LPIPS, latent and reference),
`cityscapes` (SPADE: segmentation mIoU / accuracy of generated scenes, FID), `nirvis` (recognition via generation).
The AFHQ names are re-exported here (their historical home)."""
from evaluators.protocols.afhq import (MODES, OFFICIAL_BATCH_SIZE, LoadedRun, ReferenceStream, afhq_result,  # noqa: F401
                                       backbone_fingerprint, evaluate_afhq, format_summary, load_official, load_run,
                                       official_architecture, quantize_8bit, real_statistics, write_result)
