"""A checkpoint behind NVIDIA Triton Inference Server: the models it serves, the checks every
request passes, and a model repository that a stock ``tritonserver`` runs (docs/serving.md).

Two ways to serve, one set of models and one request path (:class:`Engine`):

* ``python -m torch_deploy.serve --checkpoint CKPT`` (tools/serve.py): PyTriton starts the
  ``tritonserver`` it bundles and hands every batch of requests to :meth:`Engine.handle` in this
  process, where the :class:`~torch_deploy.predictor.Predictor` runs (its fast path: Triton kernels
  and CUDA graphs on a GPU, ``optimize`` on a CPU, the precision ``predict`` would choose).
* ``--export-repository DIR`` writes a Triton model repository (:func:`export_repository`):
  ``config.pbtxt`` + ``1/model.py`` per model, Triton's Python backend, the checkpoint copied in.
  Any ``tritonserver --model-repository DIR`` whose Python can import csfcn runs it.

Models (each takes a batch of requests; Triton's dynamic batcher merges requests of one shape):

=================  ==========================================  ======================================
model              input                                       output
=================  ==========================================  ======================================
``labels``         ``image`` uint8 (B, H, W, 3) RGB, any size  ``labels`` uint8 (B, H, W) class ids
                   or ``encoded`` bytes (B, 1): PNG/JPEG files
``probabilities``  the same                                    ``probabilities`` fp32 (B, K, H, W)
``logits``         the same                                    ``logits`` fp32 (B, K, H, W)
``csfcn_info``     ``query`` bytes (1,), any value             ``info`` bytes (1,): JSON below
=================  ==========================================  ======================================

``csfcn_info`` tells a client what it talks to: the model config (class count, class table),
the checkpoint's fingerprint, the precision path, the models served and the size limit; the
``predict --server`` client names its outputs and palette from it, as local ``predict`` does
from the checkpoint.

A request is refused, with one line naming the tensor, its shape and the fix, when its image has
a zero side, more than ``max_pixels`` pixels, or encoded bytes that are no readable 8-bit image;
Triton itself refuses a wrong dtype or rank before the model sees the request.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from csfcn.files import checkpoint_fingerprint, write_atomic
from torch_deploy.checkpoint import load_model
from torch_deploy.precision import plan
from torch_deploy.predictor import InputError, Predictor, _check_8_bit, default_device

OUTPUTS = ("labels", "probabilities", "logits")
INFO_MODEL = "csfcn_info"
# 8.4 M pixels: 4x a 1024x2048 Cityscapes frame; a request's image above it is refused before it
# is decoded or run (a 20000x20000 image would need 1.2 GB in and 30 GB of fp32 activations).
DEFAULT_MAX_PIXELS = 4 * 1024 * 2048


class RequestError(ValueError):
    """One request that cannot be served; the message names what is wrong and the fix."""


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batcher: requests of one shape waiting at most ``queue_delay_us`` are
    merged, up to ``max_batch`` images per forward pass; at most ``max_queue`` requests wait (0:
    no bound), the next is refused at once. ``dynamic=False``: every request runs as it comes
    (``max_batch`` still bounds a request's own batch)."""

    max_batch: int = 4
    queue_delay_us: int = 2000
    dynamic: bool = True
    max_queue: int = 64

    def __post_init__(self):
        # (named by the serve command's flags, which set them)
        if self.max_batch < 1:
            raise ValueError(f"--max-batch {self.max_batch}: must be >= 1")
        if self.queue_delay_us < 0:
            raise ValueError(f"--queue-delay-us {self.queue_delay_us}: must be >= 0")
        if self.max_queue < 0:
            raise ValueError(f"--max-queue {self.max_queue}: must be >= 0 (0: no bound)")


# --------------------------------------------------------------------------- request checks
def check_images(tensor: np.ndarray, max_pixels: int, what: str = "image") -> None:
    """A request's ``image`` tensor: uint8 (B, H, W, 3) with 1 <= H*W <= ``max_pixels``."""
    if tensor.dtype != np.uint8:
        raise RequestError(f"{what}: dtype {tensor.dtype}; send uint8 RGB (B, H, W, 3)")
    if tensor.ndim != 4 or tensor.shape[-1] != 3:
        raise RequestError(f"{what}: shape {tuple(tensor.shape)}; send uint8 RGB (B, H, W, 3)")
    b, h, w, _ = tensor.shape
    if b < 1 or h < 1 or w < 1:
        raise RequestError(f"{what}: shape {tuple(tensor.shape)} holds no pixels; send at least one 1x1 image")
    check_pixels(h, w, max_pixels, what)


def check_pixels(h: int, w: int, max_pixels: int, what: str) -> None:
    """An h x w image within the server's ``--max-pixels``, or the refusal naming both."""
    if h * w > max_pixels:
        raise RequestError(
            f"{what}: a {h}x{w} image is {h * w:,} pixels, above this server's limit of {max_pixels:,} "
            "(--max-pixels); downscale it, or start the server with a larger --max-pixels"
        )


def decode(blob: bytes, max_pixels: int, what: str = "encoded") -> np.ndarray:
    """PNG/JPEG/... bytes -> uint8 (H, W, 3); the size is checked from the header, before decoding."""
    try:
        with Image.open(io.BytesIO(blob)) as im:
            check_pixels(im.size[1], im.size[0], max_pixels, what)
            _check_8_bit(im, what)
            rgb = np.asarray(im.convert("RGB"))
    except RequestError:
        raise
    except InputError as e:
        raise RequestError(str(e)) from None
    except UnidentifiedImageError:
        raise RequestError(
            f"{what}: {len(blob)} bytes that are no readable image (not PNG, JPEG or another format Pillow reads); "
            "send the bytes of an image file"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(
            f"{what}: {len(blob)} bytes that are no readable image ({e}); send the bytes of a whole image file"
        ) from None
    if rgb.shape[0] < 1 or rgb.shape[1] < 1:
        raise RequestError(f"{what}: the image has no pixels")
    return np.ascontiguousarray(rgb)


def request_images(request, max_pixels: int) -> list[np.ndarray]:
    """The images of one request (a mapping of input name -> batched array): ``image`` or ``encoded``."""
    has_image, has_encoded = "image" in request, "encoded" in request
    if has_image == has_encoded:
        raise RequestError("send exactly one input: image (uint8 B x H x W x 3) or encoded (PNG/JPEG bytes, B x 1)")
    if has_image:
        tensor = np.asarray(request["image"])
        check_images(tensor, max_pixels)
        return list(tensor)
    blobs = np.asarray(request["encoded"], dtype=object).reshape(-1)
    if blobs.size < 1:
        raise RequestError("encoded: no images in the request")
    images = [decode(bytes(b), max_pixels, f"encoded[{i}]") for i, b in enumerate(blobs)]
    if len({im.shape for im in images}) > 1:
        sizes = sorted({f"{im.shape[0]}x{im.shape[1]}" for im in images})
        raise RequestError(
            f"encoded: one request holds images of several sizes ({', '.join(sizes)}) but its output is one "
            "(B, H, W) tensor; send one image per request"
        )
    return images


def describe(
    config, path: str, device, *, fingerprint: str, checkpoint: str, models, max_pixels: int, max_batch: int
) -> dict:
    """What ``csfcn_info`` answers: enough for a client to name and colour outputs as a local run would."""
    return {
        "config": json.loads(config.to_json()),
        "fingerprint": fingerprint,
        "checkpoint": os.path.basename(checkpoint),
        "precision": path,
        "device": str(device),
        "models": list(models),
        "max_pixels": max_pixels,
        "max_batch": max_batch,
    }


# --------------------------------------------------------------------------- the engine
class Engine:
    """What a served model runs: a :class:`Predictor` and the outputs it was started with."""

    def __init__(
        self,
        predictor: Predictor,
        outputs=("labels",),
        *,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        fingerprint: str = "",
        checkpoint: str = "",
        thread: ThreadPoolExecutor | None = None,
    ):
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown or not outputs:
            raise ValueError(f"outputs {list(outputs)}: choose from {list(OUTPUTS)}")
        if max_pixels < 1:
            raise ValueError(f"max pixels {max_pixels}: must be >= 1")
        self.predictor = predictor
        self.outputs = tuple(dict.fromkeys(outputs))
        self.max_pixels = int(max_pixels)
        self.fingerprint, self.checkpoint = fingerprint, checkpoint
        self.served = self.requests = 0  # images and requests answered
        # Every forward runs on one thread of its own (``thread``), one at a time. Each served output
        # is its own Triton model, called from a thread of PyTriton's; on a GPU the fast path replays
        # CUDA graphs whose input buffers are static. And on a CPU a forward is fastest on the thread
        # that loaded the weights and built the graph: measured at 512x1024 (bf16, 2-core x86), 45 ms
        # there, 50-54 ms on another thread (also when only the loading happened elsewhere; the cause
        # was not pinned down), so from_checkpoint loads and builds there too.
        self._thread = thread or ThreadPoolExecutor(max_workers=1, thread_name_prefix="csfcn-engine")
        if any(o != "labels" for o in self.outputs):
            self._thread.submit(predictor.enable_logits).result()

    @classmethod
    def from_checkpoint(
        cls,
        path,
        outputs=("labels",),
        *,
        device=None,
        precision="auto",
        calibration=None,
        batch_size=4,
        max_pixels=DEFAULT_MAX_PIXELS,
    ) -> Engine:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csfcn-engine")
        predictor = thread.submit(
            lambda: Predictor(
                load_model(path), device=device, precision=precision, batch_size=batch_size, calibration=calibration
            )
        ).result()
        return cls(
            predictor,
            outputs,
            max_pixels=max_pixels,
            fingerprint=checkpoint_fingerprint(path),
            checkpoint=os.path.abspath(path),
            thread=thread,
        )

    def info(self) -> dict:
        p = self.predictor
        return describe(
            p.config,
            p.path,
            p.device,
            fingerprint=self.fingerprint,
            checkpoint=self.checkpoint,
            models=self.outputs,
            max_pixels=self.max_pixels,
            max_batch=p.batch_size,
        )

    def run(self, output: str, images: list[np.ndarray]) -> list[np.ndarray]:
        """One output for images of any sizes (grouped and batched by the predictor)."""
        return self._thread.submit(self._run, output, images).result()

    def _run(self, output: str, images: list[np.ndarray]) -> list[np.ndarray]:
        if output == "labels":
            return self.predictor.predict(images)
        logits = self.predictor.predict_logits(images)
        if output == "logits":
            return logits
        return [torch.from_numpy(x).softmax(0).numpy() for x in logits]

    def handle(self, output: str, requests) -> list[dict | RequestError]:
        """Triton's batch of requests -> one answer per request: {output name: array}, or the
        :class:`RequestError` that refuses it. The images of all good requests go through the
        predictor together (one forward per size group of up to ``max_batch`` images)."""
        checked: list[list[np.ndarray] | RequestError] = []
        for request in requests:
            try:
                checked.append(request_images(request, self.max_pixels))
            except RequestError as e:
                checked.append(e)
        flat = [im for images in checked if not isinstance(images, RequestError) for im in images]
        results = self.run(output, flat) if flat else []
        answers: list[dict | RequestError] = []
        i = 0
        for images in checked:
            if isinstance(images, RequestError):
                answers.append(images)
                continue
            answers.append({output: np.stack(results[i : i + len(images)])})
            i += len(images)
        self.served += len(flat)
        self.requests += len(requests)
        return answers

    def warm_up(self, sizes, log=print) -> None:
        """Run every served output once per size, so that the first request of each size waits
        for no compilation, CUDA graph capture or allocation."""
        rng = np.random.default_rng(0)
        for h, w in sizes:
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for output in self.outputs:
                t0 = time.perf_counter()
                self.run(output, [image] * self.predictor.batch_size)
                log(f"warm-up: {output} at {h}x{w} x{self.predictor.batch_size} in {time.perf_counter() - t0:.2f} s")


# --------------------------------------------------------------------------- the tensors, once
# (name, numpy dtype, dims without the batch): what PyTriton binds (tools/serve.py) and what
# config.pbtxt declares. Both inputs are optional; a request sends exactly one (request_images).
INPUTS = (("image", np.uint8, (-1, -1, 3)), ("encoded", np.bytes_, (1,)))
TRITON_TYPES = {np.uint8: "TYPE_UINT8", np.float32: "TYPE_FP32", np.bytes_: "TYPE_STRING"}


def output_tensor(output: str, num_classes: int) -> tuple[str, type, tuple[int, ...]]:
    """(name, numpy dtype, dims without the batch) of a served output."""
    if output == "labels":
        return output, np.uint8, (-1, -1)
    return output, np.float32, (num_classes, -1, -1)


def _pbtxt_tensor(name: str, dtype, dims, optional: bool = False) -> str:
    opt = " optional: true" if optional else ""
    return f'{{ name: "{name}" data_type: {TRITON_TYPES[dtype]} dims: [ {", ".join(map(str, dims))} ]{opt} }}'


def model_config_pbtxt(output: str, num_classes: int, batching: Batching) -> str:
    """``config.pbtxt`` of one served output for the Python backend."""
    dynamic = ""
    if batching.dynamic:
        queue = f"  default_queue_policy {{ max_queue_size: {batching.max_queue} }}\n" if batching.max_queue else ""
        dynamic = f"dynamic_batching {{\n  max_queue_delay_microseconds: {batching.queue_delay_us}\n{queue}}}\n"
    inputs = ",\n".join("  " + _pbtxt_tensor(*spec, optional=True) for spec in INPUTS)
    return (
        f'name: "{output}"\nbackend: "python"\nmax_batch_size: {batching.max_batch}\n'
        f"input [\n{inputs}\n]\n"
        f"output [\n  {_pbtxt_tensor(*output_tensor(output, num_classes))}\n]\n"
        f"{dynamic}"
        "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


INFO_CONFIG = (
    f'name: "{INFO_MODEL}"\nbackend: "python"\nmax_batch_size: 0\n'
    'input [ { name: "query" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
    'output [ { name: "info" data_type: TYPE_STRING dims: [ 1 ] } ]\n'
    "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
)

# The model.py of every exported model: the class lives in this module, so that a repository is
# a checkpoint and a few lines, and runs whichever csfcn the server's Python imports.
MODEL_PY = '''"""Triton Python-backend model written by `python -m torch_deploy.serve --export-repository`.

The backend's Python is the environment of the first python3 on tritonserver's PATH (its stub
ignores PYTHONPATH): one with csfcn and numpy < 2, i.e. pip install 'csfcn[serve]'. Put its bin/
first on PATH, and its interpreter's LIBDIR first on LD_LIBRARY_PATH (README, "Serving").
"""

try:
    from torch_deploy.serving import PythonBackendModel
except ImportError as e:
    raise ImportError(
        f"this model needs csfcn in the Python that tritonserver runs ({e}): the environment of the first "
        "python3 on its PATH; pip install 'csfcn[serve]' there, or put the bin/ of an environment that has it "
        "first on PATH"
    ) from e


class TritonPythonModel(PythonBackendModel):
    pass
'''


def export_repository(
    out,
    checkpoint,
    *,
    outputs=("labels",),
    batching: Batching = Batching(),
    precision="auto",
    device=None,
    max_pixels=DEFAULT_MAX_PIXELS,
    num_classes: int,
    overwrite: bool = False,
) -> list[Path]:
    """Write a Triton model repository for ``checkpoint`` into ``out``: one model per output plus
    ``csfcn_info``, each ``NAME/config.pbtxt`` and ``NAME/1/model.py``, the checkpoint once at
    ``checkpoint.safetensors`` and the serving settings in ``csfcn_serve.json``. Every file is
    written whole or not at all; an ``out`` holding other files is refused unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--export-repository {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--export-repository {out}: the folder is not empty; choose an empty one or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def put(rel, text: str):
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dst, lambda tmp: Path(tmp).write_text(text))
        written.append(dst)

    ckpt_dst = out / ("checkpoint" + Path(checkpoint).suffix)
    write_atomic(ckpt_dst, lambda tmp: shutil.copyfile(checkpoint, tmp))
    written.append(ckpt_dst)
    settings = {
        "checkpoint": ckpt_dst.name,
        "fingerprint": checkpoint_fingerprint(checkpoint),
        "outputs": list(outputs),
        "precision": precision,
        "device": device,
        "max_pixels": max_pixels,
        "max_batch": batching.max_batch,
    }
    put("csfcn_serve.json", json.dumps(settings, indent=1) + "\n")
    for output in outputs:
        put(f"{output}/config.pbtxt", model_config_pbtxt(output, num_classes, batching))
        put(f"{output}/1/model.py", MODEL_PY)
    put(f"{INFO_MODEL}/config.pbtxt", INFO_CONFIG)
    put(f"{INFO_MODEL}/1/model.py", MODEL_PY)
    return written


class PythonBackendModel:
    """Triton's Python-backend protocol for an exported repository (``initialize``/``execute``):
    the good requests of a batch run together; a bad one gets its own error and the others are served."""

    def initialize(self, args):
        import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend stub

        self._pb = pb_utils
        self.name = json.loads(args["model_config"])["name"]
        repo = os.path.dirname(os.path.abspath(args["model_repository"]))
        with open(os.path.join(repo, "csfcn_serve.json")) as f:
            s = json.load(f)
        checkpoint = os.path.join(repo, s["checkpoint"])
        if self.name == INFO_MODEL:  # its own process: describe the model without building it
            device = torch.device(s["device"]) if s["device"] else default_device()
            path = plan(s["precision"], device, calibration=False).path
            self.info = describe(
                load_model(checkpoint).config,
                path,
                device,
                fingerprint=s["fingerprint"],
                checkpoint=checkpoint,
                models=s["outputs"],
                max_pixels=s["max_pixels"],
                max_batch=s["max_batch"],
            )
            return
        self.engine = Engine.from_checkpoint(
            checkpoint,
            [self.name],
            device=s["device"],
            precision=s["precision"],
            batch_size=s["max_batch"],
            max_pixels=s["max_pixels"],
        )

    def execute(self, requests):
        pb = self._pb
        if self.name == INFO_MODEL:
            blob = np.array([json.dumps(self.info).encode()], dtype=object)
            return [pb.InferenceResponse(output_tensors=[pb.Tensor("info", blob)]) for _ in requests]
        inputs = []
        for request in requests:
            found = {}
            for name in ("image", "encoded"):
                t = pb.get_input_tensor_by_name(request, name)
                if t is not None:
                    found[name] = t.as_numpy()
            inputs.append(found)
        responses = []
        for answer in self.engine.handle(self.name, inputs):  # a refusal stays with its own request
            if isinstance(answer, RequestError):
                error = pb.TritonError(str(answer), pb.TritonError.INVALID_ARG)  # HTTP 400, gRPC INVALID_ARGUMENT
                responses.append(pb.InferenceResponse(error=error))
            else:
                responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor(self.name, answer[self.name])]))
        return responses
