"""Behaviours no other test pins down exactly: which checkpoint a run's "best" is, and flip
test-time augmentation (the mirrored view's scores are mirrored back before averaging)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_csfcn import checkpointing as ckpt
from jax_csfcn.evaluation import logits_fn
from jax_csfcn.ops import normalize_on_device


def test_best_checkpoint_is_the_highest_val_miou_and_survives_rotation(tmp_path):
    """keep=1 plus the best: with mIoUs 0.4, 0.9, 0.2, 0.5 at steps 1-4 the run keeps steps 2
    (best) and 4 (latest), and load_model / evaluate / convert read step 2."""
    mngr = ckpt.manager(tmp_path / "checkpoints", keep=1, async_save=False)
    state = {"params": {"w": np.arange(3, dtype=np.float32)}}
    for step, miou in zip((1, 2, 3, 4), (0.4, 0.9, 0.2, 0.5)):
        ckpt.save(mngr, step, state, {"step": step}, {"step": step}, {"miou": miou})
    mngr.wait_until_finished()
    mngr.close()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [2, 4]
    assert ckpt.resolve_step_dir(tmp_path).name == "2"


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 1.0)])
def test_flip_averages_with_the_mirrored_view_mirrored_back(scales):
    """A stand-in model whose scores depend on the column: flip TTA must equal the mean of the
    softmax of the plain view and of the flipped view's scores flipped back."""
    rng = np.random.default_rng(7)
    images = jnp.asarray(rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8))

    def model(x):  # (N, H, W, 3) -> (N, H, W, 4), not mirror-symmetric
        col = jnp.linspace(-2.0, 3.0, x.shape[2])[None, None, :, None]
        return jnp.concatenate([x, x[..., :1] * col], axis=-1)

    got = logits_fn(model, images, scales=scales, flip=True)
    x = normalize_on_device(images, jnp.float32)
    want = 0.0
    for s in scales:
        size = (max(32, round(64 * s / 32) * 32), max(32, round(96 * s / 32) * 32))
        xs = jax.image.resize(x, (2, *size, 3), "linear", antialias=False)
        for view, back in ((xs, lambda o: o), (xs[:, :, ::-1], lambda o: o[:, :, ::-1])):
            out = jax.image.resize(back(model(view)), (2, 64, 96, 4), "linear", antialias=False)
            want = want + jax.nn.softmax(out, axis=-1)
    want = want / (2 * len(scales))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    # and the flip matters for this model: averaging without mirroring back is a different answer
    unmirrored = jax.nn.softmax(model(x[:, :, ::-1]), axis=-1)
    if scales == (1.0,):
        assert not np.allclose(np.asarray(got), np.asarray((jax.nn.softmax(model(x), -1) + unmirrored) / 2), atol=1e-3)
