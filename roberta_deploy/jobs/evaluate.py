"""eval: export once, build each precision, and tabulate accuracy, fp32 agreement and logit drift
per precision and batch size."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_directory
from ..backends import default_precisions, get_backend, require_precision
from ..backends.base import canonical_device
from ..build.bundle import BuildOptions, build_engine
from ..build.candidates import CandidateSpec, build_candidates
from ..data import read_dataset
from ..defaults import DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH
from ..errors import NumericalCheckError, UsageError
from ..precision import DYNAMIC, STATIC, canonical_quantization
from ..measurement import compare_paired, machine_load, wilson_interval
from .infer import check_threshold, classify_dataset
from .perf import host_description
from ..metrics import per_class_markdown, task_metrics_markdown
from ..tasks import DEFAULT_THRESHOLD, MULTI_LABEL, REGRESSION, SINGLE_LABEL, Task, compare_with_reference
from .report import REPORT_HTML, eval_report_html
from ..build.export import ExportArtifact, ExportOptions, export_model

# What each task's table shows (column name, metrics key), and the details kept per row.
MEASURES = {SINGLE_LABEL: (("accuracy", "accuracy"), ("macro-F1", "macro_f1")),
            MULTI_LABEL: (("micro-F1", "micro_f1"), ("macro-F1", "macro_f1"), ("exact match", "exact_match")),
            REGRESSION: (("pearson", "pearson"), ("spearman", "spearman"), ("mse", "mse"))}
TASK_DETAILS = {SINGLE_LABEL: ("accuracy", "correct", "macro_f1", "per_class", "confusion_matrix"),
                MULTI_LABEL: ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "exact_match", "per_label",
                              "threshold"),
                REGRESSION: ("pearson", "spearman", "mse", "mae")}
SCATTER_POINTS = 1000  # regression: rows of predicted vs gold kept for report.html's chart (evenly spaced)
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
    text_pair_column: str | None = None  # the second text of pair data; None: the usual names (data.py)
    threshold: float = DEFAULT_THRESHOLD  # multi-label decisions
    quantization: str = STATIC  # how the int8 bundle scales activations: static (calibrated) or dynamic


@dataclass(frozen=True)
class EvalRow:
    """One precision at one batch size: the task's measures against gold, and how far it is from fp32."""

    precision: str
    batch_size: int
    examples: int
    measures: dict  # the task's table columns: name -> value (None where undefined)
    details: dict  # TASK_DETAILS of the task: accuracy, correct, per_class, confusion_matrix, ... (metrics.py)
    agreement_with_fp32: float  # labels equal to fp32's (regression: scores within tolerance)
    max_abs_logit_diff_vs_fp32: float
    truncated: int
    texts_per_second: float
    build_check: dict  # the bundle's own check against the fp32 reference at build time
    accuracy_interval: dict | None = None  # single-label: Wilson 95% interval of the accuracy
    paired_vs_fp32: dict | None = None  # single-label: disagreements with fp32 and McNemar's exact p

    def to_json(self) -> dict:
        """accuracy.json's row: the details inline, the intervals only where measured."""
        row = {"precision": self.precision, "batch_size": self.batch_size, "examples": self.examples,
               "measures": self.measures, **self.details, "agreement_with_fp32": self.agreement_with_fp32,
               "max_abs_logit_diff_vs_fp32": self.max_abs_logit_diff_vs_fp32, "truncated": self.truncated,
               "texts_per_second": self.texts_per_second, "build_check": self.build_check}
        if self.accuracy_interval is not None:
            row.update(accuracy_interval=self.accuracy_interval, paired_vs_fp32=self.paired_vs_fp32)
        return row


@dataclass(frozen=True)
class EvalReport:
    """What eval measured, as the CLI renders it; `to_json` is accuracy.json."""

    model: str
    data: str
    backend: str
    task: str
    text_pairs: bool
    device: str
    max_seq_length: int
    bucketing: bool
    export: str  # relative to the output folder when eval exported it
    bundles: dict  # precision -> bundle folder, relative to the output folder
    rows: tuple[EvalRow, ...]
    machine: dict
    predicted_vs_gold: dict | None = None  # regression: a sample of predicted vs gold for report.html
    int8_quantization: str | None = None  # the int8 row's mode (static or dynamic); None without an int8 row

    def to_json(self) -> dict:
        report = {"model": self.model, "data": self.data, "backend": self.backend, "task": self.task,
                  "text_pairs": self.text_pairs, "device": self.device, "max_seq_length": self.max_seq_length,
                  "bucketing": self.bucketing, "export": self.export, "bundles": self.bundles,
                  "rows": [row.to_json() for row in self.rows], "machine": self.machine,
                  "int8_quantization": self.int8_quantization}
        if self.predicted_vs_gold is not None:
            report["predicted_vs_gold"] = self.predicted_vs_gold
        return report


def check_precisions(backend_name: str, precisions, device: str = "cpu") -> list[str]:
    """fp32 first (the reference), then the rest; reject what the backend cannot run before any work."""
    device = canonical_device(device)
    ordered = ["fp32"] + [precision for precision in precisions if precision != "fp32"]
    for precision in ordered:
        require_precision(backend_name, precision, device)
    return ordered


def evaluate(options: EvalOptions, on_step: Callable[[str], None] | None = None) -> EvalReport:
    inputs = (options.model, options.data, options.calibration_data, options.export_dir)
    with atomic_directory(options.output, overwrite=options.overwrite, inputs=inputs) as work:
        report = evaluate_into(work, options, on_step)
        (work / REPORT_HTML).write_text(eval_report_html(report.to_json()), encoding="utf-8")
        return report


def evaluate_into(work: Path, options: EvalOptions, on_step: Callable[[str], None] | None = None) -> EvalReport:
    """Export and build under `work`, score every row, write accuracy.md/json; return the report."""
    step = on_step or (lambda message: None)
    precisions = check_precisions(options.backend,
                                  options.precisions or default_precisions(options.backend,
                                                                           canonical_device(options.device)),
                                  options.device)
    quantization = canonical_quantization(options.quantization, "int8")
    if quantization == DYNAMIC:  # before the export, as every other flag
        if "int8" not in precisions:
            raise UsageError("--quantization dynamic applies to int8, which --precisions leaves out",
                             "add int8 to --precisions, or leave --quantization off")
        get_backend(options.backend).check_quantization(quantization)
    if not options.batch_sizes or min(options.batch_sizes) < 1:
        raise UsageError("batch sizes must be positive", "pass --batch-sizes such as 1,32")
    check_threshold(options.threshold)  # before the export, not when the first precision is scored
    if options.export_dir is not None:
        export = ExportArtifact.load(options.export_dir)
    else:
        # Fail on a bad data file before the slow export, not after it (labels are read by the task
        # the export finds, below).
        read_dataset(options.data, text_column=options.text_column, text_pair_column=options.text_pair_column,
                     ignore_labels=True)
        step(f"exporting {options.model}")
        export = export_model(ExportOptions(model=options.model, output=work / "export",
                                            max_seq_length=options.max_seq_length), on_step=step)
    task = Task.from_manifest(export.manifest)
    dataset = read_dataset(options.data, text_column=options.text_column, label_column=options.label_column,
                           label_names=export.manifest["labels"], require_labels=True,
                           text_pair_column=options.text_pair_column, text_pairs=task.text_pairs, task=task.kind)
    from ..runtime.engine import THROUGHPUT, Engine

    max_batch = max(max(options.batch_sizes), 64)
    rows, bundles, reference_logits = [], {}, {}
    # Regression: predicted against gold for a sample of rows at the largest batch, drawn in report.html.
    sample = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), SCATTER_POINTS)).round().astype(int))
    scatter = {"gold": [float(dataset.labels[index]) for index in sample] if task.kind == REGRESSION else [],
               "predicted": {}}
    checks = {}

    def build_one(spec: CandidateSpec) -> Path:
        bundle_dir = work / "bundles" / spec.folder_name
        step(f"building {spec.precision}")
        result = build_engine(BuildOptions(
            export_dir=export.folder, output=bundle_dir, backend=spec.backend, precision=spec.precision,
            quantization=spec.quantization or STATIC, device=options.device, dynamic_shape=True, max_batch=max_batch,
            calibration_data=options.calibration_data, calibration_samples=options.calibration_samples), on_step=step)
        checks[spec.precision] = result.manifest["checks"]["against_fp32_reference"]
        return bundle_dir

    specs = [CandidateSpec(options.backend, precision, quantization=quantization if precision == "int8" else None)
             for precision in precisions]
    candidates = build_candidates(specs, build_one)
    rejected = [candidate for candidate in candidates if candidate.rejected is not None]
    if rejected:  # eval reports every precision asked for: a rejected one is the error it was
        raise NumericalCheckError(f"{rejected[0].spec.name} drifted past its tolerance: {rejected[0].rejected}",
                                  "evaluate the other precisions, or check the model and calibration data")
    gold = np.asarray(dataset.labels) if task.kind == SINGLE_LABEL else None
    reference_labels = {}
    for candidate in candidates:
        precision, bundle_dir = candidate.spec.precision, candidate.bundle
        bundles[precision] = str(bundle_dir.relative_to(work))  # relative: `work` is renamed when done
        engine = Engine.load(bundle_dir, hint=THROUGHPUT)
        for batch_size in options.batch_sizes:
            step(f"scoring {precision} at batch {batch_size}")
            report = classify_dataset(engine, dataset, batch_size=batch_size, bucketing=options.bucketing,
                                      threshold=options.threshold)
            logits = report.predictions.logits
            if precision == "fp32":
                reference_logits[batch_size] = logits
            reference = reference_logits[batch_size]
            against = compare_with_reference(task, logits, reference, precision, options.threshold)
            metrics = report.metrics
            statistics = {}
            if gold is not None:
                labels = report.predictions.labels
                reference_labels.setdefault(batch_size, labels)
                statistics = {"accuracy_interval": wilson_interval(int((labels == gold).sum()), len(gold)).to_dict(),
                              "paired_vs_fp32": compare_paired(labels, reference_labels[batch_size], gold).to_dict()}
            if task.kind == REGRESSION and batch_size == max(options.batch_sizes):
                scatter["predicted"][precision] = [round(float(value), 6)
                                                   for value in report.predictions.values[sample]]
            rows.append(EvalRow(
                precision=precision, batch_size=batch_size, examples=metrics["examples"],
                measures={name: metrics[key] for name, key in MEASURES[task.kind]},
                details={key: metrics[key] for key in TASK_DETAILS[task.kind]},
                agreement_with_fp32=against.get("label_agreement", against.get("scores_within_tolerance")),
                max_abs_logit_diff_vs_fp32=against["max_abs_logit_diff"],
                truncated=metrics["truncated"], texts_per_second=metrics["texts_per_second"],
                build_check=checks[precision], **statistics))
    report = EvalReport(
        model=export.manifest["source_model"], data=str(options.data), backend=options.backend, task=task.kind,
        text_pairs=dataset.text_pairs is not None, device=canonical_device(options.device),
        max_seq_length=export.manifest["max_seq_length"], bucketing=options.bucketing,
        export=str(export.folder.relative_to(work)) if export.folder.is_relative_to(work) else str(export.folder),
        bundles=bundles, rows=tuple(rows), machine={**host_description(), **machine_load()},
        predicted_vs_gold={"batch_size": max(options.batch_sizes), **scatter} if task.kind == REGRESSION else None,
        int8_quantization=quantization if "int8" in precisions else None)
    written = report.to_json()
    (work / ACCURACY_JSON).write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (work / ACCURACY_MARKDOWN).write_text(accuracy_markdown(written), encoding="utf-8")
    return report


def accuracy_markdown(report: dict) -> str:
    task = report.get("task", SINGLE_LABEL)
    if task != SINGLE_LABEL:
        return task_markdown(report)
    lines = [f"# Accuracy of {report['model']} on {report['data']}", "",
             f"Backend {report['backend']} on {report.get('device', 'cpu')}, max_seq_length {report['max_seq_length']}, "
             f"length bucketing {'on' if report['bucketing'] else 'off'}"
             f"{int8_note(report)}.", "",
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


def int8_note(report: dict) -> str:
    """', int8 quantization dynamic' (or static) where the report has an int8 row; '' otherwise."""
    mode = report.get("int8_quantization")
    return f", int8 quantization {mode}" if mode else ""


def format_measure(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def task_markdown(report: dict) -> str:
    """Multi-label and regression: the task's measures, agreement with fp32 (label decisions over the
    threshold; regression: the share of scores within the precision's tolerance) and the logit drift."""
    names = list(report["rows"][0]["measures"])
    lines = [f"# {report['task']} of {report['model']} on {report['data']}", "",
             f"Backend {report['backend']} on {report.get('device', 'cpu')}, max_seq_length {report['max_seq_length']}, "
             f"text pairs {'yes' if report.get('text_pairs') else 'no'}{int8_note(report)}.", "",
             "| precision | batch | " + " | ".join(names) + " | agreement with fp32 | max abs logit diff vs fp32 | truncated |",
             "|---|---|" + "---|" * len(names) + "---|---|---|"]
    for row in report["rows"]:
        lines.append(f"| {row['precision']} | {row['batch_size']} | "
                     + " | ".join(format_measure(row["measures"][name]) for name in names)
                     + f" | {row['agreement_with_fp32']:.4f} | {row['max_abs_logit_diff_vs_fp32']:.4g} | {row['truncated']} |")
    largest_batch = max(row["batch_size"] for row in report["rows"])
    for row in report["rows"]:
        if row["batch_size"] == largest_batch and "per_label" in row:
            lines += ["", f"## {row['precision']}: per label (batch {largest_batch}, threshold {row['threshold']})", "",
                      task_metrics_markdown(row).rstrip()]
    return "\n".join(lines) + "\n"
