"""The command lines that take a config (train, evaluate, summary): argparse, like every csfcn CLI.

``--config FILE[:ARG]`` names a config module (``get_config(ARG)``); ``--config.<key>=<value>``
(or ``--config.<key> <value>``) overrides one field, parsed as that field's type: ``true`` /
``false`` for booleans, Python literals for tuples (``'(720, 960)'``), plain text for strings.
A key that does not exist, a value of the wrong type and a key given twice are one-line errors
(exit 2) that name the field; flags are spelled with dashes (``--no-progress``), as in every
other CLI of the project.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import sys

import ml_collections

from csfcn.checkpoints import ConversionError
from csfcn.cli import DEBUG_HELP, report_errors
from csfcn.extras import MissingExtra
from jax_csfcn.checkpointing import CheckpointError
from jax_csfcn.data.cityscapes import DataError
from jax_csfcn.step import TrainError

OVERRIDE = "--config."
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def load_config_file(path):
    """``get_config()`` of a config file (``path`` may carry a ``:arg`` suffix for ``get_config(arg)``)."""
    file, _, arg = str(path).partition(":")
    spec = importlib.util.spec_from_file_location("csfcn_config_file", file)
    if spec is None:
        raise ValueError(f"--config {path}: not a Python config file (configs/*.py)")
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except Exception as e:  # a broken config file: name it and the error, not a traceback
        raise ValueError(f"--config {path}: the file fails to load: {type(e).__name__}: {e}") from e
    if not callable(getattr(mod, "get_config", None)):
        raise ValueError(f"--config {path}: defines no get_config(); see configs/*.py")
    return mod.get_config(arg) if arg else mod.get_config()


def config_parser(prog: str, description: str, *, config_default: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` (and its ``--config.<key>`` overrides) and ``--debug``."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Override any config field with --config.<key>=<value> (the fields and their defaults: "
        "jax_csfcn/defaults.py), e.g. --config.train.batch_size=4 --config.data.image_size='(720, 960)'.",
    )
    p.add_argument(
        "--config",
        required=config_default is None,
        default=config_default,
        metavar="FILE[:ARG]",
        help="config file, e.g. configs/cityscapes.py:csfcn,100"
        + (f" (default {config_default})" if config_default else ""),
    )
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def _split_overrides(rest: list[str]) -> tuple[list[tuple[str, str, str]], list[str]]:
    """([(key, value, as typed)], other arguments) from what argparse did not recognise."""
    overrides, other, i = [], [], 0
    while i < len(rest):
        arg = rest[i]
        if arg.startswith(OVERRIDE) and "=" in arg:
            key, value = arg[len(OVERRIDE) :].split("=", 1)
            overrides.append((key, value, arg))
        elif arg.startswith(OVERRIDE) and i + 1 < len(rest):
            overrides.append((arg[len(OVERRIDE) :], rest[i + 1], f"{arg} {rest[i + 1]}"))
            i += 1
        else:
            other.append(arg)
        i += 1
    return overrides, other


def _parse_value(node, field: str, value: str, shown: str):
    """``value`` (text) as the type of ``node.field``, or a ValueError naming the field."""
    kind = node.get_type(field)
    if kind is bool:
        if value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        raise ValueError(f"{shown}: expected true or false")
    if kind is str:
        return value
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ValueError(f"{shown}: {value!r} is not a {kind.__name__}") from None
    if kind in (tuple, list) and isinstance(parsed, (tuple, list)):
        return kind(parsed)
    if kind is float and isinstance(parsed, (int, float)) and not isinstance(parsed, bool):
        return float(parsed)
    if isinstance(parsed, kind) and not (kind is int and isinstance(parsed, bool)):
        return parsed
    raise ValueError(f"{shown}: {value!r} is not a {kind.__name__}")


def apply_overrides(config, overrides: list[tuple[str, str, str]]) -> None:
    """Set each ``(key, value, as typed)`` on ``config``; a ValueError names the first bad one."""
    seen: dict[str, str] = {}
    for key, value, shown in overrides:
        if key in seen:  # joining or silently keeping one of two values would hide a mistake
            raise ValueError(f"--config.{key} is given twice ({seen[key]!r} and {shown!r}); give it once")
        seen[key] = shown
        *parents, field = key.split(".")
        node, walked = config, []
        for part in [*parents, field]:
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                where = ".".join(walked) or "the top level"
                have = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise ValueError(
                    f"unknown config key {key!r} (in {shown!r}): {where} has no field {part!r}"
                    + (f"; its fields are {have}" if have else "")
                    + ". All fields and their defaults are in jax_csfcn/defaults.py."
                )
            if part != field:
                node, walked = node[part], [*walked, part]
        if isinstance(node[field], ml_collections.ConfigDict):
            raise ValueError(f"{shown}: {key!r} is a group of fields; set one of {sorted(node[field].keys())}")
        node[field] = _parse_value(node, field, value, shown)


def parse_config_args(parser: argparse.ArgumentParser, argv=None):
    """``(args, config)``: the parsed flags and the config file's ConfigDict with the overrides
    applied (then locked). Problems exit 2 with argparse's one-line usage error."""
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    overrides, other = _split_overrides(rest)
    if other:
        parser.error(f"unrecognized arguments: {' '.join(other)} (config fields are set with --config.<key>=<value>)")
    try:
        config = load_config_file(args.config)
        apply_overrides(config, overrides)
    except ValueError as e:
        parser.error(str(e))
    config.lock()
    return args, config


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that describe a problem with the user's input or files (their message says
    what, which file and the fix): the CLIs print them as one line instead of a traceback."""

    return (
        TrainError,
        DataError,
        CheckpointError,
        ConversionError,
        MissingExtra,
        FloatingPointError,
        FileNotFoundError,
    )


def one_line_errors(fn, *, debug: bool, disk_hint: str = ""):
    """``fn()``; a user error (:func:`user_errors`) or a full disk exits 1 with ``error: <message>``
    on stderr (csfcn/cli.py). ``debug`` (the ``--debug`` flag) lets the traceback through instead."""
    result = []
    rc = report_errors(lambda: result.append(fn()), user_errors(), debug=debug, code=1, disk_hint=disk_hint)
    if rc:
        raise SystemExit(rc)
    return result[0]
