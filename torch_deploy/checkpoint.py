"""PyTorch checkpoint files: read and write ``.safetensors`` and upstream ``.pth`` state_dicts,
check them against the twin, and load the twin from them -- with torch alone (no JAX).

A Flax run or Orbax directory is the training side's format: :func:`convert.load_torch_model`
reads it into the twin (it needs the training extra).
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from csfcn.checkpoints import CONFIG_KEY, ConversionError, config_of, kind_of, raise_mismatch, refuse_imagenet
from csfcn.files import write_atomic
from csfcn.model_config import ModelConfig
from torch_deploy.model import build_twin


def _unwrap_state_dict(obj, source: str) -> dict:
    if isinstance(obj, dict) and not any(hasattr(v, "shape") for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if isinstance(obj.get(key), dict):
                return _unwrap_state_dict(obj[key], source)
        raise ConversionError(f"{source}: no state_dict inside (top-level keys: {sorted(obj)[:10]})")
    if not isinstance(obj, dict):
        raise ConversionError(f"{source}: expected a state_dict, got {type(obj).__name__}")
    # DataParallel ("module.") and training wrappers ("model.") prefix every key.
    for prefix in ("module.", "model."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def read_torch_file(path) -> tuple[dict[str, np.ndarray], dict]:
    """(tensors in PyTorch layout, metadata) of a .safetensors or .pth file."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.endswith(".safetensors"):
        try:
            with safe_open(path, framework="np") as f:
                meta = f.metadata() or {}
                return {k: f.get_tensor(k) for k in f.keys()}, meta  # noqa: SIM118 - safe_open is not a dict
        except (SafetensorError, OSError) as e:
            raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol is noise beside our error
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        imports = _pickle_imports(path)
        if not imports:  # random bytes, a truncated or foreign file: torch's loader failed to unpickle it
            raise ConversionError(
                f"{path}: not a PyTorch checkpoint ("
                + ("a zip archive without a readable data.pkl" if zipfile.is_zipfile(path) else "not a zip archive")
                + " / unpickling failed); give a .pth/.pt state_dict saved with torch.save, or a .safetensors"
            ) from e
        # objects other than tensors: loading them could run the file's code
        raise ConversionError(
            f"{path}: refused: it holds Python objects other than tensors and plain containers (it imports "
            f"{', '.join(imports[:3])}), and loading them would run code from the file. Save the state_dict alone "
            "(torch.save(model.state_dict(), ...))"
        ) from e
    except Exception as e:  # corrupt files raise anything from IndexError to EOFError
        first = (str(e).strip().splitlines() or [""])[0]  # torch explains at length
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {first})") from e
    sd = _unwrap_state_dict(obj, path)
    return {k: v.detach().cpu().numpy() for k, v in sd.items() if hasattr(v, "detach")}, {}


# Opcodes that import a global (a class or function the unpickler would call): what a pickle
# needs to run code; plain containers of numbers and strings need none.
_IMPORTING = {"GLOBAL", "STACK_GLOBAL", "INST"}


def _pickle_imports(path, limit: int = 64 << 20) -> list[str]:
    """The globals the pickled objects of a ``.pth`` import (read with :mod:`pickletools`, which
    runs nothing), other than torch's own tensor rebuilding; [] when the file is no pickle at all
    (random bytes, another format). A zip (torch's format since 1.6) is read at its ``data.pkl``;
    a legacy file is a few pickles in a row."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return []
                data = z.read(member)
        else:
            with open(path, "rb") as f:
                data = f.read(limit)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return []
    found: list[str] = []
    stream = io.BytesIO(data)
    for _ in range(4):  # legacy: magic number, protocol, system info, then the objects
        strings: list[str] = []
        try:
            for op, arg, _pos in pickletools.genops(stream):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                if op.name in _IMPORTING:
                    name = str(arg).replace(" ", ".") if arg else ".".join(strings[-2:])
                    if not name.startswith(("torch.", "collections.OrderedDict", "_codecs.encode")):
                        found.append(name)
        except Exception:  # not (or no more) pickle data: stop
            break
        if stream.tell() >= len(data):
            break
    return found


def _translate_write_error(e: Exception, path) -> Exception:
    """An OSError for a writer library's failure to write (safetensors raises SafetensorError
    "I/O error: No space left on device (os error 28)", torch.save a RuntimeError), so that a full
    disk or a read-only folder is one line (csfcn.files.write_failure) and not a traceback."""
    text = str(e)
    m = re.search(r"\(os error (\d+)\)|\bcode: (\d+)", text)
    if m:
        code = int(m.group(1) or m.group(2))
        return OSError(code, os.strerror(code), str(path))
    if re.search(r"write failed|failed writing|No space left", text, re.IGNORECASE):
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(path)))
            full = st.f_bavail * st.f_frsize < (1 << 20)
        except OSError:
            full = False
        return OSError(errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC if full else errno.EIO), str(path))
    return e


def write_safetensors(path, config: ModelConfig, tensors: dict[str, np.ndarray]) -> None:
    meta = {CONFIG_KEY: config.to_json(), "format": "csfcn-torch"}

    def write(tmp: str) -> None:
        try:
            save_file({k: np.array(v, order="C") for k, v in tensors.items()}, tmp, meta)
        except SafetensorError as e:
            raise _translate_write_error(e, path) from e

    write_atomic(path, write)


def write_pth(path, tensors: dict[str, np.ndarray]) -> None:
    sd = {k: torch.from_numpy(np.array(v, order="C")) for k, v in tensors.items()}

    def write(tmp: str) -> None:
        try:
            torch.save(sd, tmp)
        except RuntimeError as e:
            raise _translate_write_error(e, path) from e

    write_atomic(path, write)


def twin_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The twin's state_dict {key: shape} in registration order (built on the meta device: free)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_twin(config).state_dict().items()}


def check_torch_tensors(config: ModelConfig, tensors: dict[str, np.ndarray], *, strict: bool, source: str) -> dict:
    """``tensors`` checked against the PyTorch twin's ``state_dict`` (names and shapes, as
    :func:`convert.table.torch_to_flax` checks them against the Flax model), in its order."""
    ref = twin_shapes(config)
    missing = [k for k in ref if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = sorted(k for k in tensors if k not in ref)
    bad = [
        f"{k}: checkpoint has {tuple(np.shape(tensors[k]))}, model expects {ref[k]}"
        for k in ref
        if k in tensors and tuple(np.shape(tensors[k])) != ref[k]
    ]
    raise_mismatch(source, bad, missing, unexpected, strict)
    return {k: np.asarray(tensors[k]) for k in ref if k in tensors}


def _read_whole_model(path) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    if kind_of(path) == "orbax":
        raise ConversionError(
            f"{path}: a directory (a training run or Orbax Flax params), not a PyTorch checkpoint; load it with "
            f"convert.load_torch_model, or convert it once: python -m convert {path} model.safetensors"
        )
    tensors, meta = read_torch_file(path)
    refuse_imagenet(path, tensors)
    return config_of(tensors, meta, str(path)), tensors


def read_torch_checkpoint(path, *, strict: bool = True) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """A .pth/.safetensors checkpoint of any model -> (config, checked PyTorch tensors)."""
    config, tensors = _read_whole_model(path)
    return config, check_torch_tensors(config, tensors, strict=strict, source=str(path))


def write_torch_checkpoint(path, config: ModelConfig, tensors: dict[str, np.ndarray]) -> str:
    """PyTorch-layout tensors into a .safetensors (config in the metadata) or an upstream .pth
    (keys in the upstream module registration order)."""
    kind = kind_of(path)
    if kind == "safetensors":
        write_safetensors(path, config, tensors)
    elif kind == "pth":
        order = list(twin_shapes(config))
        write_pth(
            path, {k: tensors[k] for k in order if k in tensors} | {k: v for k, v in tensors.items() if k not in order}
        )
    else:
        raise ConversionError(f"{path}: write_torch_checkpoint writes .safetensors or .pth, not {kind}")
    return kind


def twin_from_tensors(config: ModelConfig, tensors: dict[str, np.ndarray], *, source: str, strict: bool = True):
    """The twin in eval mode holding ``tensors``; refuses NaN/infinite weights."""
    model = build_twin(config)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()}
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a diverged run's weights: every prediction would be garbage (class 0 everywhere)
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(
            f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}); this checkpoint cannot predict"
        )
    result = model.load_state_dict(sd, strict=strict)
    if not strict and (result.missing_keys or result.unexpected_keys):
        warnings.warn(f"{source}: missing {result.missing_keys}, unexpected {result.unexpected_keys}", stacklevel=3)
    return model.eval()


def load_model(path, *, strict: bool = True, map_location="cpu") -> torch.nn.Module:
    """The PyTorch twin in eval mode from a ``.safetensors`` export or an upstream ``.pth``
    state_dict (config inferred from the tensor shapes). A training run or Orbax directory:
    :func:`convert.load_torch_model`."""
    config, tensors = read_torch_checkpoint(path, strict=strict)  # names every wrong tensor
    return twin_from_tensors(config, tensors, source=str(path), strict=strict).to(map_location)
