"""Images in, label maps out: the inference API of the deployed model.

    from torch_deploy import Predictor
    pred = Predictor.from_checkpoint("model.safetensors")        # GPU if present, else CPU
    labels = pred.predict("frankfurt_000000_000294_leftImg8bit.png")   # uint8 (H, W) train ids
    batch = pred.predict(np.stack([img0, img1]))                 # uint8 (B, H, W)
    many = pred.predict([path0, pil_image, array])               # list of (Hi, Wi) arrays

Which network runs:

* On CUDA the fast path, ``torch_deploy.optimize.optimize(model, precision=..., output="labels")``
  (folded BN, Triton kernels, CUDA graphs; labels straight from the head, no full-resolution
  logits); Triton is imported only when the kernels launch, so CPU use never needs it.
* On CPU, fp32: the PyTorch twin (:mod:`torch_deploy.model`), the reference the fast path is
  tested against (``fast=True``: ``optimize`` in fp32, 1.4x faster, BENCHMARKS.md); bf16:
  ``optimize`` in bf16, where the CPU computes bf16 natively (AVX512-BF16 / AMX; refused
  elsewhere, where it would be emulated and slower or not run at all); int8: ``optimize`` with
  oneDNN's int8 convolutions (:mod:`torch_deploy.quantize`), calibrated on ``calibration``
  images, with 7-bit activations on CPUs without VNNI. Which CPU gets what:
  :mod:`torch_deploy.cpu_caps`, decided for every tool by :mod:`torch_deploy.precision`. fp16 on
  CPU is refused rather than silently run in fp32. What each costs in accuracy: ``python -m tools.accuracy``.
* ``precision="auto"`` (what ``predict`` uses unless told): the fastest path whose accuracy is
  measured -- on a CPU ``optimize`` in int8 when ``calibration`` images are given, else in bf16
  where the CPU has native bf16, else in fp32 (:func:`torch_deploy.precision.plan`); on CUDA fp32.

Pre-processing (docs/architecture.md): RGB in 0..1, ImageNet mean/std normalisation, then zero padding
(after normalisation) at the bottom/right to the next multiple of 8, and the labels cropped
back.  Inputs already a multiple of 8 are not padded.  Images of different sizes may be
mixed in one call; they are batched by padded size, ``batch_size`` at a time.  In eval mode
every image is processed independently of the others in its batch, so batching does not
change the function (only float rounding, which can flip a near-tie pixel).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from csfcn.model_config import IMAGENET_MEAN, IMAGENET_STD
from torch_deploy.checkpoint import load_model
from torch_deploy.optimize import optimize
from torch_deploy.precision import plan

PAD_MULTIPLE = 8


class InputError(ValueError):
    """An image that cannot be read or is not an RGB uint8 image."""


_EIGHT_BIT_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"}


def _check_8_bit(im: Image.Image, what) -> None:
    """PIL clips 16-bit and float images to 8 bits in ``convert("RGB")`` (a 16-bit PNG comes out
    nearly all 255): refuse them instead of predicting on a white image."""
    if im.mode not in _EIGHT_BIT_MODES:
        raise InputError(
            f"{what}: a {im.mode!r} image (16-bit or floating point); the model takes 8-bit RGB. Convert it to "
            "8 bits per channel first (scaling its range to 0..255)"
        )


def load_image(image) -> np.ndarray:
    """A path, PIL image or array -> contiguous uint8 (H, W, 3) RGB array.

    Grey (H, W) / (H, W, 1) arrays are repeated to three channels; an alpha channel is dropped.
    """
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        try:
            with Image.open(path) as im:
                _check_8_bit(im, path)
                image = im.convert("RGB")
        except FileNotFoundError:
            raise InputError(f"{path}: no such image file") from None
        except Image.DecompressionBombError as e:  # PIL refuses to decode it (a memory bomb, or just huge)
            raise InputError(
                f"{path}: too large to decode ({e}); downscale it, or raise PIL.Image.MAX_IMAGE_PIXELS for files "
                "you trust"
            ) from None
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read this image ({e})") from e
    if isinstance(image, Image.Image):
        _check_8_bit(image, "image")
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray) and not hasattr(image, "__array__"):
        raise InputError(
            f"expected an image (a path, a PIL image or a uint8 (H, W, 3) array) or a list of them, "
            f"got {type(image).__name__}"
        )
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise InputError(f"images must be uint8 RGB, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"images must be (H, W, 3) arrays, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    arr = np.ascontiguousarray(arr[..., :3])
    return arr if arr.flags.writeable else arr.copy()  # torch.from_numpy wants writable memory


def padded_size(h: int, w: int, multiple: int = PAD_MULTIPLE) -> tuple[int, int]:
    return -(-h // multiple) * multiple, -(-w // multiple) * multiple


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Runs a CSFCN checkpoint on images of any size; see the module docstring."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device=None,
        precision: str = "fp32",
        batch_size: int = 4,
        fast: bool | None = None,
        calibration=None,
    ):
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else default_device()
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {self.device} requested but CUDA is not available")
        # what runs: torch_deploy.precision decides it for every tool (one sentence when refused)
        self.plan = plan(precision, self.device, calibration=bool(calibration), fast=fast)
        precision = self.precision = self.plan.precision
        self.batch_size = int(batch_size)
        self.model = model.eval().to(self.device)
        self.num_classes = int(model.config.num_classes)
        self.config = model.config
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)
        self.fast = self.plan.optimized
        self._run = self._run_fast if self.fast else self._run_twin
        if not self.fast:
            return
        if precision == "int8":
            self._calibration = [
                self._normalise_padded([im], *padded_size(*im.shape[:2])) for im in map(load_image, calibration or [])
            ]
            if not self._calibration:
                raise ValueError("precision int8 needs calibration images (a few of the training set)")
        self._optimized = self._build("labels")
        self._optimized_logits = None

    def _build(self, output: str):
        """``optimize`` of the model for this plan, ending in ``output`` ("labels" or "logits")."""
        if self.precision == "int8":
            return optimize(self.model, precision="int8", output=output, calibration=self._calibration)
        if self.device.type == "cuda":
            return optimize(self.model, precision=self.precision, output=output)
        # CPU: the folded graph on oneDNN, the reference ops are its own
        return optimize(self.model, precision=self.precision, output=output, kernels=False)

    def enable_logits(self) -> None:
        """Build what :meth:`predict_logits` runs (the fast path's labels come straight from the
        head, without full-resolution logits): a second ``optimize`` of the same plan ending in
        logits. The twin (fp32 on a CPU) needs nothing more."""
        if self.fast and self._optimized_logits is None:
            self._optimized_logits = self._build("logits")

    @property
    def path(self) -> str:
        """What runs: e.g. "optimize-bf16", "twin-fp32", "optimize-int8"."""
        return self.plan.path

    @classmethod
    def from_checkpoint(cls, path, device=None, precision: str = "fp32", batch_size: int = 4) -> Predictor:
        """A predictor for a ``.safetensors`` or upstream ``.pth`` checkpoint (:func:`torch_deploy.load_model`;
        a training run: ``Predictor(convert.load_torch_model(run))``)."""
        return cls(load_model(path), device=device, precision=precision, batch_size=batch_size)

    # ------------------------------------------------------------------ running the network
    def _run_twin(self, x: torch.Tensor) -> torch.Tensor:  # fp32 on CPU: every other case is fast
        return self.model(x).argmax(1)

    def _run_fast(self, x: torch.Tensor) -> torch.Tensor:
        out = self._optimized(x)
        return out.argmax(1) if out.ndim == 4 else out

    def _normalise_padded(self, images: Sequence[np.ndarray], hp: int, wp: int) -> torch.Tensor:
        """uint8 (H, W, 3) images of one padded size -> normalised fp32 NCHW, zero-padded."""
        batch = torch.zeros(len(images), 3, hp, wp, device=self.device)
        for i, img in enumerate(images):
            t = torch.from_numpy(img).to(self.device, non_blocking=True).permute(2, 0, 1).float()
            batch[i, :, : img.shape[0], : img.shape[1]] = (t / 255.0 - self._mean) / self._std
        return batch

    def _run_logits(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fast:
            return self.model(x).float()
        if self._optimized_logits is None:
            raise RuntimeError("Predictor.predict_logits: call enable_logits() first (it builds the logits graph)")
        return self._optimized_logits(x).float()

    @torch.inference_mode()
    def _batched(self, images: list[np.ndarray], run, dtype) -> list[np.ndarray]:
        """``run`` on images of any sizes, grouped by padded size, ``batch_size`` at a time; each
        result (..., Hp, Wp) cropped back to its image."""
        out: list[np.ndarray | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(padded_size(*img.shape[:2]), []).append(i)
        for (hp, wp), idx in groups.items():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                result = run(self._normalise_padded([images[i] for i in chunk], hp, wp))
                result = result.to(dtype).cpu().numpy()
                for j, i in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    out[i] = np.ascontiguousarray(result[j, ..., :h, :w])
        return out  # type: ignore[return-value]

    def _predict_arrays(self, images: list[np.ndarray]) -> list[np.ndarray]:
        return self._batched(images, self._run, torch.uint8)

    def predict_logits(self, images) -> list[np.ndarray]:
        """fp32 (K, Hi, Wi) logits of images of any sizes, on the same path (precision, batching)
        as :meth:`predict` (the fast path after :meth:`enable_logits`)."""
        return self._batched([load_image(im) for im in images], self._run_logits, torch.float32)

    def predict(self, image_or_batch):
        """Label maps (uint8 train ids) for one image or a batch.

        * one image (path, PIL image, uint8 (H, W, 3) array) -> (H, W) array;
        * a uint8 (B, H, W, 3) array -> (B, H, W) array;
        * a list / tuple of images of any sizes -> list of (Hi, Wi) arrays.
        """
        if isinstance(image_or_batch, np.ndarray) and image_or_batch.ndim == 4:
            return np.stack(self._predict_arrays([load_image(im) for im in image_or_batch]))
        if isinstance(image_or_batch, (list, tuple)):
            return self._predict_arrays([load_image(im) for im in image_or_batch])
        return self._predict_arrays([load_image(image_or_batch)])[0]

    def predict_iter(self, images: Iterable) -> Iterable[np.ndarray]:
        """Label maps for a stream of images (e.g. video frames), ``batch_size`` at a time."""
        chunk: list[np.ndarray] = []
        for im in images:
            chunk.append(load_image(im))
            if len(chunk) == self.batch_size:
                yield from self._predict_arrays(chunk)
                chunk = []
        if chunk:
            yield from self._predict_arrays(chunk)

    def logits(self, image) -> torch.Tensor:
        """fp32 (K, H, W) logits of one image from the twin (padding cropped), for checks."""
        img = load_image(image)
        hp, wp = padded_size(*img.shape[:2])
        with torch.inference_mode():
            out = self.model(self._normalise_padded([img], hp, wp)).float()
        return out[0, :, : img.shape[0], : img.shape[1]]


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> normalised fp32 (B, 3, H, W) (no padding), as the predictor does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def pad_to_multiple(x: torch.Tensor, multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Zero-pad NCHW at the bottom/right to the next multiple of ``multiple``."""
    h, w = x.shape[-2:]
    hp, wp = padded_size(h, w, multiple)
    return F.pad(x, (0, wp - w, 0, hp - h)) if (hp, wp) != (h, w) else x
