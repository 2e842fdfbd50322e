"""A running ``torch_deploy.serve`` (or any Triton serving an exported repository) used like a
:class:`~torch_deploy.predictor.Predictor`: ``predict --server URL`` runs on it.

    remote = RemotePredictor("http://127.0.0.1:8000")     # or grpc://127.0.0.1:8001
    labels = remote.predict([img0, img1, img2])            # uint8 (Hi, Wi) each, in order

Each image is its own request; up to ``in_flight`` are on the wire at once (the server's dynamic
batcher merges those of one size), and the answers come back in the order of the images. The
server's ``csfcn_info`` model says what it serves: the model config (classes, class table), the
checkpoint's fingerprint and the precision path, so outputs are named and coloured as a local
run of the same checkpoint would. Needs the ``serve`` extra (tritonclient).
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import numpy as np

from csfcn.extras import require
from csfcn.model_config import ModelConfig
from torch_deploy.predictor import load_image
from torch_deploy.serving import INFO_MODEL

DEFAULT_PORTS = {"http": 8000, "grpc": 8001}


class RemoteError(RuntimeError):
    """The server cannot be reached, does not serve what is asked, or refused a request."""


def server_message(e: Exception) -> str:
    """The line a server error means: our RequestError's own message where there is one (PyTriton
    wraps it in a traceback), else Triton's message on one line."""
    text = str(e)
    found = re.findall(r"RequestError: (.+)", text)
    if found:
        return found[-1].strip()
    return " ".join(text.split())[:500]


def parse_url(url: str) -> tuple[str, str]:
    """'http://host:port' | 'grpc://host:port' | 'host:port' (HTTP) -> (protocol, 'host:port')."""
    parsed = urlparse(url if "://" in url else "http://" + url)
    if parsed.scheme not in DEFAULT_PORTS:
        raise RemoteError(f"--server {url}: the scheme must be http:// or grpc://")
    if not parsed.hostname:
        raise RemoteError(f"--server {url}: no host; e.g. http://127.0.0.1:8000 or grpc://127.0.0.1:8001")
    return parsed.scheme, f"{parsed.hostname}:{parsed.port or DEFAULT_PORTS[parsed.scheme]}"


def triton_client(protocol: str, address: str, timeout_s: float):
    """(tritonclient module, client) for ``protocol`` ("http" | "grpc") at "host:port"."""
    if protocol == "http":
        import tritonclient.http as tc

        return tc, tc.InferenceServerClient(address, connection_timeout=timeout_s, network_timeout=timeout_s)
    import tritonclient.grpc as tc

    return tc, tc.InferenceServerClient(address)


class RemotePredictor:
    """``predict`` on a Triton server; the interface :mod:`tools.predict` uses of a Predictor."""

    def __init__(
        self,
        url: str,
        *,
        model: str = "labels",
        in_flight: int = 4,
        timeout_s: float = 600.0,
        ready_timeout_s: float = 60.0,
    ):
        require("serve", "predict --server", modules=("tritonclient",))
        if in_flight < 1:
            raise RemoteError(f"in flight {in_flight}: must be >= 1")
        self.url, self.model = url, model
        self.protocol, self.address = parse_url(url)
        self.batch_size = int(in_flight)  # images handed over per call (all on the wire at once)
        self.timeout_s = float(timeout_s)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=self.batch_size, thread_name_prefix="csfcn-remote")
        client = self._client()
        t0 = time.monotonic()
        while True:  # a server just started may still be loading its models: wait, bounded
            try:
                ready = client.is_model_ready(INFO_MODEL) and client.is_model_ready(model)
            except Exception as e:
                raise RemoteError(
                    f"--server {url}: cannot reach a Triton server ({server_message(e)}); start one with "
                    "python -m torch_deploy.serve --checkpoint CKPT"
                ) from None
            if ready:
                break
            if time.monotonic() - t0 > ready_timeout_s:
                raise RemoteError(
                    f"--server {url}: the server answers but its models {INFO_MODEL!r} and {model!r} were not ready "
                    f"within {ready_timeout_s:.0f} s (still warming up, or not a csfcn server serving {model!r})"
                )
            time.sleep(0.25)
        try:
            info = self._ask_info(client)
        except Exception as e:
            raise RemoteError(
                f"--server {url}: no {INFO_MODEL} model there ({server_message(e)}); is it a csfcn server?"
            ) from None
        self.info = info
        if model not in info["models"]:
            raise RemoteError(f"--server {url}: serves {info['models']}, not {model!r}")
        self.config = ModelConfig.from_mapping(info["config"])
        self.num_classes = int(self.config.num_classes)
        self.path = f"server {info['precision']}"
        self.device = f"{url} ({info['device']})"
        self.fingerprint = info["fingerprint"]

    # one client per thread: the HTTP client is not safe to share between threads
    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            self._local.module, client = triton_client(self.protocol, self.address, self.timeout_s)
            self._local.client = client
        return client

    def _ask_info(self, client) -> dict:
        tc = self._local.module
        query = tc.InferInput("query", [1], "BYTES")
        query.set_data_from_numpy(np.array([b"info"], dtype=object))
        return json.loads(client.infer(INFO_MODEL, [query]).as_numpy("info")[0])

    def _one(self, image: np.ndarray) -> np.ndarray:
        client = self._client()
        tc = self._local.module
        tensor = tc.InferInput("image", [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[None])
        try:
            kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
            result = client.infer(self.model, [tensor], **kwargs)
        except Exception as e:
            raise RemoteError(
                f"{self.url}: a {image.shape[0]}x{image.shape[1]} image was refused: {server_message(e)}"
            ) from None
        out = result.as_numpy(self.model)
        if out is None or out.shape[0] != 1 or out.shape[-2:] != image.shape[:2]:
            got = None if out is None else out.shape
            raise RemoteError(f"{self.url}: answered a {image.shape[:2]} image with a {got} tensor")
        return out[0]

    def predict(self, images) -> list[np.ndarray]:
        """The model's output for each image (a list), in order; all of them in flight at once."""
        arrays = [load_image(im) for im in images]
        return list(self._pool.map(self._one, arrays))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
