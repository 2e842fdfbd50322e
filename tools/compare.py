"""Every model side by side: ``python -m torch_deploy.benchmark --model all`` (or a comma list).

The models of docs/zoo.md and CSFCN under one protocol (docs/architecture.md, "Benchmark
protocol"): batch 1, random weights, each variant warmed up and then timed in interleaved rounds
-- one call of every variant of every model per round, so machine noise hits all alike -- with
the median and spread per variant. Variants per model:

  twin fp32      the PyTorch twin, eager fp32 logits (what a user of the upstream code runs)
  fast fp32      ``torch_deploy.optimize``: folded BNs, channels-last, labels out (CPU)
  fast bf16      the same in bf16 (CPUs that compute bf16 natively)
  fast fp16      the same in fp16 with CUDA graphs (GPU; CSFCN with its Triton kernels)

Parameters are the constructor's (auxiliary heads included, as the upstream files count them);
GFLOPs are those of :mod:`jax_csfcn.summary` for the inference forward (main output), when the
training extra is installed.
"""

from __future__ import annotations

import torch

from csfcn.model_config import MODEL_NAMES, ModelConfig
from torch_deploy.model import build_twin
from torch_deploy.optimize import optimize
from torch_deploy.precision import refusal


def parse_models(spec: str) -> tuple[str, ...]:
    """``"all"`` or a comma list of model names -> the names, in MODEL_NAMES order for "all"."""
    names = MODEL_NAMES if spec.strip() == "all" else tuple(t.strip() for t in spec.split(",") if t.strip())
    bad = [n for n in names if n not in MODEL_NAMES]
    if bad or not names:
        raise ValueError(f"--model {spec}: unknown model(s) {bad}; choose 'all' or a comma list of {MODEL_NAMES}")
    return names


def gflops(config: ModelConfig, size: tuple[int, int]) -> float | None:
    """Inference GFLOPs of ``config`` at ``size`` (jax_csfcn.summary), None where JAX/Flax are not
    installed (a PyTorch-only install); any other missing module is an error, not a blank column."""
    try:
        from flax import nnx

        from jax_csfcn.model import build_model
        from jax_csfcn.summary import forward_flops
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("jax", "jaxlib", "flax"):
            raise
        return None
    model = nnx.eval_shape(lambda: build_model(config))
    return forward_flops(model, size) / 1e9


def variants(config: ModelConfig, device: torch.device) -> tuple[dict, int]:
    """({label: fn(x)}, parameter count) of one model: the twin and its fast paths."""
    torch.manual_seed(0)
    twin = build_twin(config).eval().to(device)
    n_params = sum(p.numel() for p in twin.parameters())
    out = {f"{config.name} twin fp32": twin}
    if device.type == "cuda":
        out[f"{config.name} fast fp16"] = optimize(twin, "fp16", "labels")
    else:
        out[f"{config.name} fast fp32"] = optimize(twin, "fp32", "labels")
        if refusal("bf16", device) is None:
            out[f"{config.name} fast bf16"] = optimize(twin, "bf16", "labels")
    return out, n_params


def compare(names, sizes, classes: int, device: torch.device, timer, warmup: int, repeats: int, run_interleaved):
    """Time every variant of every model at each size; returns report rows (dicts)."""
    fns, meta = {}, {}
    for name in names:
        config = ModelConfig(name=name, num_classes=classes)
        models, n_params = variants(config, device)
        for label, m in models.items():
            fns[label] = m
            meta[label] = (name, n_params)
    rows = []
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, device=device)
        flops = {name: gflops(ModelConfig(name=name, num_classes=classes), (h, w)) for name in names}
        with torch.inference_mode():
            res = run_interleaved({k: (lambda m=m: m(x)) for k, m in fns.items()}, timer, warmup, repeats)
        for label, st in res.items():
            name, n_params = meta[label]
            rows.append(
                {"size": [h, w], "model": name, "variant": label, "params": n_params, "gflops": flops[name], **st}
            )
    return rows


def table(rows) -> tuple[list[str], list[list[str]]]:
    headers = ["size", "variant", "params (M)", "GFLOPs", "median ms", "min..max", "p10..p90", "FPS"]
    out = []
    for r in rows:
        out.append(
            [
                f"{r['size'][0]}x{r['size'][1]}",
                r["variant"],
                f"{r['params'] / 1e6:.2f}",
                "-" if r["gflops"] is None else f"{r['gflops']:.1f}",
                f"{r['median_ms']:.1f}",
                f"{r['min_ms']:.1f}..{r['max_ms']:.1f}",
                f"{r['p10_ms']:.1f}..{r['p90_ms']:.1f}",
                f"{1e3 / r['median_ms']:.2f}",
            ]
        )
    return headers, out
