"""Every command line answers ``--help`` with its usage on stdout and exit status 0, and all of
them are one parser family (argparse) with one flag spelling (dashes, never underscores)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import re
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every command: the bridge's own (python -m convert) and each module of tools/ with a main() (the
# folder rule of docs/architecture.md, "Package layering"; tests/test_layering.py checks that no
# other module has a command). tools/compare.py is a helper of two commands, not one itself.
CLIS = (
    "convert",
    *sorted(f"tools.{p.stem}" for p in Path(ROOT, "tools").glob("*.py") if "\ndef main(" in p.read_text()),
)


def _help(module: str) -> tuple[str, int, str]:
    """``module``'s ``main(["--help"])`` in this process (its parser is built there; a child process
    per command would spend ~3 s importing JAX and PyTorch for each of the 19)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            rc = importlib.import_module("convert.__main__" if module == "convert" else module).main(["--help"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return module, rc if isinstance(rc, int) else 1, out.getvalue()


def test_every_cli_help_exits_zero():
    results = [_help(m) for m in CLIS]
    bad = [(m, rc, out[-500:]) for m, rc, out in results if rc != 0 or not out.startswith("usage: python -m ")]
    assert not bad, bad
    underscores = {m: re.findall(r"--[a-z0-9]+_[a-z0-9_]+", out) for m, _, out in results}
    assert not any(underscores.values()), underscores
