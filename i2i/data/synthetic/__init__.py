"""Procedural datasets written in the real datasets' folder layouts; they drive the demo and the tests.

One module per dataset, sharing the folder lifecycle and the painter of `common.py`:
- `animals.py`: three animal-face domains in the AFHQ layout (`make_afhq`);
- `streets.py`: street scenes in the Cityscapes layout with real labelIds, instance ids and the official colour
  palette (`make_cityscapes`, `CITYSCAPES_LABELS`, `CITYSCAPES_PALETTE`, `colorize_labels`, `labels_from_colors`),
  drawn with `street_canvas.py` (canvas, label ids) and `street_things.py` (cars, people, poles, trees);
- `faces.py`: NIR and VIS faces of many identities in the CASIA NIR-VIS 2.0 layout with its protocol files
  (`make_nirvis`).

CLI: python -m i2i.data.synthetic afhq OUT_DIR [--size 64] [--n-train 300] [--n-val 30] [--seed 0]
     python -m i2i.data.synthetic cityscapes OUT_DIR [--width 256] [--height 128] [--n-train 200] [--n-val 40]
                                  [--seed 0]
     python -m i2i.data.synthetic nirvis OUT_DIR [--size 128] [--identities 80] [--folds 2] [--seed 0]
"""
from __future__ import annotations

from i2i.data.synthetic.animals import ANIMALS, make_afhq, render_animal
from i2i.data.synthetic.common import MARKER_NAME
from i2i.data.synthetic.faces import make_nirvis
from i2i.data.synthetic.streets import make_cityscapes

__all__ = ["ANIMALS", "MARKER_NAME", "make_afhq", "make_cityscapes", "make_nirvis", "render_animal"]
