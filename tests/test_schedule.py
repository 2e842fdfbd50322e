"""LR schedule against its closed form; weight-decay mask and SGD update against torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from jax_csfcn.layers import ConvBNReLU, conv2d
from jax_csfcn.schedule import decay_mask, sgd_optimizer, warmup_poly_schedule


def closed_form(step, base, total, warmup, start, power):
    if step < warmup:
        return base * (start + (1 - start) * step / warmup)
    return base * (1 - min(step - warmup, total - warmup) / (total - warmup)) ** power


@pytest.mark.parametrize(
    "base,total,warmup,start,power",
    [(0.01, 119040, 2480, 1 / 3, 0.9), (0.05, 1000, 37, 0.1, 1.0), (0.3, 50, 0, 1 / 3, 0.9)],
)
def test_schedule_closed_form(base, total, warmup, start, power):
    sched = warmup_poly_schedule(base, total, warmup, start, power)
    steps = sorted({0, 1, max(warmup - 1, 0), warmup, warmup + 1, (warmup + total) // 2, total - 1, total, total + 7})
    jitted = jax.jit(sched)
    for s in steps:
        want = closed_form(s, base, total, warmup, start, power)
        np.testing.assert_allclose(float(sched(s)), want, rtol=1e-6, atol=1e-12, err_msg=f"step {s}")
        np.testing.assert_allclose(float(jitted(jnp.int32(s))), want, rtol=1e-6, atol=1e-12, err_msg=f"step {s}")
    assert float(sched(total)) == 0.0 and float(sched(total + 7)) == 0.0
    if warmup:
        np.testing.assert_allclose(float(sched(0)), base * start, rtol=1e-6)
    np.testing.assert_allclose(float(sched(warmup)), base, rtol=1e-6)


def test_schedule_rejects_bad_lengths():
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_poly_schedule(0.01, 100, warmup_steps=100)


class Tiny(nnx.Module):
    def __init__(self, rngs):
        self.stem = ConvBNReLU(3, 4, rngs=rngs)  # conv kernel (no bias) + BN scale/bias/stats
        self.head = conv2d(4, 5, 1, bias=True, rngs=rngs)  # kernel + conv bias
        self.fc = nnx.Linear(5, 2, rngs=rngs)  # dense kernel + bias

    def __call__(self, x):
        return self.fc(self.head(self.stem(x)).mean(axis=(1, 2)))


EXPECTED_DECAY = {
    "stem/conv/kernel": True,
    "stem/bn/scale": False,
    "stem/bn/bias": False,
    "head/kernel": True,
    "head/bias": False,
    "fc/kernel": True,
    "fc/bias": False,
}


def _by_name(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): leaf for path, leaf in flat}


def test_decay_mask_kernels_only():
    model = Tiny(nnx.Rngs(0))
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    assert _by_name(decay_mask(params)) == EXPECTED_DECAY
    assert _by_name(decay_mask(nnx.to_pure_dict(params))) == EXPECTED_DECAY
    # BN statistics are not parameters, never decayed, even if handed in.
    assert not any(jax.tree_util.tree_leaves(decay_mask(nnx.state(model))["stem"]["bn"]))
    assert set(_by_name(stats)) == {"stem/bn/mean", "stem/bn/var", "stem/bn/num_batches_tracked"}


@pytest.mark.parametrize("precomputed", [False, True])
def test_zero_grad_step_decays_kernels_only(precomputed):
    model = Tiny(nnx.Rngs(1))
    params = nnx.state(model, nnx.Param)
    for var in jax.tree_util.tree_leaves(params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        var[...] = var[...] + 0.5  # non-zero biases/scales, so that a wrong decay would show
    before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    lr, wd = 0.1, 0.01
    tx = sgd_optimizer(lr, weight_decay=wd, params=params if precomputed else None)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    opt.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for name, old in _by_name(before).items():
        factor = 1 - lr * wd if EXPECTED_DECAY[name] else 1.0
        np.testing.assert_allclose(_by_name(after)[name], np.asarray(old) * factor, rtol=1e-6, err_msg=name)


@pytest.mark.parametrize("clip_norm", [0.0, 1.0])
def test_sgd_matches_torch_param_groups(rng, clip_norm):
    """Five steps of sgd_optimizer with the recipe schedule == torch.optim.SGD with a
    weight_decay=0 group for BN/bias and torch's LinearLR warm-up then the poly formula; with
    ``clip_norm`` torch's clip_grad_norm_ before each step (the random gradients' global norm,
    ~9, is above 1, so every step is clipped). torch divides by norm + 1e-6: 1e-7 relative."""
    base, total, warmup = 0.01, 10, 3
    shapes = {
        "conv": {"kernel": (3, 3, 2, 4)},
        "bn": {"scale": (4,), "bias": (4,)},
        "fc": {"kernel": (4, 2), "bias": (2,)},
    }
    params = jax.tree.map(
        lambda s: rng.standard_normal(s).astype(np.float32), shapes, is_leaf=lambda x: isinstance(x, tuple)
    )
    sched = warmup_poly_schedule(base, total, warmup)
    tx = sgd_optimizer(sched, params=params, clip_norm=clip_norm)
    state = tx.init(params)

    tp = {k: {n: torch.tensor(v, requires_grad=True) for n, v in d.items()} for k, d in params.items()}
    decay = [tp["conv"]["kernel"], tp["fc"]["kernel"]]
    no_decay = [tp["bn"]["scale"], tp["bn"]["bias"], tp["fc"]["bias"]]
    topt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=base, momentum=0.9
    )
    jp = params
    for step in range(5):
        grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
        updates, state = tx.update(grads, state, jp)
        jp = optax.apply_updates(jp, updates)
        for g in topt.param_groups:  # the same closed form drives torch's LR
            g["lr"] = closed_form(step, base, total, warmup, 1 / 3, 0.9)
        for k, d in tp.items():
            for n, t in d.items():
                t.grad = torch.tensor(grads[k][n])
        if clip_norm:
            norm = torch.nn.utils.clip_grad_norm_([t for d in tp.values() for t in d.values()], clip_norm)
            assert norm > clip_norm, f"step {step}: gradient norm {norm:.2f} is not clipped by {clip_norm}"
        topt.step()
    for k, d in tp.items():
        for n, t in d.items():
            np.testing.assert_allclose(
                np.asarray(jp[k][n]), t.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=f"{k}/{n}"
            )


def test_precomputed_mask_without_kernels_is_an_error():
    with pytest.raises(ValueError, match="kernel"):
        sgd_optimizer(0.01, params={"w": jnp.ones(3)})
