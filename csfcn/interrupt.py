"""Stopping on request: Ctrl-C (SIGINT) and SIGTERM, the way clusters end jobs.

Two behaviours, one per kind of command:

* a **long-running job that can resume** (training) takes the first signal as a request: it
  finishes the step in flight, saves a checkpoint at that step and leaves with
  :data:`PREEMPTED` (75, ``EX_TEMPFAIL``: "try again", the code job schedulers read as
  resumable). :class:`StopRequest` notes the request; a second signal while the checkpoint is
  written is reported and ignored (the previous checkpoint stays valid either way: a checkpoint
  is renamed into place only once complete), a third forces a ``KeyboardInterrupt``.
* **every other command** treats SIGTERM like Ctrl-C (:func:`terminate_as_interrupt`): the
  ``KeyboardInterrupt`` unwinds through the ``finally`` blocks, so files being written are
  removed (``csfcn.files.write_atomic``) and workers stopped, and the command leaves with
  :data:`INTERRUPTED` (130) and one line, no traceback (``csfcn.cli.report_errors``).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): stopped on request with a checkpoint; run it again to resume
INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C: stopped, nothing to resume

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Preempted(Exception):
    """A run stopped on a signal after saving its state at ``step``; ``resume`` says how to go on."""

    def __init__(self, signame: str, step: int, resume: str):
        super().__init__(signame, step, resume)
        self.signame, self.step, self.resume = signame, step, resume

    def __str__(self) -> str:
        return f"stopped on {self.signame} with a checkpoint at step {self.step}; to continue: {self.resume}"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class StopRequest:
    """Within ``with StopRequest() as stop:``, SIGINT and SIGTERM set ``stop.signame`` instead of
    interrupting; the previous handlers come back on exit. Outside the main thread (where Python
    cannot install handlers) it does nothing and ``signame`` stays None."""

    FORCE_AFTER = 3  # the third signal interrupts whatever is running

    def __init__(self, what: str = "stopping after this step and saving a checkpoint"):
        self.what = what
        self.signame: str | None = None
        self.count = 0
        self._previous: dict = {}

    def handle(self, signum, frame=None) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            self.signame = name
            print(f"\n{name}: {self.what} (send it twice more to stop at once)", file=sys.stderr, flush=True)
        elif self.count < self.FORCE_AFTER:
            print(
                f"\n{name} again: still {self.what}; the previous checkpoint stays valid if stopped now",
                file=sys.stderr,
                flush=True,
            )
        else:
            raise KeyboardInterrupt(f"{name} received {self.count} times")

    def __enter__(self) -> StopRequest:
        if _main_thread():
            self._previous = {s: signal.signal(s, self.handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises ``KeyboardInterrupt`` inside the block (main thread only), as Ctrl-C does."""
    if not _main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
