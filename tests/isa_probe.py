"""Every CPU precision path of ``optimize`` on this process's CPU, as JSON on stdout.

    ONEDNN_MAX_CPU_ISA=AVX2 python tests/isa_probe.py

tests/test_cpu_caps.py runs it in a subprocess under lower oneDNN ISAs than the machine's
(oneDNN reads the cap once, at its first primitive), so an AVX-512 machine sees what an AVX2
user gets. It reports:

* ``caps``: torch_deploy.cpu_caps's verdicts in this process;
* ``pair_sums``: one raw oneDNN int8 1x1 convolution on 8-bit activations, compared with the
  exact int32 sum and with the sum of int16-saturated pairs of neighbouring input channels (the
  pre-VNNI ``vpmaddubsw`` arithmetic): which of the two oneDNN computed;
* ``int8``: ``optimize(precision="int8")`` on a trained-like CSFCN -- each quantized conv
  against the float64 fake-quantized conv on the same input (the largest rel L2), the logits'
  rel L2 to the fp32 twin and the labels' argmax agreement with it; ``int8_8bit`` the same with
  8-bit activations forced (what the code did before torch_deploy/cpu_caps.py);
* ``bf16``: ``optimize(precision="bf16")``'s rel L2 to the fp32 twin, or its one-line refusal.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from test_optimize import randomize_like_trained, rel_l2  # noqa: E402
from test_quantize import FakeQuantOps  # noqa: E402

from torch_deploy.cpu_caps import cpu_caps  # noqa: E402
from torch_deploy.model import CSFCN, use_ops  # noqa: E402
from torch_deploy.optimize import Int8Ops, fold_sfc_offsets, optimize, remove_bn  # noqa: E402
from torch_deploy.quantize import quantize_weight  # noqa: E402

RESIDUAL_GAIN = 0.3  # trained residual branches add a correction to their input, not a new signal


@torch.no_grad()
def trained_like(g: torch.Generator) -> CSFCN:
    """tests/test_optimize.py's random CSFCN with its residual branches damped: undamped, random
    weights make the network chaotic (rounding one conv's input to 8 bits moves the logits by
    50 %), which no trained network is and which says nothing about a quantization scheme."""
    twin = randomize_like_trained(CSFCN(num_classes=19), g)
    for name, m in twin.named_modules():
        if name.startswith("resnet.layer") and name.endswith("bn2"):
            m.weight.mul_(RESIDUAL_GAIN)
            m.bias.mul_(RESIDUAL_GAIN)
    return twin


def pair_sums(g: torch.Generator) -> dict:
    cin, cout = 64, 32
    x = torch.randint(0, 256, (1, cin, 8, 8), generator=g, dtype=torch.int32)
    qw, _ = quantize_weight(torch.randn(cout, cin, 1, 1, generator=g))
    qx = x.to(torch.uint8).contiguous(memory_format=torch.channels_last)
    ones, zeros = torch.ones(cout), torch.zeros(cout, dtype=torch.int32)
    packed = torch.ops.onednn.qconv_prepack(qw, ones, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, list(qx.shape))
    y = torch.ops.onednn.qconv2d_pointwise(
        qx, 1.0, 0, packed, ones, zeros, None, [1, 1], [0, 0], [1, 1], 1, 1.0, 0, torch.float32, "none", [], ""
    )  # fmt: skip
    got = y[0].permute(1, 2, 0).reshape(-1, cout).round().long()
    prod = x[0].permute(1, 2, 0).reshape(-1, 1, cin).long() * qw.flatten(1).long()  # (pixels, cout, cin)
    pairs = prod[..., 0::2] + prod[..., 1::2]
    return {
        "exact": bool(torch.equal(got, prod.sum(-1))),
        "saturated": bool(torch.equal(got, pairs.clamp(-(2**15), 2**15 - 1).sum(-1))),
        "pairs_over_int16": float((pairs.abs() >= 2**15).float().mean()),
    }


def int8_check(twin, calibration, x, ref, bits: int | None) -> dict:
    """optimize int8 (activation bits as cpu_caps decides, or forced), per-conv exactness and accuracy."""
    worst = [0.0]
    plain = Int8Ops.conv

    def checked(self, conv, inp, relu=False):
        y = plain(self, conv, inp, relu)
        q = self.convs.get(conv)
        if q is not None:  # the float64 fake-quantized conv on the same input
            xq = torch.clamp(torch.round(inp.float() * (1.0 / q.scale)) + q.zero_point, 0, q.qmax)
            xd = (xq.double() - q.zero_point) * q.scale
            wd = q.weight.double() * q.weight_scale.double().view(-1, 1, 1, 1)
            b = None if q.bias is None else q.bias.double()
            r = F.conv2d(xd, wd, b, conv.stride, conv.padding, conv.dilation, conv.groups)
            worst[0] = max(worst[0], rel_l2(y, F.relu(r) if relu else r))
        return y

    q = optimize(twin, "int8", "logits", calibration=calibration)
    if bits is not None:  # e.g. 8 bits where cpu_caps says 7: what the code did before it decided
        q.ops.bits = bits
        q.calibrate(calibration)
    Int8Ops.conv = checked
    try:
        with torch.no_grad():
            got = q(x)
    finally:
        Int8Ops.conv = plain
    with torch.no_grad():
        fake = fake_quantized(twin, q)(x.double())
    return {
        "bits": q.ops.bits,
        "convs": len(q.ops.convs),
        "worst_conv_rel_l2": worst[0],
        "rel_l2_to_fake": rel_l2(got, fake),
        "rel_l2_to_fp32": rel_l2(got, ref),
        "fake_rel_l2_to_fp32": rel_l2(fake, ref),
        "agreement": float((got.argmax(1) == ref.argmax(1)).float().mean()),
        "fake_agreement": float((fake.argmax(1) == ref.argmax(1)).float().mean()),
    }


def fake_quantized(twin, q):
    """The float64 graph ``q`` folds, each of its int8 convs fake-quantized (tests/test_quantize.py)."""
    folded = remove_bn(twin)
    fold_sfc_offsets(folded.sfc)
    ours = dict(q.model.named_modules())
    convs = {m: q.ops.convs[ours[n]] for n, m in folded.named_modules() if ours.get(n) in q.ops.convs}
    return use_ops(folded.double(), FakeQuantOps(convs))


def main() -> dict:
    g = torch.Generator().manual_seed(22)
    out = {"caps": cpu_caps().as_dict(), "pair_sums": pair_sums(g)}
    twin = trained_like(g)
    calibration = [torch.randn(1, 3, 64, 128, generator=g) for _ in range(2)]
    x = torch.randn(1, 3, 64, 128, generator=g)
    with torch.no_grad():
        ref = twin(x)
    out["int8"] = int8_check(twin, calibration, x, ref, None)
    if out["int8"]["bits"] != 8:
        out["int8_8bit"] = int8_check(twin, calibration, x, ref, 8)
    try:
        with torch.no_grad():
            out["bf16"] = {"rel_l2_to_fp32": rel_l2(optimize(twin, "bf16", "logits", kernels=False)(x), ref)}
    except ValueError as e:
        out["bf16"] = {"refused": str(e)}
    except RuntimeError:  # what the refusal exists to prevent: oneDNN's own error
        out["bf16"] = {"crashed": traceback.format_exc(limit=1)}
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
