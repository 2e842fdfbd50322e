"""Triton kernels vs their pure-PyTorch references (kernels/*.py).

On a machine without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``,
set by ``make test``; set here too when the variable is absent and there is no GPU, before
``kernels`` is imported). Inputs are fresh seeded random tensors per test, never zeros.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
from precision import assert_near_fp64, rel_l2  # noqa: E402

from kernels._common import gpu_launch_config, interpreted, poison_outputs, record_launches  # noqa: E402
from kernels.pooled_attention import (  # noqa: E402
    _pooled_attention_kernel,
    pooled_attention,
    pooled_attention_launch_config,
    pooled_attention_reference,
)
from kernels.sfc_fuse import _sfc_fuse_kernel, linspace_m1p1, sfc_fuse, sfc_fuse_reference  # noqa: E402
from kernels.shuffle_head import (  # noqa: E402
    _shuffle_labels_kernel,
    default_labels_dtype,
    shuffle_head,
    shuffle_head_reference,
)

DEVICE = "cpu" if interpreted(_sfc_fuse_kernel) else "cuda"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(autouse=True)
def _poisoned_outputs():
    """Every kernel output starts as NaN / the largest integer: an element a kernel does not write fails."""
    with poison_outputs():
        yield


def gen(request) -> torch.Generator:
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def randn(g, *shape, dtype=torch.float32, scale=1.0, channels_last=False) -> torch.Tensor:
    t = (torch.randn(shape, generator=g) * scale).to(dtype)
    if channels_last:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.to(DEVICE)


def is_channels_last(t: torch.Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def test_kernels_run_where_expected():
    """CPU tests really go through Triton (the interpreter), not a silent fallback."""
    if not torch.cuda.is_available():
        assert interpreted(_sfc_fuse_kernel) and interpreted(_shuffle_labels_kernel)
        assert interpreted(_pooled_attention_kernel)


# ----------------------------------------------------------------------------- sfc_fuse
SFC_CASES = [
    # (B, C, H, W, sp size, dtype, channels_last, offset scale)
    pytest.param(1, 128, 128, 256, (128, 256), "fp32", False, 3.0, id="1x128x128x256-fp32-nchw"),
    pytest.param(1, 128, 128, 256, (32, 64), "fp16", True, 3.0, id="1x128x128x256-up32x64-fp16-nhwc"),
    pytest.param(3, 128, 37, 41, (37, 41), "fp32", False, 4.0, id="3x128x37x41-fp32-nchw"),
    pytest.param(3, 128, 37, 41, (37, 41), "fp16", True, 4.0, id="3x128x37x41-fp16-nhwc"),
    pytest.param(3, 128, 37, 41, (37, 41), "bf16", False, 4.0, id="3x128x37x41-bf16-nchw"),
    pytest.param(3, 128, 37, 41, (10, 11), "fp32", True, 4.0, id="3x128x37x41-up10x11-fp32-nhwc"),
    pytest.param(2, 128, 37, 41, (10, 11), "bf16", True, 4.0, id="2x128x37x41-up10x11-bf16-nhwc"),
    pytest.param(2, 128, 19, 23, (5, 6), "fp16", False, 4.0, id="2x128x19x23-up5x6-fp16-nchw"),
    pytest.param(2, 128, 9, 7, (9, 7), "fp32", False, 40.0, id="2x128x9x7-far-offsets"),
    pytest.param(2, 64, 12, 10, (3, 1), "fp32", True, 2.0, id="2x64x12x10-up3x1-G1"),
    pytest.param(1, 128, 1, 5, (1, 2), "fp32", False, 2.0, id="1x128x1x5-up1x2-single-row"),
]


@pytest.mark.parametrize("b,c,h,w,sp_hw,dtype,cl,scale", SFC_CASES)
def test_sfc_fuse_matches_reference(request, b, c, h, w, sp_hw, dtype, cl, scale):
    g = gen(request)
    dt = DTYPES[dtype]
    groups = 1 if c == 64 else 2
    cp = randn(g, b, c, h, w, dtype=dt, channels_last=cl)
    sp = randn(g, b, c, *sp_hw, dtype=dt, channels_last=cl)
    r = randn(g, b, 4 * groups + 2, h, w, dtype=dt, scale=scale, channels_last=cl)
    out = sfc_fuse(cp, sp, r)
    assert out.shape == (b, c, h, w) and out.dtype == dt
    assert is_channels_last(out) == cl
    assert torch.isfinite(out).all()
    assert_near_fp64(out, sfc_fuse_reference, cp, sp, r)


def _offsets_to(targets: torch.Tensor, n: int) -> torch.Tensor:
    """Offsets (in the model's units) that move base pixel i to pixel coordinate targets[..., i]."""
    base = linspace_m1p1(n, torch.float64).double()
    return (2.0 * targets / (n - 1) - 1.0 - base) * n


@pytest.mark.parametrize("upsample", [False, True], ids=["same-size", "up"])
def test_sfc_fuse_borders(request, upsample):
    """Samples exactly on the first/last row and column, half a pixel and one pixel outside, far away."""
    g = gen(request)
    b, c, h, w = 2, 128, 11, 13
    cp = randn(g, b, c, h, w)
    sp = randn(g, b, c, *((4, 5) if upsample else (h, w)))
    targets_x = torch.tensor([0.0, w - 1.0, -0.5, w - 0.5, -1.0, float(w), -100.0, w + 100.0, 0.25, w - 1.25])
    targets_y = torch.tensor([0.0, h - 1.0, -0.5, h - 0.5, -1.0, float(h), 1e4, -1e4, h - 1.0, 0.0])
    tx = targets_x[torch.randint(len(targets_x), (b, 4, h, w), generator=g)].double()
    ty = targets_y[torch.randint(len(targets_y), (b, 4, h, w), generator=g)].double()
    dx = _offsets_to(tx, w)  # broadcast over the width axis: base x varies along the last dim
    dy = _offsets_to(ty.transpose(2, 3), h).transpose(2, 3)
    offs = torch.stack([dx[:, 0], dy[:, 0], dx[:, 1], dy[:, 1], dx[:, 2], dy[:, 2], dx[:, 3], dy[:, 3]], dim=1)
    gates = torch.randn(b, 2, h, w, generator=g, dtype=torch.float64) * 3
    r = torch.cat([offs, gates], dim=1).float().to(DEVICE)
    out = sfc_fuse(cp, sp, r)
    assert_near_fp64(out, sfc_fuse_reference, cp, sp, r)
    # samples entirely outside the map read zeros: where both sampling points of a group (cp and
    # sp) are more than a pixel outside, that group's 64 output channels are exactly zero
    far = (tx < -1) | (tx > w) | (ty < -1) | (ty > h)  # (b, 4, h, w): cp g0, cp g1, sp g0, sp g1
    out = out.cpu()
    for grp in range(2):
        dead = far[:, grp] & far[:, 2 + grp]
        assert dead.any()
        assert out[:, 64 * grp : 64 * (grp + 1)].permute(0, 2, 3, 1)[dead].abs().max() == 0


def test_sfc_fuse_zero_offsets_is_gated_identity(request):
    """With zero offsets SFC samples every pixel at itself: out = sp * (1 + tanh) + cp * (1 + tanh)."""
    g = gen(request)
    cp = randn(g, 2, 128, 6, 9)
    sp = randn(g, 2, 128, 6, 9)
    r = torch.cat([torch.zeros(2, 8, 6, 9), torch.randn(2, 2, 6, 9, generator=g)], 1).to(DEVICE)

    def expected(cp, sp, r):
        return sp * (1 + torch.tanh(r[:, 8:9])) + cp * (1 + torch.tanh(r[:, 9:10]))

    assert_near_fp64(sfc_fuse(cp, sp, r), expected, cp, sp, r)


def test_sfc_fuse_rejects_bad_arguments(request):
    g = gen(request)
    cp = randn(g, 2, 128, 8, 8)
    sp = randn(g, 2, 128, 2, 2)
    r = randn(g, 2, 10, 8, 8)
    with pytest.raises(ValueError, match=r"r \(2, 9, 8, 8\) must be \(B, 4G \+ 2, H, W\)"):
        sfc_fuse(cp, sp, r[:, :9].contiguous())
    with pytest.raises(ValueError, match="sp .* must have cp's batch and channels"):
        sfc_fuse(cp, sp[:, :64].contiguous(), r)
    with pytest.raises(TypeError, match="share one dtype"):
        sfc_fuse(cp, sp.half(), r)
    with pytest.raises(TypeError, match="cp has dtype torch.int32"):
        sfc_fuse(cp.int(), sp, r)
    with pytest.raises(ValueError, match="neither NCHW-contiguous nor channels-last"):
        sfc_fuse(cp.transpose(2, 3), sp, r)
    with pytest.raises(ValueError, match=r"cp must be \(B, C, H, W\) \(4-D\)"):
        sfc_fuse(cp[0], sp, r)
    with pytest.raises(ValueError, match="do not split into 2 groups"):
        sfc_fuse(randn(g, 2, 7, 8, 8), randn(g, 2, 7, 8, 8), r)


# ----------------------------------------------------------------------------- shuffle_head
HEAD_CASES = [
    # (B, Cin, h, w, K, dtype, channels_last)
    pytest.param(2, 128, 5, 7, 19, "fp32", False, id="2x128x5x7-K19-fp32-nchw"),
    pytest.param(3, 128, 9, 13, 11, "fp32", True, id="3x128x9x13-K11-fp32-nhwc"),
    pytest.param(2, 128, 7, 5, 1, "fp16", False, id="2x128x7x5-K1-fp16-nchw"),
    pytest.param(1, 128, 16, 32, 19, "fp16", True, id="1x128x16x32-K19-fp16-nhwc"),
    pytest.param(2, 128, 6, 11, 11, "bf16", True, id="2x128x6x11-K11-bf16-nhwc"),
    pytest.param(1, 128, 3, 3, 19, "bf16", False, id="1x128x3x3-K19-bf16-nchw"),
    pytest.param(2, 40, 5, 3, 2, "fp32", False, id="2x40x5x3-K2-Cin40"),
]


@pytest.mark.parametrize("b,cin,h,w,k,dtype,cl", HEAD_CASES)
def test_shuffle_head_logits_match_reference(request, b, cin, h, w, k, dtype, cl):
    g = gen(request)
    dt = DTYPES[dtype]
    x = randn(g, b, cin, h, w, dtype=dt, channels_last=cl)
    weight = randn(g, k * 64, cin, dtype=dt, scale=cin**-0.5)
    bias = randn(g, k * 64, dtype=dt, scale=0.5)
    out = shuffle_head(x, weight, bias)
    assert out.shape == (b, k, 8 * h, 8 * w) and out.dtype == dt
    assert is_channels_last(out) == (cl and k > 1)
    assert_near_fp64(out, shuffle_head_reference, x, weight, bias)


def _check_labels(labels, x, weight, bias, k):
    """Labels equal the reference argmax wherever the top-2 margin is beyond rounding."""
    w4 = weight.float().reshape(k * 64, -1, 1, 1).cpu()
    logits = torch.nn.functional.pixel_shuffle(
        torch.nn.functional.conv2d(x.float().cpu(), w4, None if bias is None else bias.float().cpu()), 8
    )
    ref = shuffle_head_reference(x, weight, bias, output="labels")
    assert labels.shape == ref.shape
    labels = labels.cpu().long()
    if k == 1:
        assert (labels == 0).all()
        return
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-4 * logits.abs().amax(dim=1).clamp_min(1.0)
    assert clear.float().mean() > 0.9
    assert torch.equal(labels[clear], ref.long().cpu()[clear])
    assert (labels == ref.long().cpu()).float().mean() >= 0.999


@pytest.mark.parametrize("b,cin,h,w,k,dtype,cl", HEAD_CASES)
def test_shuffle_head_labels_match_reference(request, b, cin, h, w, k, dtype, cl):
    g = gen(request)
    dt = DTYPES[dtype]
    x = randn(g, b, cin, h, w, dtype=dt, channels_last=cl)
    weight = randn(g, k * 64, cin, dtype=dt, scale=cin**-0.5)
    bias = randn(g, k * 64, dtype=dt, scale=0.5)
    labels = shuffle_head(x, weight, bias, output="labels")
    assert labels.dtype == torch.uint8 and labels.shape == (b, 8 * h, 8 * w)
    _check_labels(labels, x, weight, bias, k)


def test_shuffle_head_labels_realistic_size(request):
    """1/8 map of a 512x1024 input, K = 19, channels-last fp16 as the optimised model runs it."""
    g = gen(request)
    x = randn(g, 1, 128, 64, 128, dtype=torch.float16, channels_last=True)
    weight = randn(g, 19 * 64, 128, dtype=torch.float16, scale=128**-0.5)
    bias = randn(g, 19 * 64, dtype=torch.float16, scale=0.5)
    _check_labels(shuffle_head(x, weight, bias, output="labels"), x, weight, bias, 19)


def test_shuffle_head_options(request):
    g = gen(request)
    x = randn(g, 2, 128, 4, 6)
    weight = randn(g, 11 * 64, 128, 1, 1, scale=128**-0.5)  # conv-shaped weight
    out = shuffle_head(x, weight, None)
    assert_near_fp64(out, lambda x, w: shuffle_head_reference(x, w, None), x, weight)
    labels = shuffle_head(x, weight, None, output="labels", labels_dtype=torch.int32)
    assert labels.dtype == torch.int32
    _check_labels(labels, x, weight, None, 11)
    # an upscale other than 8: 1x1 conv to K*4 channels + pixel_shuffle(2)
    w2 = randn(g, 3 * 4, 128, scale=128**-0.5)
    out2 = shuffle_head(x, w2, None, upscale=2)
    assert out2.shape == (2, 3, 8, 12)
    assert_near_fp64(out2, lambda x, w: shuffle_head_reference(x, w, None, upscale=2), x, w2)
    # the reference itself against the two-op definition (fp64: exact but for the order of sums)
    ref2 = torch.nn.functional.pixel_shuffle(torch.nn.functional.conv2d(x.double(), w2.double()[:, :, None, None]), 2)
    assert rel_l2(shuffle_head_reference(x.double(), w2.double(), None, upscale=2), ref2) <= 1e-14


def test_shuffle_head_labels_dtype_is_uint8_up_to_256_classes(request):
    """Class indices 0..K-1 fit uint8 up to K = 256 (index 255); from 257 on they take int32.
    K = 256 through the kernel: uint8 labels (not 4x larger int32), class 255 stored as 255."""
    assert default_labels_dtype(255) == torch.uint8, "K=255 labels must be uint8"
    assert default_labels_dtype(256) == torch.uint8, "K=256 labels (max index 255) must be uint8, not int32"
    assert default_labels_dtype(257) == torch.int32, "K=257 labels (index 256) do not fit uint8: int32"
    g = gen(request)
    k, cin = 256, 16
    x = randn(g, 1, cin, 2, 3)
    weight = randn(g, k * 64, cin, scale=cin**-0.5)
    bias = randn(g, k * 64, scale=0.5)
    bias[255 * 64] += 100.0  # sub-pixel (0, 0) of every pixel: class 255, the largest uint8 index
    labels = shuffle_head(x, weight, bias, output="labels")
    assert labels.dtype == torch.uint8, f"K=256 labels came out as {labels.dtype}, expected torch.uint8"
    assert shuffle_head_reference(x, weight, bias, output="labels").dtype == torch.uint8, "reference dtype"
    assert (labels.cpu().long()[:, ::8, ::8] == 255).all(), "class 255 not stored as 255 in the labels"
    _check_labels(labels, x, weight, bias, k)


def test_shuffle_head_ties_and_nan_follow_torch_argmax(request):
    """Equal logits pick the lowest class; a NaN logit wins -- as torch.argmax."""
    x = torch.ones(1, 16, 2, 2, device=DEVICE)
    weight = torch.zeros(3 * 64, 16, device=DEVICE)
    weight[64:] = 1.0  # classes 1 and 2 tie at 16, class 0 is 0
    labels = shuffle_head(x, weight, None, output="labels")
    assert (labels == 1).all()
    bias = torch.zeros(3 * 64, device=DEVICE)
    bias[2 * 64 + 5] = float("nan")  # sub-pixel (0, 5) of class 2
    labels = shuffle_head(x, weight, bias, output="labels").cpu()
    assert (labels.reshape(2, 8, 2, 8)[:, 0, :, 5] == 2).all()
    assert (labels.reshape(2, 8, 2, 8)[:, 1:] == 1).all()


def test_shuffle_head_rejects_bad_arguments(request):
    g = gen(request)
    x = randn(g, 1, 128, 4, 4)
    weight = randn(g, 19 * 64, 128)
    with pytest.raises(ValueError, match="weight has 64 input channels"):
        shuffle_head(x, weight[:, :64].contiguous(), None)
    with pytest.raises(ValueError, match="not K \\* 8\\*\\*2"):
        shuffle_head(x, weight[:100], None)
    with pytest.raises(ValueError, match=r"bias must have shape \(1216,\)"):
        shuffle_head(x, weight, randn(g, 19))
    with pytest.raises(TypeError, match="weight dtype torch.float16 differs"):
        shuffle_head(x, weight.half(), None)
    with pytest.raises(ValueError, match="output='probs'"):
        shuffle_head(x, weight, None, output="probs")
    with pytest.raises(TypeError, match="300 classes do not fit"):
        shuffle_head(x, randn(g, 300 * 64, 128), None, output="labels", labels_dtype=torch.uint8)
    with pytest.raises(ValueError, match="must be contiguous"):
        shuffle_head(x, weight.t().contiguous().t(), None)


# ----------------------------------------------------------------------------- pooled_attention
ATTN_CASES = [
    # (B, D, H, W, S, C, dtype, channels_last)
    pytest.param(1, 32, 32, 64, 100, 256, "fp32", False, id="1x32x32x64-S100-fp32-nchw"),
    pytest.param(2, 32, 32, 64, 100, 256, "fp16", True, id="2x32x32x64-S100-fp16-nhwc"),
    pytest.param(3, 32, 7, 9, 50, 256, "fp32", True, id="3x32x7x9-S50-fp32-nhwc"),
    pytest.param(2, 32, 5, 11, 3, 40, "bf16", False, id="2x32x5x11-S3-C40-bf16-nchw"),
    pytest.param(2, 32, 4, 5, 1, 256, "fp16", False, id="2x32x4x5-S1-fp16"),
    pytest.param(1, 20, 3, 17, 130, 70, "bf16", True, id="1x20x3x17-S130-C70-bf16-nhwc"),
]


@pytest.mark.parametrize("b,d,h,w,s,c,dtype,cl", ATTN_CASES)
def test_pooled_attention_matches_reference(request, b, d, h, w, s, c, dtype, cl):
    g = gen(request)
    dt = DTYPES[dtype]
    q = randn(g, b, d, h, w, dtype=dt, channels_last=cl)
    k = randn(g, b, d, s, dtype=dt, scale=0.5)
    v = randn(g, b, c, s, dtype=dt)
    out = pooled_attention(q, k, v)
    assert out.shape == (b, c, h, w) and out.dtype == dt and is_channels_last(out) == cl
    assert_near_fp64(out, pooled_attention_reference, q, k, v)


def test_pooled_attention_large_scores_stay_finite(request):
    """Scores of hundreds (no 1/sqrt(d) scaling) must not overflow the softmax."""
    g = gen(request)
    q = randn(g, 2, 32, 6, 7, scale=6.0)
    k = randn(g, 2, 32, 100, scale=6.0)
    v = randn(g, 2, 256, 100)
    out = pooled_attention(q, k, v)
    assert torch.isfinite(out).all()
    assert_near_fp64(out, pooled_attention_reference, q, k, v)


def test_pooled_attention_rejects_bad_arguments(request):
    g = gen(request)
    q = randn(g, 2, 32, 4, 4)
    k = randn(g, 2, 32, 100)
    v = randn(g, 2, 256, 100)
    with pytest.raises(ValueError, match=r"key \(2, 16, 100\) must be \(B, D, S\)"):
        pooled_attention(q, k[:, :16].contiguous(), v)
    with pytest.raises(ValueError, match=r"value \(2, 256, 99\) must be \(B, C, S\)"):
        pooled_attention(q, k, v[:, :, :99].contiguous())
    with pytest.raises(ValueError, match="no pooled positions"):
        pooled_attention(q, randn(g, 2, 32, 0), randn(g, 2, 256, 0))
    with pytest.raises(ValueError, match="key .* must be contiguous"):
        pooled_attention(q, k.transpose(1, 2).contiguous().transpose(1, 2), v)
    with pytest.raises(TypeError, match="share one dtype"):
        pooled_attention(q, k.half(), v)


@pytest.mark.parametrize("s", [150, 700], ids=["S150-512x1536", "S700-wide-panorama"])
def test_pooled_attention_any_number_of_positions(request, s):
    """S grows with the aspect ratio (150 at 512x1536, ~50 per unit): tiles over S, no upper limit."""
    g = gen(request)
    q = randn(g, 1, 32, 5, 9, scale=2.0)
    k = randn(g, 1, 32, s, scale=2.0)
    v = randn(g, 1, 256, s)
    with gpu_launch_config():  # 64-position tiles: several tiles, the online softmax rescales across them
        out = pooled_attention(q, k, v)
    assert_near_fp64(out, pooled_attention_reference, q, k, v)


# ----------------------------------------------------------------------------- the GPU launch configuration
# Under the interpreter the launchers normally take large blocks (it pays per program). These tests
# force the block sizes, warps and flags a CUDA launch takes, so what a GPU runs is what CI checks:
# several programs per image, masked edge blocks, 8 warps' worth of tiles, the online softmax
# across 64-position tiles, 32-channel K steps. What the interpreter cannot compute is the bf16
# tl.dot (it multiplies bf16 bit patterns); bf16 dots keep their fp32 detour here, and the bf16
# tensor-core path is checked on a GPU by `python -m tools.gpu_check` (tests marked gpu).
def _recorded_meta(fn):
    with record_launches() as launches:
        fn()
    assert len(launches) == 1
    return launches[0].meta


GPU_SFC = [
    pytest.param(2, 128, 19, 23, (5, 6), "fp32", True, id="up5x6-fp32-nhwc"),
    pytest.param(1, 128, 9, 13, (9, 13), "fp16", False, id="same-fp16-nchw"),
    pytest.param(2, 128, 11, 7, (3, 2), "bf16", True, id="up3x2-bf16-nhwc"),
]


@pytest.mark.parametrize("b,c,h,w,sp_hw,dtype,cl", GPU_SFC)
def test_sfc_fuse_gpu_launch_config(request, b, c, h, w, sp_hw, dtype, cl):
    g = gen(request)
    dt = DTYPES[dtype]
    cp = randn(g, b, c, h, w, dtype=dt, channels_last=cl)
    sp = randn(g, b, c, *sp_hw, dtype=dt, channels_last=cl)
    r = randn(g, b, 10, h, w, dtype=dt, scale=3.0, channels_last=cl)
    with gpu_launch_config():
        meta = _recorded_meta(lambda: sfc_fuse(cp.to("meta"), sp.to("meta"), r.to("meta")))
        assert meta["BLOCK_P"] < h * w and meta["num_warps"] == 8  # several programs, a partial last one
        out = sfc_fuse(cp, sp, r)
    assert_near_fp64(out, sfc_fuse_reference, cp, sp, r)


@pytest.mark.parametrize("output", ["logits", "labels"])
@pytest.mark.parametrize("dtype,cl", [("fp32", True), ("fp16", False), ("bf16", True)])
def test_shuffle_head_gpu_launch_config(request, output, dtype, cl):
    g = gen(request)
    dt = DTYPES[dtype]
    b, cin, h, w, k = 2, 128, 9, 10, 19
    x = randn(g, b, cin, h, w, dtype=dt, channels_last=cl)
    weight = randn(g, k * 64, cin, dtype=dt, scale=cin**-0.5)
    bias = randn(g, k * 64, dtype=dt, scale=0.5)
    with gpu_launch_config():
        meta = _recorded_meta(lambda: shuffle_head(x.to("meta"), weight.to("meta"), bias.to("meta"), output=output))
        assert meta["BLOCK_P"] < h * w and meta["num_warps"] == 8
        if output == "logits":
            assert meta["BLOCK_K"] < cin  # several K steps through the pipelined loop
        out = shuffle_head(x, weight, bias, output=output)
    if output == "labels":
        _check_labels(out, x, weight, bias, k)
    else:
        assert_near_fp64(out, shuffle_head_reference, x, weight, bias)


@pytest.mark.parametrize("dtype,cl", [("fp32", True), ("fp16", False), ("bf16", True)])
def test_pooled_attention_gpu_launch_config(request, dtype, cl):
    g = gen(request)
    dt = DTYPES[dtype]
    b, d, h, w, s, c = 2, 32, 9, 11, 150, 256  # S = 150: three position tiles, the last one partial
    q = randn(g, b, d, h, w, dtype=dt, channels_last=cl)
    k = randn(g, b, d, s, dtype=dt, scale=0.5)
    v = randn(g, b, c, s, dtype=dt)
    cfg = pooled_attention_launch_config(d, s, c, dt, gpu=True)
    assert s > 2 * cfg["BLOCK_S"] and c > cfg["BLOCK_C"] and h * w > cfg["BLOCK_N"]
    with gpu_launch_config():
        out = pooled_attention(q, k, v)
    assert_near_fp64(out, pooled_attention_reference, q, k, v)


def test_gpu_launch_config_is_scoped():
    """The switch changes what the launchers choose only inside the block."""
    x = torch.empty(1, 128, 40, 40, device="meta")
    wt = torch.empty(19 * 64, 128, device="meta")
    with record_launches() as outside:
        shuffle_head(x, wt, None)
    with gpu_launch_config(), record_launches() as inside:
        shuffle_head(x, wt, None)
    assert inside[0].meta["BLOCK_P"] == 64 and inside[0].meta["num_warps"] == 8
    if interpreted(_shuffle_labels_kernel):
        assert outside[0].meta["BLOCK_P"] != inside[0].meta["BLOCK_P"]
