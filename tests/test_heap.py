"""torch_deploy.heap: after retain_freed_memory a freed large block is reused without page faults."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

HEAP = Path(__file__).resolve().parents[1] / "torch_deploy" / "heap.py"

# In a fresh process (the test process may already have called it): the minor page faults of
# writing a 64 MiB block that replaces a freed one, before and after retain_freed_memory().
PROBE = textwrap.dedent(
    """
    import ctypes, importlib.util, json, resource, sys
    spec = importlib.util.spec_from_file_location("heap", sys.argv[1])
    heap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heap)
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
    libc.memset.restype = ctypes.c_void_p
    SIZE = 64 << 20

    def refill_faults():
        libc.free(libc.memset(libc.malloc(SIZE), 1, SIZE))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(SIZE)
        libc.memset(block, 2, SIZE)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        libc.free(block)
        return faults

    default = refill_faults()
    took = heap.retain_freed_memory()
    print(json.dumps({"took": took, "default": default, "retained": refill_faults(), "again": heap.retain_freed_memory()}))
    """
)


def test_retain_freed_memory_stops_refaulting_large_blocks():
    if not sys.platform.startswith("linux"):  # no glibc mallopt: the call says it did nothing
        from torch_deploy.heap import retain_freed_memory

        assert retain_freed_memory() is False
        return
    out = subprocess.run([sys.executable, "-c", PROBE, str(HEAP)], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["took"] is True and got["again"] is True
    pages = (64 << 20) // 4096
    assert got["default"] > pages // 2  # glibc maps a fresh block: every page faults again
    assert got["retained"] < pages // 20  # the freed block is reused in place
