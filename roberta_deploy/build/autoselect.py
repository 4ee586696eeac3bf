"""build --precision auto: try precisions fastest first; keep the fastest whose accuracy on labelled
texts is within a budget of fp32. The measured figures go into the bundle's manifest."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_directory
from ..backends import get_backend
from ..backends.base import canonical_device
from .bundle import BuildOptions, BuildResult, build_engine
from ..data import read_dataset
from ..errors import NumericalCheckError, OutputExistsError, UsageError
from .export import ExportArtifact
from ..manifest import KIND_BUNDLE, read_manifest, write_manifest

# Measured on this CPU class (NOTES.md): int8 (rest bf16) 111 seq/s, bf16 84, fp32 17 at BERT-base.
FASTEST_FIRST = ("int8", "bf16", "fp16", "fp32")
GENERATED_MANIFEST_KEYS = ("schema_version", "kind", "created", "files", "library_versions")


def build_fastest_within_budget(options: BuildOptions, accuracy_budget_points: float,
                                on_step: Callable[[str], None] | None = None) -> BuildResult:
    step = on_step or (lambda message: None)
    if accuracy_budget_points < 0:
        raise UsageError(f"--accuracy-budget {accuracy_budget_points} is negative", "pass a budget in points, e.g. 0.5")
    if options.calibration_data is None:
        raise UsageError("--precision auto needs labelled texts to measure accuracy on",
                         "pass --calibration-data FILE with a label column")
    export = ExportArtifact.load(options.export_dir)
    dataset = read_dataset(options.calibration_data, text_column=options.text_column,
                           label_column=options.label_column, label_names=export.manifest["labels"],
                           require_labels=True)
    if Path(options.output).exists() and any(Path(options.output).iterdir()) and not options.overwrite:
        raise OutputExistsError(f"output folder {options.output} already exists and is not empty",
                                "pass --overwrite or choose another --output folder")
    offered = get_backend(options.backend).precisions(canonical_device(options.device))
    candidates = [precision for precision in FASTEST_FIRST if precision in offered]
    gold = np.asarray(dataset.labels)
    Path(options.output).parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".auto-precision-", dir=Path(options.output).parent))
    try:
        def accuracy_of(bundle_dir: Path) -> float:
            from ..runtime.engine import THROUGHPUT, Engine

            return float((Engine.load(bundle_dir, hint=THROUGHPUT).predict(dataset.texts).labels == gold).mean())

        step("building the fp32 reference")
        reference_dir = scratch / "fp32"
        build_engine(replace(options, precision="fp32", output=reference_dir, overwrite=False), on_step)
        reference_accuracy = accuracy_of(reference_dir)
        tried, chosen = [], None
        for precision in candidates:
            bundle_dir = scratch / precision
            if precision != "fp32":
                step(f"trying {precision}")
                try:
                    build_engine(replace(options, precision=precision, output=bundle_dir, overwrite=False), on_step)
                except NumericalCheckError as error:
                    tried.append({"precision": precision, "accuracy": float("nan"), "points_below_fp32": float("nan"),
                                  "verdict": f"rejected: {error.problem}"})
                    continue
            accuracy = reference_accuracy if precision == "fp32" else accuracy_of(bundle_dir)
            drop = (reference_accuracy - accuracy) * 100
            accepted = drop <= accuracy_budget_points
            tried.append({"precision": precision, "accuracy": accuracy, "points_below_fp32": drop,
                          "verdict": "chosen" if accepted else f"rejected: over the {accuracy_budget_points} point budget"})
            if accepted:
                chosen = bundle_dir
                break
        selection = {"accuracy_budget_points": accuracy_budget_points, "data": dataset.source,
                     "examples": len(dataset), "fp32_accuracy": reference_accuracy, "order": candidates,
                     "candidates": tried,
                     "reason": f"fastest precision within {accuracy_budget_points} accuracy points of fp32"}
        manifest = read_manifest(chosen, KIND_BUNDLE)
        content = {key: value for key, value in manifest.items() if key not in GENERATED_MANIFEST_KEYS}
        content["precision_selection"] = selection
        write_manifest(chosen, KIND_BUNDLE, content)
        with atomic_directory(options.output, overwrite=options.overwrite) as work:
            for item in chosen.iterdir():
                shutil.move(str(item), work / item.name)
        return BuildResult(Path(options.output), read_manifest(options.output, KIND_BUNDLE))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
