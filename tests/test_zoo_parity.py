"""Every zoo model (csfcn.model_config.ZOO_NAMES) against its PyTorch twin: the shared checks.

Each check is written once here and parametrized over the zoo; ``ZOO`` below is the per-model
table of what differs (input sizes, outputs, the CamVid-size class count, bf16 checks).  The
checks run through tests/zoo_harness.py, whose cached model pairs (one per model at
``zoo_harness.K`` classes) this file shares with the per-model files; the tolerances are the
harness's (fp64 <= 1e-9 relative L2, fp32 <= 2x the twin's own fp32 distance, argmax >= 99.99%).

The model-specific checks against upstream numbers (parameter counts, state_dict keys, ImageNet
keys, initialisation draws, ICNet's output sizes, BiSeNetV1's loss, ...) stay in
tests/test_zoo_<model>.py: each model's upstream is another repository with its own constants and
no code in common with the others, so one file per model keeps each upstream's facts beside its
citation, and a change to one model's upstream facts touches only that model's file.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import rel_l2
from flax import nnx
from zoo_harness import K, _main, _outputs, check_fp32, check_fp64, check_roundtrip, check_train_mode, pair

from csfcn.model_config import ZOO_NAMES
from jax_csfcn.zoo import zoo_class as flax_class
from torch_deploy.zoo import zoo_class as torch_class


@dataclass(frozen=True)
class Bf16:
    """A bf16-compute forward against the fp64 function: input (N, H, W), and whether every output
    of ``outputs`` is compared or the main ``__call__`` only. The bound is derived, not set
    (test_bf16_forward): BF16_FACTOR x the twin's own bf16 distance to fp64 on the same weights."""

    shape: tuple[int, int, int]
    every_output: bool


# A bf16 forward is as good as bf16 allows when it is about as far from the fp64 function as
# another bf16 implementation of it is: the PyTorch twin cast to bf16 (weights, BN statistics and
# every activation rounded to bf16 at each op). The two round at different points (XLA keeps some
# fusions' intermediates in fp32, torch rounds after every op), so their distances differ by a
# small factor, not a large one; 3 is the factor the ONNX export check uses for the same reason
# (tools/export_onnx.py). A bf16 error that is not rounding -- a layer left in fp32 that should
# not be, a BN folded with the wrong statistics, an fp32-only constant applied in bf16 twice --
# moves the distance by far more.
BF16_FACTOR = 3.0


@dataclass(frozen=True)
class Zoo:
    loss_weights: tuple[float, ...]  # one per output of ``outputs``, main first (both classes)
    fp64: tuple[int, int, int]  # (N, H, W) of the fp64 check of every output and __call__
    fp32: tuple[int, int, int]  # of the fp32 check of the main logits
    train: tuple[int, int, int]  # of the train-mode check
    train_varied: bool = False  # train-mode images of different mean and contrast (SFANet)
    twin_sizes: tuple[tuple[int, int], ...] | None = None  # the outputs' sizes at 40 x 56 (None: all 40 x 56)
    camvid_k: int = K  # the class count of the slow CamVid-size checks
    bf16: Bf16 | None = None  # a numeric bf16 check (slow)
    bf16_trace: tuple[int, int, int] | None = None  # a traced-only bf16 check (fast)


ZOO = {
    # 88 x 120 is no multiple of 32 (upstream's aux3/aux4 would be 96 x 128): all five outputs are
    # at the input size here.  Train mode: sfa4's BN normalises one value per image (the 1 x 1 global
    # averages); when the images' averages are nearly equal (pure-noise images) a channel's batch
    # variance is near BN's eps and the fp32 rounding of either side is amplified by up to
    # ~1/sqrt(eps), so train mode runs on four images that differ in mean and contrast, as real
    # images do.
    "sfanet": Zoo(
        loss_weights=(1.0, 0.4, 0.4, 0.4, 0.4),
        fp64=(1, 88, 120),
        fp32=(2, 64, 96),
        train=(4, 32, 48),
        train_varied=True,
        bf16=Bf16((2, 64, 96), every_output=False),
    ),
    # 88 x 120: not a multiple of 32 (upstream crashes) nor of 16 (the aux PixelShuffle gives 96 x 128).
    "mgseg": Zoo(
        loss_weights=(1.0, 0.4, 0.4),
        fp64=(1, 88, 120),
        fp32=(2, 72, 104),
        train=(2, 64, 96),
        bf16=Bf16((1, 64, 96), every_output=True),
    ),
    # 70 x 106 is no multiple of 8: the full output is resized to 70 x 106 from 18 x 28.  Train mode
    # at 64 x 96 would take layer4's batch statistics over 2 x 2 x 3 values per channel, where fp32
    # running variances are 3e-5 from fp64 (the twin's: 3e-4) against the harness's 1e-5; at 96 x 128
    # (2 x 3 x 4 values) they are < 7e-6.  The outputs: full H x W, then 1/4, 1/8 and 1/16.
    "icnet": Zoo(
        loss_weights=(0.0, 1.0, 0.4, 0.4),
        fp64=(1, 70, 106),
        fp32=(2, 96, 128),
        train=(2, 96, 128),
        twin_sizes=((40, 56), (10, 14), (5, 7), (3, 4)),
        camvid_k=19,
    ),
    # 88 x 120, not a multiple of 32: upstream fails (the nearest x2 of the 6x8 1/16 map is 12x16,
    # the 1/8 map is 11x15) and its aux32 head's x16 would give 96x128; here all are 88 x 120.
    # Train mode as SFANet's (four images that differ in mean and contrast): the ARM attention BNs
    # see 1x1 maps, so on two pure-noise images their batch variance is over two nearly equal values
    # and fp32 rounding is amplified (measured on one such draw: JAX 2.3e-5, torch 7.4e-6 from fp64).
    "bisenetv1": Zoo(
        loss_weights=(1.0, 1.0, 1.0),
        fp64=(1, 88, 120),
        fp32=(2, 96, 128),
        train=(4, 64, 96),
        train_varied=True,
        camvid_k=19,
    ),
    # Train mode compares the running statistics of the five SPP BNs too (momentum 0.005 on both
    # sides).  bf16 is traced only (no compile).
    "swiftnet": Zoo(
        loss_weights=(1.0,),
        fp64=(1, 88, 120),
        fp32=(2, 64, 96),
        train=(2, 64, 96),
        camvid_k=19,
        bf16_trace=(2, 72, 104),
    ),
}

CAMVID = [pytest.param((360, 480), id="360x480"), pytest.param((720, 960), id="720x960")]


def _with(field: str) -> list[str]:
    return [n for n in ZOO_NAMES if n in ZOO and getattr(ZOO[n], field) is not None]


def test_every_zoo_model_has_a_row():
    assert set(ZOO) == set(ZOO_NAMES), f"ZOO rows {sorted(ZOO)} != the zoo {sorted(ZOO_NAMES)}"


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_roundtrip(name):
    """Flax -> PyTorch -> Flax is bit-exact, and the twin's state_dict reads back into Flax."""
    check_roundtrip(name, K)


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_fp64_outputs_and_main(name, rng):
    """Every output and __call__ in fp64, at a size the upstream cannot run (see ``ZOO``)."""
    row = ZOO[name]
    errs = check_fp64(name, K, rng.standard_normal((*row.fp64, 3)))
    expected = len(row.loss_weights) + 1
    assert len(errs) == expected, f"{name}: {len(errs)} fp64 errors, expected {expected} (each output and __call__)"
    print(name, row.fp64, "fp64 rel L2:", [f"{e:.1e}" for e in errs])


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_fp32_main_batch2(name, rng):
    print(name, check_fp32(name, K, rng.standard_normal((*ZOO[name].fp32, 3)).astype(np.float32)))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_train_mode(name, rng):
    """One train-mode forward of ``outputs`` (batch statistics) and the running statistics it leaves."""
    row = ZOO[name]
    n, h, w = row.train
    x = rng.standard_normal((n, h, w, 3))
    if row.train_varied:
        x = x * rng.uniform(0.5, 1.5, (n, 1, 1, 3)) + rng.standard_normal((n, 1, 1, 3))
    check_train_mode(name, K, x.astype(np.float32))


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_twin_leaves_its_input_alone(name, rng):
    """The twin's ``outputs`` and ``__call__`` leave their input as it was; the outputs' number and
    sizes, ``__call__`` = the main output, and the loss weights, one per output, on both sides."""
    row = ZOO[name]
    _, twin, _ = pair(name, K)
    x = torch.from_numpy(rng.standard_normal((1, 3, 40, 56)).astype(np.float32))
    before = x.clone()
    with torch.no_grad():
        outs = twin.outputs(x)
        main = twin(x)
    assert torch.equal(x, before), f"{name}: the twin wrote into its input"
    sizes = row.twin_sizes or ((40, 56),) * len(row.loss_weights)
    got = [tuple(o.shape) for o in outs]
    assert got == [(1, K, *s) for s in sizes], f"{name}: twin outputs {got} at 40 x 56"
    assert torch.equal(main, outs[0]), f"{name}: the twin's __call__ differs from its main output"
    weights = (flax_class(name).LOSS_WEIGHTS, torch_class(name).LOSS_WEIGHTS)
    assert weights == (row.loss_weights, row.loss_weights), f"{name}: loss weights (Flax, torch) {weights}"


@pytest.mark.slow
@pytest.mark.parametrize("size", CAMVID)
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_fp64_at_camvid_sizes(name, size, rng):
    """360 x 480 and 720 x 960 (upstream's fixed aux upsampling gives other sizes, or crashes)."""
    errs = check_fp64(name, ZOO[name].camvid_k, rng.standard_normal((1, *size, 3)))
    print(name, size, "fp64 rel L2:", [f"{e:.1e}" for e in errs])


@pytest.mark.slow
@pytest.mark.parametrize("size", CAMVID)
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_fp32_at_camvid_sizes(name, size, rng):
    res = check_fp32(name, ZOO[name].camvid_k, rng.standard_normal((1, *size, 3)).astype(np.float32))
    print(name, size, "fp32:", {k: f"{v:.2e}" for k, v in res.items()})


def _bf16_shell(name: str):
    """The model with dtype=bf16, shapes only (no weights drawn): its parameters stay fp32."""
    shell = nnx.eval_shape(lambda: flax_class(name)(K, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
    dtypes = {a.dtype for a in jax.tree.leaves(nnx.state(shell, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}, f"{name}: dtype=bf16 keeps parameters in {dtypes}, not fp32"
    return shell


@pytest.mark.slow
@pytest.mark.parametrize("name", _with("bf16"))
def test_bf16_forward(name, rng):
    """The compute dtype reaches the layers: bf16 logits, finite, and no further from the fp64
    function than BF16_FACTOR x the bf16 twin is (eval mode)."""
    spec = ZOO[name].bf16
    model, twin, twin64 = pair(name, K)
    bf16 = nnx.merge(nnx.graphdef(_bf16_shell(name)), nnx.state(model))
    bf16.eval()
    x = rng.standard_normal((*spec.shape, 3)).astype(np.float32)
    fn = _outputs if spec.every_output else (lambda m, a: [_main(m, a)])
    ys = fn(bf16, jnp.asarray(x, jnp.bfloat16))
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    twin16 = copy.deepcopy(twin).to(torch.bfloat16)
    with torch.no_grad():
        tfn = (lambda m, a: list(m.outputs(a))) if spec.every_output else (lambda m, a: [m(a)])
        refs = [r.numpy() for r in tfn(twin64, xt.double())]
        own = [r.float().numpy() for r in tfn(twin16, xt.to(torch.bfloat16))]
    assert len(ys) == len(refs) == len(own)
    for i, (y, ref, o) in enumerate(zip(ys, refs, own)):
        assert y.dtype == jnp.bfloat16, f"{name} output {i}: {y.dtype}, not bf16"
        y = np.asarray(y, np.float32).transpose(0, 3, 1, 2)
        assert y.shape == ref.shape, f"{name} output {i}: {y.shape} vs fp64 {ref.shape}"
        assert np.isfinite(y).all(), f"{name} output {i}: not finite in bf16"
        err, floor = rel_l2(y, ref), rel_l2(o, ref)
        print(name, f"output {i}: bf16 rel L2 to fp64 {err:.4f}, the bf16 twin's {floor:.4f}")
        assert err <= BF16_FACTOR * floor, f"{name} output {i}: bf16 {err:.4f} from fp64, twin bf16 {floor:.4f}"


@pytest.mark.parametrize("name", _with("bf16_trace"))
def test_bf16_traces(name):
    """dtype=bf16, traced only (no compile): bf16 outputs of the right shape, fp32 parameters."""
    n, h, w = ZOO[name].bf16_trace
    shell = _bf16_shell(name)
    shell.eval()
    out = nnx.eval_shape(lambda m, a: m.outputs(a), shell, jax.ShapeDtypeStruct((n, h, w, 3), jnp.float32))
    got = [(o.shape, o.dtype) for o in out]
    want = [((n, h, w, K), jnp.dtype(jnp.bfloat16))] * len(ZOO[name].loss_weights)
    assert got == want, f"{name}: traced outputs {got}, expected {want}"
