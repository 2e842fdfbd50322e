"""Shared checks of the zoo models (tests/test_zoo_*.py): the Flax model against its PyTorch twin.

tests/test_zoo_parity.py calls these for every zoo model; the tolerances are the parity suite's
(tests/test_parity.py): fp64 <= 1e-9 relative L2; fp32 no further from the fp64 result than 2x
the twin's own fp32 distance, and argmax agreement >= 99.99%.
"""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import torch
from conftest import nchw, rel_l2
from flax import nnx
from random_weights import randomize_like_trained

from convert import flax_to_torch, torch_to_flax
from jax_csfcn.checkpointing import model_flat
from jax_csfcn.zoo import zoo_class as flax_class
from torch_deploy.zoo import zoo_class as torch_class

FP64_TOL = 1e-9
ARGMAX_AGREEMENT = 0.9999
# The class count of the fast checks, in every zoo test file: one cached pair per model (one
# calibration compile, one set of JAX programs per check), and not 19, so that the
# class-count-dependent shapes are exercised.
K = 11


def torch_shapes(twin: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in twin.state_dict().items()}


# The random BN calibration batch: 2 images of 96x128, but 4 of 64x96 for BiSeNetV1, whose
# attention BNs sit on 1x1 maps and take their variance over the batch alone (see ``pair``).
CALIB = {"bisenetv1": (4, 64, 96)}


def pair(name: str, k: int, seed: int = 3):
    return _pair(name, k, seed, CALIB.get(name, (2, 96, 128)))


@functools.cache
def _pair(name: str, k: int, seed: int, calib):
    """(Flax model in eval mode, twin fp32, twin fp64) sharing random trained-like weights
    (BN statistics calibrated on a random ``calib`` batch, then perturbed).

    BNs on 1x1 maps take their statistics over the batch alone, and a variance over 2 images can
    be tiny enough to amplify fp32 rounding a hundredfold (BiSeNetV1's attention BNs: JAX fp32
    2.5e-5 and torch fp32 1.1e-5 from fp64, against 4.3e-6 and 5.3e-6 calibrated on 4 images),
    which a network calibrated on a dataset never does.

    The fp64 twin is fp64 throughout, its sampling grids included: ``offset_grid`` builds its
    linspace in the offsets' dtype. The upstream CSFCN, CSFCN-Tiny and SFANet build theirs with
    ``torch.linspace`` in the default float32, so the upstream's own ``.double()`` is ~1e-7
    from fp64; the references here are the true fp64 function."""
    model = flax_class(name)(k, rngs=nnx.Rngs(seed))
    flat = randomize_like_trained(model, seed=seed, calib_shape=(*calib, 3))
    twin = torch_class(name)(k)
    tensors = flax_to_torch(flat, torch_shapes=torch_shapes(twin))
    twin.load_state_dict({key: torch.from_numpy(v.copy()) for key, v in tensors.items()}, strict=True)
    twin.eval()
    return model, twin, copy.deepcopy(twin).double()


_outputs = nnx.jit(lambda m, x: m.outputs(x))
_main = nnx.jit(lambda m, x: m(x))


def _torch_outputs(twin, x: np.ndarray, dtype=torch.float32) -> list[np.ndarray]:
    with torch.no_grad():
        return [o.numpy() for o in twin.outputs(torch.from_numpy(nchw(x)).to(dtype))]


def check_fp64(name: str, k: int, x: np.ndarray) -> list[float]:
    """Every output of ``outputs`` and the main ``__call__`` in fp64 on both sides: <= 1e-9."""
    # The pair first, outside x64: its BN calibration jits the model in x32, and the nearest-resize
    # indices (ops._nearest_index, BiSeNetV1) must serve both x64 modes.
    model, _, twin64 = pair(name, k)
    with jax.enable_x64(True):
        m64 = nnx.clone(model)
        state = nnx.state(m64)
        nnx.update(m64, jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, state))
        xj = jnp.asarray(x, jnp.float64)
        # compiled: op by op, every eager fp64 op would compile on its own
        ys, main = nnx.jit(lambda m, x: (m.outputs(x), m(x)))(m64, xj)
        ys, main = [nchw(y) for y in ys], nchw(main)
    ts = _torch_outputs(twin64, x, torch.float64)
    with torch.no_grad():
        tmain = twin64(torch.from_numpy(nchw(x)).double()).numpy()
    assert len(ys) == len(ts) == len(type(model).LOSS_WEIGHTS)
    errs = []
    for i, (a, b) in enumerate(zip(ys, ts)):
        assert a.dtype == np.float64 and a.shape == b.shape, (i, a.shape, b.shape)
        errs.append(rel_l2(a, b))
    assert main.shape == tmain.shape == (x.shape[0], k, x.shape[1], x.shape[2])
    errs.append(rel_l2(main, tmain))
    assert max(errs) <= FP64_TOL, errs
    return errs


def check_fp32(name: str, k: int, x: np.ndarray) -> dict:
    """Main logits in fp32: JAX no further from torch fp64 than 2x torch fp32 is; argmax agreement."""
    model, twin, twin64 = pair(name, k)
    yj = nchw(_main(model, jnp.asarray(x, jnp.float32)))
    xt = torch.from_numpy(nchw(x))
    with torch.no_grad():
        yt = twin(xt.float()).numpy()
        y64 = twin64(xt.double()).numpy()
    floor = rel_l2(yt, y64)
    # Agreement with the twin in fp32 or with the fp64 result, whichever is higher: torch fp32 is
    # not always the closer side (ICNet's input resizes by scale_factor compute their source
    # coordinates in fp32, ~6e-6 off), and near-tie pixels flip in any fp32 computation.
    agreement = max(float(np.mean(yj.argmax(1) == y64.argmax(1))), float(np.mean(yj.argmax(1) == yt.argmax(1))))
    assert yj.shape == yt.shape == (x.shape[0], k, x.shape[1], x.shape[2])
    assert rel_l2(yj, y64) <= 2 * floor + 1e-8, f"JAX fp32 {rel_l2(yj, y64):.2e} vs torch fp32 {floor:.2e}"
    assert agreement >= ARGMAX_AGREEMENT, f"argmax agreement {agreement:.6f}"
    return {"jax_vs_fp64": rel_l2(yj, y64), "torch_vs_fp64": floor, "agreement": agreement}


def check_train_mode(name: str, k: int, x: np.ndarray) -> None:
    """One train-mode forward of ``outputs`` (batch statistics), and the running statistics it leaves."""
    model, twin, twin64 = pair(name, k)
    model, twin, twin64 = nnx.clone(model), copy.deepcopy(twin), copy.deepcopy(twin64)
    for m in (model, twin, twin64):
        m.train()
    ys = [nchw(y) for y in _outputs(model, jnp.asarray(x, jnp.float32))]
    ts = _torch_outputs(twin, x)
    t64 = _torch_outputs(twin64, x, torch.float64)
    for a, b, c in zip(ys, ts, t64):
        assert a.shape == b.shape
        assert rel_l2(a, c) <= 2 * rel_l2(b, c) + 1e-7, (rel_l2(a, c), rel_l2(b, c))
    flat = model_flat(model)
    sd, sd32 = twin64.state_dict(), twin.state_dict()
    for path, a in flat.items():
        if path[-1] in ("mean", "var"):
            key = ".".join(map(str, path[:-1])) + (".running_mean" if path[-1] == "mean" else ".running_var")
            own = rel_l2(sd32[key].numpy(), sd[key].numpy())  # torch fp32's own distance (few values per channel)
            assert rel_l2(a, sd[key].numpy()) <= max(1e-5, 2 * own), key


def check_roundtrip(name: str, k: int) -> None:
    """Flax -> PyTorch -> Flax is bit-exact, and the twin's state_dict reads back into Flax."""
    model, twin, _ = pair(name, k)
    flat = model_flat(model)
    template = {p: a.shape for p, a in flat.items()}
    back, missing, unexpected = torch_to_flax(template, {key: v.numpy() for key, v in twin.state_dict().items()})
    assert not missing and not unexpected
    assert set(back) == set(flat)
    for p in flat:
        np.testing.assert_array_equal(np.asarray(back[p]), np.asarray(flat[p]), err_msg=str(p))
    again = flax_to_torch(back, torch_shapes=torch_shapes(twin))
    for key, v in twin.state_dict().items():
        np.testing.assert_array_equal(again[key], v.numpy(), err_msg=key)


def count_params(model) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
