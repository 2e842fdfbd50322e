"""``python -m tools.benchmark_train train``: the benchmark's torch OHEM is the definition of
jax_csfcn.losses (against the direct reference of tests/test_losses.py). The command itself
runs in tests/test_readme.py (the README's command on tiny settings), which also checks that
the JAX train step and the PyTorch twin's step start from the same loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import nchw
from test_losses import OHEM_CASES, make_batch, ohem_reference

from tools.benchmark_train import torch_ohem_loss, torch_ohem_select


@pytest.mark.parametrize("case", OHEM_CASES.keys())
def test_torch_ohem_matches_reference(rng, case):
    n, h, w, c, ign, conf, thresh, min_kept = OHEM_CASES[case]
    logits, labels = make_batch(rng, n, h, w, c, ignore_frac=ign, confident_frac=conf)
    x = torch.tensor(nchw(logits.astype(np.float64)))
    ref, ref_kept = ohem_reference(x, labels, thresh, min_kept)
    y = torch.tensor(labels.astype(np.int64))
    _, keep = torch_ohem_select(x, y, thresh=thresh, min_kept=min_kept)
    assert int(keep.sum()) == ref_kept
    got = torch_ohem_loss(torch.tensor(nchw(logits)), y, thresh=thresh, min_kept=min_kept)
    np.testing.assert_allclose(float(got), float(ref), rtol=1e-5, atol=1e-6)
