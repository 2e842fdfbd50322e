"""One prepared GPU check: everything a first GPU run must settle, in one call of a few minutes.

    python3 -m tools.gpu_check --out "$OUT"               # on a machine with an NVIDIA GPU
    python3 -m tools.gpu_check --out /tmp/gc --dry-run    # every code path on CPU, tiny sizes

It runs with a GPU machine's preinstalled Python (torch, triton, jax with CUDA, flax, optax,
numpy, safetensors, pytest): no ``make``, no virtualenv, no network, and none of grain,
ml_collections or TensorFlow. A missing optional package is named and its section skipped.
``make gpu-rehearsal`` runs it (``--dry-run``) in an environment built like that machine's first.

Sections, in order of what a short run must not lose (:data:`SECTIONS`: each has an estimate and
its own time limit; a section whose limit would end past ``--budget-s`` is not started, and says
so; ``gpu_check.json`` and ``gpu_check.md`` with the final table are rewritten after each):

1. environment: device, driver, CUDA, library versions; ceilings: copy bandwidth and matmul
   rates measured beside the datasheet's;
2. kernel tests on the GPU (every kernel against its reference at the GPU launch configuration)
   and the ``-m gpu`` tests of ``optimize`` (CUDA graphs, parity, labels-mode peak memory);
3. the headline benchmark (``torch_deploy.benchmark``) at 1024x2048: (a) eager fp32 with TF32
   off, (t) the same with TF32 (torch's default for convolutions), (b) eager fp16 channels-last,
   (c) ``torch.compile`` reduce-overhead, (d) optimize fp16 logits, (e) optimize fp16 labels;
   each kernel against the ops it replaces; every time beside its roofline floor;
4. training: the JAX step (bf16 compute) against the PyTorch twin's (AMP bf16, channels-last;
   same loss and optimizer), crop 1024x1024, batch 12, images/s; then the input path: the
   loader's host work per image (resampling tables and parameter draws of 1024x2048 records),
   the device-side geometry + blur + colour jitter alone (and its output against the host
   pipeline's, which must be bit-identical), and the same step with them inside
   (``tools.benchmark_input.step_with_device_augment``);
5. compiled kernels: registers, spills and shared memory of the kernels this process loaded;
6. every model of docs/zoo.md at 1024x2048; the benchmark at 512x1024 without (c).

Writes ``DIR/gpu_check.json`` (everything), ``DIR/gpu_check.md`` (the tables) and the pieces'
own outputs (``benchmark_HxW.json``, ``tests_*.log``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import traceback

import torch

from csfcn.extras import MissingExtra, missing
from csfcn.files import write_atomic
from tools import benchmark as bench
from torch_deploy.roofline import DATASHEET, datasheet_for, measure_ceilings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPTIONAL = ("triton", "jax", "flax", "optax", "numpy", "safetensors", "pytest")
# Targets on one H100/H200 at 1024x2048, batch 1 (docs/gpu_readiness.md)
TARGET_FPS = {"e": 1500.0, "d": 1200.0}
# (section, estimate s, limit s) on one H100/H200, in run order (docs/gpu_readiness.md, section 4,
# derives each estimate). The limits bound the run: their sum past the budget only means the
# last sections are not started when earlier ones use their whole limit.
SECTIONS = (
    ("environment", 5, 30),
    ("ceilings", 10, 30),
    ("kernel tests", 45, 90),
    ("gpu tests", 30, 75),
    ("benchmark 1024x2048", 100, 150),
    ("training", 60, 100),
    ("input", 45, 90),
    ("compiled kernels", 1, 10),
    ("models 1024x2048", 30, 60),
    ("benchmark 512x1024", 20, 45),
)
DRY_RUN_LIMIT_SCALE = 6.0  # on CPU the kernels run under Triton's interpreter


class SectionTimeout(Exception):
    pass


@dataclasses.dataclass
class Plan:
    device: str
    sizes: list
    warmup: int
    repeats: int
    train_batch: int
    train_crop: tuple
    train_repeats: int
    kernel_tests: list  # pytest arguments
    gpu_tests: list
    ceilings: str  # benchmark --ceilings
    compile_mode: str


def make_plan(dry_run: bool) -> Plan:
    if dry_run:
        return Plan(
            device="cpu",
            sizes=[(64, 128), (32, 64)],
            warmup=0,
            repeats=1,
            train_batch=2,
            train_crop=(64, 64),
            train_repeats=1,
            kernel_tests=["tests/test_kernels.py", "-k", "gpu_launch_config"],
            gpu_tests=["tests/test_optimize.py", "-m", "gpu"],
            ceilings="h200",
            compile_mode="reduce-overhead",
        )
    return Plan(
        device="cuda",
        sizes=[(1024, 2048), (512, 1024)],
        warmup=10,
        repeats=50,
        train_batch=12,
        train_crop=(1024, 1024),
        train_repeats=5,
        kernel_tests=["tests/test_kernels.py"],
        gpu_tests=["tests/test_optimize.py", "-m", "gpu"],
        ceilings="measured",
        compile_mode="reduce-overhead",
    )


class Check:
    """Runs the sections, keeps their results and the time budget."""

    def __init__(self, out: str, plan: Plan, budget_s: float, dry_run: bool):
        self.out, self.plan, self.budget_s, self.dry_run = out, plan, budget_s, dry_run
        self.t0 = time.perf_counter()
        self.report: dict = {"dry_run": dry_run, "sections": {}, "plan": dataclasses.asdict(plan)}
        self.argv = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def limit(self, key: str) -> float:
        """The time limit of the :data:`SECTIONS` entry ``key`` (scaled on a CPU dry run)."""
        lim = {n: lim for n, _, lim in SECTIONS}[key]
        return lim * (DRY_RUN_LIMIT_SCALE if self.dry_run else 1.0)

    def section(self, name: str, fn, limit_s: float) -> None:
        """Run ``fn()`` as section ``name`` for at most ``limit_s`` seconds, unless that could end
        past the budget; then rewrite gpu_check.json and gpu_check.md."""
        entry = {"status": "skipped", "seconds": 0.0, "limit_s": round(limit_s)}
        self.report["sections"][name] = entry
        left = self.budget_s - self.elapsed()
        if limit_s > left:
            entry["reason"] = f"may take {limit_s:.0f} s, {left:.0f} s of the {self.budget_s:.0f} s budget left"
            print(f"\n== {name}: skipped ({entry['reason']})", flush=True)
            self.save()
            return
        print(f"\n== {name} (t = {self.elapsed():.0f} s, limit {limit_s:.0f} s)", flush=True)
        t = time.perf_counter()

        def expire(signum, frame):
            raise SectionTimeout(f"stopped at its {limit_s:.0f} s limit")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, limit_s)
        try:
            result = fn()
            entry.update(status="ok", result=result)
        except MissingExtra as e:
            entry.update(status="skipped", reason=str(e))
            print(f"   skipped: {e}", flush=True)
        except SectionTimeout as e:
            entry.update(status="timeout", error=str(e))
            print(f"   TIMEOUT: {e}", flush=True)
        except Exception as e:  # one failing section must not lose the others
            entry.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
            print(f"   ERROR: {type(e).__name__}: {e}", flush=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        entry["seconds"] = round(time.perf_counter() - t, 1)
        self.save()

    def save(self) -> None:
        """gpu_check.json (everything so far) and gpu_check.md (the final table so far), each whole."""
        rows = final_rows(self.report)
        self.report["final"] = rows
        self.report["seconds"] = round(self.elapsed(), 1)
        text = json.dumps(self.report, indent=2, default=str)
        md = self.header() + "\n\n" + markdown(rows) + "\n"
        for fname, body in (("gpu_check.json", text), ("gpu_check.md", md)):

            def write(tmp: str, body=body) -> None:
                with open(tmp, "w") as f:
                    f.write(body)

            write_atomic(os.path.join(self.out, fname), write)

    def header(self) -> str:
        env = self.report.get("environment", {})
        pk = env.get("packages", {})
        return (
            f"GPU check on {env.get('device', '?')} (torch {env.get('torch')}, triton {pk.get('triton')}, "
            f"jax {pk.get('jax')}); {self.elapsed():.0f} s; command: python3 -m tools.gpu_check {self.argv}"
        )


def need(*names: str) -> None:
    """Skip the section (:class:`MissingExtra`) when a package it needs is not installed."""
    gone = missing(names)
    if gone:
        raise MissingExtra(f"needs {', '.join(gone)} (not installed in this Python: {sys.executable})")


# ----------------------------------------------------------------------------- sections
def environment(plan: Plan) -> dict:

    env = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "packages": {},
    }
    gone = missing(OPTIONAL)
    for name in OPTIONAL:
        if name in gone:
            env["packages"][name] = None
            print(f"   optional package missing: {name} (the sections that need it are skipped)")
        else:
            env["packages"][name] = getattr(importlib.import_module(name), "__version__", "?")
    if plan.device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible to torch; run with --dry-run to check the code paths on CPU")
        props = torch.cuda.get_device_properties(0)
        env["device"] = torch.cuda.get_device_name(0)
        env["capability"] = f"{props.major}.{props.minor}"
        env["memory_GiB"] = round(props.total_memory / 2**30, 1)
        env["sm_count"] = props.multi_processor_count
        try:
            q = "--query-gpu=driver_version,clocks.max.sm,power.limit"
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", q, "--format=csv,noheader"], capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            env["nvidia_smi"] = f"unavailable: {e}"
    else:
        env["device"] = f"CPU {platform.machine()}, {os.cpu_count()} cores (dry run)"
    for k, v in env.items():
        if k != "packages":
            print(f"   {k}: {v}")
    print(f"   packages: {env['packages']}")
    return env


def ceilings(plan: Plan) -> dict:

    if plan.device == "cuda":
        measured = measure_ceilings("cuda")
        sheet = datasheet_for(torch.cuda.get_device_name(0))
    else:
        measured, sheet = None, DATASHEET["h200"]
    out = {"measured": measured and dataclasses.asdict(measured), "datasheet": sheet and dataclasses.asdict(sheet)}
    for k, c in (("measured", measured), ("datasheet", sheet)):
        if c:
            print(
                f"   {k}: {c.name}: copy {c.bandwidth_gbps:.0f} GB/s, fp16 tensor {c.tensor_tflops:.0f} TFLOP/s, "
                f"fp32 {c.fp32_tflops:.1f} TFLOP/s"
            )
    return out


def run_pytest(out: str, label: str, args: list, timeout_s: float) -> dict:
    """pytest in a child process (its own CUDA context), output kept in DIR/tests_<label>.log."""
    need("pytest")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if env.get("CSFCN_GPU_CHECK_DEVICE") == "cpu":
        env.setdefault("TRITON_INTERPRET", "1")
    # the interpreter's own flags (e.g. -S) carry over to the child
    cmd = [
        sys.executable,
        *subprocess._args_from_interpreter_flags(),
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rfEs",
        *args,
    ]
    t = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, text = res.returncode, res.stdout + res.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else str(e)
    with open(os.path.join(out, f"tests_{label}.log"), "w") as f:
        f.write(text)
    counts = re.compile(r"\d+ (passed|failed|skipped|deselected|errors?)\b")
    summary = next((ln for ln in reversed(text.strip().splitlines()) if counts.search(ln)), text.strip()[-200:])
    print(f"   {' '.join(args)}: rc {rc}; {summary.strip('= ')}")
    failed = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    for ln in failed[:20]:
        print(f"   {ln}")
    # rc 5: nothing collected/selected (e.g. no gpu tests on a CPU dry run) is not a failure
    return {
        "rc": rc,
        "passed": rc in (0, 5),
        "summary": summary.strip("= "),
        "failed": failed,
        "seconds": time.perf_counter() - t,
    }


def compiled_kernels() -> list:
    """Registers / spills / shared memory of the kernels this process compiled and loaded (CUDA)."""
    need("triton")
    import kernels.pooled_attention as pa
    import kernels.sfc_fuse as sf
    import kernels.shuffle_head as sh

    rows = []
    for jit in (pa._pooled_attention_kernel, sf._sfc_fuse_kernel, sh._shuffle_logits_kernel, sh._shuffle_labels_kernel):
        caches = getattr(jit, "device_caches", None) or getattr(jit, "cache", None) or {}
        for dev, cache in caches.items():
            compiled = cache[0] if isinstance(cache, tuple) else cache
            for kern in compiled.values():
                meta = getattr(kern, "metadata", None)
                rows.append(
                    {
                        "kernel": jit.fn.__name__,
                        "device": str(dev),
                        "registers": getattr(kern, "n_regs", None),
                        "spills": getattr(kern, "n_spills", None),
                        "shared_bytes": getattr(meta, "shared", None),
                        "num_warps": getattr(meta, "num_warps", None),
                        "num_stages": getattr(meta, "num_stages", None),
                    }
                )
    for r in rows:
        print(
            f"   {r['kernel']}: regs {r['registers']}, spills {r['spills']}, smem {r['shared_bytes']}, "
            f"warps {r['num_warps']}, stages {r['num_stages']}"
        )
    if not rows:
        print("   no compiled kernels in this process (CPU dry run, or this Triton keeps its cache elsewhere)")
    return rows


def benchmark(plan: Plan, out: str, size: tuple, only: str) -> dict:
    """``torch_deploy.benchmark`` at one size: the variants in ``only``, each kernel, roofline floors."""

    h, w = size
    path = os.path.join(out, f"benchmark_{h}x{w}.json")
    argv = ["--json", path, "--warmup", str(plan.warmup), "--repeats", str(plan.repeats), "--device", plan.device]
    argv += ["--ceilings", plan.ceilings, "--compile-mode", plan.compile_mode, "--only", only]
    return _run_benchmark(plan, argv + ["--size", str(h), str(w)], path)


def _run_benchmark(plan: Plan, argv: list, path: str) -> dict:
    """``torch_deploy.benchmark`` in this process with ``argv`` (one thread on CPU); its JSON."""
    if plan.device == "cpu":
        argv = [*argv, "--threads", "1"]
    rc = bench.main(argv)
    if rc:
        raise RuntimeError(f"torch_deploy.benchmark {' '.join(argv)} exited {rc}")
    with open(path) as f:
        return json.load(f)


def zoo_comparison(plan: Plan, out: str, size: tuple) -> dict:
    """``torch_deploy.benchmark --model all`` at one size: every model of docs/zoo.md side by side."""
    h, w = size
    path = os.path.join(out, f"models_{h}x{w}.json")
    argv = ["--model", "all", "--json", path, "--warmup", str(plan.warmup), "--repeats", str(plan.repeats)]
    return _run_benchmark(plan, argv + ["--device", plan.device, "--size", str(h), str(w)], path)


def train(plan: Plan) -> dict:
    need("jax", "flax", "optax")
    if plan.device == "cuda":
        torch.cuda.empty_cache()  # the benchmark's cached blocks go back before JAX allocates
    from tools.benchmark_train import bench_train  # lazy: the JAX side, after the PyTorch checks

    res = bench_train(
        plan.train_repeats,
        batch=plan.train_batch,
        size=plan.train_crop,
        warmup=1,
        dtype="bfloat16",
        torch_amp=True,
        device=plan.device,
        torch_layouts=("channels_last",),
        min_kept=None if plan.device == "cuda" else 100,
    )
    for name, r in res["rows"].items():
        print(
            f"   {name}: {r['images_per_s']:.2f} img/s (median {r['median_ms']:.1f} ms), first loss {r['first_step_loss']:.4f}"
        )
    return res


def input_path(plan: Plan) -> dict:
    need("jax", "flax", "optax")
    from tools.benchmark_input import step_with_device_augment  # lazy: the JAX side, after the PyTorch checks

    source = (1024, 2048) if plan.device == "cuda" else (64, 128)
    res = step_with_device_augment(
        batch=plan.train_batch,
        crop=plan.train_crop,
        source_hw=source,
        repeats=plan.train_repeats,
        min_kept=None if plan.device == "cuda" else 100,
    )
    print(
        f"   host {res['host_ms_per_image']['median']:.1f} ms/img, device geometry + blur + jitter "
        f"{res['device_augment_ms_per_image']['median']:.3f} ms/img, step with it {res['step_ms']['median']:.1f} ms "
        f"({res['images_per_s']:.1f} img/s)"
    )
    return res


# ----------------------------------------------------------------------------- final table
def final_rows(report: dict) -> list[list[str]]:
    rows = []
    secs = report["sections"]
    for name, s in secs.items():
        rows.append(["section", name, s["status"], f"{s['seconds']:.0f} s", s.get("reason") or s.get("error", "")[:80]])
    tests = [secs.get(k, {}).get("result") for k in ("kernel tests", "gpu tests")]
    for label, t in zip(("kernel tests", "gpu tests"), tests):
        if t:
            rows.append(["tests", label, "pass" if t["passed"] else "FAIL", "", t["summary"][:80]])
    benches = [s["result"] for n, s in secs.items() if n.startswith("benchmark") and s.get("result")]
    bench = None
    if benches:
        bench = dict(benches[0])
        bench["models"] = [m for b in benches for m in b["models"]]
        bench["kernels"] = [k for b in benches for k in b.get("kernels", [])]
    if bench:
        by = {(tuple(m["size"]), m["variant"]): m for m in bench["models"]}
        for m in bench["models"]:
            fps = 1e3 / m["median_ms"]
            floor = m.get("floor_ms")
            extra = f"floor {floor:.3f} ms, {m['median_ms'] / floor:.1f}x" if floor else ""
            rows.append(
                [
                    "model",
                    f"{m['size'][0]}x{m['size'][1]} {m['label'].strip()}",
                    f"{m['median_ms']:.3f} ms",
                    f"{fps:.0f} FPS",
                    extra,
                ]
            )
        big = (1024, 2048)
        for key, fps_target in TARGET_FPS.items():
            m = by.get((big, key))
            if m:
                fps = 1e3 / m["median_ms"]
                ok = "met" if fps >= fps_target and not report["dry_run"] else "not met"
                rows.append(["target", f"({key}) >= {fps_target:.0f} FPS at 1024x2048", ok, f"{fps:.0f} FPS", ""])
        a, c, d = by.get((big, "a")), by.get((big, "c")), by.get((big, "d"))
        if a and d:
            ratio = a["median_ms"] / d["median_ms"]
            rows.append(["target", "(d) >= 10x (a)", "met" if ratio >= 10 else "not met", f"{ratio:.1f}x", ""])
        if c and d:
            ratio = c["median_ms"] / d["median_ms"]
            rows.append(["target", "(d) >= 1.5x (c)", "met" if ratio >= 1.5 else "not met", f"{ratio:.2f}x", ""])
        bw = bench.get("copy_bandwidth_GBps")
        for k in bench.get("kernels", []):
            speed = k["torch"]["median_ms"] / k["kernel"]["median_ms"]
            floor = k.get("floor_ms")
            rows.append(
                [
                    "kernel",
                    f"{k['size'][0]}x{k['size'][1]} {k['op']}",
                    f"{k['kernel']['median_ms'] * 1e3:.1f} us",
                    f"{speed:.2f}x torch",
                    f"{k['GBps']:.0f} GB/s ({100 * k['GBps'] / bw:.0f}% of copy)"
                    + (f", {k['kernel']['median_ms'] / floor:.1f}x floor" if floor else ""),
                ]
            )
    for name, sec in secs.items():
        if name.startswith("models") and sec.get("result"):
            for r in sec["result"]["comparison"]:
                rows.append(
                    [
                        "models",
                        f"{r['size'][0]}x{r['size'][1]} {r['variant']}",
                        f"{r['median_ms']:.3f} ms",
                        f"{1e3 / r['median_ms']:.0f} FPS",
                        f"{r['params'] / 1e6:.2f} M params" + (f", {r['gflops']:.1f} GFLOPs" if r["gflops"] else ""),
                    ]
                )
    tr = (secs.get("training") or {}).get("result")
    if tr:
        ips = {n: r["images_per_s"] for n, r in tr["rows"].items()}
        for n, v in ips.items():
            rows.append(
                [
                    "train",
                    n,
                    f"{v:.2f} img/s",
                    "",
                    f"batch {tr['shape']['batch']}, {tr['shape']['height']}x{tr['shape']['width']}",
                ]
            )
        j = next((v for n, v in ips.items() if n.startswith("jax")), None)
        t = next((v for n, v in ips.items() if n.startswith("torch")), None)
        if j and t:
            rows.append(
                [
                    "target",
                    "JAX training >= 1.5x torch",
                    "met" if j / t >= 1.5 and not report["dry_run"] else "not met",
                    f"{j / t:.2f}x",
                    "",
                ]
            )
    inp = (secs.get("input") or {}).get("result")
    if inp:
        note = f"batch {inp['batch']}, {inp['crop'][0]}x{inp['crop'][1]} crops of {inp['source'][0]}x{inp['source'][1]}"
        rows.append(
            ["input", "host per image (tables + draws)", f"{inp['host_ms_per_image']['median']:.2f} ms", "", note]
        )
        rows.append(["input", "device geometry + blur + jitter per image", f"{inp['device_augment_ms_per_image']['median']:.3f} ms",
                     "target <= 2 ms", "met" if inp["device_augment_ms_per_image"]["median"] <= 2.0 and not report["dry_run"] else "not met"])  # fmt: skip
        eq = inp["device_vs_host"]
        rows.append(["input", "device augmentation vs the host's", f"{eq['differing']} of {eq['values']} values differ",
                     "bit-identical", "met" if eq["differing"] == 0 and eq["label_pixels_differing"] == 0 else "not met"])  # fmt: skip
        rows.append(["input", "train step with device augmentation", f"{inp['step_ms']['median']:.1f} ms",
                     f"{inp['images_per_s']:.1f} img/s", note])  # fmt: skip
    return rows


def markdown(rows: list[list[str]]) -> str:
    head = ["kind", "what", "result", "value", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


SKIPPABLE = ("tests", "benchmark", "models", "training")  # the names --skip knows


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tools.gpu_check",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for gpu_check.json, gpu_check.md and logs")
    p.add_argument("--dry-run", action="store_true", help="run every section on CPU at tiny sizes (no GPU needed)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="start no section whose time limit would end past this many seconds (470; a dry run 6x that)",
    )
    p.add_argument(
        "--skip",
        default="",
        help=f"comma-separated sections to skip: {','.join(SKIPPABLE)} (an unknown name is an error)",
    )
    return p.parse_args(argv)


def _bad_flags(args) -> str | None:
    """One line for a --skip name that is no section or an --out that cannot be a folder; else None."""
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    unknown = [s for s in skip if s not in SKIPPABLE]
    if unknown:
        return f"--skip {','.join(unknown)}: no such section; the sections --skip knows are {', '.join(SKIPPABLE)}"
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        return f"--out {args.out}: exists and is not a folder; give a folder for gpu_check.json, gpu_check.md and logs"
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        return f"--out {args.out}: cannot create this folder ({e.strerror or e}); choose another"
    return None


def main(argv=None) -> int:
    args = _parse(argv)
    bad = _bad_flags(args)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    plan = make_plan(args.dry_run)
    if args.dry_run:
        os.environ["CSFCN_GPU_CHECK_DEVICE"] = "cpu"
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # JAX must not reserve most of the GPU before the torch sections and its own step run
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    budget = args.budget_s if args.budget_s is not None else (470.0 * DRY_RUN_LIMIT_SCALE if args.dry_run else 470.0)
    check = Check(args.out, plan, budget, args.dry_run)
    check.argv = " ".join(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, ROOT)
    check.section("environment", lambda: environment(plan), check.limit("environment"))
    check.report["environment"] = (check.report["sections"]["environment"].get("result")) or {}
    if check.report["sections"]["environment"]["status"] != "ok":
        print(check.report["sections"]["environment"].get("error", "environment: not read"), file=sys.stderr)
        return 2
    check.section("ceilings", lambda: ceilings(plan), check.limit("ceilings"))
    # Value first: are the kernels right, the headline numbers, JAX against torch; then the rest.
    (big, small) = plan.sizes
    if "tests" not in skip:
        for name, label, tests in (
            ("kernel tests", "kernels", plan.kernel_tests),
            ("gpu tests", "gpu", plan.gpu_tests),
        ):
            lim = check.limit(name)
            # pytest gets 5 s less than the section, so that its log is kept when it runs over
            check.section(
                name, lambda label=label, tests=tests, lim=lim: run_pytest(args.out, label, tests, lim - 5), lim
            )
    if "benchmark" not in skip:
        check.section(
            f"benchmark {big[0]}x{big[1]}",
            lambda: benchmark(plan, args.out, big, "a,t,b,c,d,e"),
            check.limit("benchmark 1024x2048"),
        )
    if "training" not in skip:
        check.section("training", lambda: train(plan), check.limit("training"))
        check.section("input", lambda: input_path(plan), check.limit("input"))
    if "benchmark" not in skip:
        check.section("compiled kernels", compiled_kernels, check.limit("compiled kernels"))
    if "models" not in skip:
        check.section(
            f"models {big[0]}x{big[1]}", lambda: zoo_comparison(plan, args.out, big), check.limit("models 1024x2048")
        )
    if "benchmark" not in skip:  # torch.compile (c) costs about a minute per input shape: not here
        check.section(
            f"benchmark {small[0]}x{small[1]}",
            lambda: benchmark(plan, args.out, small, "a,b,d,e"),
            check.limit("benchmark 512x1024"),
        )
    check.save()
    print("\n" + check.header())
    print(markdown(check.report["final"]))
    bad = [n for n, s in check.report["sections"].items() if s["status"] in ("error", "timeout")]
    tests_failed = [r for r in check.report["final"] if r[0] == "tests" and r[2] == "FAIL"]
    print(f"\nwritten: {os.path.join(args.out, 'gpu_check.json')}, gpu_check.md; errors in: {bad or 'none'}")
    return 1 if bad or tests_failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
