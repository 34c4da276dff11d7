"""The README's sample pictures from the demo runs' sample grids (upscaled, nearest neighbour, so pixels stay visible).

    python docs/figures.py                      # every demo run that exists -> docs/*_samples.png
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GAP = 8  # white pixels between the panels of one picture


def latest(samples: Path, suffix: str) -> Path | None:
    found = sorted(samples.glob(f"*{suffix}.png"))
    return found[-1] if found else None


def upscaled(path: Path, target_height: int) -> Image.Image:
    image = Image.open(path).convert("RGB")
    scale = max(1, round(target_height / image.height))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def side_by_side(panels: list[Image.Image]) -> Image.Image:
    height = max(p.height for p in panels)
    out = Image.new("RGB", (sum(p.width for p in panels) + GAP * (len(panels) - 1), height), "white")
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + GAP
    return out


def main() -> int:
    figures = {  # picture -> (run, the sample grids shown side by side)
        "demo_samples.png": ("runs/demo", ("_reference", "_latent")),
        "cityscapes_samples.png": ("runs/demo-cityscapes", ("",)),
        "nirvis_samples.png": ("runs/demo-nirvis", ("",)),
    }
    for name, (run, suffixes) in figures.items():
        grids = [latest(REPO / run / "samples", s) for s in suffixes]
        if None in grids:
            print(f"skip {name}: no samples in {run}/samples")
            continue
        picture = side_by_side([upscaled(g, 600) for g in grids])
        picture.save(REPO / "docs" / name)
        print(f"wrote docs/{name} from {', '.join(str(g.relative_to(REPO)) for g in grids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
