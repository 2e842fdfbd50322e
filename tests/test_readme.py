"""The docs test: every command of README.md runs, on tiny settings, in the order written.

The README's ``bash`` blocks are split into commands (backslash continuations joined, comments
dropped) and run one after another in a scratch folder that holds what a user would bring: a
Cityscapes-layout dataset and its two official zips, a CamVid folder, an upstream
``CSFCN_best_model.pth``, an ImageNet ``resnet18.pth`` and a video, all tiny and made here.
Each command is run as written, plus only the overrides that make it tiny (:func:`tiny`):
fewer steps, smaller crops and sizes. The ``python`` blocks run as scripts in the same
folder, and the ``summary`` output shown in the README must be what the command prints.

A README command this file does not know how to make tiny fails the test: a new command in the
README needs a line in :func:`tiny`, so the README cannot document something nobody runs.
The make targets: ``make demo`` runs with ``DEMO_FLAGS=--tiny``; ``make lint`` runs; the test
targets (``make test`` is this suite itself, run by ``.ci/run``) run pytest with
``--collect-only``, which checks that their marker expressions select tests.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# What makes a training run tiny: two steps of batch 2 on 32x64 crops of the small CSFCN at a
# small learning rate (so that two runs stay comparable after a step), an evaluation and a
# checkpoint at the end, no worker processes.
TINY_TRAIN = [
    "--config.model.name=csfcn_tiny",
    "--config.train.steps=2",
    "--config.train.batch_size=2",
    "--config.train.warmup_steps=1",
    "--config.train.base_lr=0.001",
    "--config.train.log_every=1",
    "--config.data.crop_size=(32, 64)",
    "--config.data.scale_range=(0.75, 1.25)",
    "--config.data.workers=0",
    "--config.loss.min_kept=500",
    "--config.checkpoint.every=2",
    "--config.eval.every=2",
    "--config.eval.batch_size=2",
    "--no-progress",
]


@dataclass
class Block:
    lang: str
    line: int  # 1-based line of the first line inside the fence
    body: str


@dataclass
class Command:
    line: int
    text: str

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text, comments=True)


def readme_blocks(text: str) -> list[Block]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if m:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            blocks.append(Block(m.group(1), i + 2, "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return blocks


def bash_commands(block: Block) -> list[Command]:
    out, pending, start = [], "", None
    for k, raw in enumerate(block.body.splitlines()):
        if start is None:
            start = block.line + k
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        text = (pending + raw).strip()
        pending = ""
        if text and shlex.split(text, comments=True):
            out.append(Command(start, text))
        start = None
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the workspace
@pytest.fixture(scope="module", autouse=True)
def _no_server_left_behind():
    yield
    while SERVERS:  # a command after the server failed: stop it here
        SERVERS.pop().kill()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """What a user brings, tiny: datasets, the official zips, upstream and ImageNet checkpoints, a video."""
    import imageio.v2 as iio
    import torch
    from torch_checkpoints import random_image, random_model

    from csfcn.model_config import ModelConfig
    from jax_csfcn.data.camvid import write_synthetic_camvid
    from jax_csfcn.data.synthetic import write_synthetic_cityscapes

    ws = tmp_path_factory.mktemp("readme")
    (ws / "configs").symlink_to(ROOT / "configs")
    cs = ws / "data" / "cityscapes"
    write_synthetic_cityscapes(cs, splits={"train": 4, "val": 2, "test": 2}, size=(64, 128), seed=1, progress=False)
    manual = ws / "downloads" / "cityscapes"
    manual.mkdir(parents=True)
    for top, name in (("leftImg8bit", "leftImg8bit_trainvaltest.zip"), ("gtFine", "gtFine_trainvaltest.zip")):
        with zipfile.ZipFile(manual / name, "w") as z:
            for p in sorted((cs / top).rglob("*.png")):
                z.write(p, p.relative_to(cs).as_posix())
    write_synthetic_camvid(ws / "data" / "camvid", splits={"train": 4, "val": 2, "test": 2}, size=(48, 64))
    upstream = random_model(ModelConfig(name="csfcn", num_classes=19), seed=5)
    torch.save(upstream.state_dict(), ws / "CSFCN_best_model.pth")
    imagenet = {k[len("resnet.") :]: v for k, v in upstream.state_dict().items() if k.startswith("resnet.")}
    imagenet |= {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    torch.save(imagenet, ws / "resnet18.pth")
    rng = np.random.default_rng(0)
    w = iio.get_writer(str(ws / "street.mp4"), format="FFMPEG", fps=4, codec="libx264", macro_block_size=1)
    for _ in range(3):
        w.append_data(random_image(rng, 48, 80))
    w.close()
    yield ws
    shutil.rmtree(ws, ignore_errors=True)  # about 1 GB of runs and checkpoints: not kept past the module


def child_env(ws: Path, devices: int | None = None) -> dict:
    """The environment of a README command: CPU only; ``devices`` CPU devices in the process."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("XLA_FLAGS", None)
    if devices is not None:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


# The one-process run that the multi-host pair is compared with (its two commands, the second
# resuming the first) holds as many devices as the two processes together: the comparison is of
# the process count alone. One device against two differs in fp32 by the order of the sums
# (BatchNorm moments, gradients), and after a step that is no longer rounding noise: a ReLU input
# within rounding of zero goes the other way, and the tiny run's step-1 gradient norm moves by
# 1.5 %. Devices are tested against each other in fp64 (tests/test_train.py).
MULTIHOST_REFERENCE = "--config.workdir=runs/csfcn100"
GPU_CHECK_OUT = "gpu_check"  # what the GPU machine's $OUT stands for here
MULTIHOST_DEVICES = 2


# ----------------------------------------------------------------------------- tiny settings
def _replace_size(argv: list[str], flag: str, new: tuple[int, int]) -> list[str]:
    i = argv.index(flag)
    return argv[: i + 1] + [str(new[0]), str(new[1])] + argv[i + 3 :]


def _replace_values(argv: list[str], flag: str, new: list[str]) -> list[str]:
    """``flag``'s values (up to the next --option) replaced by ``new``."""
    i = argv.index(flag) + 1
    j = next((k for k in range(i, len(argv)) if argv[k].startswith("--")), len(argv))
    return [*argv[:i], *new, *argv[j:]]


def tiny(argv: list[str], ws: Path) -> list[str] | None:
    """The README command ``argv`` with the overrides that make it tiny, or None if unknown."""
    if re.match(r"^[A-Z_]+=", argv[0]):
        return None  # no README command sets environment variables
    if argv[:1] == ["make"]:
        target = argv[1]
        make = ["make", "-C", str(ROOT), "--no-print-directory", f"PY={sys.executable}", "STAMP="]
        if target == "demo" and len(argv) == 2:
            flags = f"--tiny --fresh --workdir {ws}/runs/demo --data {ws}/data/synthetic_tiny"
            return [*make, "demo", f"DEMO_FLAGS={flags}"]
        if target == "lint" and len(argv) == 2:
            return [*make, target]
        if target in ("test", "test-slow", "test-gpu") and len(argv) == 2:
            return ["collect-only", *make, target]
        if target == "serve-venv" and len(argv) == 2:  # built by make test already: an up-to-date check
            return [*make, target]
        return None
    if argv[:2] == ["python3", "-m"] and argv[2] == "tools.gpu_check":
        argv = ["python", *argv[1:]]  # the GPU machine's command, written as it is typed there
    if argv[:2] != ["python", "-m"]:
        return None
    mod, rest = argv[2], argv[3:]
    py = [sys.executable, "-m", mod]
    if mod == "jax_csfcn.train":
        extra = list(TINY_TRAIN)
        if any(re.search(r"\.py:(sfanet|mgseg|icnet|bisenetv1|swiftnet)\b", a) for a in rest):
            extra.remove("--config.model.name=csfcn_tiny")  # the zoo model the README names
        if "--config.workdir=runs/csfcn100" in rest and "--resume" not in rest:
            extra.append("--stop-after=1")  # interrupted after step 1, so that the --resume command has work
        if any(a.startswith("--coordinator-address=") for a in rest):
            rest = [a.replace("host0:1234", "localhost:{port}") for a in rest]
        return [*py, *rest, *extra]
    if mod == "tools.tfds_prepare":
        return [*py, *rest, "--download-dir", str(ws / "tfds_downloads")]
    if mod == "tools.synthetic_data":
        rest = list(rest)
        for flag, value in (("--train", "2"), ("--val", "1")):
            rest[rest.index(flag) + 1] = value
        return [*py, *rest, "--size", "32", "64", "--no-progress"]
    if mod == "tools.prepare":
        return [*py, *rest, "--no-progress"]
    if mod == "tools.folder_data":
        return [*py, *rest, "--no-progress"] + (
            ["--size", "48", "64", "--train", "4", "--val", "2"] if "--write-example" in rest else []
        )
    # serving: its own environment (PyTriton pins numpy < 2); the server runs in the background
    # on free ports until the README's commands end, and the clients are pointed at it
    if mod == "torch_deploy.serve" and "--export-repository" in rest:
        return [SERVE_PY, "-m", mod, *rest, "--quiet"]
    if mod == "torch_deploy.serve":
        return ["serve-start", *rest, "--warmup", "32x64"]
    if mod == "torch_deploy.predict" and "--server" in rest:
        return [SERVE_PY, "-m", mod, *rest, "--quiet"]
    if mod == "tools.benchmark_serve":
        for flag, value in (("--sizes", ["32x64"]), ("--clients", ["2"]), ("--requests", ["2"])):
            rest = _replace_values(rest, flag, value)
        return [SERVE_PY, "-m", mod, *rest, "--batching", "dynamic", "--protocols", "grpc", "--quiet"]
    if mod in ("tools.evaluate", "tools.official_eval", "convert", "torch_deploy.predict"):
        return [*py, *rest]
    if mod == "tools.accuracy":
        return [
            *py,
            *rest,
            "--paths",
            "twin,optimize-fp32,optimize-int8,onnxruntime",
            "--calibration-images",
            "2",
            "--quiet",
        ]
    if mod == "tools.export_onnx":
        return [*py, *(_replace_size(rest, "--size", (64, 128)) if "--size" in rest else rest)]
    if mod == "tools.accuracy_speed":  # CSFCN alone, on the demo's tiny scenes (its compiled step)
        extra = ["--tiny", "--models", "csfcn", "--workdir", str(ws / "runs/accuracy_speed_tiny")]
        return [*py, *rest, *extra, "--repeats", "1", "--warmup", "0"]
    if mod == "torch_deploy.benchmark":
        return [*py, *_replace_size(rest, "--size", (32, 64)), "--repeats", "1", "--warmup", "0", "--threads", "1"]
    if mod == "tools.aot":
        return [*py, *rest, "--no-progress"]  # the sizes of tests/test_aot.py: Triton's disk cache has them
    if mod == "tools.roofline":
        return [*py, *rest, "--size", "64", "128"]
    if mod == "tools.gpu_check":
        # no GPU here: the dry run on CPU, its cheap sections; tests/test_gpu_check.py runs every section
        rest = [GPU_CHECK_OUT if a == "$OUT" else a for a in rest]  # $OUT: the folder that comes back
        return [*py, *rest, "--dry-run", "--skip", "tests,training,benchmark,models"]
    if mod == "tools.benchmark_train" and rest[:1] == ["train"]:
        rest = _replace_size(rest, "--size", (32, 64))
        rest[rest.index("--batch") + 1] = "2"
        rest[rest.index("--repeats") + 1] = "1"
        return [*py, *rest, "--warmup", "0", "--variant", "csfcn_tiny"]
    return None


# The commands run inside this test's process (their ``main(argv)``, in the scratch folder, output
# captured): a child process would spend ~3 s importing JAX, Flax and PyTorch for each, ~2 of the
# README's 11 minutes. Those that need a process of their own stay children: a different device
# count or several processes (multi-host), TensorFlow (tfds), a process pool (tools.aot), the
# official evaluator (module-level state), the demo and the long tools that train several models.
IN_PROCESS = {
    "convert": "convert.__main__",
    "torch_deploy.predict": "tools.predict",
    "tools.export_onnx": "tools.export_onnx",
    "torch_deploy.benchmark": "tools.benchmark",
    "tools.accuracy": "tools.accuracy",
    "tools.roofline": "tools.roofline",
    "tools.evaluate": "tools.evaluate",
    "tools.synthetic_data": "tools.synthetic_data",
    "tools.folder_data": "tools.folder_data",
    "tools.prepare": "tools.prepare",
    "jax_csfcn.train": "tools.train",
}


def run_in_process(module: str, argv: list[str], ws: Path) -> subprocess.CompletedProcess:
    """``module.main(argv[3:])`` with the scratch folder as working directory, as a finished process."""
    import contextlib
    import importlib
    import io

    import torch

    out, err = io.StringIO(), io.StringIO()
    cwd, threads = os.getcwd(), torch.get_num_threads()
    try:
        os.chdir(ws)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = importlib.import_module(module).main(argv[3:])
                rc = rc if isinstance(rc, int) else 0
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)  # the benchmark's --threads
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


# (relative to the repository; not resolved: a venv's python is a symbolic link that must stay one)
SERVE_PY = str(ROOT / os.environ.get("CSFCN_SERVE_PYTHON", ".serve-venv/bin/python"))
SERVERS: list = []  # the README's server, running while the commands after it run


def start_server(argv: list[str], ws: Path) -> subprocess.CompletedProcess:
    from tools.benchmark_serve import ServerProcess

    rest = argv[1:]
    ckpt = rest[rest.index("--checkpoint") + 1]
    rest = rest[: rest.index("--checkpoint")] + rest[rest.index("--checkpoint") + 2 :]
    outputs = [a for a in rest if a in ("labels", "probabilities", "logits")]  # --outputs: wait for each
    server = ServerProcess(ws / ckpt, ws / "server.log", rest, python=SERVE_PY, models=outputs or ["labels"])
    SERVERS.append(server)
    return subprocess.CompletedProcess(argv, 0, "", "")


def _point_at_server(argv: list[str]) -> list[str]:
    """A client's --server URL -> the running README server's port for that protocol."""
    if "--server" not in argv or not SERVERS:
        return argv
    i = argv.index("--server") + 1
    url = argv[i]
    argv = list(argv)
    argv[i] = SERVERS[-1].grpc if url.startswith("grpc://") else SERVERS[-1].http
    return argv


def run(cmd: Command, argv: list[str], ws: Path) -> subprocess.CompletedProcess:
    where = f"README.md line {cmd.line}: {cmd.text}\nran: {shlex.join(argv)}"
    if argv[0] == "serve-start":
        return start_server(argv, ws)
    argv = _point_at_server(argv)
    if argv[0] == "collect-only":
        dry = subprocess.run(argv[1:] + ["-n"], capture_output=True, text=True, cwd=ws)
        assert dry.returncode == 0, f"{where}\n{dry.stdout}{dry.stderr}"
        pytest_lines = [ln for ln in dry.stdout.splitlines() if " -m pytest" in ln]
        assert pytest_lines, f"{where}\nthe target runs no pytest:\n{dry.stdout}"
        for ln in pytest_lines:
            proc = subprocess.run(ln + " --collect-only -q", shell=True, capture_output=True, text=True, cwd=ROOT)
            assert proc.returncode == 0, f"{where}\n{ln}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            counts = [int(n) for n in re.findall(r"^\S+\.py: (\d+)$", proc.stdout, re.M)]
            counts += [int(n) for n in re.findall(r"^(\d+)(?:/\d+)? tests? collected", proc.stdout, re.M)]
            assert sum(counts) > 0, f"{where}\n{ln} selects no test:\n{proc.stdout[-1500:]}"
        return dry
    devices = MULTIHOST_DEVICES if "jax_csfcn.train" in argv and MULTIHOST_REFERENCE in argv else None
    if argv[:2] == [sys.executable, "-m"] and argv[2] in IN_PROCESS and devices is None:
        proc = run_in_process(IN_PROCESS[argv[2]], argv, ws)
    else:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=ws, env=child_env(ws, devices), timeout=900)
    assert proc.returncode == 0, f"{where}\nexit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def run_pair(cmds: list[Command], argvs: list[list[str]], ws: Path) -> None:
    """The multi-host commands: every process at once, on localhost."""
    port = str(free_port())
    procs = [
        subprocess.Popen(
            [a.replace("{port}", port) for a in argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ws,
            env=child_env(ws),
        )
        for argv in argvs
    ]
    for cmd, p in zip(cmds, procs):
        out, err = p.communicate(timeout=900)
        assert p.returncode == 0, (
            f"README.md line {cmd.line}: {cmd.text}\nexit {p.returncode}\n{out[-2000:]}\n{err[-4000:]}"
        )


# ----------------------------------------------------------------------------- checks of results
def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def check_after(cmd: Command, proc, ws: Path) -> None:
    """What each kind of command must have produced, beyond a zero exit code."""
    argv = cmd.argv
    text = cmd.text
    if "jax_csfcn.train" in text:
        wd = ws / next(a.split("=", 1)[1] for a in argv if a.startswith("--config.workdir="))
        steps = [r["step"] for r in _metrics(wd) if "loss" in r]
        stopped = "--config.workdir=runs/csfcn100" in argv and "--resume" not in argv
        assert steps == ([1] if stopped else [1, 2]), (cmd.line, steps)
        assert stopped or (wd / "eval.json").is_file() and (wd / "curves.png").is_file()
    elif "tools.evaluate" in text and "--json" in argv:
        scores = json.loads((ws / argv[argv.index("--json") + 1]).read_text())
        assert 0.0 <= scores["miou"] <= 1.0 and scores["images"] == 2
        assert len(list((ws / argv[argv.index("--dump-dir") + 1]).iterdir())) == 2
    elif "tools.official_eval" in text:
        ours = json.loads((ws / "scores.json").read_text())["miou"]  # the evaluate --json run above
        official = float(re.search(r"official Cityscapes evaluator: mIoU ([0-9.]+)", proc.stdout).group(1))
        assert abs(official - ours) <= 6e-5, (official, ours)
    elif text.startswith("python -m convert"):
        out = ws / argv[4].rstrip("/")
        assert out.exists(), out
    elif "torch_deploy.predict" in text:
        out = ws / argv[argv.index("--out") + 1]
        pngs = list(out.rglob("*.png"))
        if "cityscapes-submission" in argv:
            assert sorted(p.name for p in pngs) == sorted(
                p.name for p in (ws / "data/cityscapes/leftImg8bit/test").rglob("*.png")
            )
        elif argv[argv.index("--input") + 1].endswith(".mp4"):
            assert (out / "street_overlay.mp4").stat().st_size > 0 and (out / "legend.png").is_file()
        else:
            assert (out / "legend.png").is_file() and len(
                [p for p in pngs if "labels" in p.relative_to(out).parts]
            ) >= 2
    elif "tools.export_onnx" in text:
        assert (ws / argv[argv.index("--out") + 1]).stat().st_size > 100_000
    elif "tools.benchmark_train train" in text:
        rows = json.loads((ws / argv[argv.index("--json") + 1]).read_text())["train"]["rows"]
        assert len(rows) == 3 and all(r["runs"] == 1 and r["median_ms"] > 0 for r in rows.values())
        # JAX and the PyTorch twin start from the same converted weights and batch: same first loss
        jax_loss = next(r["first_step_loss"] for k, r in rows.items() if k.startswith("jax "))
        assert 1.0 < jax_loss < 10.0
        for k, r in rows.items():
            np.testing.assert_allclose(r["first_step_loss"], jax_loss, rtol=2e-3, err_msg=k)
    elif "tools.aot" in text:
        assert "84/84 compiled kernels pass" in proc.stdout and "sm_90" in proc.stdout
    elif "tools.roofline" in text:
        assert "H200" in proc.stdout and "(e) optimize fp16 labels" in proc.stdout
    elif "tools.gpu_check" in text:
        out = ws / argv[argv.index("--out") + 1].replace("$OUT", GPU_CHECK_OUT)
        report = json.loads((out / "gpu_check.json").read_text())
        ran = {k for k, v in report["sections"].items() if v["status"] == "ok"}
        assert ran == {"environment", "ceilings"}, report["sections"]
        assert (out / "gpu_check.md").is_file() and "python3 -m tools.gpu_check" in (out / "gpu_check.md").read_text()
    elif "torch_deploy.benchmark" in text and "--model" in argv:  # every model side by side
        for name in ("csfcn", "sfanet", "mgseg", "icnet", "bisenetv1", "swiftnet"):
            assert f"{name} twin fp32" in proc.stdout and f"{name} fast fp32" in proc.stdout, (
                name,
                proc.stdout[-3000:],
            )
    elif "torch_deploy.benchmark" in text:
        only = set(argv[argv.index("--only") + 1].split(",")) if "--only" in argv else {"a", "u", "i", "o"}
        rows = {"a": "a  reference eager fp32", "u": "u  upstream protocol", "i": "i  onnxruntime int8"}
        rows |= {"o": "o  onnxruntime fp32", "q": "q  optimize int8 labels"}
        for key in only & set(rows):  # the CPU rows (q, i, o): ONNX Runtime is in the test extra
            assert rows[key] in proc.stdout, (key, proc.stdout[-3000:])
        if "--json" in argv:
            report = json.loads((ws / argv[argv.index("--json") + 1]).read_text())
            assert {r["variant"] for r in report["models"]} >= {"a", "u"}


def check_summary_block(blocks: list[Block], ws: Path) -> int:
    """The ``$ python -m tools.summary ...`` text block equals what the command prints."""
    n = 0
    for b in blocks:
        lines = b.body.splitlines()
        if b.lang != "text" or not lines or not lines[0].startswith("$ python -m "):
            continue
        argv = shlex.split(lines[0][2:])
        assert argv[2] == "tools.summary", f"README.md line {b.line}: unknown shown command {lines[0]}"
        proc = subprocess.run(
            [sys.executable, *argv[1:]], capture_output=True, text=True, cwd=ws, env=child_env(ws), timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        shown = [ln.rstrip() for ln in lines[1:]]
        printed = [ln.rstrip() for ln in proc.stdout.strip().splitlines()]
        assert printed == shown, f"README.md line {b.line}: the summary shown differs from its output:\n{proc.stdout}"
        n += 1
    return n


def test_every_readme_command_runs(ws):
    blocks = readme_blocks(README.read_text())
    commands = [c for b in blocks if b.lang == "bash" for c in bash_commands(b)]
    assert len(commands) >= 25, [c.text for c in commands]
    # every command is known before anything runs: a missing rule fails fast, naming the line
    plans = []
    for c in commands:
        argv = tiny(c.argv, ws)
        assert argv is not None, f"README.md line {c.line}: no tiny setting for {c.text!r}; add one to tiny()"
        plans.append((c, argv))
    assert plans[0][0].text.startswith("make demo") and plans[1][0].text.startswith("make test"), (
        "the README must open with the two set-up commands"
    )
    python_blocks = {b.line: b for b in blocks if b.lang == "python"}
    seen = set()
    pending_pair: list = []
    for c, argv in plans:
        # the python blocks run once the commands above them have made their files
        for line in sorted(k for k in python_blocks if k < c.line):
            run_python_block(python_blocks.pop(line), ws)
        if any("{port}" in a for a in argv):
            pending_pair.append((c, argv))
            if len(pending_pair) == 2:
                run_pair([p[0] for p in pending_pair], [p[1] for p in pending_pair], ws)
                pending_pair = []
            continue
        if tuple(c.argv) in seen:  # the same command again (make test: set-up and Development)
            continue
        seen.add(tuple(c.argv))
        t0 = time.perf_counter()
        proc = run(c, argv, ws)
        check_after(c, proc, ws)
        print(f"README line {c.line}: {time.perf_counter() - t0:.1f} s  {c.text[:70]}", flush=True)
    assert not pending_pair, f"README.md line {pending_pair[0][0].line}: a multi-host command without its partner"
    for line in sorted(python_blocks):
        run_python_block(python_blocks.pop(line), ws)
    assert len(SERVERS) == 1, "the README's Serving section starts one server"
    rc, _ = SERVERS.pop().terminate()  # SIGTERM: a graceful stop, status 0
    assert rc == 0, (ws / "server.log").read_text()[-3000:]
    # two processes train what one process trains (the csfcn100 run: same config and data, and
    # stopped after step 1 then resumed, on MULTIHOST_DEVICES devices): each process feeds its
    # shard of the global batch, BN statistics and gradients are over the global batch, so with
    # the same devices the computation is the same and losses and final weights agree exactly
    multihost = ws / "runs" / "multihost"
    one = {r["step"]: r for r in _metrics(ws / "runs" / "csfcn100") if "loss" in r}
    two = {r["step"]: r for r in _metrics(multihost) if "loss" in r}
    assert sorted(two) == sorted(one) == [1, 2]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose([two[s][key] for s in (1, 2)], [one[s][key] for s in (1, 2)], rtol=1e-6)
    from test_train import params_rel_l2

    assert params_rel_l2(ws / "runs" / "csfcn100", multihost) < 1e-6
    assert sorted(p.name for p in (multihost / "checkpoints" / "2" / "loader").glob("process_*.json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
    assert check_summary_block(blocks, ws) == 1


def run_python_block(block: Block, ws: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-"], input=block.body, capture_output=True, text=True, cwd=ws, env=child_env(ws), timeout=600
    )
    assert proc.returncode == 0, f"README.md python block at line {block.line}:\n{block.body}\n{proc.stderr[-4000:]}"


def test_readme_parsing_and_unknown_commands_fail(tmp_path):
    """The parser joins continuations and drops comments; a command with no tiny rule is refused."""
    text = "x\n```bash\npython -m convert a b   # note\npython -m jax_csfcn.train --config c \\\n    --resume\n\n```\n"
    blocks = readme_blocks(text)
    cmds = bash_commands(blocks[0])
    assert [(c.line, c.argv) for c in cmds] == [
        (3, ["python", "-m", "convert", "a", "b"]),
        (4, ["python", "-m", "jax_csfcn.train", "--config", "c", "--resume"]),
    ]
    assert tiny(["python", "-m", "some.new_tool", "--x"], tmp_path) is None
    assert tiny(["pip", "install", "csfcn"], tmp_path) is None
    assert tiny(["make", "deploy"], tmp_path) is None
    assert shutil.which("make"), "make is needed by the README's set-up commands"
