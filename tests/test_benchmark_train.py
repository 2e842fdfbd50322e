"""``python -m jax_csfcn.benchmark train``: a tiny smoke run (timings are never asserted).

Checks that the command runs and writes its JSON record, that the JAX train step and the
PyTorch twin's step start from the same loss (same converted weights, same batch, same
normalisation and OHEM), and that the benchmark's torch OHEM is the definition of
jax_csfcn.losses (against the direct reference of tests/test_losses.py).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import nchw
from test_losses import OHEM_CASES, make_batch, ohem_reference

from jax_csfcn.benchmark import main, torch_ohem_loss, torch_ohem_select


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


def test_train_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "train.json"
    argv = ["train", "--batch", "2", "--size", "64", "128", "--repeats", "1", "--warmup", "0", "--json", str(out)]
    assert main(argv) == 0
    assert "jax csfcn" in capsys.readouterr().out
    rec = json.loads(out.read_text())

    env = rec["environment"]
    for key in ("machine", "cpu_count", "available_cores", "loadavg_1_5_15", "torch_threads", "jax", "torch"):
        assert key in env
    t = rec["train"]
    assert t["shape"] == {"batch": 2, "height": 64, "width": 128, "num_classes": 19, "variant": "csfcn"}
    assert t["loss"]["ohem"] and t["optimizer"]["momentum"] == 0.9
    assert set(t["loadavg_1_5_15"]) == {"before", "after"}
    rows = t["rows"]
    assert set(rows) == {"jax csfcn", "torch csfcn default", "torch csfcn channels_last"}
    for r in rows.values():
        for key in ("median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "images_per_s", "first_call_ms"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert r["runs"] == 1
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert math.isfinite(r["first_step_loss"])

    # The first step of each starts from the same weights and batch: same loss (random init,
    # 19 classes: about log 19 ~ 2.94), fp32 accumulation-order differences only.
    ref = rows["jax csfcn"]["first_step_loss"]
    assert 1.0 < ref < 10.0
    for name in ("torch csfcn default", "torch csfcn channels_last"):
        np.testing.assert_allclose(rows[name]["first_step_loss"], ref, rtol=2e-3, err_msg=name)
