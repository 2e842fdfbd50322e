"""Default configuration: every field and its default; files in configs/ change a few.

Override any field on the command line with ``--config.<key>=<value>`` (jax_csfcn/cli.py parses
it as the field's type; the one override form used everywhere in this project)::

    python -m jax_csfcn.train --config configs/cityscapes.py:csfcn,100 --config.train.batch_size=4 \\
        --config.data.root=/data/cityscapes --config.workdir=runs/cs50

A key that does not exist is an error naming it.  The fields, their defaults and what each
means are written once, as plain Python, in :data:`jax_csfcn.defaults.DEFAULTS` (the upstream
Cityscapes recipe, docs/architecture.md "Training recipe", on the embedded synthetic dataset); ``configs/``
hold the real datasets and sizes.
"""

from __future__ import annotations

import ml_collections

from jax_csfcn.defaults import DEFAULTS, OPTIONAL_TYPES


def get_config() -> ml_collections.ConfigDict:
    return _config_dict(DEFAULTS, "")


def _config_dict(fields: dict, prefix: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    for key, value in fields.items():
        if isinstance(value, dict):
            c[key] = _config_dict(value, f"{prefix}{key}.")
        elif value is None:
            # None until set; overrides are parsed as OPTIONAL_TYPES says
            c[key] = ml_collections.config_dict.placeholder(OPTIONAL_TYPES[prefix + key])
        else:
            c[key] = value
    return c
