"""A site-packages in which chosen packages are really absent, for tests of what a smaller install sees.

Run a child with ``python -S`` and the returned folder (and the repository) on PYTHONPATH: the
packages named are not importable and ``importlib.util.find_spec`` returns None for them, as on a
machine that never installed them.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

# What the GPU machine's preinstalled Python lacks, as its image documents it (.ci/gpu-image.txt):
# tools.gpu_check must run without them. It has orbax, onnx/onnxruntime and matplotlib.
GPU_MACHINE_LACKS = (
    "grain",
    "array_record",
    "ml_collections",
    "tensorflow",
    "tensorflow_datasets",
    "cityscapesscripts",
    "tensorboardX",
)
# The model, the train step and its benchmark import none of these either (a lean JAX install).
TRAIN_STEP_NEEDS_NONE_OF = (*GPU_MACHINE_LACKS, "orbax", "onnx", "onnxruntime", "matplotlib")


def site_without(dest: Path, absent) -> str:
    """Symlinks to every entry of this interpreter's site-packages except the ``absent``
    distributions (by import or distribution name), their metadata, ``.pth`` hooks, and
    backports that would shadow the standard library (the folder comes before it on PYTHONPATH)."""
    roots = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    dest.mkdir()
    gone = {a.lower().replace("-", "_") for a in absent}
    for root in sorted(r for r in roots if os.path.isdir(r)):
        for entry in os.listdir(root):
            stem = entry.split("-")[0].split(".")[0].lower().replace("-", "_")
            shadows = stem in sys.stdlib_module_names
            if stem in gone or shadows or entry.endswith(".pth") or (dest / entry).exists():
                continue
            os.symlink(os.path.join(root, entry), dest / entry)
    return str(dest)
