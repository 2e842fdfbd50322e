"""The one error convention of every csfcn command line.

A mistake of the user's (a bad file, key, shape or flag: the exceptions each command names) is
one line, ``error: <what, which file, the fix>`` on stderr, and a non-zero exit; so is a full
disk or a forbidden folder (:func:`csfcn.files.write_failure`), where nothing partial was kept.
``--debug`` shows the traceback instead. Anything else is a bug and keeps its traceback.
Ctrl-C and SIGTERM stop a command with one line and exit 130; a training run stopped that way
saves a checkpoint first and exits 75, resumable (csfcn/interrupt.py).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable

from csfcn.extras import MissingExtra
from csfcn.files import write_failure
from csfcn.interrupt import INTERRUPTED, PREEMPTED, Preempted, terminate_as_interrupt

DEBUG_HELP = "show the traceback of an input or file error instead of one line"


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line (a library's multi-line explanation joined)."""
    return " ".join(str(error).split()) or type(error).__name__


def report_errors(
    fn: Callable[[], object],
    user_errors: tuple[type[BaseException], ...],
    *,
    debug: bool,
    code: int = 2,
    disk_hint: str = "",
) -> int:
    """Run ``fn()``: 0 when it returns, ``code`` after printing a user error, 1 after a write failure,
    :data:`~csfcn.interrupt.PREEMPTED` after a run saved its state on a signal,
    :data:`~csfcn.interrupt.INTERRUPTED` after Ctrl-C or SIGTERM."""
    try:
        with terminate_as_interrupt():
            fn()
    except Preempted as e:
        print(f"preempted: {e}", file=sys.stderr)
        return PREEMPTED
    except KeyboardInterrupt as e:
        if debug:
            raise
        why = f" ({e})" if str(e) else ""
        print(f"interrupted{why}: stopped; files being written were removed, finished ones kept", file=sys.stderr)
        return INTERRUPTED
    except user_errors as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return code
    except OSError as e:
        msg = write_failure(e)
        if debug or msg is None:
            raise
        print(f"error: {msg}{disk_hint}", file=sys.stderr)
        return 1
    return 0


def run_main(main: Callable[[], object]) -> None:
    """``sys.exit(main())`` for a command without user errors of its own: Ctrl-C, SIGTERM, a
    preempted run and a full disk still end in one line (:func:`report_errors`)."""
    result = []
    code = report_errors(lambda: result.append(main()), (), debug=False)
    returned = result[0] if result else 0
    raise SystemExit(code or (returned if isinstance(returned, int) else 0))


@contextlib.contextmanager
def launching():
    """Around a launcher's import of its tool (``jax_csfcn/train/__main__.py`` and the like): an
    extra that is not installed is one line naming it and exit status 2, as for every command."""
    try:
        yield
    except MissingExtra as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
