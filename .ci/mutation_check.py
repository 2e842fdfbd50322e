"""Put realistic one-line bugs into the code, one at a time, and report which the tests miss.

    .venv/bin/python .ci/mutation_check.py                 # every mutant of .ci/mutants.toml, its own tests
    .venv/bin/python .ci/mutation_check.py --only cli-bool,labels-dtype-256
    .venv/bin/python .ci/mutation_check.py --suite default # each mutant against the whole `make test` selection

Each entry of ``.ci/mutants.toml`` names a file, an exact text that occurs in it once, the bug
to put in its place, and the tests that exercise it.  For each mutant the file is changed, the
tests run (``--suite default``: the whole default suite, about 15 minutes per mutant on two
cores), and the file restored.  A mutant is *caught* when pytest reports failures, *survives*
when the tests pass; anything else (a collection error, no tests selected) is an error of the
list; a test process killed by a signal counts as caught.  The unmutated tests run first: a list whose tests already fail proves nothing.

Not part of ``make test`` (minutes per mutant).  The originals are kept in ``.mutation-backup/``
while a mutant is in place and put back by the next run if this one was killed.  Exit status:
0 when every mutant is caught, 1 when some survive, 2 on an error of the list.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LIST = ROOT / ".ci" / "mutants.toml"
BACKUP = ROOT / ".mutation-backup"
DEFAULT_SELECTION = ["-m", "not slow and not gpu"]


def restore_leftovers() -> list[str]:
    """Put back every original a killed run left in BACKUP; the files restored."""
    restored = []
    if BACKUP.is_dir():
        for saved in sorted(p for p in BACKUP.rglob("*") if p.is_file()):
            rel = saved.relative_to(BACKUP)
            shutil.copy2(saved, ROOT / rel)
            restored.append(str(rel))
        shutil.rmtree(BACKUP)
    return restored


def load(path: Path) -> list[dict]:
    with open(path, "rb") as f:
        mutants = tomllib.load(f).get("mutant", [])
    problems = []
    for i, m in enumerate(mutants):
        missing = {"id", "file", "old", "new", "tests"} - set(m)
        if missing:
            problems.append(f"{path}: mutant #{i + 1} ({m.get('id', '?')}) lacks {sorted(missing)}")
            continue
        text = (ROOT / m["file"]).read_text()
        count = text.count(m["old"])
        if count != 1:
            problems.append(f"{m['id']}: {m['file']} holds its `old` text {count} times (must be once)")
        if m["old"] == m["new"]:
            problems.append(f"{m['id']}: `new` equals `old`")
    ids = [m.get("id") for m in mutants]
    problems += [f"mutant id {i!r} used twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if problems:
        sys.exit("mutation_check: " + "\n  ".join(["the list has errors:", *problems]))
    return mutants


def pytest(tests: list[str], workers: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DEFAULT_SELECTION, *tests]
    # -x stops at the first failure; with xdist workers pytest then exits 2 (interrupted), not 1
    cmd += ["-n", str(workers)] if workers > 1 else ["-x"]
    env = dict(os.environ, TRITON_INTERPRET="1", JAX_PLATFORMS="cpu")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)


def first_failure(out: str) -> str:
    for line in out.splitlines():
        if line.startswith(("FAILED", "ERROR")):
            return line[:160]
    return ""


def run_mutant(m: dict, tests: list[str], workers: int) -> tuple[str, str, float]:
    path = ROOT / m["file"]
    original = path.read_text()
    saved = BACKUP / m["file"]
    saved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, saved)
    t0 = time.monotonic()
    try:
        path.write_text(original.replace(m["old"], m["new"], 1))
        proc = pytest(tests, workers)
    finally:
        path.write_text(original)
        saved.unlink()
    took = time.monotonic() - t0
    if proc.returncode == 1:
        return "caught", first_failure(proc.stdout), took
    if proc.returncode == 0:
        return "SURVIVED", "", took
    if proc.returncode < 0:  # the bug killed the test process itself (e.g. an unhandled SIGTERM)
        return "caught", f"pytest killed by signal {-proc.returncode}", took
    return "error", f"pytest exit {proc.returncode}: {(proc.stdout + proc.stderr).strip().splitlines()[-1:]}", took


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--list", type=Path, default=LIST, help=f"the mutants (default {LIST.relative_to(ROOT)})")
    p.add_argument("--only", default="", help="comma-separated mutant ids (default: all)")
    p.add_argument(
        "--suite",
        choices=("targeted", "default"),
        default="targeted",
        help="targeted: each mutant's own tests (default); default: the whole make-test selection",
    )
    p.add_argument("--workers", type=int, default=1, help="pytest-xdist workers per run (default 1)")
    args = p.parse_args(argv)

    for rel in restore_leftovers():
        print(f"mutation_check: put back {rel} from an interrupted run", flush=True)
    mutants = load(args.list)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {m["id"] for m in mutants})
        if unknown:
            sys.exit(
                f"mutation_check: --only names unknown mutants {unknown}; the list has {[m['id'] for m in mutants]}"
            )
        mutants = [m for m in mutants if m["id"] in wanted]

    tests_of = {m["id"]: (m["tests"] if args.suite == "targeted" else []) for m in mutants}
    baseline_tests = sorted({t for ts in tests_of.values() for t in ts})
    print(f"baseline: {len(baseline_tests) or 'all'} test selections, unmutated ...", flush=True)
    base = pytest(baseline_tests, max(args.workers, 2 if args.suite == "default" else 1))
    if base.returncode != 0:
        print(base.stdout[-3000:], base.stderr[-2000:])
        sys.exit(f"mutation_check: the tests fail without any mutant (exit {base.returncode}); fix that first")

    results = []
    for i, m in enumerate(mutants, 1):
        verdict, detail, took = run_mutant(m, tests_of[m["id"]], args.workers)
        results.append((m, verdict, detail))
        print(f"[{i}/{len(mutants)}] {verdict:8s} {m['id']} ({m['file']}, {took:.0f} s) {detail}", flush=True)

    survived = [m["id"] for m, v, _ in results if v == "SURVIVED"]
    errors = [m["id"] for m, v, _ in results if v == "error"]
    print(f"\n{len(results) - len(survived) - len(errors)} caught, {len(survived)} survived, {len(errors)} errors")
    if survived:
        print("survivors: " + ", ".join(survived))
    return 2 if errors else 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
