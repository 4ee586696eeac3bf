"""OpenVINO backend: IR files, bf16 execution via the CPU's AMX/AVX512-BF16, int8 via NNCF."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import openvino as ov

from ..errors import BundleError
from ..manifest import BACKEND_REQUIREMENTS
from ..precision import PRECISIONS
from ..quiet import quiet_in_this_thread
from .base import CPU, LATENCY, Backend, BuildRequest, LoadedEngine, RuntimeSettings, Runner, check_hint

# The names optimum-intel's OVModel*.from_pretrained looks for, so a bundle loads there as it is; then the
# names of bundles built before the rename.
(MODEL_XML, MODEL_BIN), (LEGACY_MODEL_XML, LEGACY_MODEL_BIN) = BACKEND_REQUIREMENTS["openvino"]["files"]
# The pooler and classifier are a sliver of the compute, and every error there lands on the logits directly.
KEEP_IN_HIGHER_PRECISION = (".*pooler.*", ".*classifier.*", ".*pre_classifier.*")


def cpu_capabilities() -> set[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of this CPU, e.g. {"FP32", "INT8"} on AVX2-only machines."""
    return set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


class OpenVINOBackend(Backend):
    name = "openvino"

    def contexts_for(self, cores: int, hint: str) -> int:
        """latency: one context with every thread. throughput: below 8 cores one 1-thread context per core
        (no barrier between threads inside each layer; faster than one 2-thread stream on 2 cores,
        docs/benchmarks.md); from 8 cores one per 4 cores, so each stream's GEMMs stay wide enough to scale."""
        if check_hint(hint) == LATENCY:
            return 1
        return cores if cores < 8 else cores // 4

    def capabilities(self) -> tuple[str, ...]:
        return tuple(sorted(cpu_capabilities()))

    def unsupported_reason(self, precision: str, device: str = CPU) -> str | None:
        reason = self._missing(precision)
        if reason is None:
            return None
        return f"{reason}; {self.alternatives_to(precision, device)}"

    def precisions(self, device: str = CPU) -> tuple[str, ...]:
        self.check_device(device)
        return tuple(precision for precision in PRECISIONS if self._missing(precision) is None)

    def default_precisions(self, device: str = CPU) -> tuple[str, ...]:
        # fp16 is built when asked for where the CPU has fp16 arithmetic (AVX512-FP16), but is left out of
        # the defaults when bf16 is offered too: on such a Xeon it classified the sample reviews at 615
        # texts/s against bf16's 772 (demo model, `run`, docs/benchmarks.md), with the same accuracy.
        offered = self.precisions(device)
        return tuple(precision for precision in offered if precision != "fp16" or "bf16" not in offered)

    def _missing(self, precision: str) -> str | None:
        """Why `precision` cannot run here, without the alternatives."""
        capabilities = cpu_capabilities()
        reported = ", ".join(sorted(capabilities))
        if precision == "fp16" and "FP16" not in capabilities:
            return f"this CPU has no fp16 arithmetic (OpenVINO reports {reported}: no FP16)"
        if precision == "bf16" and "BF16" not in capabilities:
            return f"this CPU has no bf16 support (no AVX512-BF16/AMX; OpenVINO reports {reported})"
        if precision == "int8":
            if "INT8" not in capabilities:
                return f"OpenVINO reports no INT8 capability on this CPU ({reported})"
            try:
                import nncf  # noqa: F401
            except ImportError:
                return "int8 needs NNCF (pip install 'roberta-deploy[openvino]')"
        return None

    def build(self, request: BuildRequest, output_dir: Path) -> dict:
        model = ov.Core().read_model(str(request.export.onnx_path))
        profile = request.profile
        if profile.dynamic or len(profile.static_seq_lengths) > 1:
            # Bounded dims let the CPU plugin size its buffers; static buckets are fixed at load time.
            shape = ov.PartialShape([ov.Dimension(profile.min_batch, profile.max_batch),
                                     ov.Dimension(profile.min_seq, profile.max_seq)])
        else:
            shape = ov.PartialShape([profile.max_batch, profile.max_seq])
        model.reshape({port.get_any_name(): shape for port in model.inputs})
        settings = {"inference_precision": _inference_precision(request.precision)}
        if request.precision == "int8":
            model = _quantize_with_nncf(model, request.calibration_feeds)
            settings["quantization"] = {"tool": "nncf.quantize", "model_type": "transformer",
                                        "calibration_batches": len(request.calibration_feeds),
                                        "kept_in_higher_precision": list(KEEP_IN_HIGHER_PRECISION)}
        ov.save_model(model, str(output_dir / MODEL_XML), compress_to_fp16=False)
        return settings

    def load(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings) -> LoadedEngine:
        return OpenVINOEngine(bundle_dir, manifest, settings)


def _quantize_with_nncf(model, calibration_feeds: list[dict]):
    """Static int8 (NNCF post-training quantization, transformer preset: SmoothQuant, per-channel weights).

    NNCF logs and draws rich progress bars on stdout; the library must not print, so this thread's output
    is dropped while it runs (other threads keep theirs).
    """
    import nncf

    with quiet_in_this_thread(("nncf",)):
        return _nncf_quantize(nncf, model, calibration_feeds)


def _nncf_quantize(nncf, model, calibration_feeds: list[dict]):
    return nncf.quantize(model, nncf.Dataset(calibration_feeds), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(calibration_feeds),
                         ignored_scope=nncf.IgnoredScope(patterns=list(KEEP_IN_HIGHER_PRECISION), validate=False))


def _inference_precision(precision: str) -> str:
    # int8 graphs keep their non-quantized ops in bf16 where the CPU has it: measured 111 vs 92 seq/s.
    if precision in ("bf16", "int8") and "BF16" in cpu_capabilities():
        return "bf16"
    return {"fp16": "f16"}.get(precision, "f32")


class OpenVINOEngine(LoadedEngine):
    def __init__(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings):
        from ..shapes import ShapeProfile

        core = ov.Core()
        profile = ShapeProfile.from_dict(manifest["shape_profile"])
        properties = {
            # Set explicitly: on AMX CPUs OpenVINO would otherwise run "fp32" bundles in bf16.
            "INFERENCE_PRECISION_HINT": manifest["backend_settings"]["inference_precision"],
            "NUM_STREAMS": str(settings.contexts),
            "INFERENCE_NUM_THREADS": settings.cpu_threads,
            "ENABLE_CPU_PINNING": settings.pin_threads,
        }
        xml_name, bin_name = ((LEGACY_MODEL_XML, LEGACY_MODEL_BIN) if LEGACY_MODEL_XML in manifest.get("files", {})
                              else (MODEL_XML, MODEL_BIN))
        try:
            model = core.read_model(str(bundle_dir / xml_name), str(bundle_dir / bin_name))
        except RuntimeError as error:
            raise BundleError(f"OpenVINO cannot read {bundle_dir / xml_name}: {str(error).splitlines()[0]}",
                              "rebuild the bundle") from None
        self.compiled: dict[int | None, ov.CompiledModel] = {}
        if profile.dynamic or len(profile.static_seq_lengths) == 1:
            self.compiled[None] = core.compile_model(model, "CPU", properties)
        else:
            for length in profile.static_seq_lengths:
                shaped = model.clone()
                shaped.reshape({port.get_any_name(): ov.PartialShape([profile.max_batch, length])
                                for port in shaped.inputs})
                self.compiled[length] = core.compile_model(shaped, "CPU", properties)

    def create_runner(self) -> Runner:
        return OpenVINORunner({key: compiled.create_infer_request() for key, compiled in self.compiled.items()})


# The first time a process touches a tensor's numpy view (`tensor.data`, which `InferRequest.infer` uses to
# copy inputs in), OpenVINO's bindings initialize pybind11's numpy API inside a C++ function-local static.
# Two threads doing that at once deadlock for good: one holds the static's guard and waits for the GIL,
# the other holds the GIL and waits for the guard (both stacks seen with py-spy, issue 8). So until one
# inference has completed in this process, inferences run one at a time; after that, nothing is locked.
_first_inference_lock = threading.Lock()
_first_inference_done = threading.Event()


class OpenVINORunner(Runner):
    def __init__(self, requests: dict):
        self.requests = requests

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if not _first_inference_done.is_set():
            with _first_inference_lock:  # blocks without the GIL, so the first inference can finish
                logits = self._infer(feeds)
                _first_inference_done.set()
                return logits
        return self._infer(feeds)

    def _infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        request = self.requests.get(None) or self.requests[next(iter(feeds.values())).shape[1]]
        request.infer(feeds)
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
