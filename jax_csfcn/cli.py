"""Running the absl/ml_collections CLIs (train, evaluate, summary) with clear config errors.

``--help`` exits 0 after printing the flags (absl's own handler exits 1).

``--config.<key>=<value>`` overrides are parsed by ml_collections' config flags; a key that
does not exist surfaces there as a bare ``AttributeError``/``KeyError`` deep in flag parsing.
:func:`run` catches it, finds the override that names a missing key and says so.
"""

from __future__ import annotations

import sys


def unknown_override(argv, config) -> str | None:
    """The first ``--config.a.b=...`` of ``argv`` whose key path is not in ``config``, as a message."""
    for arg in argv[1:]:
        if not arg.startswith("--config.") or "=" not in arg:
            continue
        key = arg[len("--config.") : arg.index("=")]
        node, walked = config, []
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                where = ".".join(walked) or "the top level"
                have = sorted(node.keys()) if hasattr(node, "keys") else []
                return (
                    f"unknown config key {key!r} (in {arg!r}): {where} has no field {part!r}"
                    + (f"; its fields are {have}" if have else "")
                    + ". All fields and their defaults are in jax_csfcn/config.py."
                )
            node, walked = node[part], [*walked, part]
    return None


def repeated_overrides(argv) -> str | None:
    """A message when one ``--config.key`` is given twice: ml_collections would silently join two
    tuple values (``eval.scales`` given twice becomes both lists end to end) or keep the last."""
    seen: dict[str, str] = {}
    for arg in argv[1:]:
        if arg.startswith("--config.") and "=" in arg:
            key = arg[len("--config.") : arg.index("=")]
            if key in seen:
                return f"--config.{key} is given twice ({seen[key]!r} and {arg!r}); give it once"
            seen[key] = arg
    return None


def load_config_file(path):
    """``get_config()`` of a config file (``path`` may carry ml_collections' ``:arg`` suffix)."""
    import importlib.util

    file, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("csfcn_config_file", file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg else mod.get_config()


def _config_file(argv) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def run(main, define_flags) -> None:
    """``absl.app.run(main)`` after ``define_flags()``; unknown config keys exit with a clear message."""
    from absl import app

    define_flags()
    repeated = repeated_overrides(sys.argv)
    if repeated:
        print(f"error: {repeated}", file=sys.stderr)
        raise SystemExit(2)
    wants_help = any(a in ("-h", "-?", "--help", "--helpshort", "--helpfull") for a in sys.argv[1:])
    try:
        app.run(main, argv=sys.argv)
    except SystemExit as e:
        if wants_help and e.code in (None, 1):  # absl prints the help, then exits 1: help is a success
            raise SystemExit(0) from None
        raise
    except (AttributeError, KeyError) as e:
        path = _config_file(sys.argv)
        msg = None
        if path:
            try:
                msg = unknown_override(sys.argv, load_config_file(path))
            except Exception:  # the config file itself is broken: show the original error
                msg = None
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        raise SystemExit(2) from e


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that describe a problem with the user's input or files (their message says
    what, which file and the fix): the CLIs print them as one line instead of a traceback."""
    from convert.table import ConversionError
    from csfcn.extras import MissingExtra
    from jax_csfcn.checkpointing import CheckpointError
    from jax_csfcn.data.cityscapes import DataError
    from jax_csfcn.step import TrainError

    return (TrainError, DataError, CheckpointError, ConversionError, MissingExtra, FloatingPointError)


def one_line_errors(fn, *, debug: bool, disk_hint: str = ""):
    """``fn()``; a user error (:func:`user_errors`) or a full disk exits 1 with ``error: <message>``
    on stderr. ``debug`` (the ``--debug`` flag) lets the traceback through instead."""
    from csfcn.files import write_failure

    try:
        return fn()
    except user_errors() as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as e:
        msg = write_failure(e)
        if debug or msg is None:
            raise
        print(f"error: {msg}{disk_hint}", file=sys.stderr)
        raise SystemExit(1) from None
