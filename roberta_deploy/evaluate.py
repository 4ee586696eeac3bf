"""eval: export once, build each precision, and tabulate accuracy, fp32 agreement and logit drift
per precision and batch size."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_directory
from .backends import default_precisions, get_backend
from .backends.base import canonical_device
from .build.bundle import BuildOptions, build_engine
from .data import read_dataset
from .defaults import DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH
from .errors import UnsupportedPrecisionError, UsageError
from .metrics import per_class_markdown
from .report import REPORT_HTML, eval_report_html
from .build.export import ExportArtifact, ExportOptions, export_model

ACCURACY_MARKDOWN = "accuracy.md"
ACCURACY_JSON = "accuracy.json"


@dataclass(frozen=True)
class EvalOptions:
    model: str  # checkpoint folder or hub id (ignored when export_dir is given)
    data: Path  # labelled texts; every row is scored
    output: Path
    backend: str = DEFAULT_BACKEND
    device: str = "cpu"  # where every bundle is built, verified and scored: cpu, cuda or cuda:N
    precisions: tuple[str, ...] | None = None  # None: the backend's defaults here; fp32 is always the reference
    batch_sizes: tuple[int, ...] = (1, 32)
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    calibration_data: Path | None = None  # int8 calibration texts; the bundled samples when None
    calibration_samples: int = 128
    bucketing: bool = True
    export_dir: Path | None = None  # reuse an export instead of exporting `model`
    overwrite: bool = False
    text_column: str | None = None
    label_column: str | None = None


def check_precisions(backend_name: str, precisions, device: str = "cpu") -> list[str]:
    """fp32 first (the reference), then the rest; reject what the backend cannot run before any work."""
    backend = get_backend(backend_name)
    device = canonical_device(device)
    backend.check_device(device)
    ordered = ["fp32"] + [precision for precision in precisions if precision != "fp32"]
    for precision in ordered:
        reason = backend.unsupported_reason(precision, device)
        if reason:
            raise UnsupportedPrecisionError(f"{backend.name} cannot run {precision} here", reason)
    return ordered


def evaluate(options: EvalOptions, on_step: Callable[[str], None] | None = None) -> dict:
    inputs = (options.model, options.data, options.calibration_data, options.export_dir)
    with atomic_directory(options.output, overwrite=options.overwrite, inputs=inputs) as work:
        report = evaluate_into(work, options, on_step)
        (work / REPORT_HTML).write_text(eval_report_html(report), encoding="utf-8")
        return report


def evaluate_into(work: Path, options: EvalOptions, on_step: Callable[[str], None] | None = None) -> dict:
    """Export and build under `work`, score every row, write accuracy.md/json; return the report."""
    step = on_step or (lambda message: None)
    precisions = check_precisions(options.backend,
                                  options.precisions or default_precisions(options.backend,
                                                                           canonical_device(options.device)),
                                  options.device)
    if not options.batch_sizes or min(options.batch_sizes) < 1:
        raise UsageError("batch sizes must be positive", "pass --batch-sizes such as 1,32")
    if options.export_dir is not None:
        export = ExportArtifact.load(options.export_dir)
    else:
        # Fail on a bad data file before the slow export, not after it.
        read_dataset(options.data, text_column=options.text_column, label_column=options.label_column,
                     require_labels=True)
        step(f"exporting {options.model}")
        export = export_model(ExportOptions(model=options.model, output=work / "export",
                                            max_seq_length=options.max_seq_length), on_step=step)
    dataset = read_dataset(options.data, text_column=options.text_column, label_column=options.label_column,
                           label_names=export.manifest["labels"], require_labels=True)
    from .runtime.engine import THROUGHPUT, Engine
    from .infer import classify_dataset

    max_batch = max(max(options.batch_sizes), 64)
    rows, bundles, reference_logits = [], {}, {}
    for precision in precisions:
        bundle_dir = work / "bundles" / f"{options.backend}-{precision}"
        step(f"building {precision}")
        result = build_engine(BuildOptions(
            export_dir=export.folder, output=bundle_dir, backend=options.backend, precision=precision,
            device=options.device, dynamic_shape=True, max_batch=max_batch, calibration_data=options.calibration_data,
            calibration_samples=options.calibration_samples), on_step=step)
        bundles[precision] = str(bundle_dir.relative_to(work))  # relative: `work` is renamed when done
        engine = Engine.load(bundle_dir, hint=THROUGHPUT)
        for batch_size in options.batch_sizes:
            step(f"scoring {precision} at batch {batch_size}")
            report = classify_dataset(engine, dataset, batch_size=batch_size, bucketing=options.bucketing)
            logits = report.predictions.logits
            if precision == "fp32":
                reference_logits[batch_size] = logits
            reference = reference_logits[batch_size]
            rows.append({
                "precision": precision, "batch_size": batch_size, "accuracy": report.metrics["accuracy"],
                "correct": report.metrics["correct"], "examples": report.metrics["examples"],
                "macro_f1": report.metrics["macro_f1"], "per_class": report.metrics["per_class"],
                "confusion_matrix": report.metrics["confusion_matrix"],
                "agreement_with_fp32": float((logits.argmax(1) == reference.argmax(1)).mean()),
                "max_abs_logit_diff_vs_fp32": float(np.abs(logits - reference).max()),
                "truncated": report.metrics["truncated"], "texts_per_second": report.metrics["texts_per_second"],
                "build_check": result.manifest["checks"]["against_fp32_reference"],
            })
    report = {"model": export.manifest["source_model"], "data": str(options.data), "backend": options.backend,
              "device": canonical_device(options.device),
              "max_seq_length": export.manifest["max_seq_length"], "bucketing": options.bucketing,
              "export": str(export.folder.relative_to(work)) if export.folder.is_relative_to(work) else str(export.folder),
              "bundles": bundles, "rows": rows}
    (work / ACCURACY_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (work / ACCURACY_MARKDOWN).write_text(accuracy_markdown(report), encoding="utf-8")
    return report


def accuracy_markdown(report: dict) -> str:
    lines = [f"# Accuracy of {report['model']} on {report['data']}", "",
             f"Backend {report['backend']} on {report.get('device', 'cpu')}, max_seq_length {report['max_seq_length']}, "
             f"length bucketing {'on' if report['bucketing'] else 'off'}.", "",
             "| precision | batch | accuracy | macro-F1 | correct | agreement with fp32 | max abs logit diff vs fp32 "
             "| truncated |",
             "|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['precision']} | {row['batch_size']} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} | "
                     f"{row['correct']}/{row['examples']} | {row['agreement_with_fp32']:.4f} | "
                     f"{row['max_abs_logit_diff_vs_fp32']:.4g} | {row['truncated']} |")
    largest_batch = max(row["batch_size"] for row in report["rows"])
    for row in report["rows"]:
        if row["batch_size"] == largest_batch:
            lines += ["", f"## {row['precision']}: per class (batch {largest_batch})", "", per_class_markdown(row).rstrip()]
    return "\n".join(lines) + "\n"
