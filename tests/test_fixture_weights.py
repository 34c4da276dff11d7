"""Our fill rule must reproduce the official one, or every parity test would compare different weights."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tests.fixture_weights import FIXTURES, deterministic_state_dict

SHARED_FILL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "fill.py"


@pytest.mark.skipif(not SHARED_FILL.exists(), reason="../shared/fixtures/fill.py not beside the repo")
@pytest.mark.parametrize("name", ["stargan_v2_small", "spade_small", "drn_d_105"])
def test_fill_rule_matches_reference(name):
    import json

    spec = importlib.util.spec_from_file_location("shared_fill", SHARED_FILL)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    shapes = json.loads((FIXTURES / name / "keys.json").read_text())
    groups = shapes.values() if all(isinstance(v, dict) for v in shapes.values()) else [shapes]
    for group in groups:
        ours, theirs = deterministic_state_dict(group, seed=0), ref.deterministic_state_dict(group, seed=0)
        assert ours.keys() == theirs.keys()
        for k in ours:
            np.testing.assert_array_equal(ours[k], theirs[k], err_msg=k)
