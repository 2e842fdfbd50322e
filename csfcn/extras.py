"""Optional parts of the install, and one clear message when a command needs one that is missing.

``pip install csfcn`` is the PyTorch deployment side (load and convert ``.safetensors`` and
upstream ``.pth``, predict, optimize, benchmark). The extras add the rest (pyproject.toml):

    train   JAX, Flax, Optax, Orbax, grain, ml_collections: training, evaluation, the demo
    tfds    tensorflow-datasets + TensorFlow: preparing Cityscapes as a TFDS dataset
    onnx    onnx, onnxscript, onnxruntime: python -m tools.export_onnx
    triton  the Triton kernels of the GPU fast path
    openvino  OpenVINO, a CPU peer in python -m torch_deploy.benchmark --device cpu
    serve   nvidia-pytriton, tritonclient: python -m torch_deploy.serve and predict --server
            (PyTriton pins numpy < 2: an environment without the train extra)
"""

from __future__ import annotations

import importlib.util
import sys

EXTRAS = {
    "train": ("jax", "flax", "optax", "orbax", "grain", "ml_collections", "absl"),
    "tfds": ("tensorflow_datasets", "tensorflow"),
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "triton": ("triton",),
    "openvino": ("openvino",),
    "serve": ("pytriton", "tritonclient"),
}


class MissingExtra(ModuleNotFoundError):
    """A part of csfcn whose optional dependencies are not installed."""


def missing(modules) -> list[str]:
    """The top-level packages of ``modules`` that are not installed."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(extra: str, what: str, *, cli: bool = False, modules=None) -> None:
    """Stop if the packages of ``extra`` are not installed, saying which extra to install.

    For a command line -- ``cli=True`` (a module run as ``__main__``), or while ``python -m``
    imports the command's package (``sys.argv[0]`` is ``-m`` then) -- it prints one line and
    exits with status 2; imported as a library it raises :class:`MissingExtra`. ``modules``
    narrows the check to the packages this part needs (default: the whole extra)."""
    gone = missing(modules or EXTRAS[extra])
    if not gone:
        return
    msg = f"{what} needs the '{extra}' extra ({', '.join(gone)} not installed): pip install 'csfcn[{extra}]'"
    if cli or sys.argv[:1] == ["-m"]:
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2)
    raise MissingExtra(msg)
