"""The contract every backend meets: build engine files from an export, load them, run padded batches."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import UsageError
from ..manifest import BACKEND_REQUIREMENTS
from ..precision import PRECISIONS, STATIC
from ..shapes import ShapeProfile

if TYPE_CHECKING:  # the runtime loads backends; only a build hands them an export
    from ..build.export import ExportArtifact

CPU = "cpu"
CUDA = "cuda"
THROUGHPUT = "throughput"  # many texts: keep every core busy on its own batch
LATENCY = "latency"  # one request at a time: all cores on that request
PERFORMANCE_HINTS = (THROUGHPUT, LATENCY)


def check_hint(hint: str) -> str:
    if hint not in PERFORMANCE_HINTS:
        raise UsageError(f"unknown performance hint {hint!r}", f"use one of {', '.join(PERFORMANCE_HINTS)}")
    return hint


def canonical_device(name: str) -> str:
    """'cpu', 'cuda' or 'cuda:N' ('gpu' is taken for 'cuda'); UsageError for anything else."""
    key = name.strip().lower()
    key = CUDA + key[3:] if key.startswith("gpu") else key
    if key == CPU or re.fullmatch(r"cuda(:\d+)?", key):
        return key
    raise UsageError(f"unknown device {name!r}", "use cpu, cuda or cuda:N")


def device_kind(device: str) -> str:
    """'cuda:1' -> 'cuda'."""
    return device.split(":")[0]


@dataclass(frozen=True)
class BuildRequest:
    export: "ExportArtifact"
    precision: str  # canonical: fp32, fp16, bf16 or int8
    profile: ShapeProfile
    calibration_feeds: list[dict[str, np.ndarray]] = field(default_factory=list)  # static int8 only
    quantization: str = STATIC  # int8 only: static (calibrated) or dynamic (precision.QUANTIZATION_MODES)
    device: str = CPU  # where the bundle will run and is verified
    checkpoint: Path | None = None  # the export's source checkpoint, for backends that ship its weights


@dataclass(frozen=True)
class RuntimeSettings:
    """How a loaded engine shares its device: `contexts` concurrent runners over `cpu_threads` threads."""

    contexts: int
    cpu_threads: int
    device: str = CPU  # canonical: cpu, cuda or cuda:N
    # Pin compute threads to cores. Off where other processes share the cores (several Ray replicas on one
    # node): OpenVINO pins every process's threads from the first core on, so two replicas shared one core.
    pin_threads: bool = True


class Runner(ABC):
    """One execution state (a Context's backend half). Not shared between threads."""

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """feeds: int64 (batch, seq) arrays of a shape the engine accepts -> float32 logits (batch, labels)."""

    def warm_up(self, feeds: dict[str, np.ndarray]) -> None:
        """Run `feeds` before serving so the memory and kernels they need are taken now (one run here; a backend
        that chooses between resources per run, as ONNX Runtime's sessions, runs each)."""
        self.infer(feeds)


class LoadedEngine(ABC):
    # The most padded tokens one run should take when the caller sets no token budget (None: the batcher's
    # default alone decides). For engines measured faster on smaller runs (ONNX Runtime).
    run_token_limit: int | None = None

    @abstractmethod
    def create_runner(self) -> Runner: ...

    def device_info(self) -> dict:
        """What the engine computes on, for reports (perf's JSON): at least {"device": ...}."""
        return {"device": CPU}


class Backend(ABC):
    name: str  # a key of manifest.BACKEND_REQUIREMENTS, where its engine file names are declared
    devices: tuple[str, ...] = (CPU,)  # device kinds this backend can run on
    builds_from_checkpoint = False  # True: build needs the export's source checkpoint (BuildRequest.checkpoint)
    quantization_modes: tuple[str, ...] = (STATIC,)  # int8 modes it builds (precision.QUANTIZATION_MODES)

    @property
    def engine_files(self) -> tuple[str, ...]:
        """The files this backend writes into a bundle (declared once, in manifest.BACKEND_REQUIREMENTS)."""
        return BACKEND_REQUIREMENTS[self.name]["files"][0]

    def contexts_for(self, cores: int, hint: str) -> int:
        """How many contexts a performance `hint` needs on `cores` cores (OpenVINO's PERFORMANCE_HINT, made
        explicit). One by default: a backend whose contexts share one thread pool (PyTorch's process-wide one)
        only queues more of them, and on a GPU one context keeps it fed."""
        check_hint(hint)
        return 1

    def capabilities(self) -> tuple[str, ...]:
        """What this backend reports it computes on this CPU, e.g. ("BF16", "FP32", "INT8"); recorded in
        bundles. Backends that ask the machine (OpenVINO) override it."""
        return tuple(precision.upper() for precision in self.precisions())

    @abstractmethod
    def unsupported_reason(self, precision: str, device: str = CPU) -> str | None:
        """None when this backend runs `precision` well on `device` here; otherwise why not and what to
        use instead. `device` has passed check_device."""

    def check_quantization(self, quantization: str) -> None:
        """Raise UsageError when this backend has no int8 build of mode `quantization` (canonical)."""
        if quantization not in self.quantization_modes:
            raise UsageError(f"the {self.name} backend has no {quantization} int8 quantization",
                             f"pass --backend onnxruntime, or --quantization {self.quantization_modes[0]}")

    def check_device(self, device: str) -> None:
        """Raise UsageError when this backend cannot run on `device` (canonical) on this machine."""
        if device_kind(device) not in self.devices:
            raise UsageError(f"the {self.name} backend runs on {', '.join(self.devices)} only, not {device}",
                             "use --backend torch for --device cuda, or --device cpu")

    def precisions(self, device: str = CPU) -> tuple[str, ...]:
        """The precisions this backend computes on `device` on this machine (in PRECISIONS order)."""
        self.check_device(device)
        return tuple(precision for precision in PRECISIONS if self.unsupported_reason(precision, device) is None)

    def default_precisions(self, device: str = CPU) -> tuple[str, ...]:
        """What run and eval build when no precision is named (default: every one this backend offers)."""
        return self.precisions(device)

    def alternatives_to(self, precision: str, device: str = CPU) -> str:
        """`use --precision a, b or c`: what to use instead of `precision` here."""
        others = [other for other in self.precisions(device) if other != precision]
        listed = ", ".join(others[:-1]) + (" or " if len(others) > 1 else "") + others[-1]
        return f"use --precision {listed}"

    @abstractmethod
    def build(self, request: BuildRequest, output_dir: Path) -> dict:
        """Write the engine files into output_dir; return backend settings for the manifest."""

    @abstractmethod
    def load(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings) -> LoadedEngine: ...
