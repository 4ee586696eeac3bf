"""ONNX Runtime backend: transformer-fused fp32 graphs, static QDQ or dynamic int8; the portable path (CUDA/TensorRT
EPs later)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import BundleError
from ..manifest import BACKEND_REQUIREMENTS
from ..precision import DYNAMIC, STATIC
from ..quiet import quiet_in_this_thread
from .base import CPU, Backend, BuildRequest, LoadedEngine, RuntimeSettings, Runner

(MODEL_FILE,) = BACKEND_REQUIREMENTS["onnxruntime"]["files"][0]


class ONNXRuntimeBackend(Backend):
    name = "onnxruntime"
    # dynamic: what Optimum's `quantize --avx512_vnni` gives, with no calibration data (docs/benchmarks.md)
    quantization_modes = (STATIC, DYNAMIC)

    def capabilities(self) -> tuple[str, ...]:
        # The CPU provider's kernels: fp32 everywhere, int8 (MLAS: AVX2, VNNI, AMX where present); fp16 only
        # for a few ops (the rest are cast back to fp32); no bf16 kernels.
        return ("FP32", "INT8")

    def unsupported_reason(self, precision: str, device: str = CPU) -> str | None:
        if precision in ("fp32", "int8"):
            return None
        elsewhere = _openvino_alternative(precision)
        if precision == "fp16":
            return ("ONNX Runtime's CPU provider runs fp16 no faster than fp32 (most ops have no fp16 kernel); "
                    f"use --precision int8 or fp32{elsewhere}")
        return f"ONNX Runtime's CPU provider has no {precision} kernels; use --precision int8 or fp32{elsewhere}"

    def build(self, request: BuildRequest, output_dir: Path) -> dict:
        manifest = request.export.manifest
        fused_path = output_dir / ".fused.onnx"
        fused_ops = _fuse_transformer(request.export.onnx_path, fused_path, manifest)
        settings: dict = {"graph_fusions": fused_ops}
        if request.precision == "int8" and request.quantization == DYNAMIC:
            settings["quantization"] = _quantize_dynamic(request.export.onnx_path, output_dir / MODEL_FILE)
            fused_path.unlink()
        elif request.precision == "int8":
            _quantize_static(request, output_dir / MODEL_FILE)
            settings["quantization"] = {"tool": "onnxruntime.quantization.quantize_static", "mode": STATIC,
                                        "format": "QDQ",
                                        "weights": "int8 per-channel", "activations": "uint8 per-tensor",
                                        "ops": ["MatMul"],
                                        "kept_in_higher_precision": "Gemm (pooler, classifier) and every non-MatMul op"}
            fused_path.unlink()
        else:
            fused_path.rename(output_dir / MODEL_FILE)
        return settings

    def load(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings) -> LoadedEngine:
        return ONNXRuntimeEngine(bundle_dir, manifest, settings)


def _openvino_alternative(precision: str) -> str:
    """', or --backend openvino --precision P' when OpenVINO computes `precision` (or bf16) on this CPU."""
    try:
        from .openvino import OpenVINOBackend
    except ImportError:
        return ""
    offered = OpenVINOBackend().precisions()
    for candidate in (precision, "bf16"):
        if candidate in offered:
            return f", or --backend openvino --precision {candidate}"
    return ""


def _fuse_transformer(source: Path, destination: Path, manifest: dict) -> dict:
    """Fuse attention, LayerNorm and GELU subgraphs into single kernels (about 10% faster on CPU)."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(source), model_type="bert", num_heads=manifest["num_attention_heads"],
                               hidden_size=manifest["hidden_size"], opt_level=1)
    optimized.save_model_to_file(str(destination))
    return {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}


def _quantize_static(request: BuildRequest, destination: Path) -> None:
    """QDQ int8 on the unfused graph: MatMuls get int8 weights and calibrated uint8 activations;
    ORT fuses the rest at session start. The pooler and classifier export as Gemm and stay fp32."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self, feeds_list):
            self._iterator = iter(feeds_list)

        def get_next(self):
            return next(self._iterator, None)

    # quantize_static logs advice through the root logger, which Python prints to stderr when nothing is
    # configured; this thread's records are dropped for the call (other threads keep theirs).
    with quiet_in_this_thread(("",)):
        quantize_static(str(request.export.onnx_path), str(destination), Reader(request.calibration_feeds),
                        quant_format=QuantFormat.QDQ, per_channel=True, weight_type=QuantType.QInt8,
                        activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"],
                        extra_options={"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT})


def _quantize_dynamic(source: Path, destination: Path) -> dict:
    """int8 weights (per output channel) for every MatMul with a constant weight; each batch's activations are
    scaled at run time (uint8, per tensor), so no calibration. Optimum's avx512_vnni config, on the unfused
    graph as for static (ORT fuses the rest at session start). Returns the manifest's description."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet_in_this_thread(("",)):  # as in _quantize_static: its advice goes to the root logger
        quantize_dynamic(str(source), str(destination), op_types_to_quantize=["MatMul"], per_channel=True,
                         reduce_range=False, weight_type=QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "mode": DYNAMIC, "weights": "int8 per-channel",
            "activations": "uint8 per-tensor, scaled per batch at run time", "ops": ["MatMul"],
            "kept_in_higher_precision": "Gemm (pooler, classifier) and every non-MatMul op"}


class ONNXRuntimeEngine(LoadedEngine):
    def __init__(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings):
        from ..shapes import ShapeProfile

        profile = ShapeProfile.from_dict(manifest["shape_profile"])
        lengths = [None] if profile.dynamic else list(profile.static_seq_lengths)
        self.sessions = {}
        for length in lengths:
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Concurrent runs share the session's pool; give it all threads and run contexts in turn.
            options.intra_op_num_threads = settings.cpu_threads
            options.inter_op_num_threads = 1
            # Idle pool threads sleep instead of spinning: in a server they spun on the cores the event loop and
            # the tokenizer need; measured 1.05-1.19x the served texts/s in each of 4 paired runs, offline no
            # slower (docs/serving.md, "ONNX Runtime's thread spinning").
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if length is not None:
                options.add_free_dimension_override_by_name("batch", profile.max_batch)
                options.add_free_dimension_override_by_name("sequence", length)
            try:
                self.sessions[length] = ort.InferenceSession(str(bundle_dir / MODEL_FILE), options,
                                                             providers=["CPUExecutionProvider"])
            except Exception as error:
                raise BundleError(f"ONNX Runtime cannot load {bundle_dir / MODEL_FILE}: "
                                  f"{str(error).splitlines()[0]}", "rebuild the bundle") from None

    def create_runner(self) -> Runner:
        return ONNXRuntimeRunner(self.sessions)


class ONNXRuntimeRunner(Runner):
    def __init__(self, sessions: dict):
        self.sessions = sessions

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        session = self.sessions.get(None) or self.sessions[next(iter(feeds.values())).shape[1]]
        return np.asarray(session.run(["logits"], feeds)[0], dtype=np.float32)
