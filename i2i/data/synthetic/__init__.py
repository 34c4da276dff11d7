"""Procedural datasets written in the real datasets' folder layouts; they drive the demo and the tests.

One module per dataset (`animals.py`: the AFHQ-like set), sharing the folder lifecycle and the painter of
`common.py`.

CLI: python -m i2i.data.synthetic afhq OUT_DIR [--size 64] [--n-train 300] [--n-val 30] [--seed 0]
"""
from __future__ import annotations

from i2i.data.synthetic.animals import ANIMALS, make_afhq, render_animal
from i2i.data.synthetic.common import MARKER_NAME

__all__ = ["ANIMALS", "MARKER_NAME", "make_afhq", "render_animal"]
