"""ONNX Runtime backend: transformer-fused fp32 graphs, static QDQ or dynamic int8; the portable path (CUDA/TensorRT
EPs later)."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import BundleError
from ..manifest import BACKEND_REQUIREMENTS
from ..precision import DYNAMIC, STATIC
from ..quiet import quiet_in_this_thread
from .base import CPU, LATENCY, Backend, BuildRequest, LoadedEngine, RuntimeSettings, Runner, check_hint

(MODEL_FILE,) = BACKEND_REQUIREMENTS["onnxruntime"]["files"][0]

# Padded tokens per run by default. Runs of 1,024 tokens did more texts/s than the 2,048 (or 4,096 for one
# context) the batcher's default gave, in every round: offline, served at 64 clients and on one 2-thread session,
# at max length 128 and 512, and padded less (docs/serving.md, "Smaller batches for ONNX Runtime"; 2-core Zen 4).
RUN_TOKEN_LIMIT = 1024


class ONNXRuntimeBackend(Backend):
    name = "onnxruntime"
    # dynamic: what Optimum's `quantize --avx512_vnni` gives, with no calibration data (docs/benchmarks.md)
    quantization_modes = (STATIC, DYNAMIC)

    def contexts_for(self, cores: int, hint: str) -> int:
        """latency: one context with every thread. throughput: as OpenVINO's, one per core below 8 cores (each
        concurrent run on 1 thread, docs/serving.md), else one per 4 cores; a context that runs alone still gets
        every thread (ONNXRuntimeEngine)."""
        if check_hint(hint) == LATENCY:
            return 1
        return cores if cores < 8 else cores // 4

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
    """A bundle's sessions. With one context, one session set with every thread. With several, a second set with
    `cpu_threads // contexts` threads that the contexts share while more than one runs: a run on a 1-thread
    session computes on its caller's thread alone, so two concurrent runs on one such session are as fast as two
    sessions (and hold the weights once); two runs on 1-thread sessions side by side did 1.05-1.5x the rows/s of
    one 2-thread session running them in turn, most at small batches (docs/serving.md, "One ONNX Runtime session
    per core"). A run that finds no other running still gets every thread, so one client loses nothing."""

    run_token_limit = RUN_TOKEN_LIMIT

    def __init__(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings):
        from ..shapes import ShapeProfile

        profile = ShapeProfile.from_dict(manifest["shape_profile"])
        lengths = [None] if profile.dynamic else list(profile.static_seq_lengths)
        model = bundle_dir / MODEL_FILE
        self.alone_sessions = {length: _session(model, settings.cpu_threads, profile, length) for length in lengths}
        shared_threads = max(1, settings.cpu_threads // settings.contexts)
        self.shared_sessions = (self.alone_sessions if shared_threads == settings.cpu_threads else
                                {length: _session(model, shared_threads, profile, length) for length in lengths})
        self.contexts = settings.contexts
        self._running = 0  # runs in progress over every context
        self._running_lock = threading.Lock()
        self._reserved_shapes: set[tuple] = set()  # shapes warm_up already ran on every session set

    def create_runner(self) -> Runner:
        return ONNXRuntimeRunner(self)

    @contextlib.contextmanager
    def sessions_for_one_run(self):
        """The sessions for a run starting now: every thread when no other run is in progress, else the
        shared ones (a 2-thread run already going and a 1-thread one beside it briefly take 3 threads)."""
        with self._running_lock:
            self._running += 1
            alone = self._running == 1
        try:
            yield self.alone_sessions if alone else self.shared_sessions
        finally:
            with self._running_lock:
                self._running -= 1

    def warm_up(self, feeds: dict[str, np.ndarray]) -> None:
        """Run `feeds` on every session set, the shared one from as many threads at once as there are contexts,
        so that each session's memory arena holds what its largest concurrent runs need before serving."""
        shape = next(iter(feeds.values())).shape
        with self._running_lock:
            if shape in self._reserved_shapes:
                return
            self._reserved_shapes.add(shape)
        _run(self.alone_sessions, feeds)
        if self.shared_sessions is not self.alone_sessions:
            with ThreadPoolExecutor(self.contexts, thread_name_prefix="ort-warm-up") as pool:
                for result in [pool.submit(_run, self.shared_sessions, feeds) for _ in range(self.contexts)]:
                    result.result()


def _session(model: Path, threads: int, profile, length: int | None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Concurrent runs on one session share its pool; a 1-thread session runs each on its caller's thread.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle pool threads sleep instead of spinning: in a server they spun on the cores the event loop and
    # the tokenizer need; measured 1.05-1.19x the served texts/s in each of 4 paired runs, offline no
    # slower (docs/serving.md, "ONNX Runtime's thread spinning").
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory patterns: with them each run takes one block sized for its input shape from the arena, and blocks
    # of many sizes from concurrent runs fragmented it (a 10-minute soak at 512 stepped up 13% after the first
    # minute). Without, each tensor is its own chunk: as fast, and flat (docs/serving.md, "Smaller batches for ONNX
    # Runtime").
    options.enable_mem_pattern = False
    if length is not None:
        options.add_free_dimension_override_by_name("batch", profile.max_batch)
        options.add_free_dimension_override_by_name("sequence", length)
    try:
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise BundleError(f"ONNX Runtime cannot load {model}: {str(error).splitlines()[0]}",
                          "rebuild the bundle") from None


def _run(sessions: dict, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = sessions.get(None) or sessions[next(iter(feeds.values())).shape[1]]
    return np.asarray(session.run(["logits"], feeds)[0], dtype=np.float32)


class ONNXRuntimeRunner(Runner):
    def __init__(self, engine: ONNXRuntimeEngine):
        self.engine = engine

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self.engine.sessions_for_one_run() as sessions:
            return _run(sessions, feeds)

    def warm_up(self, feeds: dict[str, np.ndarray]) -> None:
        self.engine.warm_up(feeds)
