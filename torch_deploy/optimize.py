"""The inference graph of CSFCN: folded, fused, low precision, channels-last, CUDA-graphed.

    from torch_deploy.optimize import optimize
    fast = optimize(model, precision="fp16", output="labels")   # model: torch_deploy.model.CSFCN
    labels = fast(x)            # x: normalised (B, 3, H, W) float -> (B, H, W) uint8

What :func:`optimize` builds is the twin's own module tree (:mod:`torch_deploy.model`, copied;
the twin is left untouched) after two passes, running the :class:`FastOps` backend:

* every BatchNorm folded into the conv before it (:func:`fold_bn`, eval-mode statistics);
* SFC's offset branch folded (docs/architecture.md, SFC step 3, :func:`fold_sfc_offsets`): cp1x1 / sp1x1 and
  the 1x1 conv (+ BN) of conv_offset compose into one 128 -> 64 map per branch, and the sp
  branch's map is applied at 1/32 *before* the align-corners resize (both are linear, so they
  commute): the 1/8 map only ever sees 64 channels of sp, and with the fused ``sfc_fuse``
  kernel the 128-channel upsampled sp never exists at all;
* on CUDA the Triton kernels of :mod:`kernels` (``pooled_attention`` for CFC, ``sfc_fuse``
  with the 1/32 resize fused, ``shuffle_head`` for the head's 1x1 conv + pixel shuffle or
  argmax), channels-last activations, and one captured CUDA graph per input shape;
* without a GPU the same folded graph with the kernels' functions in CPU forms (same function,
  docs/architecture.md "On a CPU"), with a one-time notice. ``kernels=True`` on CPU runs the
  Triton kernels under Triton's interpreter (``TRITON_INTERPRET=1``), which is how the tests
  check the whole fast path;
* ``precision="int8"`` (CPU): :class:`Int8Ops`, every convolution in int8 after a calibration
  pass (:mod:`torch_deploy.quantize`).

Output modes: ``"logits"`` (B, K, H, W) in the compute precision, ``"labels"`` (B, H, W)
uint8 (int32 for K > 256). In labels mode the CSFCN head never materialises full-resolution
logits: the kernel takes the argmax over K per sub-pixel on the 1/8 conv output, the CPU path
(:func:`torch_deploy.cpu_ops.labels_head`) per chunk of 256 low-resolution pixels. On CPU every conv is one
oneDNN call with pre-packed weights and its ReLU fused. CSFCN-Tiny's head is a bilinear x8
resize, which has no such shortcut: it runs as conv + resize (+ argmax).
"""

from __future__ import annotations

import copy
import logging
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from csfcn.model_config import HEAD_UPSAMPLE, SFC_GROUPS
from kernels._common import tf32
from torch_deploy.cpu_caps import cpu_caps
from torch_deploy.cpu_ops import conv2d, labels_head, logits_head, sfc_fuse_rows
from torch_deploy.heap import retain_freed_memory
from torch_deploy.model import CSFCN, REFERENCE_OPS, SFC, Head, ReferenceOps, labels_dtype, use_ops
from torch_deploy.precision import DTYPES, activation_dtype, computable
from torch_deploy.quantize import Int8Conv, int8_conv, quantize_convs

OUTPUTS = ("logits", "labels")

log = logging.getLogger(__name__)
_FALLBACK_NOTICE_GIVEN = False


# ----------------------------------------------------------------------------- folding
@torch.no_grad()
def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` with eval-mode BN statistics as one conv with bias (computed in fp64, stored in
    the conv's dtype)."""
    if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"fold_bn: expected (Conv2d, BatchNorm2d), got ({type(conv).__name__}, {type(bn).__name__})")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_bn: BN has {bn.num_features} features, the conv {conv.out_channels} outputs")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_bn: the BatchNorm tracks no running statistics; nothing to fold")
    scale = torch.ones_like(bn.running_var, dtype=torch.float64) if bn.weight is None else bn.weight.double()
    shift = torch.zeros_like(scale) if bn.bias is None else bn.bias.double()
    scale = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = torch.zeros_like(scale) if conv.bias is None else conv.bias.double()
    folded = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    folded.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    folded.bias.copy_((bias - bn.running_mean.double()) * scale + shift)
    return folded


def remove_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm folded into its conv and replaced by
    ``nn.Identity``: :func:`fold_conv_bn_pairs`, the one folding pass, for a network all of whose
    BatchNorms follow their conv (CSFCN; the deep stem's last conv and ``bn1`` included). Same
    function in eval mode, same ops otherwise: what the upstream speed script times (it comments
    the BatchNorms out). A BatchNorm the pass cannot fold is a ValueError naming it."""
    folded = fold_conv_bn_pairs(model)
    left = [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"remove_bn: BatchNorms that do not follow a conv of their own: {left}")
    return folded


class _PairRecorder(ReferenceOps):
    """A backend that notes every (conv, BN) pair the forward pass runs through ``conv_bn``."""

    def __init__(self):
        super().__init__("logits")
        self.pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def conv_bn(self, conv, bn, x, relu=False):
        if isinstance(bn, nn.BatchNorm2d) and all(bn is not b for _, b in self.pairs):
            self.pairs.append((conv, bn))
        return super().conv_bn(conv, bn, x, relu)


@torch.no_grad()
def fold_conv_bn_pairs(model: nn.Module, size=(64, 64)) -> nn.Module:
    """A copy of ``model`` (a zoo twin, docs/zoo.md) with every BatchNorm folded into its conv
    where the model runs the pair through ``ops.conv_bn`` -- the pairs whose conv output feeds
    nothing but that BN -- found by one pass of ``outputs`` (every head) on a ``size`` input on
    the meta device.
    Other BNs (pre-activation BN -> ReLU -> conv, a BN whose conv output is also used raw) stay."""
    model = copy.deepcopy(model).eval()
    recorder = _PairRecorder()
    use_ops(model, recorder)
    meta = copy.deepcopy(model).to("meta")
    meta_of = dict(zip((id(m) for m in meta.modules()), model.modules()))
    use_ops(meta, recorder)
    dtype = next(model.parameters()).dtype
    meta.outputs(torch.zeros(1, 3, *size, device="meta", dtype=dtype))  # every head, the auxiliary ones too
    pairs = [(meta_of[id(c)], meta_of[id(b)]) for c, b in recorder.pairs]
    where = {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}
    for conv, bn in pairs:
        parent, name = where[id(conv)]
        setattr(parent, name, fold_bn(conv, bn))
        parent, name = where[id(bn)]
        setattr(parent, name, nn.Identity())
    return use_ops(model, REFERENCE_OPS)


def _conv1x1(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape))
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


@torch.no_grad()
def fold_sfc_1x1(sfc) -> tuple[nn.Conv2d, nn.Conv2d]:
    """SFC's offset branch up to its ReLU as two 1x1 convs ``(cp_proj, sp_proj)`` (docs/architecture.md, SFC step 3).

    ``relu(bn(conv(concat(cp1x1(cp), sp1x1(sp)))))`` == ``relu(cp_proj(cp) + sp_proj(sp))``: the
    BN folds into conv_offset's 1x1 conv, which splits by input channels and composes with
    cp1x1 / sp1x1 (CSFCN) or applies directly to cp / sp (CSFCN-Tiny, no cp1x1/sp1x1). The bias
    goes to ``cp_proj``; ``sp_proj`` has none, so it commutes with the bilinear resize of sp.
    """
    cbr = sfc.conv_offset[0]
    first = cbr.conv if isinstance(cbr.bn, nn.Identity) else fold_bn(cbr.conv, cbr.bn)  # already folded by remove_bn
    w = first.weight.double().flatten(1)  # (64, 64) or, Tiny, (64, 256)
    if sfc.tiny:
        c = sfc.conv_8.conv.out_channels
        w_cp, w_sp = w[:, :c], w[:, c:]
    else:
        half = sfc.cp1x1.out_channels
        w_cp = w[:, :half] @ sfc.cp1x1.weight.double().flatten(1)
        w_sp = w[:, half:] @ sfc.sp1x1.weight.double().flatten(1)
    dtype = first.weight.dtype
    return _conv1x1(w_cp, first.bias.double(), dtype), _conv1x1(w_sp, None, dtype)


@torch.no_grad()
def fold_sfc_offsets(sfc: SFC) -> SFC:
    """Switch ``sfc`` (in place) to its folded form (docs/architecture.md, "The algebra the fast path relies on", SFC 1x1 folding): the
    offset branch's first 1x1 (+ BN) composed with cp1x1 / sp1x1 into ``cp_proj`` / ``sp_proj``,
    which :meth:`torch_deploy.model.SFC.forward` then applies with sp kept at 1/32."""
    sfc.cp_proj, sfc.sp_proj = fold_sfc_1x1(sfc)
    sfc.conv_offset[0] = nn.Identity()
    if not sfc.tiny:
        del sfc.cp1x1, sfc.sp1x1
    sfc.folded = True
    return sfc


# ----------------------------------------------------------------------------- the fast backend
class FastOps(ReferenceOps):
    """``optimize``'s backend for the twin's module tree (BN folded, SFC folded), without Triton.

    Convolutions: on CPU in fp32/bf16 one oneDNN call each with pre-packed weights and the ReLU
    fused (:func:`torch_deploy.cpu_ops.conv2d`; a residual's add as a oneDNN post-op measured no
    faster). The hot spots: on CPU ``sfc_fuse`` and the CSFCN head in the forms of
    :mod:`torch_deploy.cpu_ops` (channels-last row gathers; one matmul for logits, cache-sized
    chunks for labels), elsewhere (fp64, a GPU without Triton) the reference forms of
    :mod:`kernels`. :class:`TritonOps` replaces the three hot spots by the Triton kernels; each
    op's forms side by side, one class per backend.
    """

    name = "fast"
    kernels = False  # the Triton kernels: TritonOps

    def __init__(self, output: str = "logits"):
        super().__init__(output)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output={self.output!r})"

    def conv(self, conv, x, relu=False):
        return conv2d(conv, x, relu)

    def add_relu(self, x, y):
        return F.relu_(x.add_(y))

    def _query_key_value(self, cfc, x, pooled):
        query = self.conv(cfc.query_conv, x)
        key = (cfc.key_conv.weight.flatten(1) @ pooled + cfc.key_conv.bias[:, None]).contiguous()
        value = (cfc.value_conv.weight.flatten(1) @ pooled + cfc.value_conv.bias[:, None]).contiguous()
        return query, key, value

    def attention(self, cfc, x, pooled, valid=None):
        if valid is not None:  # padded positions: only the shape-generic export pads
            return super().attention(cfc, x, pooled, valid)
        from kernels.pooled_attention import pooled_attention_reference  # lazy: kernels imports Triton

        return pooled_attention_reference(*self._query_key_value(cfc, x, pooled))

    def sfc_fuse(self, cp, sp32, r):
        if cp.device.type == "cpu" and cp.dtype in (torch.float32, torch.bfloat16):
            return sfc_fuse_rows(cp, sp32, r)
        from kernels.sfc_fuse import sfc_fuse_reference  # lazy: as above

        return sfc_fuse_reference(cp, sp32, r)

    def cpu_shuffle(self, head: Head, x: torch.Tensor) -> torch.Tensor:
        """The CSFCN head on CPU, logits out (:func:`torch_deploy.cpu_ops.logits_head`)."""
        return logits_head(head, x)

    def cpu_labels(self, head: Head, x: torch.Tensor) -> torch.Tensor:
        """The CSFCN head on CPU, labels out, its 1x1 conv through this backend's ``conv``
        (:func:`torch_deploy.cpu_ops.labels_head`)."""
        return labels_head(head, x, self.conv)

    def head(self, head, x):
        if head.tiny:  # a bilinear x8 resize: no shortcut, conv + resize (+ argmax)
            return super().head(head, x)
        if x.device.type == "cpu" and x.dtype != torch.float64:
            return self.cpu_shuffle(head, x) if self.output == "logits" else self.cpu_labels(head, x)
        from kernels.shuffle_head import shuffle_labels  # lazy: as above

        y = self.conv(head.conv_out, x)
        return F.pixel_shuffle(y, HEAD_UPSAMPLE) if self.output == "logits" else shuffle_labels(y, HEAD_UPSAMPLE)


class TritonOps(FastOps):
    """:class:`FastOps` with the three hot spots as the Triton kernels of :mod:`kernels`:
    ``pooled_attention``, ``sfc_fuse`` with the 1/32 resize fused (SFANet's alignment too) and
    ``shuffle_head`` (logits or labels straight from the 1/8 map). On CUDA; on CPU under
    ``TRITON_INTERPRET=1``. The kernels import lazily: Triton reads TRITON_INTERPRET when first
    imported."""

    name = "triton"
    kernels = True

    def attention(self, cfc, x, pooled, valid=None):
        if valid is not None:
            return super().attention(cfc, x, pooled, valid)
        from kernels.pooled_attention import pooled_attention  # lazy: Triton

        return pooled_attention(*self._query_key_value(cfc, x, pooled))

    def sfc_fuse(self, cp, sp32, r):
        from kernels.sfc_fuse import sfc_fuse  # lazy: Triton

        return sfc_fuse(cp, sp32, r)

    def align_add(self, fh, fl, offset):
        """SFANet's FAA through ``sfc_fuse`` with one group: cp = fh sampled at zero offset (the
        identity, to within an ulp of the coordinates), sp = fl at ``offset``, gates tanh(0) = 0."""
        from kernels.sfc_fuse import sfc_fuse  # lazy: Triton

        zero = offset.new_zeros(offset.shape[0], 2, *offset.shape[2:])
        return sfc_fuse(fh, fl, torch.cat([zero, offset, zero], dim=1))

    def head(self, head, x):
        if head.tiny:
            return ReferenceOps.head(self, head, x)
        from kernels.shuffle_head import shuffle_head  # lazy: Triton

        return shuffle_head(x, head.conv_out.weight, head.conv_out.bias, upscale=HEAD_UPSAMPLE, output=self.output)


class Int8Ops(FastOps):
    """``FastOps`` with every calibrated convolution in int8 (:mod:`torch_deploy.quantize`),
    activations in ``bits`` bits (8, or 7 where the CPU has no VNNI: torch_deploy/cpu_caps.py)."""

    name = "int8"

    def __init__(self, output: str = "logits", bits: int = 8):
        super().__init__(output)
        self.bits = bits
        self.convs: dict[nn.Conv2d, Int8Conv] = {}
        self._ranges: dict[nn.Conv2d, list[float]] | None = None  # while calibrating

    def __repr__(self) -> str:
        return f"Int8Ops(output={self.output!r}, bits={self.bits}, convs={len(self.convs)})"

    def conv(self, conv, x, relu=False):
        if self._ranges is not None:  # calibrating: the float conv, its input range noted
            lo, hi = torch.aminmax(x.detach())
            seen = self._ranges.setdefault(conv, [float("inf"), float("-inf")])
            seen[0], seen[1] = min(seen[0], lo.item()), max(seen[1], hi.item())
            return super().conv(conv, x, relu)
        q = self.convs.get(conv)
        return super().conv(conv, x, relu) if q is None else int8_conv(q, x, relu)

    def cpu_shuffle(self, head, x):
        """Logits: the head's 1x1 conv in int8 too (as in the labels head), then pixel shuffle."""
        return F.pixel_shuffle(self.conv(head.conv_out, x), HEAD_UPSAMPLE)

    @torch.no_grad()
    def calibrate(self, run, images) -> int:
        """Note every convolution's input range while ``run(image)`` computes each calibration
        image in float, then quantize the convolutions seen; returns how many."""
        self._ranges = {}
        try:
            for image in images:
                run(image)
            ranges = self._ranges
        finally:
            self._ranges = None
        if not ranges:
            raise ValueError("int8 calibration: no images, or the model ran no convolution")
        self.convs = quantize_convs(ranges, self.bits)
        return len(self.convs)


# ----------------------------------------------------------------------------- the wrapper
class OptimizedCSFCN(nn.Module):
    """The twin's module tree after :func:`optimize`'s passes (``self.model``, running
    :class:`FastOps`), wrapped for input precision/layout, TF32 and CUDA graphs."""

    def __init__(
        self,
        model: CSFCN,
        *,
        precision: str,
        output: str,
        use_kernels: bool,
        channels_last: bool,
        cuda_graphs: bool,
        allow_tf32: bool,
        static_output: bool,
        int8_bits: int = 8,
    ):
        super().__init__()
        self.config = model.config
        self.precision = precision
        self.dtype = activation_dtype(precision)
        self.output = output
        self.use_kernels = use_kernels
        self.channels_last = channels_last
        self.cuda_graphs = cuda_graphs
        self.allow_tf32 = allow_tf32
        self.static_output = static_output
        self.zoo = model.config.is_zoo
        if precision == "int8":
            ops = Int8Ops(output, int8_bits)
        else:
            ops = TritonOps(output) if use_kernels else FastOps(output)
        if self.zoo:  # the generic path of docs/zoo.md: fold what the data flow allows, fast convs
            self.model = use_ops(fold_conv_bn_pairs(model), ops)
        else:
            folded = remove_bn(model)  # a copy: the twin is not modified
            fold_sfc_offsets(folded.sfc)
            if (folded.sfc.conv_offset[1].out_channels - 2) // 4 != SFC_GROUPS:
                raise ValueError("optimize: conv_offset's outputs do not match SFC_GROUPS")
            self.model = folded.use_ops(ops)
        self.ops = ops  # int8: calibrate() fills its quantized convolutions
        self.requires_grad_(False)
        self.eval()
        self._graphs: dict = {}

    @torch.inference_mode()
    def calibrate(self, images) -> int:
        """int8: run the (still float32) folded graph on ``images`` -- normalised (B, 3, H, W)
        float tensors -- noting each convolution's input range, then quantize the convolutions
        (:mod:`torch_deploy.quantize`); returns how many were quantized."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        def run(image):
            if not torch.is_tensor(image) or image.dim() != 4 or image.shape[1] != 3:
                shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
                raise ValueError(f"int8 calibration: expected normalised (B, 3, H, W) image tensors, got {shape}")
            self.model(image.float().contiguous(memory_format=fmt))

        return self.ops.calibrate(run, images)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        # dtype, then layout: on CPU the fused conversion is 2-3x slower (BENCHMARKS.md, CPU deployment)
        x = x.to(self.dtype).contiguous(memory_format=fmt)
        y = self.model(x)
        if self.zoo and self.output == "labels":  # the zoo heads end in a resize: argmax after it
            return y.argmax(1).to(labels_dtype(self.config.num_classes))
        return y

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda and self.dtype == torch.float32:
            with tf32(self.allow_tf32):
                return self._forward(x)
        return self._forward(x)

    def _graphed(self, x: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device, x.stride())
        entry = self._graphs.get(key)
        if entry is None:
            static_in = x.clone()
            stream = torch.cuda.Stream(x.device)
            stream.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up: Triton compilation, cuDNN algorithm choice, allocator
                    self._run(static_in)
            torch.cuda.current_stream(x.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out if self.static_output else static_out.clone()

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) images (any float dtype, H and W multiples of 8 for full-size output)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"optimized CSFCN: expected (B, 3, H, W) images, got shape {tuple(x.shape)}")
        if self.cuda_graphs and x.is_cuda:
            return self._graphed(x)
        return self._run(x)


# ----------------------------------------------------------------------------- entry point
def _kernels_runnable_on_cpu() -> bool:
    from kernels._common import HAS_TRITON, interpreted

    if not HAS_TRITON:
        return False
    from kernels.sfc_fuse import _sfc_fuse_kernel

    return interpreted(_sfc_fuse_kernel)


def _tracing_on_meta(device: torch.device) -> bool:
    """A model on the ``meta`` device inside ``kernels.record_launches()``: kernels.aot traces the
    launches of the fast path at any input size without computing anything."""
    from kernels._common import recording

    return device.type == "meta" and recording()


def _fallback_notice(device: torch.device, reason: str) -> None:
    global _FALLBACK_NOTICE_GIVEN
    if _FALLBACK_NOTICE_GIVEN:
        return
    _FALLBACK_NOTICE_GIVEN = True
    msg = (
        f"torch_deploy.optimize: {reason}; running the folded graph on {device} with the kernels' reference "
        "PyTorch ops (same function, no Triton, no CUDA graphs)"
    )
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)


def optimize(
    model: CSFCN,
    precision: str = "fp16",
    output: str = "logits",
    cuda_graphs: bool = True,
    *,
    kernels: bool | None = None,
    channels_last: bool | None = None,
    allow_tf32: bool = False,
    static_output: bool = False,
    calibration=None,
) -> OptimizedCSFCN:
    """The fast inference module for a :class:`torch_deploy.model.CSFCN` (the twin is not modified).

    precision: "fp32" | "fp16" | "bf16" (weights and activations; fp32 uses IEEE fp32 unless
    ``allow_tf32``); "fp64" runs the reference ops only, to check the folding algebra exactly. output: "logits" (B, K, H, W) or "labels" (B, H, W). cuda_graphs: capture
    one CUDA graph per input shape on CUDA (the first call of a shape warms up and captures).
    kernels: use the Triton kernels (default: on CUDA when Triton is installed; ``True`` on CPU
    needs ``TRITON_INTERPRET=1``). channels_last: activation layout (default: True).
    static_output: return the CUDA graph's output buffer itself (overwritten by the next call
    of the same shape) instead of a copy. The module runs on the device of ``model``.

    precision="int8" (CPU): oneDNN's int8 convolutions, calibrated on ``calibration`` -- a few
    normalised (1, 3, H, W) float tensors of real images (:mod:`torch_deploy.quantize`); the
    rest of the graph in fp32. Activations take 8 bits where the CPU has VNNI, 7 elsewhere.

    Which precision may run where is :mod:`torch_deploy.precision`'s decision
    (:func:`~torch_deploy.precision.computable`): on CPU, bf16 where the CPU lacks native bf16,
    and either off x86-64, raise :class:`torch_deploy.cpu_caps.CpuPrecisionError` (a
    ``ValueError``) naming the missing feature.

    On CPU this also asks glibc's malloc to keep freed memory in the process
    (:func:`torch_deploy.heap.retain_freed_memory`, process-wide): otherwise every call
    page-faults its large activations in again, 15-20 % of an fp32 forward.
    """
    if precision not in (*DTYPES, "int8"):
        raise ValueError(f"optimize: precision={precision!r}; choose one of {sorted((*DTYPES, 'int8'))}")
    if output not in OUTPUTS:
        raise ValueError(f"optimize: output={output!r}; choose one of {OUTPUTS}")
    config = getattr(model, "config", None)
    if not isinstance(model, CSFCN) and not getattr(config, "is_zoo", False):
        raise TypeError(
            f"optimize: expected a twin of torch_deploy.model.build_twin (CSFCN or a zoo model), got {type(model).__name__}"
        )
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    computable(precision, device)  # oneDNN's CPU-dependent paths; int8 only on a CPU
    if precision == "int8":
        if kernels:
            raise ValueError("optimize: precision='int8' runs oneDNN's int8 convolutions, not the Triton kernels")
        calibration = list(calibration or [])
        if not calibration:
            raise ValueError("optimize: precision='int8' needs calibration=[a few normalised (1, 3, H, W) images]")
        kernels = False
    elif calibration is not None:
        raise ValueError(f"optimize: calibration is for precision='int8', not {precision!r}")
    if kernels is None:
        from kernels._common import HAS_TRITON

        kernels = on_cuda and HAS_TRITON
        if not kernels:
            reason = "no CUDA device" if not on_cuda else "Triton is not installed"
            _fallback_notice(device, reason)
    elif kernels and not on_cuda and not _kernels_runnable_on_cpu() and not _tracing_on_meta(device):
        raise ValueError(
            "optimize(kernels=True) on CPU runs the Triton kernels under Triton's interpreter: set "
            f"TRITON_INTERPRET=1 before importing kernels (now {os.environ.get('TRITON_INTERPRET')!r})"
        )
    if kernels and precision == "fp64":
        raise ValueError("optimize: the Triton kernels take fp32/fp16/bf16; precision='fp64' needs kernels=False")
    if channels_last is None:  # faster on both: cuDNN/Triton on GPU, oneDNN on CPU (measured in BENCHMARKS.md)
        channels_last = True
    fast = OptimizedCSFCN(
        model,
        precision=precision,
        output=output,
        use_kernels=bool(kernels),
        channels_last=bool(channels_last),
        cuda_graphs=bool(cuda_graphs) and on_cuda,
        allow_tf32=allow_tf32,
        static_output=static_output,
        int8_bits=cpu_caps().int8_bits if precision == "int8" else 8,
    )
    if device.type == "cpu":
        retain_freed_memory()
    if precision == "int8":
        fast.calibrate(calibration)  # in float32, before the conversion below
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return fast.to(device=device, dtype=fast.dtype, memory_format=fmt)


def optimize_on_meta(model: CSFCN, precision: str, output: str) -> OptimizedCSFCN:
    """``optimize``'s graph, Triton kernels included, of a model on the ``meta`` device: run it
    inside ``kernels.record_launches()`` and it computes shapes only and records its kernel launches
    instead of running them. How kernels.aot traces what a GPU would compile, and
    torch_deploy.roofline what each op costs, at any input size without a GPU."""
    from kernels._common import record_launches

    with record_launches():  # optimize(kernels=True) accepts a meta model only while tracing
        return optimize(model, precision, output, cuda_graphs=False, kernels=True)
