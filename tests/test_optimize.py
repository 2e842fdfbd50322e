"""torch_deploy.optimize: BN folding and SFC 1x1 folding on their own, then the whole
optimised model (folded graph, Triton kernels under the interpreter on CPU) against the twin.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
import zlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from precision import assert_near_fp64, rel_l2, tf32_round  # noqa: E402
from torch import nn  # noqa: E402

from csfcn.model_config import ModelConfig  # noqa: E402
from kernels._common import tf32  # noqa: E402
from kernels.shuffle_head import shuffle_head_reference  # noqa: E402
from torch_deploy import cpu_ops  # noqa: E402
from torch_deploy.cpu_caps import CpuPrecisionError, cpu_caps  # noqa: E402
from torch_deploy.model import CSFCN, SFC, build_twin  # noqa: E402
from torch_deploy.optimize import fold_bn, fold_sfc_1x1, optimize, optimize_on_meta  # noqa: E402
from torch_deploy.precision import DTYPES  # noqa: E402
from torch_deploy.roofline import live_set  # noqa: E402

# the module itself (``torch_deploy.optimize`` the attribute is the function, exported by the package)
opt = importlib.import_module("torch_deploy.optimize")


@pytest.fixture
def g(request) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def random_bn(bn: nn.BatchNorm2d, g: torch.Generator) -> nn.BatchNorm2d:
    n = bn.num_features
    with torch.no_grad():
        bn.weight.copy_(torch.rand(n, generator=g) + 0.5)
        bn.bias.copy_(0.2 * torch.randn(n, generator=g))
        bn.running_mean.copy_(0.5 * torch.randn(n, generator=g))
        bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
    return bn.eval()


@torch.no_grad()
def randomize_like_trained(model: CSFCN, g: torch.Generator) -> CSFCN:
    """Random weights that keep activations O(1), as tests/random_weights.py does for Flax:
    N(0, 2/fan_in) kernels (the zero-initialised gate convs included), random BN affine, BN
    statistics calibrated on a random batch and then perturbed."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv1d)):
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            m.momentum = 1.0
    model.train()
    model(torch.randn(2, 3, 64, 128, generator=g))
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 0.7 + 0.7)
    return model


def assert_labels_match(labels: torch.Tensor, logits: torch.Tensor, rel_margin: float = 1e-4) -> None:
    """Same argmax wherever the reference's top-2 margin exceeds rounding; near-ties may flip."""
    ref = logits.argmax(1)
    if logits.shape[1] > 1:
        top2 = logits.topk(2, dim=1).values
        clear = (top2[:, 0] - top2[:, 1]) > rel_margin * logits.abs().amax(dim=1).clamp_min(1.0)
        assert torch.equal(labels.long()[clear], ref[clear])
    assert (labels.long() == ref).float().mean() >= 0.999


# ----------------------------------------------------------------------------- folding alone
@pytest.mark.parametrize(
    "cin,cout,k,stride,bias",
    [(16, 32, 3, 1, False), (8, 24, 7, 2, False), (32, 16, 1, 2, True)],
    ids=["3x3", "7x7s2", "1x1s2-bias"],
)
def test_fold_bn_matches_conv_then_bn(g, cin, cout, k, stride, bias):
    conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
        if bias:
            conv.bias.copy_(torch.randn(cout, generator=g))
    bn = random_bn(nn.BatchNorm2d(cout), g)
    x = torch.randn(2, cin, 13, 17, generator=g)
    folded = fold_bn(conv, bn)
    assert folded.bias is not None and folded.stride == conv.stride and folded.padding == conv.padding
    with torch.no_grad():
        assert rel_l2(folded(x), bn(conv(x))) <= 1e-6
    # the originals are untouched
    assert conv.bias is None or conv.bias.shape == (cout,)
    assert not bn.training


@pytest.mark.parametrize("variant,stem", [("csfcn", "torchvision"), ("csfcn", "deep"), ("csfcn_tiny", "torchvision")])
def test_remove_bn_is_the_same_function_without_batchnorms(g, variant, stem):
    """The upstream speed protocol's model: every BN folded into its conv (the deep stem's bn1 into
    the last conv of the stem Sequential), none left, the same function in fp64."""
    twin = randomize_like_trained(CSFCN(name=variant, num_classes=11, stem=stem), g).double()
    no_bn = opt.remove_bn(twin)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in no_bn.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in twin.modules()) > 20  # the twin is untouched
    x = torch.randn(1, 3, 64, 96, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert rel_l2(no_bn(x), twin(x)) <= 1e-12
    # SwiftNet's pre-activation BNs (BN -> ReLU -> conv) have no conv of their own to fold into
    swiftnet = build_twin(ModelConfig(name="swiftnet", num_classes=3)).eval()
    with pytest.raises(ValueError, match=r"remove_bn: BatchNorms that do not follow a conv of their own: \["):
        opt.remove_bn(swiftnet)


def test_fold_bn_rejects_mismatch():
    with pytest.raises(ValueError, match="BN has 8 features, the conv 4 outputs"):
        fold_bn(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(8))
    with pytest.raises(TypeError, match="expected \\(Conv2d, BatchNorm2d\\)"):
        fold_bn(nn.Linear(3, 4), nn.BatchNorm2d(4))


@pytest.mark.parametrize("tiny", [False, True], ids=["csfcn", "csfcn_tiny"])
def test_fold_sfc_1x1(g, tiny):
    """relu(bn(conv(cat(cp1x1(cp), sp1x1(up(sp)))))) == relu(cp_proj(cp) + up(sp_proj(sp)))."""
    sfc = SFC(tiny).eval()
    with torch.no_grad():
        for m in sfc.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5)
    random_bn(sfc.conv_offset[0].bn, g)
    cp = torch.randn(2, 128, 19, 23, generator=g)
    sp32 = torch.randn(2, 128, 5, 6, generator=g)
    with torch.no_grad():
        sp = F.interpolate(sp32, (19, 23), mode="bilinear", align_corners=True)
        cat = torch.cat([cp, sp], 1) if tiny else torch.cat([sfc.cp1x1(cp), sfc.sp1x1(sp)], 1)
        expected = sfc.conv_offset[0](cat)
        cp_proj, sp_proj = fold_sfc_1x1(sfc)
        assert cp_proj.weight.shape == (64, 128, 1, 1) and sp_proj.weight.shape == (64, 128, 1, 1)
        assert sp_proj.bias is None  # what lets it commute with the resize
        got = F.relu(cp_proj(cp) + F.interpolate(sp_proj(sp32), (19, 23), mode="bilinear", align_corners=True))
        assert rel_l2(got, expected) <= 1e-6
        assert rel_l2(F.relu(cp_proj(cp) + sp_proj(sp)), expected) <= 1e-6


# ----------------------------------------------------------------------------- whole model
MODEL_CASES = [
    # (variant, stem, K, batch, H, W, channels_last)
    pytest.param("csfcn", "torchvision", 19, 2, 64, 96, False, id="csfcn-K19-2x64x96"),
    pytest.param("csfcn", "deep", 11, 1, 72, 104, True, id="csfcn-deep-K11-72x104-nhwc"),
    pytest.param("csfcn", "torchvision", 1, 1, 64, 64, True, id="csfcn-K1-64x64-nhwc"),
    pytest.param("csfcn_tiny", "torchvision", 11, 2, 64, 96, False, id="tiny-K11-2x64x96"),
]


@pytest.mark.parametrize(
    "k,b,h,w,cl", [(19, 2, 5, 7, True), (11, 1, 4, 6, False), (1, 1, 3, 3, True), (257, 1, 2, 3, True)]
)
def test_cpu_heads_match_conv_pixel_shuffle_argmax(g, k, b, h, w, cl, monkeypatch):
    """The CPU heads are conv1x1 + pixel_shuffle (+ argmax over K): logits as one matmul with outputs
    reordered to (sub-pixel, class); labels chunk by chunk (14 pixels here: two rows of 7 out of 5,
    so the last chunk is short), for batch > 1, both layouts, K = 1 and K > 256 (int32 labels).
    Two classes are made identical, so every pixel has an exact tie: the first one wins, as in
    torch.argmax."""
    from torch_deploy.model import Head

    monkeypatch.setattr(cpu_ops, "LABEL_CHUNK_PIXELS", 14)
    head = Head(k).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        if k > 2:  # class 2 := class 1: ties wherever class 1 is the maximum
            head.conv_out.weight[128:192] = head.conv_out.weight[64:128]
            head.conv_out.bias[128:192] = head.conv_out.bias[64:128]
    x = torch.rand(b, 128, h, w, generator=g)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        logits_ref = F.pixel_shuffle(head.conv_out(x), 8)
        logits = opt.FastOps("logits").cpu_shuffle(head, x)
        labels = opt.FastOps("labels").cpu_labels(head, x)
    assert logits.shape == (b, k, 8 * h, 8 * w)
    assert rel_l2(logits, logits_ref) <= 1e-6
    assert labels.dtype == (torch.uint8 if k <= 256 else torch.int32)
    expected = logits_ref.argmax(1)
    assert torch.equal(labels.long(), expected)
    if k > 2:
        assert (expected == 1).any() and not (expected == 2).any()


def test_cpu_labels_head_on_a_map_wider_than_a_chunk(g):
    """A 1/8 map wider than LABEL_CHUNK_PIXELS (a panorama) still goes one whole row per chunk,
    with the labels of conv1x1 + pixel_shuffle + argmax."""
    from torch_deploy.model import Head

    k, h, w = 3, 2, cpu_ops.LABEL_CHUNK_PIXELS + 7
    head = Head(k).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x = torch.rand(1, 128, h, w, generator=g).to(memory_format=torch.channels_last)
    with torch.no_grad():
        logits_ref = F.pixel_shuffle(head.conv_out(x), 8)
        labels = opt.FastOps("labels").cpu_labels(head, x)
    assert labels.shape == (1, 8 * h, 8 * w), f"labels shape {tuple(labels.shape)} for a {h}x{w} map"
    assert_labels_match(labels, logits_ref)


def test_cpu_labels_head_in_bf16_is_the_bf16_argmax(g):
    """In bfloat16 the labels head picks the argmax of the bfloat16 conv's own scores, ties included
    (bfloat16 has many: 8 bits of mantissa). Only optimize(precision="bf16") reaches this head,
    and it refuses a CPU without native bf16 (test_optimized_bf16 checks the refusal)."""
    from torch_deploy.model import Head

    verdict = cpu_caps().verdict("bf16")
    if not verdict.ok:
        pytest.skip(f"no bf16 path on this CPU: {verdict.why}")

    head = Head(19).eval()
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    head = head.to(torch.bfloat16)
    x = torch.rand(2, 128, 6, 10, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        scores = F.pixel_shuffle(cpu_ops.conv2d(head.conv_out, x), 8)  # the same oneDNN conv, bf16 out
        labels = opt.FastOps("labels").cpu_labels(head, x)
    assert torch.equal(labels.long(), scores.float().argmax(1))


@pytest.mark.parametrize("dtype,b,h,w", [(torch.float32, 2, 9, 13), (torch.bfloat16, 1, 16, 24)])
def test_cpu_sfc_fuse_rows_is_the_sampling_reference(g, dtype, b, h, w):
    """SFC steps 4-7 as channels-last row gathers equal kernels.sfc_fuse's reference (grid_sample):
    two groups, batch > 1, odd sizes, offsets of several pixels so that corners leave the image
    (zero padding), sp resized from 1/32 (another size) first; cp's dtype and layout out."""
    from kernels.sfc_fuse import sfc_fuse_reference

    cl = torch.channels_last
    cp = torch.randn(b, 16, h, w, generator=g).to(dtype).contiguous(memory_format=cl)
    sp = torch.randn(b, 16, -(-h // 4), -(-w // 4), generator=g).to(dtype).contiguous(memory_format=cl)
    r = (torch.randn(b, 10, h, w, generator=g) * 4).to(dtype).contiguous(memory_format=cl)
    got = cpu_ops.sfc_fuse_rows(cp, sp, r)
    ref = sfc_fuse_reference(cp, sp, r)
    assert got.dtype == dtype and got.shape == cp.shape and got.is_contiguous(memory_format=cl)
    assert rel_l2(got, ref) <= (1e-6 if dtype == torch.float32 else 1e-2)


def test_onednn_packed_weights_follow_weight_changes(g):
    """Pre-packed oneDNN weights are a cache: a conv whose weight is changed in place or replaced
    gives the new result, never the stale packed one."""
    conv = nn.Conv2d(16, 32, 3, padding=1, bias=True)
    x = torch.randn(1, 16, 12, 10, generator=g).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert rel_l2(cpu_ops.conv2d(conv, x), conv(x)) <= 1e-6
        assert rel_l2(cpu_ops.conv_relu(conv, x), F.relu(conv(x))) <= 1e-6
        conv.weight.mul_(-2.0)
        assert rel_l2(cpu_ops.conv2d(conv, x), conv(x)) <= 1e-6
        conv.weight = nn.Parameter(torch.randn(32, 16, 3, 3, generator=g))
        assert rel_l2(cpu_ops.conv2d(conv, x), conv(x)) <= 1e-6


@pytest.mark.parametrize(
    "variant,stem", [("csfcn", "torchvision"), ("csfcn", "deep"), ("csfcn_tiny", "torchvision"), ("csfcn", "deep128")]
)
def test_folded_graph_is_the_same_function_in_fp64(g, variant, stem):
    """The folding algebra is exact: in fp64 the optimised graph equals the twin to rounding, with
    no BN left (remove_bn, also the ONNX export's fold: deep128's bn1 goes into the stem's last
    conv and layer1.0's projection BN into its 1x1 conv)."""
    twin = randomize_like_trained(CSFCN(name=variant, num_classes=11, stem=stem), g).double()
    x = torch.randn(2, 3, 72, 104, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ref = twin(x)
    fast = optimize(twin, "fp64", "logits", kernels=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.model.modules())
    out = fast(x)
    assert out.dtype == torch.float64 and rel_l2(out, ref) <= 1e-12
    labels = optimize(twin, "fp64", "labels", kernels=False)(x)
    assert torch.equal(labels.long(), ref.argmax(1))


@pytest.mark.parametrize("variant,stem,k,b,h,w,cl", MODEL_CASES)
def test_optimized_with_kernels_matches_twin(g, variant, stem, k, b, h, w, cl):
    """fp32 with the Triton kernels (interpreter on CPU) vs the same folded graph on reference ops
    (<= 1e-5) and vs the twin. Against the twin the bound is the network's own fp32 noise: with
    these weights the fp32 twin is itself ~1e-5 (up to ~3e-5) from its fp64 evaluation, and any
    change of operation order (folding, oneDNN's blocked channels-last convolutions) moves the
    result by as much: the twin itself run channels-last is 1x to 2.9x further from fp64 than the
    twin run NCHW (measured over 8 seeds). So the optimised model must be within 3x the twin's own
    fp64 distance (the larger of its two layouts), within 5e-5 of it, with the same labels."""
    twin = randomize_like_trained(CSFCN(name=variant, num_classes=k, stem=stem), g)
    x = torch.randn(b, 3, h, w, generator=g)
    with torch.no_grad():
        ref = twin(x)
        truth = copy.deepcopy(twin).double()(x.double())
        ref_cl = copy.deepcopy(twin).to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    twin_noise = max(rel_l2(ref, truth), rel_l2(ref_cl, truth))
    fast = optimize(twin, "fp32", "logits", kernels=True, channels_last=cl)
    assert fast.use_kernels and fast.model.ops.kernels and fast.model.sfc.ops is fast.model.conv_out32.ops
    assert fast.model.sfc.folded and not any(isinstance(m, nn.BatchNorm2d) for m in fast.model.modules())
    out = fast(x)
    assert out.shape == ref.shape == (b, k, h, w)
    assert rel_l2(out, optimize(twin, "fp32", "logits", kernels=False, channels_last=cl)(x)) <= 1e-5
    assert rel_l2(out, truth) <= 3 * twin_noise + 2e-6
    assert rel_l2(out, ref) <= 5e-5
    labels = optimize(twin, "fp32", "labels", kernels=True, channels_last=cl)(x)
    assert labels.shape == (b, h, w) and labels.dtype == torch.uint8
    assert_labels_match(labels, ref)
    # the twin itself was not modified by folding or by the layout/dtype change
    with torch.no_grad():
        assert torch.equal(twin(x), ref)


def test_optimized_reference_ops_on_cpu_notice_once(g, monkeypatch):
    """Without a GPU the default path is the folded graph with reference ops, announced once."""
    if torch.cuda.is_available():
        pytest.skip("the CPU fallback is what this test checks; the GPU path is tested under -m gpu")
    monkeypatch.setattr(opt, "_FALLBACK_NOTICE_GIVEN", False)
    twin = randomize_like_trained(CSFCN(num_classes=19), g)
    x = torch.randn(1, 3, 64, 96, generator=g)
    with torch.no_grad():
        ref = twin(x)
    with pytest.warns(RuntimeWarning, match="no CUDA device.*reference PyTorch ops"):
        fast = optimize(twin, "fp32", "logits")
    assert not fast.use_kernels and not fast.cuda_graphs
    assert rel_l2(fast(x), ref) <= 5e-5
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = optimize(twin, "fp32", "labels")(x)  # second call: no second notice
    assert_labels_match(labels, ref)


def test_optimized_bf16(g):
    """bf16: kernels vs reference ops on the same bf16 graph, and vs the fp32 twin no worse than
    running the twin itself under bf16 autocast (random weights amplify bf16 rounding). On a CPU
    without native bf16 it is a one-line refusal (every CPU class: test_cpu_caps.py)."""
    twin = randomize_like_trained(CSFCN(num_classes=11), g)
    x = torch.randn(1, 3, 64, 96, generator=g)
    verdict = cpu_caps().verdict("bf16")
    if not verdict.ok:
        with pytest.raises(
            CpuPrecisionError, match=f"^optimize: precision bf16 on this CPU: {re.escape(verdict.why)}$"
        ):
            optimize(twin, "bf16", "logits", kernels=False)
        return
    with torch.no_grad():
        ref = twin(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_err = rel_l2(twin(x), ref)
    out = optimize(twin, "bf16", "logits", kernels=False)(x)
    assert out.dtype == torch.bfloat16
    assert rel_l2(out, ref) <= max(1.5 * autocast_err, 1e-2)
    assert (out.float().argmax(1) == ref.argmax(1)).float().mean() >= 0.85
    out_k = optimize(twin, "bf16", "logits", kernels=True)(x)
    assert rel_l2(out_k, out) <= 3e-2


def test_optimize_rejects_bad_arguments():
    twin = CSFCN(num_classes=3)
    with pytest.raises(ValueError, match="precision='fp8'"):
        optimize(twin, precision="fp8")
    with pytest.raises(ValueError, match="output='probs'"):
        optimize(twin, output="probs")
    with pytest.raises(TypeError, match="expected a twin of torch_deploy.model.build_twin"):
        optimize(nn.Conv2d(3, 3, 1))
    fast = optimize(twin, "fp32", kernels=False)
    with pytest.raises(ValueError, match=r"expected \(B, 3, H, W\) images"):
        fast(torch.randn(1, 4, 32, 32))


# ----------------------------------------------------------------------------- GPU only
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


def assert_within_precision(
    logits: torch.Tensor, labels: torch.Tensor, twin: CSFCN, x: torch.Tensor, precision: str, k: float = 3.0
) -> None:
    """The optimised model's logits are as close to the fp64 function as the twin itself run in
    that precision is (within ``k``), and its labels are its own logits' argmax.

    Bound: the twin run in ``precision`` (weights, activations and BN in that dtype; fp32 with TF32
    off, in both layouts, as test_optimized_with_kernels_matches_twin) costs exactly the rounding of
    that precision on these weights and this input; random weights amplify it (measured on CPU at
    256x512, 3 seeds: fp32 1.8e-5..4.2e-5, fp16 3.0e-2..8.9e-2, bf16 0.25..0.48). The optimised model
    does the same arithmetic with folded weights in another order, so its distance is of the same
    size: measured 0.95x..1.9x (fp32), 0.49x..0.86x (fp16), 0.69x..0.78x (bf16) of the twin's.
    k = 3 as for the kernels (tests/test_kernels.py). A fixed bound cannot work here: fp16 and bf16
    twins are themselves 5.4e-2 and 0.24..0.36 from the fp32 twin on these weights.

    Labels: the labels head computes the same 1x1 conv and takes the argmax without rounding the
    logits to the storage dtype, so it may differ from argmax(logits) only where the top-2 margin
    is within two ulps of that dtype (2^-22 fp32, 2^-10 fp16, 2^-7 bf16, relative to the largest
    logit); everywhere else they must agree."""
    dt = DTYPES[precision]
    with torch.no_grad(), tf32(False):
        truth = copy.deepcopy(twin).double()(x.double())
        own = rel_l2(copy.deepcopy(twin).to(dt)(x.to(dt)), truth)
        if precision == "fp32":
            cl = copy.deepcopy(twin).to(memory_format=torch.channels_last)
            own = max(own, rel_l2(cl(x.contiguous(memory_format=torch.channels_last)), truth))
    err = rel_l2(logits, truth)
    assert err <= k * own, f"{precision}: rel. L2 to fp64 {err:.2e} > {k} x the twin's own {own:.2e}"
    top2 = logits.float().topk(2, dim=1).values
    ulps = {"fp32": 2**-22, "fp16": 2**-10, "bf16": 2**-7}[precision]
    clear = (top2[:, 0] - top2[:, 1]) > ulps * logits.float().abs().amax(dim=1).clamp_min(1.0)
    assert clear.float().mean() > 0.9  # the check below covers most pixels
    assert torch.equal(labels.long()[clear], logits.argmax(1)[clear])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cpu_emulates_the_gpu_precision_bounds(g, precision):
    """The bound of test_gpu_optimized_matches_twin_with_cuda_graphs, checked on CPU (oneDNN's
    fp16/bf16 convolutions accumulate in fp32 as cuDNN's do). fp16 runs on every CPU (slowly where
    it is not native); bf16 where the CPU class has it, else a one-line refusal (every class:
    test_cpu_caps.py)."""
    twin = randomize_like_trained(CSFCN(num_classes=19), g)
    x = torch.randn(1, 3, 64, 128, generator=g)
    verdict = cpu_caps().verdict(precision)
    if precision == "bf16" and not verdict.ok:
        with pytest.raises(CpuPrecisionError, match=re.escape(verdict.why)):
            optimize(twin, precision, "logits", kernels=False)
        return
    logits = optimize(twin, precision, "logits", kernels=False)(x)
    assert logits.dtype == DTYPES[precision]
    assert_within_precision(logits, optimize(twin, precision, "labels", kernels=False)(x), twin, x, precision)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_optimized_matches_twin_with_cuda_graphs(g, precision):
    twin = randomize_like_trained(CSFCN(num_classes=19), g).cuda()
    fast = optimize(twin, precision, "logits")
    labels_fast = optimize(twin, precision, "labels")
    assert fast.cuda_graphs and fast.use_kernels and fast.channels_last
    for h, w in ((256, 512), (192, 320), (256, 512)):  # the third call replays the first graph
        x = torch.randn(1, 3, h, w, generator=g).cuda()
        logits = fast(x).clone()  # a graph's output buffer is rewritten by its next replay
        assert_within_precision(logits, labels_fast(x).clone(), twin, x, precision)
    assert len(fast._graphs) == 2


def _meta_live_set(output: str, h: int = 512, w: int = 1024):
    with torch.device("meta"):
        twin = CSFCN(num_classes=19).eval()
    return live_set(optimize_on_meta(twin, "fp16", output), torch.empty(1, 3, h, w, device="meta"))


def test_labels_mode_live_set_traced_for_the_gpu():
    """optimize's GPU graph in fp16 labels mode at 512x1024, K = 19, traced on ``meta``: its peak
    is the stem's, where the converted input (3 x 512 x 1024 x 2 B = 3 MiB), conv1's output
    (64 x 256 x 512 x 2 B = 16 MiB) and the max-pool's (64 x 128 x 256 x 2 B = 4 MiB) are alive
    together: 24,117,248 B. No tensor is as large as the full fp16 logits (19 x 512 x 1024 x 2 B
    = 19,922,944 B), which logits mode does allocate (so the check can fail)."""
    full_logits = 19 * 512 * 1024 * 2
    labels = _meta_live_set("labels")
    assert labels.peak == (3 + 16 + 4) * 2**20
    assert labels.largest[0] < full_logits, labels.largest
    logits = _meta_live_set("logits")
    assert logits.largest[0] == full_logits and logits.peak > labels.peak


@pytest.mark.gpu
@gpu
def test_gpu_labels_never_materialise_full_resolution_logits(g):
    """The traced live set (test_labels_mode_live_set_traced_for_the_gpu) is what the GPU holds:
    the same tensors run for real, and the caching allocator sampled after every op (cuDNN's
    workspaces already freed) agrees up to its 512 B block rounding."""
    twin = randomize_like_trained(CSFCN(num_classes=19), g).cuda()
    fast = optimize(twin, "fp16", "labels", cuda_graphs=False)
    x = torch.randn(1, 3, 512, 1024, generator=g).cuda()
    fast(x)  # first call: cuDNN's algorithm choice and Triton's compiles out of the way
    torch.cuda.synchronize()
    real = live_set(fast, x)
    traced = _meta_live_set("labels")
    assert real.peak == traced.peak, (real.peak, traced.peak)
    assert real.largest[0] < 19 * 512 * 1024 * 2, real.largest
    assert real.peak <= real.cuda_peak <= real.peak + 512 * 64, (real.cuda_peak, real.peak)


def _tf32_bound(x, weight, bias) -> float:
    """What TF32 costs the shuffle head on these inputs: the fp32 reference on inputs rounded to
    TF32's 10-bit mantissa (as the tensor cores read them; the sums stay fp32), relative to fp64,
    times 3 (tests/precision.py). Emulated on any device."""
    truth = shuffle_head_reference(x.double(), weight.double(), bias.double())
    emulated = shuffle_head_reference(tf32_round(x), tf32_round(weight), bias)
    return 3 * rel_l2(emulated, truth)


def test_tf32_emulation_bound(g):
    """The TF32 bound of test_gpu_kernels_fp32_and_tf32 on CPU is what the rounding predicts: two
    inputs per product, each rounded with relative RMS 2^-11/sqrt(12) = 1.41e-4, give
    sqrt(2) x 1.41e-4 = 2.0e-4 (measured 2.07e-4 over 4 seeds), 800x fp32's own 2.5e-7: a TF32
    dot in an fp32 path cannot pass the fp32 rule."""
    x = torch.randn(1, 128, 16, 32, generator=g)
    weight = torch.randn(19 * 64, 128, generator=g) / 128**0.5
    bias = torch.randn(19 * 64, generator=g)
    bound = _tf32_bound(x, weight, bias) / 3
    assert 1e-4 <= bound <= 1e-3
    fp32_own = rel_l2(
        shuffle_head_reference(x, weight, bias), shuffle_head_reference(x.double(), weight.double(), bias.double())
    )
    assert fp32_own * 100 < bound


@pytest.mark.gpu
@gpu
def test_gpu_kernels_fp32_and_tf32():
    """On a GPU: fp32 kernels (IEEE dots) as close to fp64 as the fp32 reference (TF32 off in
    every reference, kernels._common.tf32), and the TF32 option within what TF32's rounding of
    these inputs predicts."""
    from kernels.sfc_fuse import sfc_fuse, sfc_fuse_reference
    from kernels.shuffle_head import shuffle_head

    gen = torch.Generator().manual_seed(0)
    cp = torch.randn(1, 128, 128, 256, generator=gen).cuda().contiguous(memory_format=torch.channels_last)
    sp = torch.randn(1, 128, 32, 64, generator=gen).cuda().contiguous(memory_format=torch.channels_last)
    r = (3 * torch.randn(1, 10, 128, 256, generator=gen)).cuda().contiguous(memory_format=torch.channels_last)
    assert_near_fp64(sfc_fuse(cp, sp, r), sfc_fuse_reference, cp, sp, r)
    x = torch.randn(1, 128, 128, 256, generator=gen).cuda()
    weight = (torch.randn(19 * 64, 128, generator=gen) / 128**0.5).cuda()
    bias = torch.randn(19 * 64, generator=gen).cuda()
    assert_near_fp64(shuffle_head(x, weight, bias), shuffle_head_reference, x, weight, bias)
    truth = shuffle_head_reference(x.double(), weight.double(), bias.double())
    assert rel_l2(shuffle_head(x, weight, bias, allow_tf32=True), truth) <= _tf32_bound(x, weight, bias)


# ----------------------------------------------------------------------------- benchmark CLI
def test_twin_compiles_as_one_graph():
    """torch.compile (benchmark variant c) sees the twin as one graph: no break that would split it
    and run the pieces eagerly. Under torch 2.11 `grid or sfc_grid` on a bound method broke it in
    three places (model.py, sfc_sample_and_gate)."""
    import torch._dynamo as dynamo

    twin = CSFCN(num_classes=19).eval()
    with torch.no_grad():
        explained = dynamo.explain(twin)(torch.randn(1, 3, 64, 128))
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_benchmark_cli_runs_the_cpu_variants(tmp_path, capsys):
    """`python -m torch_deploy.benchmark` on a tiny input: table, skipped variants named, JSON."""
    import json

    from tools.benchmark import main

    out = tmp_path / "bench.json"
    args = ["--size", "32", "64", "--classes", "11", "--repeats", "2", "--warmup", "1", "--threads", "1"]
    assert main([*args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["model"]["classes"] == 11 and report["versions"]["torch"] == torch.__version__
    keys = {r["variant"] for r in report["models"]}
    if torch.cuda.is_available():
        assert {"a", "u", "d", "e"} <= keys
    else:
        from torch_deploy.cpu_peers import peer_missing

        bf16 = cpu_caps().verdict("bf16").ok
        want = {"a", "u", "d", "e", "q", "i", "o"} | ({"f"} if bf16 else set())
        want |= {"v", "x"} | ({"w"} if bf16 else set()) if peer_missing("openvino") is None else set()
        assert keys == want and "per-kernel timings" in report["skipped"]
        assert "optimize fp32 labels (reference ops, CPU)" in text and "Skipped:" in text
        if peer_missing("openvino") is not None:
            assert "pip install 'csfcn[openvino]'" in report["skipped"]["v  openvino fp32 labels (our ONNX)"]
    assert "u  upstream protocol: eager fp32, BN folded" in text
    for r in report["models"]:
        assert r["size"] == [32, 64] and 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["runs"] == 2
