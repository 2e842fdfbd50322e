"""Serve a checkpoint with NVIDIA Triton Inference Server (through PyTriton), or write a model
repository for a stock ``tritonserver``.

    python -m torch_deploy.serve --checkpoint model.safetensors
    python -m torch_deploy.serve --checkpoint model.safetensors --outputs labels probabilities \\
        --max-batch 8 --queue-delay-us 2000 --http-port 8000 --grpc-port 8001 --metrics-port 8002
    python -m torch_deploy.serve --checkpoint model.safetensors --export-repository repo/
    python -m torch_deploy.predict --server http://127.0.0.1:8000 --input frames/ --out pred/

The models, their tensors and the request checks: torch_deploy/serving.py. The server answers on
HTTP, gRPC and Prometheus metrics, bound to 127.0.0.1 unless ``--address`` says otherwise. It
warms every served output at the ``--warmup`` sizes before Triton loads the models, so
``/v2/health/ready`` turns green only when a request of those sizes waits for no compilation.
SIGTERM or Ctrl-C stops it gracefully: Triton refuses new requests, finishes the accepted ones
(up to ``--exit-timeout`` seconds), then the process exits with status 0.

Needs the ``serve`` extra (``pip install 'csfcn[serve]'``: nvidia-pytriton, tritonclient). PyTriton
0.7 pins numpy < 2, which JAX does not accept: serve from an environment of its own, without
the ``train`` extra (the Makefile's ``.serve-venv`` is one).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import sys
import sysconfig
import threading
import time

import numpy as np

from csfcn.cli import DEBUG_HELP, report_errors
from csfcn.extras import require
from tools.predict import collect_inputs
from torch_deploy.checkpoint import load_model
from torch_deploy.precision import AUTO_HELP, CHOICES
from torch_deploy.serving import (
    DEFAULT_MAX_PIXELS,
    INFO_MODEL,
    INPUTS,
    OUTPUTS,
    Batching,
    Engine,
    RequestError,
    export_repository,
    output_tensor,
)


class ServeError(Exception):
    """A problem with the command's input; the message says what and where."""


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or int(m[1]) < 1 or int(m[2]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give HxW, e.g. 512x1024")
    return int(m[1]), int(m[2])


def use_own_libpython() -> str:
    """Put this interpreter's LIBDIR first on LD_LIBRARY_PATH (read by the tritonserver process
    PyTriton starts, and so by its Python-backend stub). The stub links ``libpython3.X.so``; without
    this it may load the system's copy, and a CPython built elsewhere (pyenv, conda) then fails at
    model load (``'_thread.RLock' object has no attribute '_recursion_count'``)."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and os.path.isdir(libdir) and current.split(":")[:1] != [libdir]:
        os.environ["LD_LIBRARY_PATH"] = libdir + (":" + current if current else "")
    return libdir


def _infer_fn(engine: Engine, output: str):
    def infer(requests):
        answers = engine.handle(output, [r.data for r in requests])
        errors = [a for a in answers if isinstance(a, RequestError)]
        if errors:  # PyTriton answers a call as a whole: the refusal goes to the requests merged with it
            raise errors[0]
        return answers

    return infer


def _info_fn(engine: Engine):
    blob = np.array([json.dumps(engine.info()).encode()], dtype=object)

    def info(requests):
        return [{"info": blob} for _ in requests]

    return info


def serve(args, batching: Batching) -> dict:
    from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
    from pytriton.triton import Triton, TritonConfig

    check_ports(args)
    engine = _engine(args, batching)
    say = (lambda *a: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    say(
        f"model: {engine.checkpoint} ({engine.predictor.config.label}, {engine.predictor.num_classes} classes) on "
        f"{engine.predictor.device}, path {engine.predictor.path}"
    )
    engine.warm_up(args.warmup, log=say)
    use_own_libpython()

    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    config = TritonConfig(
        http_address=args.address,
        http_port=args.http_port,
        grpc_address=args.address,
        grpc_port=args.grpc_port,
        metrics_address=args.address,
        metrics_port=args.metrics_port,
        exit_timeout_secs=args.exit_timeout,
        log_verbose=0,
    )
    k = engine.predictor.num_classes
    image_inputs = [Tensor(name=name, dtype=dtype, shape=dims, optional=True) for name, dtype, dims in INPUTS]
    batcher = None  # Triton's default scheduler: each request runs as it comes
    if batching.dynamic:
        policy = QueuePolicy(max_queue_size=batching.max_queue) if batching.max_queue else None
        batcher = DynamicBatcher(max_queue_delay_microseconds=batching.queue_delay_us, default_queue_policy=policy)
    started = time.perf_counter()
    triton = Triton(config=config)
    try:
        for output in engine.outputs:
            name, dtype, dims = output_tensor(output, k)
            triton.bind(
                model_name=output,
                infer_func=_infer_fn(engine, output),
                inputs=image_inputs,
                outputs=[Tensor(name=name, dtype=dtype, shape=dims)],
                config=ModelConfig(max_batch_size=batching.max_batch, batching=True, batcher=batcher),
                strict=True,
            )
        triton.bind(
            model_name=INFO_MODEL,
            infer_func=_info_fn(engine),
            inputs=[Tensor(name="query", dtype=np.bytes_, shape=(1,))],
            outputs=[Tensor(name="info", dtype=np.bytes_, shape=(1,))],
            config=ModelConfig(batching=False),
        )
        triton.run()  # returns when the server and the models are ready
        say(
            f"ready in {time.perf_counter() - started:.1f} s: http://{args.address}:{args.http_port}, "
            f"grpc://{args.address}:{args.grpc_port}, metrics http://{args.address}:{args.metrics_port}/metrics; "
            f"models {', '.join(engine.outputs)} (max batch {batching.max_batch}, "
            + (f"queue delay {batching.queue_delay_us} us)" if batching.dynamic else "no dynamic batching)")
        )
        while not stop.wait(1.0):
            if not triton.is_alive():
                raise ServeError("the Triton server stopped by itself; its log above says why")
        say(f"{received[0]}: finishing the requests in flight, then stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal during the stop: default action
            signal.signal(sig, signal.SIG_DFL)
        triton.stop()
    return {"stopped": received[0] if received else "", "requests": engine.requests, "images": engine.served}


def check_ports(args) -> None:
    """Each endpoint's port free at --address, or one line naming it (tritonserver would otherwise
    fail to bind, and PyTriton wait two minutes for it before a traceback)."""
    for flag, port in (("--http-port", args.http_port), ("--grpc-port", args.grpc_port),
                       ("--metrics-port", args.metrics_port)):  # fmt: skip
        with socket.socket(socket.AF_INET6 if ":" in args.address else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as tritonserver: TIME_WAIT is no conflict
            try:
                s.bind((args.address, port))
            except OSError as e:
                raise ServeError(
                    f"{flag} {port}: cannot listen on {args.address}:{port} ({e.strerror}); another server may hold "
                    "it: choose another port"
                ) from None


def _engine(args, batching: Batching) -> Engine:
    try:
        calibration = None
        if args.calibration:
            kind, found = collect_inputs(args.calibration)
            if kind != "images":
                raise ServeError(f"--calibration {args.calibration}: give images, not a video")
            calibration = [str(path) for path, _ in found[:: max(1, len(found) // 8)][:8]]
        return Engine.from_checkpoint(
            args.checkpoint,
            args.outputs,
            device=args.device,
            precision=args.precision,
            calibration=calibration,
            batch_size=batching.max_batch,
            max_pixels=args.max_pixels,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ServeError(str(e)) from e


def export(args, batching: Batching) -> dict:
    if not os.path.isfile(args.checkpoint):
        raise ServeError(
            f"--checkpoint {args.checkpoint}: --export-repository copies a checkpoint file "
            "(.safetensors or .pth); convert a run first (python -m convert)"
        )
    try:
        model = load_model(args.checkpoint)  # refuses a bad file now, not when the server loads it
        written = export_repository(
            args.export_repository,
            args.checkpoint,
            outputs=args.outputs,
            batching=batching,
            precision=args.precision,
            device=args.device,
            max_pixels=args.max_pixels,
            num_classes=model.config.num_classes,
            overwrite=args.overwrite,
        )
    except (OSError, ValueError, KeyError) as e:
        raise ServeError(str(e)) from e
    return {
        "repository": args.export_repository,
        "files": len(written),
        "models": " ".join([*args.outputs, INFO_MODEL]),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m torch_deploy.serve",
        description="Serve a checkpoint with NVIDIA Triton Inference Server (PyTriton): models labels / "
        "probabilities / logits with dynamic batching, HTTP, gRPC and metrics on 127.0.0.1; or write a model "
        "repository for a stock tritonserver (--export-repository). See the module docstring.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help=".safetensors or upstream .pth checkpoint")
    p.add_argument(
        "--outputs",
        nargs="+",
        default=["labels"],
        choices=OUTPUTS,
        help="the models to serve; probabilities and logits are fp32 K x H x W, 4K times the bytes of labels",
    )
    p.add_argument("--precision", default="auto", choices=CHOICES, help=f"as predict: {AUTO_HELP} (--calibration)")
    p.add_argument("--calibration", default=None, metavar="IMAGES", help="for int8: a few training images")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default: cuda if available")
    p.add_argument("--max-batch", type=int, default=4, help="images per forward pass (Triton's max_batch_size)")
    p.add_argument(
        "--queue-delay-us",
        type=int,
        default=2000,
        help="how long the dynamic batcher holds a request for others of its shape",
    )
    p.add_argument("--no-dynamic-batching", action="store_true", help="run every request as it arrives")
    p.add_argument(
        "--max-queue",
        type=int,
        default=64,
        help="requests a model's dynamic batcher may hold; beyond it a request is refused at once with "
        "'Exceeds maximum queue size' (0: unbounded)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help="largest image (H*W) a request may hold; larger ones are refused with a message",
    )
    p.add_argument(
        "--warmup",
        nargs="*",
        type=parse_size,
        default=[(512, 1024)],
        metavar="HxW",
        help="image sizes to run once before the server reports ready",
    )
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="address the HTTP, gRPC and metrics endpoints bind to (0.0.0.0: every interface)",
    )
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument(
        "--exit-timeout", type=int, default=30, help="on SIGTERM, seconds to wait for accepted requests to finish"
    )
    p.add_argument(
        "--export-repository",
        default=None,
        metavar="DIR",
        help="write a Triton model repository to DIR (Python backend) instead of serving",
    )
    p.add_argument("--overwrite", action="store_true", help="with --export-repository: write into a non-empty DIR")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> None:
        try:
            batching = Batching(args.max_batch, args.queue_delay_us, not args.no_dynamic_batching, args.max_queue)
        except ValueError as e:
            raise ServeError(str(e)) from None
        if args.max_pixels < 1:
            raise ServeError(f"--max-pixels {args.max_pixels}: must be >= 1")
        if args.export_repository:
            summary = export(args, batching)
        else:
            require("serve", "python -m torch_deploy.serve", cli=True)
            logging.basicConfig(level=logging.WARNING)
            summary = serve(args, batching)
        if not args.quiet:
            print(" ".join(f"{k}={v}" for k, v in summary.items()), flush=True)

    return report_errors(command, (ServeError,), debug=args.debug)  # csfcn/cli.py


if __name__ == "__main__":
    sys.exit(main())
