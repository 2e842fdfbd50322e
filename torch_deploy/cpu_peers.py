"""What CPU users would run instead of ``optimize``: ONNX Runtime and OpenVINO on our own ONNX export.

    peer = OnnxPeer(twin, "openvino", precision="bf16")
    labels = peer(x)           # x: normalised (B, 3, H, W) float32 on CPU -> (B, H, W) int64
    int8 = OnnxPeer(twin, "onnxruntime", precision="int8", calibration=images)  # images: normalised, any sizes

Both peers run the same graph: the twin with its BatchNorms folded (:func:`tools.export_onnx.export_module`)
and an ArgMax over the classes, exported once per input shape (static shapes, as each runtime
optimises best) into a temporary folder, with every graph optimisation on and the thread count
of torch.

int8 is ONNX Runtime's own post-training static quantization (``quantize_static``: QDQ format,
per-channel int8 weights, uint8 activations, MinMax calibration on a handful of normalised
images, which are resized to each input shape), run by ONNX Runtime's integer kernels (VNNI
on x86), or by OpenVINO, which reads the QDQ graph as int8 (``OnnxPeer(twin, "openvino",
"int8", ...)``; needs both extras). The project's own int8 path is ``optimize(precision="int8")``
(torch_deploy/quantize.py); these are its peers. ``torch_deploy.benchmark --device cpu`` times
them beside the twin and ``optimize``.
onnxruntime comes with the ``onnx`` extra, OpenVINO with the ``openvino`` extra
(csfcn/extras.py); a missing one is skipped with a message naming the extra.
"""

from __future__ import annotations

import os
import tempfile

import torch
from torch import nn

from csfcn.extras import missing
from torch_deploy.model import CSFCN
from torch_deploy.onnx_graph import export_graph, export_module

PRECISIONS = {"onnxruntime": ("fp32", "int8"), "openvino": ("fp32", "bf16", "int8")}
RUNTIMES = {"onnxruntime": ("onnx", ("onnx", "onnxscript", "onnxruntime")), "openvino": ("openvino", ("openvino",))}


def peer_missing(runtime: str) -> str | None:
    """None when ``runtime`` is installed, else the message that names its extra."""
    extra, modules = RUNTIMES[runtime]
    gone = missing(modules)
    return f"{', '.join(gone)} not installed: pip install 'csfcn[{extra}]'" if gone else None


class _Labels(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).argmax(1)


class OnnxPeer:
    """``runtime`` ("onnxruntime" | "openvino") running our ONNX export of ``twin`` in ``precision``
    ("fp32"; "bf16" for OpenVINO: its ``INFERENCE_PRECISION_HINT``); labels out."""

    def __init__(self, twin: CSFCN, runtime: str, precision: str = "fp32", calibration=None):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime={runtime!r}: choose one of {sorted(RUNTIMES)}")
        allowed = PRECISIONS[runtime]
        if precision not in allowed:
            raise ValueError(f"{runtime} runs our ONNX in {' or '.join(allowed)}, not {precision!r}")
        if precision == "int8" and not calibration:
            raise ValueError("int8 needs calibration images: a few normalised (1, 3, H, W) tensors of real data")
        self.calibration = list(calibration or [])
        gone = peer_missing(runtime) or (precision == "int8" and peer_missing("onnxruntime"))
        if gone:  # int8 is quantized by ONNX Runtime's tools, whichever runtime runs it
            raise ModuleNotFoundError(f"{runtime} {precision}: {gone}")
        self.module = _Labels(export_module(twin, dynamic=False)).eval()
        self.runtime, self.precision = runtime, precision
        self._dir = tempfile.TemporaryDirectory(prefix="csfcn-peer-")
        self._runs: dict = {}

    def _build(self, x: torch.Tensor):
        path = os.path.join(self._dir.name, f"labels_{'x'.join(map(str, x.shape))}.onnx")
        with torch.inference_mode(False), torch.no_grad():
            export_graph(self.module, x.detach().clone(), path)
        if self.precision == "int8":
            path = self._quantize(path, tuple(x.shape))
        threads = torch.get_num_threads()
        if self.runtime == "onnxruntime":
            import onnxruntime as ort  # optional: the onnx extra

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            return lambda a: session.run(None, {name: a})[0]
        import openvino as ov  # optional: the openvino extra

        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        compiled = ov.Core().compile_model(path, "CPU", config)
        request = compiled.create_infer_request()
        return lambda a: request.infer({0: a})[compiled.output(0)]

    def _quantize(self, path: str, shape: tuple[int, ...]) -> str:
        """ONNX Runtime static int8 quantization of the graph at ``path``, calibrated at ``shape``."""
        from onnxruntime.quantization import (  # optional: the onnx extra
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process  # optional: the onnx extra

        batches = [
            torch.nn.functional.interpolate(c.float(), size=shape[2:], mode="bilinear", align_corners=False)
            .expand(shape[0], -1, -1, -1)
            .contiguous()
            .numpy()
            for c in self.calibration
        ]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.items = iter(batches)

            def get_next(self):
                batch = next(self.items, None)
                return None if batch is None else {"image": batch}

        prepared, out = path.replace(".onnx", "_prep.onnx"), path.replace(".onnx", "_int8.onnx")
        quant_pre_process(path, prepared)  # shape inference and graph clean-up, as ONNX Runtime recommends
        quantize_static(
            prepared,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = tuple(x.shape)
        run = self._runs.get(key)
        if run is None:  # the first call of a shape exports and compiles (a warm-up call)
            run = self._runs[key] = self._build(x)
        return torch.from_numpy(run(x.detach().contiguous().numpy()))
