"""Ahead-of-time compile gate: every Triton launch of the fast path, compiled for real GPU targets
without a GPU, with its registers, spills and shared memory.

The command line is ``python -m tools.aot`` (tools/aot.py).

What it compiles is recorded, not written by hand: ``torch_deploy.optimize``'s model is built on
the ``meta`` device and run inside :func:`kernels._common.record_launches` at each input size, for
every precision (fp32/fp16/bf16) and output (logits/labels), with the launchers' own GPU launch
configuration (block sizes, warps, stages, flags), and with the memory layouts a GPU run has:
on ``meta`` a convolution returns NCHW whatever its input, where cuDNN returns channels-last for a
channels-last input or weight, so the trace applies cuDNN's rule (:class:`CudnnLayouts`) and the
kernels see the strides -- and Triton specialises on the strides -- that they get on a GPU. Each distinct specialisation (Triton's own
binder decides: argument dtypes, integer divisibility by 16, constexprs, warps, stages) is then
compiled once per target with ``triton.compile`` for an explicit ``GPUTarget`` -- the compiler
needs no driver -- and the PTX is assembled by the installed Triton's own ``make_cubin`` (its
``ptxas``, its flags), whose verbose report gives registers, stack frame and spill bytes. Checks per compiled kernel:

* it compiles;
* shared memory within the target's per-block limit (sm_80: 163 KiB, sm_90: 227 KiB opt-in);
* zero spill stores and loads (docs/gpu_readiness.md says why this is the bar).

Triton's CPU interpreter (``TRITON_INTERPRET=1``) replaces the kernels by Python functions that
cannot be compiled; the CLI then runs itself again in a child process without it.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import dataclasses
import io
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from tqdm import tqdm

from csfcn.registry import names
from csfcn.tables import markdown_table
from kernels._common import Launch, interpreted

# Per-block shared memory a kernel may use (the opt-in maximum, bytes): A100 (sm_80) and H100/H200
# (sm_90), from CUDA's compute-capability tables; Triton raises OutOfResources above it at load.
TARGETS = {"sm_80": (80, 166912), "sm_90": (90, 232448)}
DEFAULT_SIZES = ((1024, 2048), (712, 1304))  # the benchmark's largest size, and one where nothing divides by 16
PRECISIONS = ("fp32", "fp16", "bf16")
OUTPUTS = ("logits", "labels")
# The models whose fast path launches Triton kernels (csfcn.registry): CSFCN's two, and SFANet
# (its feature alignment runs through sfc_fuse with one group, docs/zoo.md).
VARIANTS = names(triton_kernels=True)


@dataclasses.dataclass
class Job:
    """One distinct specialisation of one kernel for one target, and the cases that launch it."""

    name: str
    target: str
    launch: Launch
    cases: list[str]
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict


@dataclasses.dataclass
class Result:
    name: str
    target: str
    cases: list[str]
    config: str
    num_warps: int
    num_stages: int
    registers: int | None = None
    stack_bytes: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    shared_bytes: int | None = None
    shared_limit: int = 0
    compile_s: float = 0.0
    error: str | None = None

    @property
    def problems(self) -> list[str]:
        if self.error:
            return [f"does not compile: {self.error}"]
        out = []
        if self.shared_bytes > self.shared_limit:
            out.append(f"shared memory {self.shared_bytes} B > {self.shared_limit} B per block")
        if self.spill_stores or self.spill_loads:
            out.append(f"spills {self.spill_stores} B stored / {self.spill_loads} B loaded per thread")
        return out


# ----------------------------------------------------------------------------- recording
_CONVOLUTIONS = ("conv2d", "convolution", "_convolution")  # as the dispatcher shows them, by torch version


def _channels_last(t: torch.Tensor) -> bool:
    """Laid out channels-last and not also plain contiguous (C == 1 or H == W == 1 are both)."""
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


class CudnnLayouts(TorchDispatchMode):
    """On ``meta``, give each convolution's output the layout cuDNN gives it on a GPU: channels-last
    when the input or the weight is channels-last (``cudnn_conv_suggest_memory_format``). The other
    ops' meta kernels already follow their inputs' layout."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        conv = func.overloadpacket.__name__ in _CONVOLUTIONS
        if (
            conv
            and out.device.type == "meta"
            and out.dim() == 4
            and (_channels_last(args[0]) or _channels_last(args[1]))
        ):
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def _jit(kernel):
    if interpreted(kernel):
        raise RuntimeError(
            "kernels.aot: the kernels were imported under TRITON_INTERPRET=1 (Triton's CPU interpreter); "
            "compiling for a GPU target needs them imported without it (the CLI re-runs itself that way)"
        )
    return kernel


def specialise(launch: Launch, cap: int) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) exactly as Triton's launcher would build them for
    ``launch`` on a ``cuda`` target of compute capability ``cap``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    jit = _jit(launch.kernel)
    backend = make_backend(GPUTarget("cuda", cap, 32))
    binder = create_function_from_signature(jit.signature, jit.params, backend)
    try:
        bound, spec, opts = binder(*launch.args, **launch.meta)
        options, signature, constexprs, attrs = jit._pack_args(backend, launch.meta, bound, spec, opts)
    except (AttributeError, TypeError) as e:  # Triton's launcher internals differ between versions
        import triton

        raise RuntimeError(
            f"kernels.aot: Triton {triton.__version__}'s launcher API is not the one expected: {e}"
        ) from e
    return signature, constexprs, attrs, options.__dict__


def plan(recorded: list[tuple[str, Launch]], targets=tuple(TARGETS)) -> list[Job]:
    """One job per distinct (kernel, target, specialisation), listing the cases that share it."""
    jobs: dict[str, Job] = {}
    for case, ln in recorded:
        for tname in targets:
            sig, const, attrs, opts = specialise(ln, TARGETS[tname][0])
            key = repr((ln.name, tname, sorted(sig.items()), sorted(const.items()), sorted(attrs.items()), opts))
            job = jobs.get(key)
            if job is None:
                job = jobs[key] = Job(ln.name, tname, ln, [], sig, const, attrs, opts)
            job.cases.append(case)
    return list(jobs.values())


# ----------------------------------------------------------------------------- compiling
def ptxas_path() -> str:
    import triton

    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    found = bundled if os.path.exists(bundled) else shutil.which("ptxas")
    if not found:
        raise RuntimeError("kernels.aot: no ptxas (Triton's wheel ships one under triton/backends/nvidia/bin)")
    return found


def ptxas_version() -> str:
    out = subprocess.run([ptxas_path(), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release ([0-9.]+)", out)
    return m.group(1) if m else "?"


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_report(ptx: str, cap: int, options: dict) -> dict:
    """Registers, stack frame and spill bytes per thread from ``ptxas -v``, run by the installed
    Triton's own ``make_cubin``: its ptxas and exactly its flags (they differ between Triton
    versions: 3.8 adds ``--regAllocOptLevel=2``, 3.6 does not), none of ours."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend

    backend = make_backend(GPUTarget("cuda", cap, 32))
    opt = backend.parse_options(options)
    log = io.StringIO()
    previous = knobs.nvidia.dump_ptxas_log
    knobs.nvidia.dump_ptxas_log = True
    try:
        with contextlib.redirect_stdout(log):
            backend.make_cubin(ptx, {}, opt, cap)
    finally:
        knobs.nvidia.dump_ptxas_log = previous
    text = log.getvalue()
    used, spill = _PTXAS_USED.search(text), _PTXAS_SPILL.search(text)
    if not (used and spill):
        raise RuntimeError(f"Triton's ptxas log has no register/spill line: {text.strip()[-400:]!r}")
    return {
        "registers": int(used.group(1)),
        "stack_bytes": int(spill.group(1)),
        "spill_stores": int(spill.group(2)),
        "spill_loads": int(spill.group(3)),
    }


def _config_text(meta: dict) -> str:
    return " ".join(
        f"{k}={v}" for k, v in meta.items() if k.startswith("BLOCK") or k in ("IEEE", "DOT_F32", "UPSAMPLE")
    )


_JOBS: list[Job] = []  # read by the forked workers


def _compile(index: int) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    job = _JOBS[index]
    cap, limit = TARGETS[job.target]
    meta = job.launch.meta
    res = Result(
        job.name,
        job.target,
        job.cases,
        _config_text(meta),
        meta.get("num_warps", 4),
        meta.get("num_stages", 3),
        shared_limit=limit,
    )
    t0 = time.perf_counter()
    try:
        src = ASTSource(job.launch.kernel, job.signature, job.constexprs, job.attrs)
        ck = triton.compile(src, target=GPUTarget("cuda", cap, 32), options=job.options)
        res.shared_bytes = int(ck.metadata.shared)
        for k, v in ptxas_report(ck.asm["ptx"], cap, job.options).items():
            setattr(res, k, v)
    except Exception as e:  # reported per kernel, the gate fails on it
        res.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
    res.compile_s = time.perf_counter() - t0
    return res


def compile_all(jobs: list[Job], workers: int | None = None, progress: bool = True) -> list[Result]:
    """Compile every job (in forked worker processes when more than one core is available)."""
    global _JOBS
    _JOBS = jobs
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    bar = None
    if progress:
        bar = tqdm(total=len(jobs), desc="compile", unit="kernel", file=sys.stderr)
    results: list[Result | None] = [None] * len(jobs)
    if workers <= 1:
        for i in range(len(jobs)):
            results[i] = _compile(i)
            bar and bar.update()
    else:
        ctx = multiprocessing.get_context("fork")
        with futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            pending = {pool.submit(_compile, i): i for i in range(len(jobs))}
            for fut in futures.as_completed(pending):
                results[pending[fut]] = fut.result()
                bar and bar.update()
    if bar:
        bar.close()
    return results


# ----------------------------------------------------------------------------- report
def cases_text(cases: list[str]) -> str:
    """The traced cases sharing a specialisation, grouped: 'csfcn,csfcn_tiny fp16 logits,labels 1024x2048'."""
    groups: dict[tuple, list[set]] = {}
    for case in sorted(set(cases)):
        variant, precision, output, size = case.split()
        g = groups.setdefault((precision, size), [set(), set()])
        g[0].add(variant)
        g[1].add(output)
    return "; ".join(
        f"{','.join(sorted(vs))} {p} {','.join(sorted(outs, reverse=True))} {sz}"
        for (p, sz), (vs, outs) in sorted(groups.items())
    )


def table(results: list[Result]) -> str:
    head = ["kernel", "traced cases", "target", "config", "warps", "stages", "regs", "spill st/ld B", "smem KiB", "ok"]
    rows = []
    for r in sorted(results, key=lambda r: (r.name, r.config, cases_text(r.cases), r.target)):
        if r.error:
            rows.append(
                [r.name, cases_text(r.cases), r.target, r.config, r.num_warps, r.num_stages, "-", "-", "-", "FAIL"]
            )
            continue
        smem = f"{r.shared_bytes / 1024:.1f}/{r.shared_limit // 1024}"
        ok = "ok" if not r.problems else "FAIL"
        rows.append(
            [
                r.name.lstrip("_").replace("_kernel", ""),
                cases_text(r.cases),
                r.target,
                r.config,
                r.num_warps,
                r.num_stages,
                r.registers,
                f"{r.spill_stores}/{r.spill_loads}",
                smem,
                ok,
            ]
        )
    return markdown_table(head, rows)
