"""PyTorch backend: the checkpoint's own weights (safetensors + config.json) run by PyTorch with SDPA
attention, on the CPU or an NVIDIA GPU. On the GPU each batch shape gets a CUDA graph, so a small batch
costs one graph launch instead of hundreds of kernel launches. On the CPU it is also the plain-PyTorch
baseline that users compare the other engines against.

torch, transformers and safetensors load inside build and load only: a torch bundle needs the `torch`
extra (pip install 'roberta-deploy[torch]'), and nothing of OpenVINO or ONNX Runtime at run time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BundleError, ModelLoadError, UnsupportedPrecisionError, UsageError
from ..machine import this_cpu
from ..manifest import BACKEND_REQUIREMENTS
from ..quiet import quiet_in_this_thread
from ..shapes import ShapeProfile
from .base import CPU, CUDA, Backend, BuildRequest, LoadedEngine, RuntimeSettings, Runner, device_kind

CONFIG_FILE, WEIGHTS_FILE = BACKEND_REQUIREMENTS["torch"]["files"][0]
TORCH_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
ATTENTION = "sdpa"  # torch.nn.functional.scaled_dot_product_attention: fused kernels on CPU and GPU
# Dynamic shapes are rounded up to this grid on the GPU (rows to a power of two, columns to a multiple
# of GRAPH_SEQ_MULTIPLE), so a bounded set of CUDA graphs covers every batch the bucketing planner makes.
GRAPH_SEQ_MULTIPLE = 16
MAX_CUDA_GRAPHS = 64  # per context; shapes past this run eagerly (and are counted in device_info)
GRAPH_WARMUP_CALLS = 2  # eager calls before a capture, so lazy initialisation is not captured


def _require_torch():
    """torch, with transformers and safetensors present; a UsageError naming the extra otherwise."""
    try:
        import safetensors  # noqa: F401
        import torch
        import transformers  # noqa: F401
    except ImportError as error:
        raise UsageError(f"the torch backend needs {error.name}, which is not installed",
                         "pip install 'roberta-deploy[torch]'") from None
    return torch


def cuda_device_count() -> int:
    """Visible CUDA devices; 0 without a GPU or with a CPU-only build of PyTorch."""
    torch = _require_torch()
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 dot products in hardware. oneDNN emulates bf16 on older AVX-512 CPUs
    (and PyTorch falls back to scalar code on AVX2 ones), slower than fp32, so those count as without."""
    torch = _require_torch()
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(probe is not None for probe in probes):
        return any(probe() for probe in probes if probe is not None)
    flags = this_cpu()["flags"]  # a PyTorch without the probes: ask the kernel
    return "avx512_bf16" in flags or "amx_bf16" in flags


def load_classifier(folder: Path, attention: str = ATTENTION):
    """A Hugging Face sequence classifier in fp32 on the CPU, in eval mode; every weight must load."""
    _require_torch()
    from transformers import AutoModelForSequenceClassification

    try:
        # transformers' "Loading weights" bar and advice, dropped for this thread only (as build/checkpoint does)
        with quiet_in_this_thread(("transformers",)):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(folder), attn_implementation=attention, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load {folder} as a sequence classifier: {error}".splitlines()[0],
                             "check that the weights match config.json") from None
    missing = sorted({str(key) for name in ("missing_keys", "mismatched_keys") for key in info.get(name, ())})
    if missing:  # transformers would fill these with random numbers and carry on
        raise ModelLoadError(f"{folder} lacks weights the model needs: {', '.join(missing[:3])}",
                             "rebuild the bundle from a complete checkpoint")
    return model.float().eval()


class TorchBackend(Backend):
    name = "torch"
    devices = (CPU, CUDA)
    builds_from_checkpoint = True

    def check_device(self, device: str) -> None:
        super().check_device(device)
        if device_kind(device) != CUDA:
            return
        count = cuda_device_count()
        if count == 0:
            torch = _require_torch()
            build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no GPU visible"
            raise UsageError(f"no CUDA device here (torch {torch.__version__}: {build})",
                             "use --device cpu, or run on a machine with an NVIDIA GPU and a CUDA build of PyTorch")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= count:
            raise UsageError(f"no CUDA device {index}: this machine has {count}",
                             f"use --device cuda:0 .. cuda:{count - 1}")

    def unsupported_reason(self, precision: str, device: str = CPU) -> str | None:
        if precision == "int8":
            return ("the torch backend computes in fp32, bf16 or fp16; for int8 use --backend openvino "
                    "--precision int8 (or --backend onnxruntime)")
        if device_kind(device) == CUDA:
            torch = _require_torch()
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
                return "this GPU has no bf16 arithmetic (compute capability below 8.0); use --precision fp16"
            return None
        bf16 = cpu_has_native_bf16()
        if precision == "fp16":
            alternative = "--precision bf16" if bf16 else "--precision fp32, or --backend openvino --precision int8"
            return f"PyTorch has no fast fp16 path on the CPU (fp16 is for --device cuda); use {alternative}"
        if precision == "bf16" and not bf16:
            return ("this CPU has no native bf16 (no AVX512-BF16 or AMX; PyTorch would emulate it, slower "
                    "than fp32); use --precision fp32, or --backend openvino --precision int8")
        return None

    def build(self, request: BuildRequest, output_dir: Path) -> dict:
        """The checkpoint's weights in fp32 (cast to the bundle's precision at load) and its config."""
        if request.checkpoint is None:
            raise UsageError("the torch backend builds from the source checkpoint, and none was given",
                             "build through build_engine, which finds the export's checkpoint")
        from safetensors.torch import save_model

        model = load_classifier(request.checkpoint, attention="eager")  # only its weights and config are kept
        # transformers reads safetensors files only with this metadata; save_model also handles shared tensors.
        save_model(model, str(output_dir / WEIGHTS_FILE), metadata={"format": "pt"})
        model.config.to_json_file(str(output_dir / CONFIG_FILE))
        return {"device": request.device, "dtype": TORCH_DTYPES[request.precision], "attention": ATTENTION,
                "weights": "float32 safetensors, cast to dtype at load",
                "cuda_graphs": "one per batch shape" if device_kind(request.device) == CUDA else None}

    def load(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings) -> LoadedEngine:
        self.check_device(settings.device)
        reason = self.unsupported_reason(manifest["precision"], settings.device)
        if reason:
            raise UnsupportedPrecisionError(f"this {manifest['precision']} torch bundle cannot run on "
                                            f"{settings.device} here", reason)
        return TorchEngine(bundle_dir, manifest, settings)


class TorchEngine(LoadedEngine):
    """The model on its device, shared (read-only) by every runner."""

    def __init__(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings):
        torch = _require_torch()
        self.torch = torch
        self.device = torch.device(settings.device)
        self.dtype_name = TORCH_DTYPES[manifest["precision"]]
        self.dtype = getattr(torch, self.dtype_name)
        self.profile = ShapeProfile.from_dict(manifest["shape_profile"])
        self.input_names = tuple(manifest["inputs"])
        try:
            model = load_classifier(bundle_dir)
        except ModelLoadError as error:
            raise BundleError(error.problem, "rebuild the bundle") from None
        self.model = model.to(device=self.device, dtype=self.dtype)
        if self.device.type == CUDA:  # runners compute on their own streams: the weights must have arrived
            torch.cuda.synchronize(self.device)
        self.pad_token_id = int(self.model.config.pad_token_id or 0)
        self.boolean_mask = self.model.config._attn_implementation == "sdpa"
        self.uses_cuda_graphs = self.device.type == CUDA
        self.capture_lock = threading.Lock()  # one capture at a time on the device
        self.graph_stats = {"captured": 0, "eager_shapes": 0, "capture_failures": []}

    def forward(self, tensors: dict):
        """tensors: int64 (batch, seq) on the device -> logits (batch, labels) in the model's dtype.

        The mask goes in already 4-D, so transformers takes it as given: its own 2-D path checks the
        mask's values on the host (to skip it when nothing is padded), a sync that CUDA graphs forbid.
        """
        attention_mask = tensors["attention_mask"][:, None, None, :].bool()
        if not self.boolean_mask:  # eager attention adds the mask to the scores
            attention_mask = (~attention_mask).to(self.dtype) * self.torch.finfo(self.dtype).min
        inputs = {name: tensors[name] for name in self.input_names if name != "attention_mask"}
        return self.model(**inputs, attention_mask=attention_mask).logits

    def create_runner(self) -> Runner:
        return TorchRunner(self)

    def device_info(self) -> dict:
        torch = self.torch
        info = {"device": str(self.device), "dtype": self.dtype_name,
                "torch": torch.__version__, "attention": self.model.config._attn_implementation}
        if self.device.type == CUDA:
            properties = torch.cuda.get_device_properties(self.device)
            info.update({"name": properties.name, "memory_bytes": int(properties.total_memory),
                         "compute_capability": f"{properties.major}.{properties.minor}",
                         "cuda": torch.version.cuda, "cuda_graphs": {
                             **self.graph_stats, "capture_failures": list(self.graph_stats["capture_failures"])}})
        else:
            info.update({"name": this_cpu()["model"], "torch_threads": torch.get_num_threads(),
                         "native_bf16": cpu_has_native_bf16()})
        return info


@dataclass
class _CapturedGraph:
    graph: object  # torch.cuda.CUDAGraph
    inputs: dict  # name -> static int64 (rows, columns) tensor the graph reads
    logits: object  # static (rows, labels) tensor the graph writes


class TorchRunner(Runner):
    """One execution state: on the GPU its own stream, memory pool and CUDA graphs."""

    def __init__(self, engine: TorchEngine):
        self.engine = engine
        torch = engine.torch
        self.graphs: dict[tuple[int, int], _CapturedGraph | None] = {}  # None: this shape runs eagerly
        if engine.uses_cuda_graphs:
            self.stream = torch.cuda.Stream(device=engine.device)
            self.pool = torch.cuda.graph_pool_handle()  # graphs of one runner never replay concurrently

    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.engine.torch
        with torch.inference_mode():
            if not self.engine.uses_cuda_graphs:
                tensors = {name: torch.from_numpy(array) for name, array in feeds.items()}
                return self.engine.forward(tensors).float().numpy()
            with torch.cuda.stream(self.stream):
                return self._infer_on_gpu(feeds)

    def _infer_on_gpu(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.engine.torch
        batch, seq = feeds["input_ids"].shape
        shape = self._graph_shape(batch, seq)
        if shape not in self.graphs:
            self.graphs[shape] = self._capture(shape) if len(self.graphs) < MAX_CUDA_GRAPHS else self._eager(shape)
        captured = self.graphs[shape]
        if captured is None:
            tensors = {name: torch.from_numpy(array).to(self.engine.device) for name, array in feeds.items()}
            return self.engine.forward(tensors).float().cpu().numpy()
        for name, array in _pad(feeds, shape, self.engine.pad_token_id).items():
            captured.inputs[name].copy_(torch.from_numpy(array))
        captured.graph.replay()
        return captured.logits[:batch].float().cpu().numpy()

    def _eager(self, shape: tuple[int, int]) -> None:
        with self.engine.capture_lock:
            self.engine.graph_stats["eager_shapes"] += 1
        return None

    def _graph_shape(self, batch: int, seq: int) -> tuple[int, int]:
        """The captured shape a (batch, seq) input runs at. Static profiles already arrive at their
        compiled shapes; dynamic ones are rounded up to the grid, within the profile's bounds."""
        profile = self.engine.profile
        if not profile.dynamic:
            return batch, seq
        rows = min(max(1 << (batch - 1).bit_length(), profile.min_batch), profile.max_batch)
        columns = min(-(-seq // GRAPH_SEQ_MULTIPLE) * GRAPH_SEQ_MULTIPLE, profile.max_seq)
        return max(rows, batch), max(columns, seq)

    def _capture(self, shape: tuple[int, int]) -> _CapturedGraph | None:
        """Capture the forward pass at `shape` on this runner's stream; None (run eagerly) if capture fails,
        with the reason kept in device_info so a benchmark shows it."""
        torch, engine = self.engine.torch, self.engine
        rows, columns = shape
        names = tuple(dict.fromkeys(("input_ids", "attention_mask") + engine.input_names))
        inputs = {name: torch.zeros(shape, dtype=torch.int64, device=engine.device) for name in names}
        inputs["input_ids"].fill_(engine.pad_token_id)
        inputs["attention_mask"][:, 0] = 1
        with engine.capture_lock:
            try:
                for _ in range(GRAPH_WARMUP_CALLS):
                    engine.forward(inputs)
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                # thread_local: other contexts may keep running eagerly while this one captures
                with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
                    logits = engine.forward(inputs)
            except Exception as error:  # any failure to capture leaves a correct, slower eager path
                engine.graph_stats["capture_failures"].append(f"{rows}x{columns}: {str(error).splitlines()[0]}")
                engine.graph_stats["eager_shapes"] += 1
                return None
            engine.graph_stats["captured"] += 1
        return _CapturedGraph(graph, inputs, logits)


def _pad(feeds: dict[str, np.ndarray], shape: tuple[int, int], pad_token_id: int) -> dict[str, np.ndarray]:
    """Pad int64 (batch, seq) feeds to `shape`: pad ids, masked columns, filler rows attending to one token."""
    batch, seq = feeds["input_ids"].shape
    if (batch, seq) == shape:
        return feeds
    padded = {}
    for name, array in feeds.items():
        target = np.full(shape, pad_token_id if name == "input_ids" else 0, dtype=np.int64)
        target[:batch, :seq] = array
        padded[name] = target
    padded["attention_mask"][batch:, 0] = 1
    return padded
