"""Roofline floors: the least time a kernel or the whole model can take on a given GPU.

The command line is ``python -m tools.roofline`` (tools/roofline.py).

Every op is charged the bytes it must move -- each tensor it reads once, each tensor it writes
once -- and its FLOPs (PyTorch's own per-op formulas, ``torch.utils.flop_counter``, for
convolutions and matmuls; the kernel formulas below for the Triton kernels). Its floor is the
larger of bytes / copy bandwidth and FLOPs / matrix rate (tensor cores for fp16/bf16, the fp32
vector rate for IEEE fp32). A model's floor is the sum of its ops' floors: the ops run one after
another, and each must at least stream its own tensors. Launch gaps, caches and fusion the
graph does not already do are outside the model, so measured / floor >= 1 always; how far above
1 a kernel lands is what the benchmark reports next to every time.

Costs are traced, not written out per layer: the model runs on the ``meta`` device (shapes
only, nothing computed) under a dispatch mode that sums each ATen op's tensors and FLOPs, with
the Triton launches recorded by :func:`kernels._common.record_launches`.

Ceilings: measured at the start of a GPU run (:func:`measure_ceilings`: a device-to-device copy
and a large matmul), with datasheet values as the fallback (:data:`DATASHEET`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import statistics
import weakref
from collections.abc import Sequence

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kernels._common import tf32
from torch_deploy.model import CSFCN
from torch_deploy.optimize import optimize_on_meta
from torch_deploy.precision import DTYPES


@dataclasses.dataclass(frozen=True)
class Ceilings:
    """A GPU's two roofs: memory bandwidth (GB/s) and matrix rate (TFLOP/s) per compute dtype."""

    name: str
    bandwidth_gbps: float
    tensor_tflops: float  # dense fp16/bf16 tensor-core rate
    fp32_tflops: float  # IEEE fp32 (CUDA cores; what the fp32 path uses, TF32 off)
    source: str = "datasheet"

    def rate(self, precision: str) -> float:
        return (self.fp32_tflops if precision == "fp32" else self.tensor_tflops) * 1e12


# Dense (no sparsity) rates and HBM bandwidth of the SXM parts, from NVIDIA's datasheets.
DATASHEET = {
    "h200": Ceilings("H200 SXM", 4800.0, 989.0, 67.0),
    "h100": Ceilings("H100 SXM", 3350.0, 989.0, 67.0),
    "a100": Ceilings("A100 SXM 80GB", 2039.0, 312.0, 19.5),
}


def datasheet_for(device_name: str) -> Ceilings | None:
    """The datasheet ceilings for a ``torch.cuda.get_device_name`` string, if we know the part."""
    low = device_name.lower()
    for key, c in DATASHEET.items():
        if key in low:
            return c
    return None


@dataclasses.dataclass(frozen=True)
class Cost:
    """What one op (or a sum of ops) must do: bytes moved, FLOPs, and its floor on given ceilings."""

    name: str
    bytes: int = 0
    flops: int = 0

    def floor_us(self, ceil: Ceilings, precision: str) -> float:
        return 1e6 * max(self.bytes / (ceil.bandwidth_gbps * 1e9), self.flops / ceil.rate(precision))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


# ----------------------------------------------------------------------------- the Triton kernels
def kernel_cost(name: str, args: tuple) -> Cost:
    """Bytes and FLOPs of one Triton launch from its arguments (the launcher's own tensors).

    Bytes: every distinct tensor argument once (inputs read, output written; the head's bias slot
    holds the weight again when there is no bias, counted once). FLOPs: the GEMMs of the head and
    the attention's two products (2 per multiply-add); SFC's sampling is ~60 FLOPs per output value
    (two bilinear samples, the sp one through the fused 4-tap resize, and the gates), on CUDA cores.
    """
    tensors, seen = [], set()
    for a in args:
        if isinstance(a, torch.Tensor) and id(a) not in seen:
            seen.add(id(a))
            tensors.append(a)
    moved = sum(_nbytes(t) for t in tensors)
    short = name.strip("_").replace("_kernel", "")
    if short == "pooled_attention":
        q, k, v = tensors[:3]
        b, d, h, w = q.shape
        s, c = k.shape[2], v.shape[1]
        flops = 2 * b * h * w * s * (d + c)
    elif short.startswith("shuffle_"):
        x, wt = tensors[:2]
        b, cin, h, w = x.shape
        flops = 2 * b * h * w * cin * wt.shape[0]
    elif short == "sfc_fuse":
        flops = 60 * tensors[0].numel()
    else:
        raise KeyError(f"roofline: no cost formula for kernel {name!r}")
    return Cost(short, moved, flops)


# ----------------------------------------------------------------------------- tracing
class _CostMode(TorchDispatchMode):
    """Charges every ATen op the bytes of its tensors (each input read once, each output written
    once) and its FLOPs."""

    # views and metadata: no data moves
    FREE = {"view", "_unsafe_view", "reshape", "permute", "expand", "as_strided", "t", "transpose", "unsqueeze",
            "squeeze", "slice", "select", "alias", "detach", "empty", "empty_like", "empty_strided", "lift_fresh",
            "_to_copy_meta", "split", "split_with_sizes", "unbind", "flatten", "new_empty", "new_empty_strided"}  # fmt: skip

    COMPOSITE = {"conv1d", "conv2d", "linear", "matmul"}

    def __init__(self):
        super().__init__()
        self.ops: list[Cost] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in self.COMPOSITE:
            # inference mode hands these composite ops to the mode whole: decompose them so that
            # their ATen parts (convolution, mm) meet PyTorch's FLOP formulas
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name in self.FREE:
            return out
        ins = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        seen, moved = set(), 0
        for t in ins:  # each input read once, however often it is passed
            if id(t) not in seen:
                seen.add(id(t))
                moved += _nbytes(t)
        moved += sum(_nbytes(t) for t in outs)  # each output written once (in place: read and written)
        fn = flop_counter.flop_registry.get(func.overloadpacket)
        flops = int(fn(*args, **kwargs, out_val=out)) if fn is not None else 0
        self.ops.append(Cost(name, moved, flops))
        return out


def trace_costs(fn, *inputs) -> list[Cost]:
    """Per-op costs of ``fn(*inputs)`` on ``meta`` tensors: the ATen ops, then the recorded Triton
    launches (the order between the two is lost; sums of floors do not need it)."""
    from kernels._common import gpu_launch_config, record_launches

    mode = _CostMode()
    with torch.inference_mode(), record_launches() as launches, gpu_launch_config(), mode:
        fn(*inputs)
    return mode.ops + [kernel_cost(ln.name, ln.args) for ln in launches]


class LiveSet(TorchDispatchMode):
    """The tensors a pass holds at once. Every tensor an ATen op creates counts (its storage's
    bytes) from that op until the last tensor on its storage is freed; tensors made before the
    block (inputs, weights) do not count. ``peak`` is the least memory the pass needs for its
    tensors; ``largest`` the biggest single one (bytes, "op shape dtype"). A workspace a library
    takes and frees inside one op (cuDNN's) is no tensor and is not counted.

    On CUDA, ``cuda_peak`` also samples the caching allocator after every op (relative to the
    start): workspaces are freed by then, so it is the same live set as the allocator holds it
    (each block rounded up to a multiple of 512 B) -- an independent check of ``peak``."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.largest: tuple[int, str] = (0, "")
        self.cuda_peak = 0
        self._held: dict[int, list[int]] = {}  # storage -> [bytes, tensors on it]
        self._base = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0

    def _release(self, key: int) -> None:
        held = self._held[key]
        held[1] -= 1
        if held[1] == 0:
            self.live -= held[0]
            del self._held[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        given = {
            t.untyped_storage()._cdata
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and t.layout == torch.strided
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
                continue  # oneDNN's packed weights (opaque, no storage) are weights, made once
            key = t.untyped_storage()._cdata
            if key in self._held:
                self._held[key][1] += 1
            elif key in given:  # an in-place op or a view of a tensor from before the block
                continue
            else:
                n = t.untyped_storage().nbytes()
                self._held[key] = [n, 1]
                self.live += n
                self.peak = max(self.peak, self.live)
                if n > self.largest[0]:
                    self.largest = (n, f"{func.overloadpacket.__name__} {tuple(t.shape)} {t.dtype}")
            weakref.finalize(t, self._release, key)
            if t.is_cuda:
                self.cuda_peak = max(self.cuda_peak, torch.cuda.memory_allocated() - self._base)
        return out


def live_set(fn, *inputs) -> LiveSet:
    """The live set of ``fn(*inputs)``. On ``meta`` inputs the Triton launches are recorded, not
    run, with the GPU launch configuration and cuDNN's channels-last convolution outputs
    (:class:`kernels.aot.CudnnLayouts`): the memory a GPU pass needs, traced on any machine."""
    from kernels._common import gpu_launch_config, record_launches
    from kernels.aot import CudnnLayouts

    mode = LiveSet()
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        if any(t.device.type == "meta" for t in inputs):
            stack.enter_context(record_launches())
            stack.enter_context(gpu_launch_config())
            stack.enter_context(CudnnLayouts())
        stack.enter_context(mode)
        fn(*inputs)
    return mode


@functools.lru_cache(maxsize=64)
def model_costs(
    kind: str, precision: str, h: int, w: int, *, variant: str = "csfcn", classes: int = 19, batch: int = 1
) -> tuple[Cost, ...]:
    """Per-op costs of one forward pass at (h, w). ``kind``: "twin" (the reference model in
    ``precision``, channels-last unless fp32), "logits" or "labels" (``optimize``'s graph with
    its Triton kernels). Cached: the benchmark asks for the same graph's model and kernel floors."""

    dtype = DTYPES[precision]
    with torch.device("meta"):
        twin = CSFCN(name=variant, num_classes=classes).eval()
    x = torch.empty(batch, 3, h, w, device="meta")
    if kind == "twin":
        fmt = torch.contiguous_format if precision == "fp32" else torch.channels_last
        twin = twin.to(dtype=dtype, memory_format=fmt)
        return tuple(trace_costs(lambda t: twin(t.to(dtype=dtype, memory_format=fmt)), x))
    return tuple(trace_costs(optimize_on_meta(twin, precision, kind), x))


def total(costs: Sequence[Cost], name: str = "total") -> Cost:
    return Cost(name, sum(c.bytes for c in costs), sum(c.flops for c in costs))


def floor_us(costs: Sequence[Cost], ceil: Ceilings, precision: str) -> float:
    """Sum of per-op floors (each op streams its own tensors; ops run one after another)."""
    return sum(c.floor_us(ceil, precision) for c in costs)


def kernel_floors(
    h: int, w: int, precision: str, ceil: Ceilings, *, variant: str = "csfcn", classes: int = 19, batch: int = 1
) -> dict:
    """{kernel name: (Cost, floor µs)} for the kernels of optimize's graph at (h, w)."""
    out = {}
    for kind in ("logits", "labels"):
        for c in model_costs(kind, precision, h, w, variant=variant, classes=classes, batch=batch):
            if c.name in ("pooled_attention", "sfc_fuse", "shuffle_logits", "shuffle_labels"):
                out[c.name] = (c, c.floor_us(ceil, precision))
    return out


# ----------------------------------------------------------------------------- measured ceilings
def measure_ceilings(device: torch.device | str = "cuda") -> Ceilings:
    """Copy bandwidth (256 MiB device-to-device, read + write) and fp16/fp32 matmul rates, measured
    as medians of CUDA-event timings (on a CUDA device; the datasheet is the fallback elsewhere)."""

    device = torch.device(device)

    def timed(fn, n=20, warm=3):
        for _ in range(warm):
            fn()
        torch.cuda.synchronize(device)
        ts = []
        for _ in range(n):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) * 1e-3)
        return statistics.median(ts)

    src = torch.empty(64 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    bw = 2 * _nbytes(src) / timed(lambda: dst.copy_(src)) / 1e9
    n = 8192
    a16 = torch.randn(n, n, device=device, dtype=torch.float16)
    b16 = torch.randn(n, n, device=device, dtype=torch.float16)
    tensor = 2 * n**3 / timed(lambda: a16 @ b16) / 1e12
    m = 4096
    a32 = torch.randn(m, m, device=device)
    b32 = torch.randn(m, m, device=device)
    with tf32(False):
        fp32 = 2 * m**3 / timed(lambda: a32 @ b32, n=10) / 1e12
    name = torch.cuda.get_device_name(device)
    return Ceilings(name, bw, tensor, fp32, source="measured")


# ----------------------------------------------------------------------------- CLI
DEFAULT_SIZES = ((512, 1024), (768, 1536), (1024, 2048), (720, 960))


def prediction_rows(ceil: Ceilings, sizes=DEFAULT_SIZES, precision: str = "fp16", classes: int = 19) -> list[list]:
    """Rows (size, what, MB moved, GFLOP, floor µs, FPS ceiling) for the model variants and kernels."""
    rows = []
    for h, w in sizes:
        for label, kind, prec in (
            ("(a) twin eager fp32", "twin", "fp32"),
            (f"(b) twin {precision} channels-last", "twin", precision),
            (f"(d) optimize {precision} logits", "logits", precision),
            (f"(e) optimize {precision} labels", "labels", precision),
        ):
            costs = model_costs(kind, prec, h, w, classes=classes)
            t, f = total(costs), floor_us(costs, ceil, prec)
            rows.append(
                [f"{h}x{w}", label, f"{t.bytes / 1e6:.1f}", f"{t.flops / 1e9:.1f}", f"{f:.1f}", f"{1e6 / f:.0f}"]
            )
        for name, (c, f) in kernel_floors(h, w, precision, ceil, classes=classes).items():
            rows.append([f"{h}x{w}", f"kernel {name}", f"{c.bytes / 1e6:.2f}", f"{c.flops / 1e9:.2f}", f"{f:.2f}", "-"])
    return rows
