"""Served vs direct, in one run: latency and throughput of ``python -m torch_deploy.serve`` beside
``Predictor`` calls in this process, with and without dynamic batching, over HTTP and gRPC, and
every response checked against a local Predictor (nothing lost, nothing swapped).

    python -m tools.benchmark_serve --checkpoint model.safetensors --sizes 512x1024 \\
        --clients 1 4 --requests 32 --protocols http grpc --batching dynamic none --json serve.json

For each batching mode a server is started (this interpreter, free ports on 127.0.0.1), warmed at
the sizes, loaded by ``clients`` threads each sending ``requests`` images one per request (mixed
sizes when several are given), then stopped with SIGTERM. Direct: the same images through a
Predictor of the same precision here, one at a time and ``--max-batch`` at a time, before any
server runs (the machine is never shared between the two). A response is *correct* when its
labels have the image's shape and agree with the local batch-1 labels on >= 99.9 % of the pixels
(a batch of several rounds GEMMs differently, which can flip a near-tie pixel; a swapped or
corrupted answer agrees on ~1/K); *identical* counts the bit-equal ones.

``--sigterm-after N`` (the shutdown check): SIGTERM reaches the server after N responses while
the clients keep sending; a request then either completes correctly or is refused at the door
(connection refused / server stopping); anything else counts as lost.

Loops are bounded: ``clients x requests`` requests per run, each with ``--request-timeout``, and
no new request after ``--deadline`` seconds. Needs the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from csfcn.cli import run_main
from csfcn.extras import require
from csfcn.files import write_atomic
from tools.serve import parse_size
from torch_deploy.predictor import Predictor
from torch_deploy.remote import triton_client

# Errors that mean "refused at the door", not "accepted and lost" (HTTP and gRPC clients' texts).
# (While Triton stops it unloads the models: a request for one then is "unknown model ... has no
# available versions", refused before anything runs.)
REFUSED = re.compile(
    r"connection refused|failed to connect|unavailable|server is stopping|exiting|not ready|"
    r"has no available versions|"
    r"connect call failed|cannot assign|broken pipe|connection reset by peer before",
    re.IGNORECASE,
)


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def percentiles(values_ms) -> dict:
    v = np.asarray(values_ms, dtype=float)
    if v.size == 0:
        return {"p50": None, "p95": None, "p99": None}
    return {f"p{q}": round(float(np.percentile(v, q)), 2) for q in (50, 95, 99)}


# --------------------------------------------------------------------------- the server process
def models_ready(http: str, models) -> bool:
    """Every model's own readiness (``/v2/health/ready`` turns green as soon as tritonserver runs,
    before PyTriton loads the models; a model's turns green once it is loaded, after warm-up)."""
    for model in models:
        try:
            with urllib.request.urlopen(f"{http}/v2/models/{model}/ready", timeout=2) as r:
                if r.status != 200:
                    return False
        except (urllib.error.URLError, OSError):
            return False
    return True


def wait_until_ready(http: str, models, proc: subprocess.Popen, log: Path, timeout_s: float) -> float:
    """Seconds until every model of the server at ``http`` (process ``proc``, output in ``log``) is
    ready; RuntimeError with the log's tail if the process exits first or the time runs out."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}:\n{Path(log).read_text()[-3000:]}")
        if models_ready(http, models):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s:\n{Path(log).read_text()[-3000:]}")


class ServerProcess:
    """``python -m torch_deploy.serve`` on free loopback ports, its output in ``log``."""

    def __init__(
        self, checkpoint, log: Path, args=(), python=sys.executable, startup_timeout_s=180.0, models=("labels",)
    ):
        self.http_port, self.grpc_port, self.metrics_port = free_ports(3)
        self.log = Path(log)
        self.stop_requested = False
        self.models = (*models, "csfcn_info")  # all loaded: then tritonserver's own readiness is green too
        cmd = [
            python, "-m", "torch_deploy.serve", "--checkpoint", str(checkpoint),
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port), *map(str, args),
        ]  # fmt: skip
        self._log_file = open(self.log, "w")  # noqa: SIM115 (open while the server runs)
        # its own process group: kill() takes tritonserver and its backend stubs down with it
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.ready_at = self._wait_ready(startup_timeout_s)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    def url(self, protocol: str) -> str:
        return self.http if protocol == "http" else self.grpc

    def _wait_ready(self, timeout_s: float) -> float:
        try:
            waited = wait_until_ready(self.http, self.models, self.proc, self.log, timeout_s)
        except RuntimeError:
            self.kill()
            raise
        self.log_at_ready = self.log.read_text()  # what the server had said when it turned ready
        return waited

    def request_stop(self) -> None:
        """SIGTERM, once (a second one during the graceful stop would take the default action)."""
        if not self.stop_requested and self.proc.poll() is None:
            self.stop_requested = True
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout_s: float = 60.0) -> tuple[int, float]:
        """SIGTERM (unless already sent), then wait: (exit status, seconds to exit)."""
        t0 = time.monotonic()
        self.request_stop()
        try:
            rc = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(f"the server did not stop {timeout_s:.0f} s after SIGTERM") from None
        finally:
            self._log_file.close()
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL to the server's whole process group (tritonserver and the stubs included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._log_file.close()


# --------------------------------------------------------------------------- load
def load(
    url: str,
    protocol: str,
    images,
    refs,
    *,
    clients: int,
    requests: int,
    request_timeout_s: float,
    deadline_s: float,
    sigterm=None,
    warmup: int = 2,
) -> tuple[list[dict], float]:
    """``clients`` threads x ``requests`` requests (image i of client c: (c * requests + i) mod n),
    after ``warmup`` untimed requests per client; (records, seconds from the first timed request).
    ``sigterm=(stop, n)``: ``stop()`` (the server's SIGTERM) once ``n`` responses have come back."""
    records: list[dict] = []
    lock = threading.Lock()
    done = [0]
    ready = threading.Barrier(clients + 1)
    t_start = time.monotonic()

    def send(tc, client, image, kwargs):
        tensor = tc.InferInput("image", [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[None])
        return client.infer("labels", [tensor], **kwargs).as_numpy("labels")

    def worker(c: int):
        tc, client = triton_client(protocol, url.split("://", 1)[1], request_timeout_s)
        kwargs = {"client_timeout": request_timeout_s} if protocol == "grpc" else {}
        for _ in range(warmup):  # the connection's first requests, not timed (checked by the timed ones)
            send(tc, client, images[c % len(images)], kwargs)
        ready.wait(request_timeout_s)  # every client warm: the timed requests start together
        for i in range(requests):
            if time.monotonic() - t_start > deadline_s:
                break
            k = (c * requests + i) % len(images)
            image = images[k]
            record = {"client": c, "image": k, "protocol": protocol}
            t0 = time.perf_counter()
            try:
                out = send(tc, client, image, kwargs)
                record["ms"] = (time.perf_counter() - t0) * 1e3
                ok = out is not None and out.shape == (1, *image.shape[:2])
                agree = float((out[0] == refs[k]).mean()) if ok else 0.0
                record["status"] = "correct" if ok and agree >= 0.999 else "mismatched"
                record["identical"] = bool(ok and agree == 1.0)
                record["agreement"] = agree
            except Exception as e:
                text = " ".join(str(e).split())
                record["status"] = "refused" if REFUSED.search(text) else "lost"
                record["error"] = text[:300]
            with lock:
                records.append(record)
                if record["status"] == "correct":
                    done[0] += 1
                    if sigterm and done[0] == sigterm[1]:
                        sigterm[0]()
                        record["sigterm_sent_after"] = done[0]
        with contextlib.suppress(Exception):
            client.close()

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    ready.wait(request_timeout_s * (warmup + 1))
    t_start = time.monotonic()
    for t in threads:
        t.join(deadline_s + request_timeout_s + 5)
    return records, time.monotonic() - t_start


TRITON_TIMES = {  # Triton's cumulative per-model counters (microseconds) -> our names
    "queue": "nv_inference_queue_duration_us",
    "compute_input": "nv_inference_compute_input_duration_us",
    "compute_infer": "nv_inference_compute_infer_duration_us",
    "compute_output": "nv_inference_compute_output_duration_us",
    "request": "nv_inference_request_duration_us",
}


def triton_counters(server: ServerProcess, model: str = "labels") -> dict:
    """Triton's cumulative time counters and request count of ``model`` (Prometheus text)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for name, metric in {**TRITON_TIMES, "count": "nv_inference_request_success"}.items():
        m = re.search(rf'^{metric}{{model="{model}",version="1"}} (\S+)$', text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def server_side_ms(before: dict, after: dict) -> dict:
    """Mean milliseconds per request inside the server between two readings: time in the dynamic
    batcher's queue, and the model's execution (compute_infer: PyTriton's proxy round trip and
    our forward)."""
    n = after["count"] - before["count"]
    return {k: round((after[k] - before[k]) / n / 1e3, 2) for k in TRITON_TIMES} if n > 0 else {}


def summarize(records: list[dict], wall_s: float) -> dict:
    status = {s: sum(r["status"] == s for r in records) for s in ("correct", "mismatched", "refused", "lost")}
    ms = [r["ms"] for r in records if r["status"] == "correct"]
    return {
        **status,
        "identical": sum(bool(r.get("identical")) for r in records),
        "requests": len(records),
        "images_per_s": round(status["correct"] / wall_s, 2) if wall_s > 0 else None,
        "latency_ms": percentiles(ms),
        "errors": sorted({r["error"] for r in records if r.get("error")})[:5],
        "min_agreement": min((r["agreement"] for r in records if "agreement" in r), default=None),
    }


def direct(predictor: Predictor, images, total: int, batch: int) -> dict:
    """``total`` images through the predictor here, ``batch`` of one size at a time."""
    lat, t0, n = [], time.perf_counter(), 0
    while n < total:
        k = n % len(images)
        group = [images[k]] * min(batch, total - n)
        t = time.perf_counter()
        predictor.predict(group)
        lat.append((time.perf_counter() - t) * 1e3)
        n += len(group)
    wall = time.perf_counter() - t0
    return {"batch": batch, "images": total, "images_per_s": round(total / wall, 2), "latency_ms": percentiles(lat)}


# --------------------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.benchmark_serve",
        description="Served (Triton, dynamic batching on/off, HTTP/gRPC) vs direct Predictor latency and "
        "throughput in one run; every response checked against a local Predictor.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sizes", nargs="+", type=parse_size, default=[(512, 1024)], metavar="HxW")
    p.add_argument("--images-per-size", type=int, default=2, help="distinct random images per size")
    p.add_argument("--clients", nargs="+", type=int, default=[1, 4], help="concurrent clients, one run each")
    p.add_argument("--requests", type=int, default=16, help="requests per client")
    p.add_argument("--protocols", nargs="+", default=["http", "grpc"], choices=["http", "grpc"])
    p.add_argument("--batching", nargs="+", default=["dynamic", "none"], choices=["dynamic", "none"])
    p.add_argument("--max-batch", type=int, default=4)
    p.add_argument("--queue-delay-us", type=int, default=2000)
    p.add_argument("--precision", default="auto")
    p.add_argument("--no-direct", action="store_true", help="skip the direct Predictor runs")
    p.add_argument(
        "--sigterm-after",
        type=int,
        default=0,
        metavar="N",
        help="shutdown check: SIGTERM the server after N responses of the last run",
    )
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--deadline", type=float, default=300.0, help="no new request after this many seconds of a run")
    p.add_argument("--logs", default=None, help="folder for the servers' logs (default: next to --json, or cwd)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quiet", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    require("serve", "python -m tools.benchmark_serve", cli=True)  # (ServerProcess alone needs no extra)
    say = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in args.sizes for _ in range(args.images_per_size)
    ]
    predictor = Predictor.from_checkpoint(args.checkpoint, precision=args.precision, batch_size=args.max_batch)
    refs = [predictor.predict(im) for im in images]  # batch 1: the reference of every response
    result = {
        "checkpoint": str(args.checkpoint), "precision": predictor.path, "device": str(predictor.device),
        "sizes": [f"{h}x{w}" for h, w in args.sizes], "cpu_count": os.cpu_count(), "direct": [], "served": [],
    }  # fmt: skip
    total = max(args.clients) * args.requests
    if not args.no_direct:
        predictor.predict(images[:1] * args.max_batch)  # warm
        for batch in sorted({1, args.max_batch}):
            d = direct(predictor, images, total, batch)
            result["direct"].append(d)
            say(f"direct batch {batch}: {d['images_per_s']} img/s, latency {d['latency_ms']}")
    del predictor
    logs = Path(args.logs or (Path(args.json).parent if args.json else "."))
    logs.mkdir(parents=True, exist_ok=True)
    warm = [f"{h}x{w}" for h, w in args.sizes]
    for mode in args.batching:
        server_args = ["--precision", args.precision, "--max-batch", args.max_batch, "--queue-delay-us",
                       args.queue_delay_us, "--warmup", *warm]  # fmt: skip
        if mode == "none":
            server_args.append("--no-dynamic-batching")
        server = ServerProcess(args.checkpoint, logs / f"server_{mode}.log", server_args)
        say(f"server ({mode} batching) ready in {server.ready_at:.1f} s")
        try:
            runs = [(proto, c) for proto in args.protocols for c in args.clients]
            for j, (proto, clients) in enumerate(runs):
                last = mode == args.batching[-1] and j == len(runs) - 1
                sigterm = (server.request_stop, args.sigterm_after) if args.sigterm_after and last else None
                before = triton_counters(server)
                records, wall = load(
                    server.url(proto),
                    proto,
                    images,
                    refs,
                    clients=clients,
                    requests=args.requests,
                    request_timeout_s=args.request_timeout,
                    deadline_s=args.deadline,
                    sigterm=sigterm,
                )
                s = summarize(records, wall)
                with contextlib.suppress(OSError):  # (the server may be stopping: --sigterm-after)
                    s["server_ms"] = server_side_ms(before, triton_counters(server))
                s.update(
                    batching=mode, protocol=proto, clients=clients, sigterm_after=args.sigterm_after if sigterm else 0
                )
                result["served"].append(s)
                say(
                    f"served {mode} {proto} x{clients}: {s['images_per_s']} img/s, latency {s['latency_ms']}, "
                    f"in the server {s.get('server_ms')}, "
                    f"correct {s['correct']}/{s['requests']} (identical {s['identical']}), refused {s['refused']}, "
                    f"lost {s['lost']}, mismatched {s['mismatched']}"
                )
        finally:
            rc, secs = server.terminate()
        result["served"][-1].update(exit_status=rc, stop_s=round(secs, 2))
        say(f"server ({mode}) stopped: status {rc} in {secs:.1f} s")
    if args.json:
        write_atomic(args.json, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_main(main)
