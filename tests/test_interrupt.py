"""Ctrl-C and SIGTERM: a training run's stop request (tests/test_train.py runs the whole stop
and resume), and every other command's clean exit with nothing partial left (csfcn/interrupt.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from csfcn.cli import report_errors, run_main
from csfcn.files import write_atomic
from csfcn.interrupt import INTERRUPTED, PREEMPTED, Preempted

ROOT = Path(__file__).resolve().parents[1]


def test_a_stop_request_is_noted_then_reported_then_forced(capsys):
    """The first signal asks (the step finishes and saves), a second while saving is only
    reported (the previous checkpoint stays valid), a third interrupts at once."""
    from csfcn.interrupt import StopRequest

    # What was installed before (Python's default_int_handler, or SIG_IGN when the suite runs
    # in a background job): the context must put exactly that back.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop.handle and signal.getsignal(signal.SIGINT) == stop.handle
        stop.handle(signal.SIGTERM)
        assert stop.signame == "SIGTERM"
        stop.handle(signal.SIGINT)
        assert stop.signame == "SIGTERM"  # the first one is what stopped the run
        with pytest.raises(KeyboardInterrupt):
            stop.handle(signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # put back
    err = capsys.readouterr().err
    assert "SIGTERM: stopping after this step" in err and "SIGINT again: still" in err


def test_sigterm_while_writing_leaves_no_file_and_exits_130(tmp_path, capsys):
    """SIGTERM in the middle of a write: the temporary file is removed, the target never
    appears, an earlier finished file is kept, and the command says so in one line (130)."""
    done = tmp_path / "first.json"
    target = tmp_path / "second.json"

    def work():
        write_atomic(done, lambda tmp: Path(tmp).write_text("{}"))

        def half_then_killed(tmp):
            Path(tmp).write_text('{"half": ')
            os.kill(os.getpid(), signal.SIGTERM)  # as a scheduler ends a job

        write_atomic(target, half_then_killed)

    assert report_errors(work, (), debug=False) == INTERRUPTED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json"], "a partial or temporary file was left"
    assert "interrupted (SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back after the command


def test_preempted_and_interrupted_exit_codes(capsys):
    def preempted():
        raise Preempted("SIGTERM", 17, "python -m jax_csfcn.train --resume")

    with pytest.raises(SystemExit) as e:
        run_main(preempted)
    assert e.value.code == PREEMPTED == 75
    assert "at step 17; to continue: python -m jax_csfcn.train --resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        run_main(lambda: {"a command's summary": 1})  # a returned dict is not an exit status
    assert e.value.code == 0


def test_a_tool_under_sigterm_exits_130_with_one_line():
    """A command's main run the way the tools run theirs (``run_main``), sent SIGTERM by another
    thread while it works, as a scheduler would: one line, status 130, no traceback."""
    code = (
        "import os, signal, threading, time\n"
        "from csfcn.cli import run_main\n"
        "def main():\n"
        "    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()\n"
        "    time.sleep(30)\n"
        "run_main(main)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == INTERRUPTED, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().startswith("interrupted (SIGTERM)"), proc.stderr
