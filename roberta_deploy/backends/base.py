"""The contract every backend meets: build engine files from an export, load them, run padded batches."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..shapes import ShapeProfile

if TYPE_CHECKING:  # the runtime loads backends; only a build hands them an export
    from ..build.export import ExportArtifact


@dataclass(frozen=True)
class BuildRequest:
    export: "ExportArtifact"
    precision: str  # canonical: fp32, fp16, bf16 or int8
    profile: ShapeProfile
    calibration_feeds: list[dict[str, np.ndarray]] = field(default_factory=list)  # int8 only


@dataclass(frozen=True)
class RuntimeSettings:
    """How a loaded engine shares the CPU: `contexts` concurrent runners over `cpu_threads` threads."""

    contexts: int
    cpu_threads: int


class Runner(ABC):
    """One execution state (a Context's backend half). Not shared between threads."""

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """feeds: int64 (batch, seq) arrays of a shape the engine accepts -> float32 logits (batch, labels)."""


class LoadedEngine(ABC):
    @abstractmethod
    def create_runner(self) -> Runner: ...


class Backend(ABC):
    name: str
    engine_files: tuple[str, ...]

    @abstractmethod
    def unsupported_reason(self, precision: str) -> str | None:
        """None when this backend runs `precision` well here; otherwise why not and what to use instead."""

    @abstractmethod
    def build(self, request: BuildRequest, output_dir: Path) -> dict:
        """Write the engine files into output_dir; return backend settings for the manifest."""

    @abstractmethod
    def load(self, bundle_dir: Path, manifest: dict, settings: RuntimeSettings) -> LoadedEngine: ...
