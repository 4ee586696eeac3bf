"""run: the whole pipeline in one call: export, build fp32 and the fast precisions, eval, perf, summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from ..atomic import atomic_directory
from ..backends import default_precisions
from ..backends.base import canonical_device
from ..defaults import DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH, DEMO_MODEL_DIR, DEMO_SAMPLES_PATH
from .evaluate import EvalOptions, evaluate_into, int8_note
from ..manifest import MANIFEST_FILE
from .perf import PerfOptions, measure_shapes, time_bundles
from .report import REPORT_HTML, run_report_html
from ..errors import UsageError
from ..precision import STATIC
from ..tasks import SINGLE_LABEL

SUMMARY_JSON = "summary.json"
SUMMARY_MARKDOWN = "summary.md"


@dataclass(frozen=True)
class RunOptions:
    model: str = str(DEMO_MODEL_DIR)
    data: Path = DEMO_SAMPLES_PATH
    output: Path = Path("runs/latest")
    backend: str = DEFAULT_BACKEND
    device: str = "cpu"  # cpu, cuda or cuda:N (torch backend)
    precisions: tuple[str, ...] | None = None  # None: fp32 plus every faster precision the backend runs here
    batch_sizes: tuple[int, ...] = (1, 32)
    max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
    calibration_data: Path | None = None
    quantization: str = STATIC  # the int8 bundle's: static (calibrated) or dynamic (onnxruntime)
    perf_seconds: float = 3.0  # timed seconds per bundle and measurement, in interleaved rounds; short: run is a demo
    sweep: bool = True  # also throughput per batch size and per sequence length, for report.html
    overwrite: bool = False


SWEEP_BATCH_SIZES = (1, 4, 16, 64)
SWEEP_FIXED_BATCH = 16  # the batch of the sequence-length sweep


def sweep_shapes(max_batch: int, max_seq: int) -> list[tuple[str, int, int]]:
    """(axis, batch, seq): batch sizes at full length, then lengths from 16 doubling to the maximum."""
    shapes = [("batch_size", batch, max_seq) for batch in SWEEP_BATCH_SIZES if batch <= max_batch]
    lengths, length = [], 16
    while length < max_seq:
        lengths.append(length)
        length *= 2
    shapes += [("seq_len", min(SWEEP_FIXED_BATCH, max_batch), length) for length in lengths + [max_seq]]
    return shapes


def run_pipeline(options: RunOptions, on_step: Callable[[str], None] | None = None) -> dict:
    step = on_step or (lambda message: None)
    precisions = options.precisions or default_precisions(options.backend, canonical_device(options.device))
    inputs = (options.model, options.data, options.calibration_data)
    with atomic_directory(options.output, overwrite=options.overwrite, inputs=inputs) as work:
        accuracy = evaluate_into(work, EvalOptions(
            model=options.model, data=options.data, output=work, backend=options.backend, device=options.device,
            precisions=precisions,
            batch_sizes=options.batch_sizes, max_seq_length=options.max_seq_length,
            calibration_data=options.calibration_data, quantization=options.quantization), on_step)
        if accuracy.task != SINGLE_LABEL:
            raise UsageError(f"run summarizes accuracy per precision, which a {accuracy.task} model does not have",
                             "use `roberta-deploy eval` (the task's own measures) and `perf` for this model")
        perf_dir = work / "perf"
        perf_dir.mkdir()
        precisions_built = list(accuracy.bundles)
        paths = [work / accuracy.bundles[precision] for precision in precisions_built]
        base = PerfOptions(bundle=paths[0], duration=options.perf_seconds, warmup=1.0)
        # Every precision in the same interleaved rounds (measurement.py): a burst of load falls on all alike.
        step(f"perf {', '.join(precisions_built)}: batch 1, full length, interleaved rounds")
        latencies = time_bundles(paths, replace(base, batch_size=1))
        step(f"perf {', '.join(precisions_built)}: batch {max(options.batch_sizes)}, real lengths, interleaved rounds")
        throughputs = time_bundles(paths, replace(base, batch_size=max(options.batch_sizes), data=options.data,
                                                  hint="throughput"))
        rows, perf_runs, sweeps = [], {}, {}
        if options.sweep:
            step(f"perf {', '.join(precisions_built)}: throughput per batch size and per sequence length")
            shapes = sweep_shapes(min(bundle_max_batch(path) for path in paths), accuracy.max_seq_length)
            points = measure_shapes(paths, [(batch, seq) for _, batch, seq in shapes],
                                    seconds=max(0.05, options.perf_seconds / 4), warmup=0.1)
            for precision, bundle_points in zip(precisions_built, points):
                sweeps[precision] = [{**point, "sweep": axis} for (axis, _, _), point in zip(shapes, bundle_points)]
                (perf_dir / f"{precision}-sweep.json").write_text(json.dumps(sweeps[precision], indent=2) + "\n")
        for precision, latency, throughput in zip(precisions_built, latencies, throughputs):
            bundle = accuracy.bundles[precision]
            written = {}
            for name, result in (("latency", latency), ("throughput", throughput)):
                written[name] = replace(result, bundle=str(Path(options.output) / bundle)).to_json()
                (perf_dir / f"{precision}-{name}.json").write_text(json.dumps(written[name], indent=2) + "\n")
            perf_runs[precision] = written
            accuracy_row = next(row for row in accuracy.rows
                                if row.precision == precision and row.batch_size == max(options.batch_sizes))
            rows.append({"precision": precision, "accuracy": accuracy_row.details["accuracy"],
                         "agreement_with_fp32": accuracy_row.agreement_with_fp32,
                         "max_abs_logit_diff_vs_fp32": accuracy_row.max_abs_logit_diff_vs_fp32,
                         "latency_p50_ms_batch1": latency.latency_ms["median"],
                         "latency_p99_ms_batch1": latency.latency_ms["p99"],
                         "throughput_texts_per_second": throughput.throughput_sequences_per_second,
                         "throughput_interval": throughput.throughput_interval})
        summary = {"model": options.model, "data": str(options.data), "backend": options.backend,
                   "device": accuracy.device, "int8_quantization": accuracy.int8_quantization,
                   "examples": accuracy.rows[0].examples, "max_seq_length": accuracy.max_seq_length,
                   "rows": rows}
        (work / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        (work / SUMMARY_MARKDOWN).write_text(summary_markdown(summary))
        (work / REPORT_HTML).write_text(run_report_html(summary, accuracy.to_json(), perf_runs, sweeps), encoding="utf-8")
    return summary


def bundle_max_batch(bundle_dir: Path) -> int:
    manifest = json.loads((bundle_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
    return int(manifest["shape_profile"]["max_batch"])


def summary_markdown(summary: dict) -> str:
    lines = [f"# roberta-deploy run: {summary['backend']}, {summary['examples']} texts from {summary['data']}"
             f"{int8_note(summary)}", "",
             "| precision | accuracy | agreement with fp32 | batch-1 p50 ms | batch-1 p99 ms | texts/s (batched, real lengths) |",
             "|---|---|---|---|---|---|"]
    for row in summary["rows"]:
        lines.append(f"| {row['precision']} | {row['accuracy']:.4f} | {row['agreement_with_fp32']:.4f} | "
                     f"{row['latency_p50_ms_batch1']:.2f} | {row['latency_p99_ms_batch1']:.2f} | "
                     f"{row['throughput_texts_per_second']:.1f} |")
    return "\n".join(lines) + "\n"
