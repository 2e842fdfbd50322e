"""Inference speed of CSFCN: the reference twin against ``torch_deploy.optimize``, side by side.

    python -m torch_deploy.benchmark                          # all protocol sizes on a GPU
    python -m torch_deploy.benchmark --classes 11 --size 720 960 --json camvid.json
    python -m torch_deploy.benchmark --size 512 1024          # on CPU: the CPU variants
    python -m torch_deploy.benchmark --model all --size 512 1024   # every model (tools/compare.py)

Protocol (docs/architecture.md, "Benchmark protocol"): batch 1, random weights (speed does not depend on them), every variant
warmed up, then timed in interleaved rounds (one call of each variant per round, so a noisy
machine slows all of them alike); median and spread (min..max, p10..p90) per variant. GPU:
CUDA events around each call. Variants:

  a  reference twin, eager fp32 (on a GPU with TF32 off: true fp32, the baseline of the ratios)
  t  the same with TF32 convolutions, torch's default on a GPU (GPU only)
  u  the upstream speed script's protocol: the twin in eager fp32 with every BatchNorm folded
     into its conv (upstream ``models/speed/CSFCN_speed.py`` times batch 1 in fp32 with the
     BatchNorms commented out); compare the upstream's published FPS with this row
  b  reference twin, eager fp16, channels-last
  c  torch.compile(mode="max-autotune") of the reference in fp16, channels-last
  d  torch_deploy.optimize, fp16 logits (Triton kernels, CUDA graph)
  e  torch_deploy.optimize, fp16 labels

and on CPU, what CPU users would pick instead (torch_deploy/cpu_peers.py), all labels out:

  f  torch_deploy.optimize, bf16 labels (only where the CPU computes bf16 natively)
  q  torch_deploy.optimize, int8 labels (oneDNN int8 convolutions, torch_deploy/quantize.py)
  i  ONNX Runtime int8: its static quantization of our ONNX (QDQ, the onnx extra)
  o  onnxruntime fp32 on our ONNX export (the onnx extra)
  v  OpenVINO fp32 on the same ONNX (the openvino extra)
  w  OpenVINO bf16 (INFERENCE_PRECISION_HINT=bf16; native bf16 CPUs only)
  x  OpenVINO int8: OpenVINO running the quantized ONNX of (i) (both extras)

The int8 rows are calibrated on random inputs here (speed does not depend on the values;
accuracy is measured by tools.accuracy on real images).

plus each Triton kernel against the PyTorch ops it replaces, with achieved GB/s (bytes the op
must read and write at least, over its median time). On a GPU every model and kernel time is
printed next to its roofline floor (torch_deploy/roofline.py: bytes over the measured copy
bandwidth or FLOPs over the measured matmul rate, per op) and the measured/floor ratio. On CPU the variants are (a) and
``optimize`` in fp32 on the reference ops, logits and labels; the script prints which GPU
variants it skipped and why.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from csfcn.files import write_atomic
from csfcn.model_config import MODEL_NAMES, STEMS, VARIANTS
from csfcn.tables import markdown_table
from kernels._common import tf32
from tools.compare import compare, parse_models, table
from torch_deploy.cpu_caps import cpu_caps
from torch_deploy.cpu_peers import OnnxPeer, peer_missing
from torch_deploy.model import CSFCN, pyramid_pool, sfc_sample_and_gate
from torch_deploy.optimize import optimize, remove_bn
from torch_deploy.precision import refusal
from torch_deploy.roofline import DATASHEET, datasheet_for, floor_us, kernel_floors, measure_ceilings, model_costs

VARIANT_KEYS = ("a", "t", "u", "b", "c", "d", "e", "f", "q", "i", "o", "v", "w", "x")
CPU_PEER_KEYS = ("f", "q", "i", "o", "v", "w", "x")
GPU_SIZES = [(512, 1024), (768, 1536), (1024, 2048), (720, 960)]
CPU_SIZES = [(512, 1024)]


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m torch_deploy.benchmark",
        description=__doc__.split("\n\n")[0] + " See docs/architecture.md, 'Benchmark protocol'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--classes", type=int, default=19, help="number of classes K (19 Cityscapes, 11 CamVid)")
    p.add_argument(
        "--size",
        nargs=2,
        type=int,
        action="append",
        metavar=("H", "W"),
        help="input size; repeat for several (default: 512x1024 768x1536 1024x2048 720x960 on GPU, 512x1024 on CPU)",
    )
    p.add_argument(
        "--model",
        "--variant",
        dest="model",
        default="csfcn",
        help="csfcn (default) or csfcn_tiny: their variants below; 'all' or a comma list of model names "
        f"({', '.join(MODEL_NAMES)}): every model side by side (tools/compare.py)",
    )
    p.add_argument("--stem", default="torchvision", choices=STEMS, help="backbone stem")
    p.add_argument("--batch", type=int, default=1, help="batch size (the protocol uses 1)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per variant (default 10 GPU, 2 CPU)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 100 GPU, 10 CPU)")
    p.add_argument("--precision", default="fp16", choices=("fp16", "bf16"), help="precision of (b)-(e) on GPU")
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated subset of variants a,t,u,b,c,d,e,f,q,i,o,v,w,x to run, e.g. 'a,d,e'",
    )
    p.add_argument("--no-compile", action="store_true", help="skip (c): max-autotune compilation takes minutes")
    p.add_argument(
        "--compile-mode",
        default="max-autotune",
        choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
        help="torch.compile mode of (c) (default max-autotune; reduce-overhead compiles in about a minute)",
    )
    p.add_argument(
        "--ceilings",
        default="measured",
        choices=("measured", "h200", "h100", "a100"),
        help="roofline ceilings: measured on the GPU (default) or a datasheet part's; a datasheet part also "
        "prints floors on CPU runs (a check of the code path, not a CPU floor)",
    )
    p.add_argument("--no-kernels", action="store_true", help="skip the per-kernel timings")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    args = p.parse_args(argv)
    try:
        args.models = parse_models(args.model)
    except ValueError as e:
        p.error(str(e))
    args.variant = args.models[0]
    if args.classes < 1:
        p.error("--classes must be >= 1")
    for h, w in args.size or []:
        if h < 8 or w < 8:
            p.error(f"--size {h} {w}: both sides must be >= 8")
    return args


# ----------------------------------------------------------------------------- timing
class Timer:
    """One call timed with CUDA events (GPU) or perf_counter (CPU), in milliseconds."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3


def stats(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=10) if len(times) >= 2 else [times[0]] * 9
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "p10_ms": q[0],
        "p90_ms": q[-1],
        "runs": len(times),
    }


def run_interleaved(fns: dict, timer: Timer, warmup: int, repeats: int) -> dict:
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    if timer.cuda:
        torch.cuda.synchronize()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timer(fn))
    return {k: stats(v) for k, v in times.items()}


# ----------------------------------------------------------------------------- model variants
def call_with_tf32(model, x, enabled: bool):
    """``model(x)`` with cuDNN's and cuBLAS's TF32 switched on or off, restored afterwards. torch
    allows TF32 in convolutions by default: an "fp32" row timed that way is a 10-bit-mantissa one."""
    with tf32(enabled):
        return model(x)


def model_variants(args, device: torch.device, only: set[str]):
    """(runnable variants {label: (key, fn-of-x)}, skipped {label: reason})."""

    torch.manual_seed(0)
    twin = CSFCN(name=args.variant, num_classes=args.classes, stem=args.stem).eval().to(device)
    run, skipped = {}, {}
    lp = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]

    def want(key):
        return key in only

    if want("a"):
        if device.type == "cuda":
            run["a  reference eager fp32, TF32 off"] = ("a", lambda x: call_with_tf32(twin, x, False))
        else:
            run["a  reference eager fp32"] = ("a", lambda x: twin(x))
    if want("t"):
        if device.type == "cuda":
            run["t  reference eager fp32, TF32 convolutions"] = ("t", lambda x: call_with_tf32(twin, x, True))
        else:
            skipped["t  reference eager fp32, TF32 convolutions"] = "TF32 is a GPU format"
    if want("u"):
        no_bn = remove_bn(twin)
        run["u  upstream protocol: eager fp32, BN folded"] = ("u", lambda x: no_bn(x))
    if device.type == "cuda":
        if want("b"):
            half = copy.deepcopy(twin).to(dtype=lp, memory_format=torch.channels_last)
            run[f"b  reference eager {args.precision} channels-last"] = (
                "b",
                lambda x: half(x.to(dtype=lp, memory_format=torch.channels_last)),
            )
        if want("c"):
            if args.no_compile:
                skipped[f"c  torch.compile {args.compile_mode}"] = "--no-compile"
            else:
                comp_model = copy.deepcopy(twin).to(dtype=lp, memory_format=torch.channels_last)
                comp = torch.compile(comp_model, mode=args.compile_mode)
                run[f"c  torch.compile {args.compile_mode} {args.precision}"] = (
                    "c",
                    lambda x: comp(x.to(dtype=lp, memory_format=torch.channels_last)),
                )
        if want("d"):
            fd = optimize(twin, args.precision, "logits")
            run[f"d  optimize {args.precision} logits"] = ("d", fd)
        if want("e"):
            fe = optimize(twin, args.precision, "labels")
            run[f"e  optimize {args.precision} labels"] = ("e", fe)
        for key in CPU_PEER_KEYS:
            if want(key):
                skipped[f"{key}  CPU variant"] = "times CPU inference: run with --device cpu"
    else:
        reason = "needs a CUDA GPU (fp16 convolutions and Triton kernels are GPU features)"
        for key, label in (
            ("b", f"b  reference eager {args.precision} channels-last"),
            ("c", f"c  torch.compile {args.compile_mode} {args.precision}"),
        ):
            if want(key):
                skipped[label] = reason
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the one-time CPU notice: this table says it instead
            if want("d"):
                fd = optimize(twin, "fp32", "logits")
                run["d' optimize fp32 logits (reference ops, CPU)"] = ("d", fd)
            if want("e"):
                fe = optimize(twin, "fp32", "labels")
                run["e' optimize fp32 labels (reference ops, CPU)"] = ("e", fe)
        if want("d") or want("e"):
            skipped["d/e optimize fp16 with Triton kernels"] = (
                "needs a CUDA GPU; run on CPU as fp32 reference ops (d', e')"
            )
        cpu_peer_variants(twin, want, run, skipped)
    return run, skipped


def cpu_peer_variants(twin, want, run: dict, skipped: dict) -> None:
    """(f, q) optimize bf16 and int8 labels and the ONNX Runtime / OpenVINO peers (i, o, v, w, x)
    into ``run``, or the reason each is skipped into ``skipped``."""
    why = refusal("bf16", "cpu")  # torch_deploy.precision decides
    bf16 = why is None
    if want("f"):
        if bf16:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                native = cpu_caps().verdict("bf16").why  # what the CPU has, for the label
                run[f"f  optimize bf16 labels ({native})"] = ("f", optimize(twin, "bf16", "labels"))
        else:
            skipped["f  optimize bf16 labels"] = why
    calibration = [torch.randn(1, 3, 64, 128, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    if want("q"):
        int8_refused = refusal("int8", "cpu")
        if int8_refused is None:
            bits = cpu_caps().int8_bits
            run[f"q  optimize int8 labels (oneDNN int8 convolutions, {bits}-bit activations)"] = (
                "q",
                optimize(twin, "int8", "labels", calibration=calibration),
            )
        else:
            skipped["q  optimize int8 labels"] = int8_refused
    for key, runtime, precision in (
        ("i", "onnxruntime", "int8"),
        ("o", "onnxruntime", "fp32"),
        ("v", "openvino", "fp32"),
        ("w", "openvino", "bf16"),
        ("x", "openvino", "int8"),
    ):
        if not want(key):
            continue
        label = f"{key}  {runtime} {precision} labels (our ONNX)"
        gone = peer_missing(runtime) or (precision == "int8" and peer_missing("onnxruntime"))
        if gone:
            skipped[label] = gone
        elif precision == "bf16" and not bf16:
            skipped[label] = why
        else:
            run[label] = (key, OnnxPeer(twin, runtime, precision, calibration if precision == "int8" else None))


# ----------------------------------------------------------------------------- kernels
def kernel_cases(args, h: int, w: int, device: torch.device, dtype: torch.dtype):
    """[(name, kernel fn, PyTorch-ops fn, roofline kernel name)] at the shapes the model gives for an
    (h, w) input. The bytes each must move come from torch_deploy.roofline (the same tensors)."""
    from kernels.pooled_attention import pooled_attention, pooled_attention_reference
    from kernels.sfc_fuse import sfc_fuse
    from kernels.shuffle_head import shuffle_head

    g = torch.Generator(device="cpu").manual_seed(0)
    cl = torch.channels_last
    b = args.batch
    h8, w8, h32, w32 = h // 8, w // 8, -(-h // 32), -(-w // 32)

    def rnd(*shape, scale=1.0):
        return (torch.randn(shape, generator=g) * scale).to(device=device, dtype=dtype)

    cases = []
    cp = rnd(b, 128, h8, w8).contiguous(memory_format=cl)
    sp32 = rnd(b, 128, h32, w32).contiguous(memory_format=cl)
    r = rnd(b, 10, h8, w8, scale=2.0).contiguous(memory_format=cl)

    def sfc_torch():
        sp = F.interpolate(sp32, (h8, w8), mode="bilinear", align_corners=True)
        return sfc_sample_and_gate(cp, sp, r)

    cases.append(("sfc_fuse (1/32 resize fused)", lambda: sfc_fuse(cp, sp32, r), sfc_torch, "sfc_fuse"))

    if args.variant == "csfcn":
        k = args.classes
        x = rnd(b, 128, h8, w8).contiguous(memory_format=cl)
        wt = rnd(k * 64, 128, scale=128**-0.5)
        bias = rnd(k * 64)
        w4 = wt.reshape(k * 64, 128, 1, 1)
        cases.append(
            (
                f"shuffle_head logits K={k}",
                lambda: shuffle_head(x, wt, bias),
                lambda: F.pixel_shuffle(F.conv2d(x, w4, bias), 8),
                "shuffle_logits",
            )
        )
        cases.append(
            (
                f"shuffle_head labels K={k}",
                lambda: shuffle_head(x, wt, bias, output="labels"),
                lambda: F.pixel_shuffle(F.conv2d(x, w4, bias), 8).argmax(1).to(torch.uint8),
                "shuffle_labels",
            )
        )
    feat = rnd(b, 256, h32, w32)
    s = pyramid_pool(feat).shape[2]
    q = rnd(b, 32, h32, w32).contiguous(memory_format=cl)
    key = rnd(b, 32, s, scale=0.3)
    val = rnd(b, 256, s)
    cases.append(
        (
            f"pooled_attention S={s}",
            lambda: pooled_attention(q, key, val),
            lambda: pooled_attention_reference(q, key, val),
            "pooled_attention",
        )
    )
    return cases


# the traced work of each variant: (roofline kind, precision or None for the --precision one)
_FLOOR_KIND = {
    "a": ("twin", "fp32"),
    "t": ("twin", "fp32"),
    "u": ("twin", "fp32"),
    "b": ("twin", None),
    "c": ("twin", None),
}
_FLOOR_KIND.update({"d": ("logits", None), "e": ("labels", None)})


def model_floor_ms(key: str, args, h: int, w: int, ceil, gpu: bool = True) -> float:
    """Roofline floor (ms) of variant ``key`` at (h, w): the sum of its ops' floors (torch_deploy.roofline).
    (u) and (c) are charged the twin's ops (BN folding and compiler fusion are what they may save)."""

    if key not in _FLOOR_KIND:  # the CPU peers: no roofline model
        return None
    kind, prec = _FLOOR_KIND[key]
    prec = prec or (args.precision if gpu else "fp32")  # the CPU variants d', e' run in fp32
    costs = model_costs(kind, prec, h, w, variant=args.variant, classes=args.classes, batch=args.batch)
    return floor_us(costs, ceil, prec) / 1e3


# ----------------------------------------------------------------------------- report
def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = None
    return v


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)

    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def cpu_report(device: torch.device) -> dict | None:
    """On CPU: print what this CPU runs (torch_deploy/cpu_caps.py) and return it for the JSON."""
    if device.type == "cuda":
        return None
    caps = cpu_caps()
    print(caps.describe())
    return caps.as_dict()


def print_table(headers, rows):
    print(markdown_table(headers, rows))


def compare_main(args, device, sizes, timer, warmup: int, repeats: int, argv) -> int:
    """``--model all`` / a list: every model under one protocol (tools/compare.py)."""
    print(
        f"device: {device_name(device)}; {versions()}; timing: {'CUDA events' if timer.cuda else 'time.perf_counter'}, "
        f"{warmup} warm-up, {repeats} interleaved rounds; models: {', '.join(args.models)}; K={args.classes}"
    )
    cpu = cpu_report(device)
    rows = compare(args.models, sizes, args.classes, device, timer, warmup, repeats, run_interleaved)
    headers, body = table(rows)
    print_table(headers, body)
    if args.json:
        report = {
            "command": "python -m torch_deploy.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
            "device": device_name(device),
            "cpu": cpu,
            "versions": versions(),
            "warmup": warmup,
            "repeats": repeats,
            "comparison": rows,
        }
        write_json(args.json, report)
    return 0


def main(argv=None) -> int:
    args = _parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    sizes = [tuple(s) for s in args.size] if args.size else (GPU_SIZES if gpu else CPU_SIZES)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    repeats = args.repeats if args.repeats is not None else (100 if gpu else 10)
    only = set((args.only or ",".join(VARIANT_KEYS)).replace(" ", "").split(","))
    if only - set(VARIANT_KEYS):
        print(
            f"--only {args.only}: unknown variant(s) {sorted(only - set(VARIANT_KEYS))}; choose from {', '.join(VARIANT_KEYS)}",
            file=sys.stderr,
        )
        return 2
    timer = Timer(device)
    if len(args.models) > 1 or args.variant not in VARIANTS:
        return compare_main(args, device, sizes, timer, warmup, repeats, argv)
    ceil = sheet = None

    if args.ceilings != "measured":
        ceil = sheet = DATASHEET[args.ceilings]
    elif gpu:
        ceil = measure_ceilings(device)
        sheet = datasheet_for(torch.cuda.get_device_name(device))
    report = {
        "command": "python -m torch_deploy.benchmark " + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device_name(device),
        "versions": versions(),
        "model": {"name": args.variant, "classes": args.classes, "stem": args.stem, "batch": args.batch},
        "warmup": warmup,
        "repeats": repeats,
        "timing": "CUDA events" if gpu else "time.perf_counter",
        "models": [],
        "kernels": [],
        "skipped": {},
    }
    if ceil is not None:
        report["ceilings"] = {"used": dataclasses.asdict(ceil), "datasheet": sheet and dataclasses.asdict(sheet)}
        print(
            f"roofline ceilings ({ceil.source}): copy {ceil.bandwidth_gbps:.0f} GB/s, fp16 matmul {ceil.tensor_tflops:.0f} "
            f"TFLOP/s, fp32 matmul {ceil.fp32_tflops:.1f} TFLOP/s"
            + (f"; datasheet {sheet.name}: {sheet.bandwidth_gbps:.0f} GB/s, {sheet.tensor_tflops:.0f}" if sheet else "")
        )
    print(
        f"device: {report['device']}; {report['versions']}; timing: {report['timing']}, {warmup} warm-up, "
        f"{repeats} interleaved rounds"
    )
    report["cpu"] = cpu_report(device)
    with torch.inference_mode():
        variants, skipped = model_variants(args, device, only)
        report["skipped"].update(skipped)
        rows = []
        for h, w in sizes:
            x = torch.randn(args.batch, 3, h, w, device=device)
            fns = {label: (lambda fn=fn: fn(x)) for label, (_, fn) in variants.items()}
            res = run_interleaved(fns, timer, warmup, repeats)
            base = next((res[lbl]["median_ms"] for lbl, (key, _) in variants.items() if key == "a"), None)
            for label, (key, _) in variants.items():
                st = res[label]
                speed = f"{base / st['median_ms']:.2f}x" if base else "-"
                floor = model_floor_ms(key, args, h, w, ceil, gpu) if ceil else None
                rows.append(
                    [
                        f"{h}x{w}",
                        label,
                        f"{st['median_ms']:.2f}",
                        f"{st['min_ms']:.2f}..{st['max_ms']:.2f}",
                        f"{st['p10_ms']:.2f}..{st['p90_ms']:.2f}",
                        f"{1e3 * args.batch / st['median_ms']:.1f}",
                        speed,
                        f"{floor:.3f}" if floor else "-",
                        f"{st['median_ms'] / floor:.1f}x" if floor else "-",
                    ]
                )
                report["models"].append({"size": [h, w], "variant": key, "label": label, **st, "floor_ms": floor})
        print(f"\nWhole model, {args.variant} K={args.classes}, batch {args.batch}:")
        print_table(
            ["size", "variant", "median ms", "min..max", "p10..p90", "FPS", "vs (a)", "floor ms", "of floor"], rows
        )
        if not ceil:
            report["skipped"]["roofline floors"] = "floors are computed against a GPU's measured ceilings"

        if args.no_kernels:
            report["skipped"]["per-kernel timings"] = "--no-kernels"
        elif not gpu:
            report["skipped"]["per-kernel timings"] = (
                "Triton kernels need a CUDA GPU; on CPU they only run under the interpreter, which is not a timing path"
            )
        else:
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]

            bw = ceil.bandwidth_gbps
            report["copy_bandwidth_GBps"] = bw
            krows = []
            for h, w in sizes:
                floors = kernel_floors(
                    h, w, args.precision, ceil, variant=args.variant, classes=args.classes, batch=args.batch
                )
                for name, kfn, tfn, rname in kernel_cases(args, h, w, device, dtype):
                    res = run_interleaved({"kernel": kfn, "torch": tfn}, timer, warmup, repeats)
                    k_ms, t_ms = res["kernel"]["median_ms"], res["torch"]["median_ms"]
                    cost, kernel_floor_us = floors[rname]
                    moved, floor_ms = cost.bytes, kernel_floor_us / 1e3
                    gbps = moved / (k_ms * 1e-3) / 1e9
                    krows.append(
                        [
                            f"{h}x{w}",
                            name,
                            f"{k_ms:.4f}",
                            f"{res['kernel']['min_ms']:.4f}..{res['kernel']['max_ms']:.4f}",
                            f"{t_ms:.4f}",
                            f"{t_ms / k_ms:.2f}x",
                            f"{gbps:.0f}",
                            f"{100 * gbps / bw:.0f}%",
                            f"{floor_ms * 1e3:.2f}" if floor_ms else "-",
                            f"{k_ms / floor_ms:.1f}x" if floor_ms else "-",
                        ]
                    )
                    report["kernels"].append(
                        {
                            "size": [h, w],
                            "op": name,
                            "kernel": res["kernel"],
                            "torch": res["torch"],
                            "bytes": moved,
                            "GBps": gbps,
                            "floor_ms": floor_ms,
                        }
                    )
            print(f"\nKernels ({args.precision}) vs the PyTorch ops they replace; copy bandwidth {bw:.0f} GB/s:")
            print_table(
                [
                    "size",
                    "op",
                    "kernel ms",
                    "min..max",
                    "torch ms",
                    "speed-up",
                    "GB/s",
                    "of copy",
                    "floor us",
                    "of floor",
                ],
                krows,
            )
    if report["skipped"]:
        print("\nSkipped:")
        for k, v in report["skipped"].items():
            print(f"  {k}: {v}")
    if args.json:
        write_json(args.json, report)
    return 0


def write_json(path, report: dict) -> None:
    """The report as JSON, complete or absent (csfcn/files.py)."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    print(f"\nJSON written to {path}")


if __name__ == "__main__":
    from csfcn.cli import run_main

    run_main(main)  # Ctrl-C / SIGTERM: one line, nothing partial (csfcn/cli.py)
