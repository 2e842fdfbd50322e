"""Keep freed memory inside the process on CPU, so that inference does not page-fault its buffers back in.

    from torch_deploy.heap import retain_freed_memory
    retain_freed_memory()     # True where glibc's malloc took the settings

PyTorch allocates CPU tensors with the C library's ``malloc``. glibc serves large blocks (above a
threshold that grows to at most 32 MiB) with a fresh ``mmap`` and returns them to the kernel when
they are freed; the rest of the heap is trimmed back to the kernel when its free top grows large.
A forward pass of CSFCN at 512x1024 allocates and frees tens of MB of activations, so every call
page-faults that memory in again and the kernel zeroes it page by page: measured at 15-20 % of
an fp32 forward on one thread (BENCHMARKS.md, CPU deployment). ONNX Runtime and OpenVINO
avoid this with their own arenas; this module asks glibc for the same: no ``mmap`` for
allocations (``M_MMAP_MAX = 0``) and no trimming below 2 GiB of free heap (``M_TRIM_THRESHOLD``).
After the first call of a shape the process reuses its own pages.

The setting is process-wide and one-way: the process keeps its peak heap instead of giving
freed memory back. :func:`torch_deploy.optimize` applies it for CPU models (its docstring says
so); call it yourself for other CPU inference. Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes: keep up to 2 GiB of free heap


@functools.cache  # once per process: the setting does not wear off
def retain_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory in the process (see the module docstring); True
    when it took both settings, False where there is no glibc ``mallopt``."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the running process's C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
