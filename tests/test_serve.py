"""Serving (torch_deploy/serving.py, tools/serve.py, predict --server): a real tritonserver on
loopback, started from the serving environment (``make serve-venv``: PyTriton pins numpy < 2, so
it cannot share the test environment; ``CSFCN_SERVE_PYTHON`` names its interpreter).

What is checked: readiness only after warm-up, ports on 127.0.0.1 only, metrics; predict
--server writes the bytes local predict writes (images and video frames); bad requests (wrong
dtype, rank, zero size, a 20000 x 20000 declaration, garbage bytes, above --max-pixels, a client
gone mid-request, a burst beyond the queue) each get a clear error and the server keeps serving;
HTTP and gRPC under load with and without dynamic batching, then SIGTERM under load: nothing lost,
nothing swapped; the exported repository run by the tritonserver binary PyTriton ships.
Every loop here is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from torch_checkpoints import make_checkpoint, random_image

from tools.benchmark_serve import ServerProcess, free_ports, wait_until_ready
from torch_deploy import Predictor

ROOT = Path(__file__).resolve().parents[1]
# (relative to the repository; not resolved: a venv's python is a symbolic link that must stay one)
SERVE_PY = str(ROOT / os.environ.get("CSFCN_SERVE_PYTHON", ".serve-venv/bin/python"))
MAX_PIXELS = 60_000


@pytest.fixture(scope="module")
def serve_python():
    if not os.path.exists(SERVE_PY):
        pytest.fail(f"no serving environment at {SERVE_PY}: run `make serve-venv` (make test builds it)")
    return SERVE_PY


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("serve") / "csfcn19.safetensors", seed=5)


@pytest.fixture(scope="module")
def local(ckpt):
    """The reference: the same checkpoint and precision ("auto") here, one image per forward."""
    return Predictor.from_checkpoint(ckpt, precision="auto", batch_size=1)


@pytest.fixture(scope="module")
def server(serve_python, ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    args = ["--outputs", "labels", "probabilities", "logits", "--warmup", "64x128", "--max-pixels", MAX_PIXELS,
            "--max-queue", 4, "--max-batch", 4]  # fmt: skip
    s = ServerProcess(ckpt, log, args, python=serve_python, models=("labels", "probabilities", "logits"))
    yield s
    try:
        s.terminate(timeout_s=60)  # graceful, as a user stops it
    finally:
        s.kill()


def _run(python, *args, check=True, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([python, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r


# --------------------------------------------------------------------------- raw KServe v2 HTTP
def _infer(server, model, inputs, timeout=60, output=None):
    """POST /v2/models/MODEL/infer with binary tensors: inputs = [(name, datatype, shape, bytes)].
    (status, parsed JSON header, binary tail)."""
    header = {
        "inputs": [
            {"name": n, "datatype": dt, "shape": list(shape), "parameters": {"binary_data_size": len(data)}}
            for n, dt, shape, data in inputs
        ],
        "outputs": [{"name": output or model, "parameters": {"binary_data": True}}],
    }
    head = json.dumps(header).encode()
    body = head + b"".join(data for *_, data in inputs)
    req = urllib.request.Request(
        f"{server.http}/v2/models/{model}/infer",
        data=body,
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, n = r.read(), int(r.headers["Inference-Header-Content-Length"])
            return r.status, json.loads(raw[:n]), raw[n:]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}"), b""


def _labels(server, image, timeout=60):
    status, head, tail = _infer(server, "labels", [("image", "UINT8", (1, *image.shape), image.tobytes())], timeout)
    assert status == 200, head
    return np.frombuffer(tail, np.uint8).reshape(head["outputs"][0]["shape"])[0]


def _bytes_tensor(*blobs) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in blobs)


def _png(image) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def _png_declaring(h: int, w: int) -> bytes:
    """A PNG whose header says h x w (with a valid CRC) over a 1x1 image's data."""
    png = bytearray(_png(np.zeros((1, 1, 3), np.uint8)))
    png[16:24] = struct.pack(">II", w, h)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


def _still_serving(server, local, rng):
    image = random_image(rng, 40, 72)
    np.testing.assert_array_equal(_labels(server, image), local.predict(image))


# --------------------------------------------------------------------------- tests
def test_ready_only_after_warm_up_on_loopback_with_metrics(server):
    at_ready = server.log_at_ready
    for output in ("labels", "probabilities", "logits"):
        assert f"warm-up: {output} at 64x128" in at_ready, at_ready[-2000:]
    # every port the server listens on is bound to 127.0.0.1 (/proc/net/tcp: local address, state 0A)
    ports = {server.http_port, server.grpc_port, server.metrics_port}
    listening = {}
    for line in (
        Path("/proc/net/tcp").read_text().splitlines()[1:] + Path("/proc/net/tcp6").read_text().splitlines()[1:]
    ):
        local_addr, state = line.split()[1], line.split()[3]
        addr, port = local_addr.split(":")
        if state == "0A" and int(port, 16) in ports:
            listening.setdefault(int(port, 16), set()).add(addr)
    assert set(listening) == ports, listening
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, and as IPv4-mapped IPv6
    assert all(a <= loopback for a in listening.values()), listening
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "nv_inference_request_success" in metrics


def test_outputs_and_encoded_input(server, local, rng):
    image = random_image(rng, 56, 88)
    ref = local.predict(image)
    np.testing.assert_array_equal(_labels(server, image), ref)
    status, head, tail = _infer(server, "labels", [("encoded", "BYTES", (1, 1), _bytes_tensor(_png(image)))])
    assert status == 200, head
    np.testing.assert_array_equal(np.frombuffer(tail, np.uint8).reshape(56, 88), ref)
    local.enable_logits()
    (logits,) = local.predict_logits([image])
    for model, expect in (("logits", logits), ("probabilities", None)):
        status, head, tail = _infer(server, model, [("image", "UINT8", (1, *image.shape), image.tobytes())])
        assert status == 200, head
        out = np.frombuffer(tail, np.float32).reshape(head["outputs"][0]["shape"])[0]
        assert out.shape == (19, 56, 88)
        if expect is not None:
            np.testing.assert_array_equal(out, expect)  # one image per forward on both sides: the same numbers
        else:
            np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)
            np.testing.assert_array_equal(out.argmax(0), ref)


BAD = {
    "wrong dtype": ([("image", "FP32", (1, 4, 4, 3), np.zeros((1, 4, 4, 3), np.float32).tobytes())], "data-type"),
    "wrong rank": ([("image", "UINT8", (1, 4, 4), bytes(16))], "unexpected shape"),
    # refused inside PyTriton's proxy before our check runs (the exported repository says "holds no pixels")
    "zero size": ([("image", "UINT8", (1, 0, 5, 3), b"")], "zeros in shape"),
    "20000 x 20000 declared, 12 bytes sent": ([("image", "UINT8", (1, 20000, 20000, 3), bytes(12))], "byte size"),
    "20000 x 20000 png": ([("encoded", "BYTES", (1, 1), _bytes_tensor(_png_declaring(20000, 20000)))], "limit"),
    "garbage bytes": ([("encoded", "BYTES", (1, 1), _bytes_tensor(b"\x89PNG not really"))], "no readable image"),
    "above --max-pixels": ([("image", "UINT8", (1, 250, 250, 3), bytes(250 * 250 * 3))], "above this server's limit"),
    "no input": ([], "request has 0 inputs"),
    "both inputs": (
        [("image", "UINT8", (1, 2, 2, 3), bytes(12)), ("encoded", "BYTES", (1, 1), _bytes_tensor(b"x"))],
        "exactly one input",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(case, server, local, rng):
    inputs, phrase = BAD[case]
    status, head, _ = _infer(server, "labels", inputs)
    assert status >= 400, (case, status, head)
    assert phrase in head.get("error", ""), (case, head)
    _still_serving(server, local, rng)


def test_a_client_gone_mid_request_and_a_burst_beyond_the_queue(server, local, rng):
    # a client that announces 1 MB, sends part of it and vanishes (RST)
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
        head = json.dumps({"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 200, 200, 3],
                                       "parameters": {"binary_data_size": 120000}}]}).encode()  # fmt: skip
        s.sendall(
            b"POST /v2/models/labels/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            + f"Inference-Header-Content-Length: {len(head)}\r\nContent-Length: {len(head) + 120000}\r\n\r\n".encode()
            + head
            + bytes(50000)
        )
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    _still_serving(server, local, rng)

    # 32 requests at once against a queue of 4: some refused at once, the rest answered right
    image = random_image(rng, 200, 288)
    ref = local.predict(image)
    results = [None] * 32
    start = threading.Barrier(32)

    def one(i):
        start.wait(30)
        results[i] = _infer(server, "labels", [("image", "UINT8", (1, *image.shape), image.tobytes())], timeout=120)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert all(r is not None for r in results), "a request of the burst never came back"
    served = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert served and refused, [r[0] for r in results]
    assert all("queue" in r[1].get("error", "").lower() for r in refused), {r[1].get("error") for r in refused}
    for _, _head, tail in served:
        np.testing.assert_array_equal(np.frombuffer(tail, np.uint8).reshape(image.shape[:2]), ref)
    _still_serving(server, local, rng)


def test_predict_server_writes_what_local_predict_writes(serve_python, server, ckpt, rng, tmp_path):
    from test_predict import _write_clip

    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    for i, (h, w) in enumerate([(48, 80), (61, 77), (48, 80)]):
        Image.fromarray(random_image(rng, h, w)).save(images / ("sub" if i == 2 else "") / f"im{i}.png")
    video = tmp_path / "clip.mp4"
    _write_clip(video, rng, 5)
    # local: one image per forward, as the server runs a lone request (--in-flight 1)
    for src, name in ((images, "imgs"), (video, "vid")):
        _run(sys.executable, "-m", "torch_deploy.predict", "--checkpoint", ckpt, "--input", src, "--out",
             tmp_path / f"local_{name}", "--batch-size", 1, "--save-frames", "--quiet")  # fmt: skip
        _run(serve_python, "-m", "torch_deploy.predict", "--server", server.http, "--input", src, "--out",
             tmp_path / f"served_{name}", "--in-flight", 1, "--save-frames", "--quiet")  # fmt: skip
        a, b = tmp_path / f"local_{name}", tmp_path / f"served_{name}"
        files = sorted(str(p.relative_to(a)) for p in a.rglob("*.png"))
        assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*.png")) and len(files) > 5
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (tmp_path / "served_vid" / "clip_overlay.mp4").stat().st_size > 0
    record = json.loads((tmp_path / "served_imgs" / ".csfcn-predict.json").read_text())
    local_record = json.loads((tmp_path / "local_imgs" / ".csfcn-predict.json").read_text())
    assert record["fingerprint"] == local_record["fingerprint"] and record["checkpoint"].startswith(server.http)

    # gRPC with 4 in flight: the server merges them; near-tie pixels may round the other way
    out = tmp_path / "served_grpc"
    _run(serve_python, "-m", "torch_deploy.predict", "--server", server.grpc, "--input", images, "--out", out,
         "--in-flight", 4, "--quiet")  # fmt: skip
    for f in sorted((tmp_path / "local_imgs" / "labels").rglob("*.png")):
        a = np.asarray(Image.open(f))
        b = np.asarray(Image.open(out / "labels" / f.relative_to(tmp_path / "local_imgs" / "labels")))
        assert a.shape == b.shape and (a == b).mean() >= 0.999, f

    # errors are one line: no server there; precision given to a client
    port = free_ports(1)[0]
    r = _run(serve_python, "-m", "torch_deploy.predict", "--server", f"http://127.0.0.1:{port}", "--input", images,
             "--out", tmp_path / "x", check=False)  # fmt: skip
    assert r.returncode == 2 and "cannot reach a Triton server" in r.stderr and "Traceback" not in r.stderr
    r = _run(serve_python, "-m", "torch_deploy.predict", "--server", server.http, "--precision", "fp32",
             "--input", images, "--out", tmp_path / "x", check=False)  # fmt: skip
    assert r.returncode == 2 and "belong to the server" in r.stderr


def test_load_with_and_without_batching_then_sigterm_loses_nothing(serve_python, ckpt, tmp_path):
    out = tmp_path / "load.json"
    _run(serve_python, "-m", "tools.benchmark_serve", "--checkpoint", ckpt, "--sizes", "64x128", "48x96",
         "--clients", 3, "--requests", 8, "--protocols", "http", "grpc", "--batching", "dynamic", "none",
         "--sigterm-after", 5, "--deadline", 120, "--request-timeout", 60, "--json", out, "--quiet",
         timeout=400)  # fmt: skip
    result = json.loads(out.read_text())
    assert [d["batch"] for d in result["direct"]] == [1, 4] and all(d["images_per_s"] > 0 for d in result["direct"])
    runs = result["served"]
    assert [(r["batching"], r["protocol"]) for r in runs] == [
        ("dynamic", "http"), ("dynamic", "grpc"), ("none", "http"), ("none", "grpc")
    ]  # fmt: skip
    for r in runs:
        assert r["lost"] == 0 and r["mismatched"] == 0, r
        assert r["requests"] == 24, r
        p = r["latency_ms"]
        assert p["p50"] <= p["p95"] <= p["p99"], r
    for r in runs[:-1]:
        assert r["correct"] == 24 and r["refused"] == 0, r
    last = runs[-1]  # SIGTERM after 5 answers, the clients still sending
    assert last["sigterm_after"] == 5 and last["correct"] >= 5 and last["correct"] + last["refused"] == 24, last
    assert runs[1]["exit_status"] == 0 and last["exit_status"] == 0, runs


def test_exported_repository_runs_on_the_bundled_tritonserver(serve_python, ckpt, local, rng, tmp_path):
    repo = tmp_path / "repo"
    _run(serve_python, "-m", "torch_deploy.serve", "--checkpoint", ckpt, "--export-repository", repo,
         "--outputs", "labels", "probabilities", "--max-pixels", MAX_PIXELS, "--quiet")  # fmt: skip
    config = (repo / "labels" / "config.pbtxt").read_text()
    assert "dynamic_batching" in config and 'backend: "python"' in config and "max_batch_size: 4" in config
    assert (repo / "labels" / "1" / "model.py").is_file() and (repo / "checkpoint.safetensors").is_file()
    r = _run(serve_python, "-m", "torch_deploy.serve", "--checkpoint", ckpt, "--export-repository", repo,
             check=False)  # fmt: skip
    assert r.returncode == 2 and "not empty" in r.stderr

    # the tritonserver PyTriton ships, its Python-backend stub for this Python put in place (as PyTriton does)
    where = _run(serve_python, "-c", "import pytriton, sysconfig, sys; print(pytriton.__path__[0]); "
                 "print(sysconfig.get_config_var('LIBDIR')); print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
                 "print(sys.prefix)").stdout.split("\n")  # fmt: skip
    dist, libdir, version, prefix = where[:4]
    server_dir = tmp_path / "tritonserver"
    shutil.copytree(Path(dist) / "tritonserver", server_dir, ignore=shutil.ignore_patterns("python_backend_stubs"))
    stub = Path(dist) / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    shutil.copy(stub, server_dir / "backends" / "python" / "triton_python_backend_stub")
    http, grpc, metrics = free_ports(3)
    env = dict(
        os.environ,
        PATH=f"{prefix}/bin:{os.environ['PATH']}",  # the backend's Python: the first python3 on PATH
        LD_LIBRARY_PATH=f"{libdir}:{Path(dist).parent / 'nvidia_pytriton.libs'}",
    )
    log = open(tmp_path / "tritonserver.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [server_dir / "bin" / "tritonserver", "--model-repository", repo, "--backend-directory",
         server_dir / "backends", "--http-address", "127.0.0.1", "--http-port", str(http), "--grpc-address",
         "127.0.0.1", "--grpc-port", str(grpc), "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        stock = SimpleNamespace(http=f"http://127.0.0.1:{http}")
        wait_until_ready(stock.http, ["labels"], proc, tmp_path / "tritonserver.log", timeout_s=180)
        image = random_image(rng, 40, 64)
        np.testing.assert_array_equal(_labels(stock, image), local.predict(image))
        status, head, _ = _infer(stock, "labels", [("encoded", "BYTES", (1, 1), _bytes_tensor(b"junk"))])
        assert status == 400 and "no readable image" in head["error"], head
        status, head, _ = _infer(stock, "labels", [("image", "UINT8", (1, 0, 5, 3), b"")])
        assert status == 400 and "holds no pixels" in head["error"], head
        np.testing.assert_array_equal(_labels(stock, image), local.predict(image))  # still serving
        status, head, tail = _infer(stock, "probabilities", [("image", "UINT8", (1, *image.shape), image.tobytes())])
        assert status == 200 and head["outputs"][0]["shape"] == [1, 19, 40, 64]
        q = _bytes_tensor(b"info")
        status, head, tail = _infer(stock, "csfcn_info", [("query", "BYTES", (1,), q)], output="info")
        info = json.loads(tail[4:])
        assert info["models"] == ["labels", "probabilities"] and info["precision"] == local.path
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def test_engine_answers_each_request_with_its_own_images(local, rng):
    """Requests merged by the batcher run as one forward per size; each answer is its own request's
    images, a refused request gets its own error and the others are served."""
    from torch_deploy.serving import Engine, RequestError

    engine = Engine(local, ("labels",), max_pixels=MAX_PIXELS)
    images = [random_image(rng, 40, 56) for _ in range(3)] + [random_image(rng, 24, 32) for _ in range(2)]
    requests = [
        {"image": np.stack(images[0:2])},  # two images in one request
        {"image": np.zeros((1, 300, 300, 3), np.uint8)},  # above max_pixels: refused alone
        {"image": images[2][None]},
        {"encoded": np.array([[_png(images[3])]], dtype=object)},
        {"image": images[4][None]},
    ]
    answers = engine.handle("labels", requests)
    assert isinstance(answers[1], RequestError) and "above this server's limit" in str(answers[1])
    expect = [np.stack(images[0:2]), None, images[2][None], images[3][None], images[4][None]]
    for answer, imgs in zip(answers, expect):
        if imgs is None:
            continue
        labels = answer["labels"]
        assert labels.shape == imgs.shape[:3] and labels.dtype == np.uint8
        for got, image in zip(labels, imgs):
            assert (got == local.predict(image)).mean() >= 0.999  # merged forwards: near-ties may round apart
    assert engine.served == 5
