"""Packages depend one way (docs/architecture.md) and files we write have normal permissions.

* ``csfcn`` (the framework-free layer) imports neither JAX nor torch;
* deploying -- importing ``torch_deploy`` and predicting from a ``.safetensors`` checkpoint --
  loads no JAX, Flax, grain, Orbax or TensorFlow module;
* ``csfcn.files.write_atomic`` leaves complete files with the mode a normal write gives, and
  nothing when the writer fails; an exported model (``python -m convert``) is readable by others.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_STACK = ("jax", "jaxlib", "flax", "optax", "grain", "orbax", "tensorflow", "tensorflow_datasets")


def _child(code: str, tmp_path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout


def test_framework_free_layer_imports_no_framework(tmp_path):
    out = _child(
        "import sys, csfcn.model_config, csfcn.classes, csfcn.palette, csfcn.files\n"
        "print(sorted(m for m in ('jax', 'flax', 'torch') if m in sys.modules))",
        tmp_path,
    )
    assert out.strip() == "[]"


def test_deploy_path_loads_no_training_stack(tmp_path):
    """Write a .safetensors checkpoint and an image, then predict through the CLI's main()."""
    code = f"""
import sys
import numpy as np
from PIL import Image
import torch
import torch_deploy
from convert.formats import write_safetensors
from torch_deploy.model import CSFCN
from tools.predict import main

torch.manual_seed(0)
twin = CSFCN(num_classes=11).eval()
write_safetensors("model.safetensors", twin.config, {{k: v.numpy() for k, v in twin.state_dict().items()}})
Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save("street.png")
rc = main(["--checkpoint", "model.safetensors", "--input", "street.png", "--out", "pred", "--quiet"])
assert rc == 0, rc
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({TRAINING_STACK!r}))
print("LOADED", loaded)
"""
    out = _child(code, tmp_path)
    assert "LOADED []" in out, out
    assert any(p.suffix == ".png" for p in (tmp_path / "pred").rglob("*.png"))


def test_write_atomic_gives_normal_permissions_and_no_partial_file(tmp_path):
    from csfcn.files import write_atomic

    old = os.umask(0o027)
    try:
        path = write_atomic(tmp_path / "sub" / "a.txt", lambda tmp: open(tmp, "w").close())
        assert (os.stat(path).st_mode & 0o777) == 0o640
    finally:
        os.umask(old)
    os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "b.bin", lambda tmp: open(tmp, "wb").close())
        assert (os.stat(path).st_mode & 0o777) == 0o644
    finally:
        os.umask(old)

    def boom(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise RuntimeError("writer died")

    (tmp_path / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="writer died"):
        write_atomic(tmp_path / "keep.txt", boom)
    assert (tmp_path / "keep.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "keep.txt", "sub"]


def test_exported_model_is_readable_by_others(tmp_path):
    import torch

    from convert.formats import write_safetensors
    from torch_deploy.model import CSFCN

    twin = CSFCN(name="csfcn_tiny", num_classes=3)
    old = os.umask(0o022)
    try:
        out = tmp_path / "model.safetensors"
        write_safetensors(out, twin.config, {k: v.numpy() for k, v in twin.state_dict().items()})
        src = tmp_path / "model.pth"
        torch.save(twin.state_dict(), src)
        dst = tmp_path / "again.safetensors"
        res = subprocess.run(
            [sys.executable, "-m", "convert", str(src), str(dst)], cwd=ROOT, capture_output=True, text=True
        )
        assert res.returncode == 0, res.stderr[-2000:]
    finally:
        os.umask(old)
    for p in (out, dst):
        assert (os.stat(p).st_mode & 0o777) == 0o644, oct(os.stat(p).st_mode)


DEPLOY_ONLY_ABSENT = (
    "jax",
    "jaxlib",
    "jax_plugins",
    "flax",
    "optax",
    "orbax",
    "orbax_checkpoint",
    "grain",
    "ml_collections",
    "absl",
    "absl_py",
    "tensorflow",
    "tensorflow_cpu",
    "tensorflow_datasets",
    "tensorflow_io_gcs_filesystem",
    "onnx",
    "onnxscript",
    "onnxruntime",
)


def test_a_deploy_only_install_converts_and_names_the_missing_extras(tmp_path):
    """With only the base dependencies: convert an upstream .pth, and every command of another
    extra says in one line which extra to install (exit 2, no traceback)."""
    import torch
    from isolated_site import site_without

    from torch_deploy.model import CSFCN

    site = site_without(tmp_path / "site", DEPLOY_ONLY_ABSENT)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([site, ROOT])
    torch.save(CSFCN(name="csfcn_tiny", num_classes=3).state_dict(), tmp_path / "up.pth")

    def run(*args):
        return subprocess.run([sys.executable, "-S", *args], cwd=tmp_path, env=env, capture_output=True, text=True)

    res = run("-m", "convert", "up.pth", "model.safetensors")
    assert res.returncode == 0 and (tmp_path / "model.safetensors").is_file(), res.stderr[-2000:]
    res = run("-m", "convert", "model.safetensors", "back.pth")  # and back, byte-for-byte the same tensors
    assert res.returncode == 0, res.stderr[-2000:]
    first, again = torch.load(tmp_path / "up.pth"), torch.load(tmp_path / "back.pth")
    assert list(first) == list(again) and all(torch.equal(first[k], again[k]) for k in first)
    (tmp_path / "a_run").mkdir()  # a training run directory: reading it needs the training extra
    from PIL import Image

    Image.new("RGB", (48, 40)).save(tmp_path / "x.png")
    for argv, extra in (
        (["-m", "torch_deploy.predict", "--checkpoint", "a_run", "--input", "x.png", "--out", "p"], "train"),
        (["-m", "jax_csfcn.train", "--config", "configs/synthetic.py"], "train"),
        (["-m", "tools.evaluate", "--help"], "train"),
        (["-m", "tools.export_onnx", "--checkpoint", "model.safetensors", "--out", "m.onnx"], "onnx"),
        (["-m", "convert", "model.safetensors", "flax_dir"], "train"),
    ):
        res = run(*argv)
        assert res.returncode != 0, (argv, res.stdout)
        assert f"pip install 'csfcn[{extra}]'" in res.stderr, (argv, res.stderr[-2000:])
        assert "Traceback" not in res.stderr and res.returncode == 2, (argv, res.stderr[-2000:])
    res = run("-c", "import jax_csfcn")
    assert "MissingExtra" in res.stderr and "csfcn[train]" in res.stderr


# ----------------------------------------------------------------------------- the import graph
# The folder rule (docs/architecture.md, "Package layering"): commands live in tools/, on top;
# the libraries below import only downward, with no exception for any module. A launcher package
# (a folder holding only __init__.py and __main__.py, e.g. jax_csfcn/train/) keeps a command name
# the project promised (python -m jax_csfcn.train) and runs its tool; nothing imports it.
PACKAGES = ("csfcn", "jax_csfcn", "torch_deploy", "convert", "kernels", "configs", "tools")
LIBRARIES = ("csfcn", "kernels", "jax_csfcn", "torch_deploy", "convert")
# What a module of each package may import from the other packages (bottom to top).
MAY_IMPORT = {
    "csfcn": set(),
    "kernels": {"csfcn"},
    "jax_csfcn": {"csfcn"},
    "torch_deploy": {"csfcn", "kernels"},
    "convert": {"csfcn", "jax_csfcn", "torch_deploy"},
    "configs": {"csfcn", "jax_csfcn"},
    "tools": {"csfcn", "kernels", "jax_csfcn", "torch_deploy", "convert", "configs"},
}
# Function-level imports are kept for what an install may lack, each for a reason:
OPTIONAL = {
    "triton": "the triton extra; Triton reads TRITON_INTERPRET when first imported",
    "kernels": "imports Triton (above)",
    "tensorflow": "the tfds extra",
    "tensorflow_datasets": "the tfds extra",
    "jax_csfcn.data.tfds_cityscapes": "the tfds extra",
    "onnx": "the onnx extra",
    "onnxruntime": "the onnx extra",
    "onnxscript": "the onnx extra",
    "pytriton": "the serve extra (an environment of its own: PyTriton pins numpy < 2)",
    "tritonclient": "the serve extra",
    "triton_python_backend_utils": "provided by Triton's Python backend, only inside a tritonserver",
    "absl": "grain's flags, read only when grain starts workers",
    **dict.fromkeys(
        ("grain", "orbax", "ml_collections", "cityscapesscripts", "tensorboardX", "matplotlib"),
        "not needed by the model, the train step and its benchmark (isolated_site.TRAIN_STEP_NEEDS_NONE_OF), "
        "which run on a GPU machine without a package registry",
    ),
}
# ... and a tool's or the bridge's imports of the other side (only installed where it is used).
OTHER_SIDE = {"jax", "flax", "torch", "jax_csfcn", "torch_deploy", "convert"}


def _launchers() -> set[str]:
    """The launcher packages: folders of a library holding only __init__.py and __main__.py."""
    found = set()
    for pkg in LIBRARIES:
        for main in Path(ROOT, pkg).rglob("__main__.py"):
            if sorted(p.name for p in main.parent.iterdir() if p.suffix == ".py") == ["__init__.py", "__main__.py"]:
                found.add(".".join(main.parent.relative_to(ROOT).parts))
    return found


def _modules() -> dict[str, str]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted(Path(ROOT, pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = str(path)
    return mods


def _imports(path: str):
    """(imported module, function-level?, line, source line) of every import statement."""
    text = Path(path).read_text()
    lines = text.splitlines()
    tree = ast.parse(text)
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]  # the package itself: implicit
        else:
            continue
        for name in names:
            yield name, id(node) in in_function, node.lineno, lines[node.lineno - 1]


def _project_module(name: str, mods) -> str | None:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in mods:
            return ".".join(parts[:i])
    return None


def test_packages_depend_one_way_with_no_import_cycle():
    mods, launchers = _modules(), _launchers()
    assert launchers == {"jax_csfcn.train", "torch_deploy.predict", "torch_deploy.benchmark", "torch_deploy.serve"}, (
        launchers
    )
    graph, wrong_way = {m: set() for m in mods}, []
    for mod, path in mods.items():
        pkg = mod.split(".")[0]
        launcher = mod.removesuffix(".__main__") in launchers
        for name, _, line, _ in _imports(path):
            target = _project_module(name, mods)
            if target is None or target == mod:
                continue
            graph[mod].add(target)
            other = target.split(".")[0]
            if launcher and (target == "csfcn.cli" or other == "tools"):
                continue  # a launcher runs its tool (and nothing imports a launcher: below)
            if any(target == t or target.startswith(t + ".") for t in launchers):
                wrong_way.append(f"{path}:{line} imports the launcher {target}")
            elif other != pkg and other not in MAY_IMPORT[pkg]:
                wrong_way.append(f"{path}:{line} imports {target}")
    assert not wrong_way, "modules importing the wrong way:\n" + "\n".join(wrong_way)
    # no cycle: a depth-first search finds no edge back to a module on the current path
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                cycles.append(" -> ".join([*stack[stack.index(t) :], t]))
            elif t not in state:
                visit(t, [*stack, t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_function_level_imports_are_optional_dependencies_each_with_a_reason():
    mods = _modules()
    unexplained = []
    for mod, path in mods.items():
        for name, in_function, line, source in _imports(path):
            if not in_function:
                continue
            top = name.split(".")[0]
            if any(name == k or name.startswith(k + ".") for k in OPTIONAL):
                continue
            if top in OTHER_SIDE and top != mod.split(".")[0] and mod.split(".")[0] in ("tools", "convert"):
                continue
            if "# lazy:" in source or "# optional:" in source:  # the reason is on the line
                continue
            unexplained.append(f"{path}:{line}: {source.strip()}")
    assert not unexplained, "function-level imports without a reason (move them to the top):\n" + "\n".join(
        sorted(set(unexplained))
    )


def _has_main_block(path: str) -> bool:
    return any(
        isinstance(n, ast.If) and "__name__" in ast.unparse(n.test) and "__main__" in ast.unparse(n.test)
        for n in ast.parse(Path(path).read_text()).body
    )


def test_commands_live_in_tools_and_launchers_only_launch():
    """No library module is a command (a ``__main__`` block); a launcher's __init__.py is a
    docstring and its __main__.py imports only csfcn.cli and one tool."""
    mods, launchers = _modules(), _launchers()
    commands = [
        path
        for mod, path in mods.items()
        if not mod.startswith("tools.") and not path.endswith("__main__.py") and _has_main_block(path)
    ]
    assert not commands, f"commands outside tools/ (move them there): {commands}"
    for launcher in sorted(launchers):
        init = ast.parse(Path(mods[launcher]).read_text())
        assert len(init.body) == 1 and isinstance(init.body[0].value, ast.Constant), f"{launcher}/__init__.py"
        used = {_project_module(n, mods) for n, *_ in _imports(mods[launcher + ".__main__"])}
        tools_used = {u for u in used if u and u.startswith("tools.")}
        assert len(tools_used) == 1 and used - tools_used <= {"csfcn.cli"}, (launcher, used)
