"""Nested dicts <-> flat {key path: leaf} mappings (the one flatten/unflatten of the project).

Checkpoint trees (an nnx pure dict, an Orbax restore) are nested dicts; the converter's rule
table and the file formats work on flat mappings keyed by path tuples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

KeyPath = tuple  # of str | int, as produced by flattening an nnx state


def flatten(tree, leaf: Callable = lambda v: v, key: Callable = lambda k: k) -> dict[tuple, object]:
    """{(k1, k2, ...): leaf(value)} for every non-dict value of the nested dict ``tree``, keys
    mapped through ``key`` (e.g. ``str``), in the dicts' order."""
    out: dict[tuple, object] = {}

    def walk(node, prefix):
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*prefix, key(k)))
        else:
            out[prefix] = leaf(node)

    walk(tree, ())
    return out


def unflatten(flat: Mapping[tuple, object], leaf: Callable = lambda v: v, key: Callable = lambda k: k) -> dict:
    """The nested dict of a flat {path tuple: value} mapping (inverse of :func:`flatten`)."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(key(k), {})
        node[key(path[-1])] = leaf(value)
    return tree
