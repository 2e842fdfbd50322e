"""Parameters and forward FLOPs of any model (CSFCN or a zoo model) per top-level module.

The command line is ``python -m tools.summary`` (tools/summary.py).

Zoo models (docs/zoo.md) list each top-level module's parameters (auxiliary heads included, as
their upstream constructors count them) and the FLOPs of the inference forward as a whole: the
main output only, no auxiliary head.

FLOPs are counted exactly from the traced program (no arrays are allocated): every
convolution and matrix product is 2 x its multiply-adds.  Resampling (bilinear resize,
adaptive pooling, grid sampling), normalisation and activations are not counted, which is
the convention of docs/architecture.md, Cost (189.2 GFLOPs for CSFCN at 1024x2048).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jax_csfcn.model import CSFCN
from jax_csfcn.ops import INTERP_SCOPE


def _sub_jaxprs(params):
    for v in params.values():
        for item in v if isinstance(v, (tuple, list)) else (v,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jax.extend.core.Jaxpr):
                yield item


def jaxpr_flops(jaxpr) -> int:
    """2 x multiply-adds of all convs and dot products outside the ``interp`` scope."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if INTERP_SCOPE in str(eqn.source_info.name_stack).split("/"):
            continue
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            out_feature_dim = eqn.params["dimension_numbers"].out_spec[1]
            macs_per_out = math.prod(rhs) // out[out_feature_dim]
            total += 2 * math.prod(out) * macs_per_out
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        for sub in _sub_jaxprs(eqn.params):
            total += jaxpr_flops(sub)
    return total


def _flops_of(fn, *args) -> tuple[int, object]:
    closed = jax.make_jaxpr(fn)(*args)
    out = jax.eval_shape(fn, *args)
    return jaxpr_flops(closed.jaxpr), out


def _params(module) -> int:
    return sum(int(v.size) for v in jax.tree.leaves(nnx.state(module, nnx.Param)))


def forward_flops(model, image_size: tuple[int, int], batch: int = 1) -> int:
    """FLOPs of ``model(x)`` (the inference output) for a (batch, H, W, 3) input."""
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((batch, *image_size, 3), jnp.float32)
    return _flops_of(lambda state, x: nnx.merge(graphdef, state)(x), state, x)[0]


def module_table(model, image_size: tuple[int, int], batch: int = 1) -> list[tuple[str, int, int | None]]:
    """[(module, parameters, forward FLOPs)]: CSFCN's resnet, cfc, sfc, conv_out32; a zoo model's
    top-level modules (FLOPs None) and a "forward" row with the whole inference FLOPs."""
    if not isinstance(model, CSFCN):
        rows = [(name, _params(m), None) for name, m in vars(model).items() if isinstance(m, nnx.Module)]
        return [*rows, ("(forward)", 0, forward_flops(model, image_size, batch))]
    graphdef, state = nnx.split(model)

    def call(name):
        def f(state, *xs):
            return getattr(nnx.merge(graphdef, state), name)(*xs)

        return f

    x = jax.ShapeDtypeStruct((batch, *image_size, 3), jnp.float32)
    rows = []
    f_backbone, (feat8, feat32) = _flops_of(call("resnet"), state, x)
    f_cfc, cfc_out = _flops_of(call("cfc"), state, feat32)
    f_sfc, sfc_out = _flops_of(call("sfc"), state, feat8, cfc_out)
    f_head, _ = _flops_of(call("conv_out32"), state, sfc_out)
    for name, flops in (("resnet", f_backbone), ("cfc", f_cfc), ("sfc", f_sfc), ("conv_out32", f_head)):
        rows.append((name, _params(getattr(model, name)), flops))
    return rows


def format_table(rows, image_size, config) -> str:
    h, w = image_size
    lines = [
        f"{config.name}  classes={config.num_classes}"
        + ("" if config.is_zoo else f"  stem={config.stem}")
        + f"  input 1x3x{h}x{w}",
        f"{'module':<12}{'params':>14}{'GFLOPs':>10}",
    ]
    for name, p, f in rows:
        params = f"{p:,}" if p else ""
        flops = "" if f is None else f"{f / 1e9:.2f}"
        lines.append(f"{name:<12}{params:>14}{flops:>10}")
    total = sum(r[2] or 0 for r in rows)
    lines.append(f"{'total':<12}{sum(r[1] for r in rows):>14,}{total / 1e9:>10.2f}")
    return "\n".join(lines)
