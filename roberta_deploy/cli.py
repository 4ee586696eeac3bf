"""The `roberta-deploy` command line. The only place that prints, draws progress, and turns typed
errors into one-line messages and exit codes. Heavy libraries load inside each command."""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from .defaults import DEFAULT_MAX_SEQ_LENGTH, DEMO_MODEL_DIR, DEMO_SAMPLES_PATH
from .errors import RobertaDeployError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export, build, evaluate, benchmark and run BERT-family text classifiers on "
                       "OpenVINO and ONNX Runtime.")
console = Console()
status_console = Console(stderr=True)

BACKEND_HELP = "Engine to build for: openvino (fastest on Intel CPUs, bf16/int8) or onnxruntime (portable)."
PRECISION_HELP = ("fp32, fp16, bf16 or int8 (aliases force_float32, force_float16, qint8_mixed_float16). "
                  "Lower precision is faster; each is checked against fp32 within its tolerance.")


def reports_errors(command: Callable) -> Callable:
    """Turn library errors into `error: ... (fix: ...)` on stderr and the error's exit code."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except RobertaDeployError as error:
            status_console.print(f"[red]error:[/red] {error.one_line()}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            status_console.print("interrupted; nothing was written")
            raise typer.Exit(130) from None

    return wrapper


def step_printer(prefix: str = "") -> Callable[[str], None]:
    started = time.perf_counter()
    return lambda message: status_console.print(f"[dim]{time.perf_counter() - started:6.1f}s[/dim] {prefix}{message}",
                                                highlight=False)


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a comma-separated list of integers", f"pass e.g. {flag} 1,32") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} {text!r} needs positive integers", f"pass e.g. {flag} 1,32")
    return values


@app.command()
@reports_errors
def export(
    model: str = typer.Option(str(DEMO_MODEL_DIR), help="Checkpoint folder or Hugging Face hub id (needs network)."),
    output: Path = typer.Option(..., help="Folder to write model.onnx, the tokenizer and manifest.json to."),
    max_seq_length: int = typer.Option(DEFAULT_MAX_SEQ_LENGTH, help="Longest input in tokens; longer texts are truncated."),
    opset: int = typer.Option(17, help="ONNX opset; 17 exports LayerNorm as one op that every engine fuses."),
    check_data: Optional[Path] = typer.Option(None, help="Texts for the PyTorch/ONNX parity check (default: bundled samples)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Export a Hugging Face sequence classifier to ONNX and check it against PyTorch."""
    from .build.export import ExportOptions, export_model

    artifact = export_model(ExportOptions(model=model, output=output, max_seq_length=max_seq_length, opset=opset,
                                          check_data=check_data, overwrite=overwrite), on_step=step_printer())
    check = artifact.manifest["checks"]["onnx_vs_pytorch"]
    console.print(f"exported {artifact.manifest['architecture']} ({artifact.manifest['parameters']:,} parameters) "
                  f"to {output}; ONNX vs PyTorch max |diff| {check['max_abs_logit_diff']:.2e} on {check['texts']} texts")


@app.command()
@reports_errors
def build(
    export: Path = typer.Option(..., "--export", help="Export folder written by `roberta-deploy export`."),
    output: Path = typer.Option(..., help="Bundle folder to write."),
    backend: str = typer.Option("openvino", help=BACKEND_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP + " `auto` picks the fastest within --accuracy-budget."),
    dynamic_shape: bool = typer.Option(True, "--dynamic-shape/--static-shape",
                                       help="Dynamic: any batch/sequence in the ranges (needed for length bucketing). "
                                            "Static: fixed shapes compiled once; inputs are padded up to them."),
    batch_size: int = typer.Option(32, help="Static batch; for dynamic shapes the default --max-batch is max(this, 64)."),
    max_seq_length: Optional[int] = typer.Option(None, help="Longest sequence (default: the export's)."),
    min_batch: Optional[int] = typer.Option(None, help="Dynamic only: smallest batch accepted."),
    max_batch: Optional[int] = typer.Option(None, help="Dynamic only: largest batch accepted; bounds memory."),
    min_seq: Optional[int] = typer.Option(None, help="Dynamic only: shortest sequence accepted."),
    max_seq: Optional[int] = typer.Option(None, help="Dynamic only: longest sequence accepted."),
    seq_buckets: Optional[str] = typer.Option(None, help="Static only: sequence lengths to compile (default: a quarter, a half "
                                                         "and all of --max-seq-length), so short texts are not padded "
                                                         "to the maximum. Pass just --max-seq-length for one shape."),
    calibration_data: Optional[Path] = typer.Option(None, help="Real labelled or unlabelled texts (TSV/CSV/JSONL) for int8 "
                                                               "calibration and held-back checks (default: bundled samples)."),
    calibration_samples: int = typer.Option(128, help="Texts used to calibrate int8; more is slower to build, rarely more accurate past ~300."),
    verification_samples: int = typer.Option(64, help="Held-back texts compared against fp32 after the build."),
    accuracy_budget: float = typer.Option(0.5, help="With --precision auto: accuracy points below fp32 allowed on --calibration-data labels."),
    allow_tolerance_failure: bool = typer.Option(False, help="Keep a bundle that drifts past its precision's tolerance (recorded as failed)."),
    overwrite: bool = typer.Option(False, help="Replace an existing bundle folder."),
) -> None:
    """Build an engine bundle for one backend and precision, verified against the fp32 reference."""
    from .build.bundle import BuildOptions, build_engine
    from .precision import AUTO, canonical_precision

    options = BuildOptions(
        export_dir=export, output=output, backend=backend, precision=precision, dynamic_shape=dynamic_shape,
        batch_size=batch_size, max_seq_length=max_seq_length, min_batch=min_batch, max_batch=max_batch,
        min_seq=min_seq, max_seq=max_seq, seq_buckets=parse_int_list(seq_buckets, "--seq-buckets") if seq_buckets else (),
        calibration_data=calibration_data, calibration_samples=calibration_samples,
        verification_samples=verification_samples, allow_tolerance_failure=allow_tolerance_failure,
        overwrite=overwrite)
    if canonical_precision(precision, allow_auto=True) == AUTO:
        from .build.autoselect import build_fastest_within_budget

        result = build_fastest_within_budget(options, accuracy_budget, on_step=step_printer())
    else:
        result = build_engine(options, on_step=step_printer())
    manifest = result.manifest
    check = manifest["checks"]["against_fp32_reference"]
    verdict = "passed" if check["passed"] else "[red]FAILED (kept: --allow-tolerance-failure)[/red]"
    selection = manifest.get("precision_selection")
    if selection:
        for candidate in selection["candidates"]:
            console.print(f"  {candidate['precision']}: accuracy {candidate['accuracy']:.4f} "
                          f"({candidate['points_below_fp32']:+.2f} points vs fp32) -> {candidate['verdict']}")
    console.print(f"built {manifest['backend']} {manifest['precision']} bundle at {output} "
                  f"({describe_shapes(manifest)}); vs fp32: max |diff| {check['max_abs_logit_diff']:.3g} "
                  f"(tolerance {check['tolerance']:.3g}), agreement {check['label_agreement']:.4f} "
                  f"on {check['texts']} texts: {verdict}")


def describe_shapes(manifest: dict) -> str:
    from .shapes import ShapeProfile

    return ShapeProfile.from_dict(manifest["shape_profile"]).describe()


@app.command()
@reports_errors
def inspect(
    bundle: Path = typer.Argument(..., help="Bundle or export folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show what a bundle (or export) holds, where it came from and the checks it passed."""
    from .manifest import KIND_BUNDLE, KIND_EXPORT, MANIFEST_FILE, read_manifest

    kind = KIND_EXPORT
    try:
        kind = json.loads((bundle / MANIFEST_FILE).read_text(encoding="utf-8")).get("kind", KIND_BUNDLE)
    except (OSError, ValueError, AttributeError):
        kind = KIND_BUNDLE  # read_manifest below names the problem
    manifest = read_manifest(bundle, kind if kind in (KIND_BUNDLE, KIND_EXPORT) else KIND_BUNDLE)
    if as_json:
        console.print_json(json.dumps(manifest, ensure_ascii=False))
        return
    table = Table(title=f"{kind} {bundle}", show_header=False)
    for key in ("schema_version", "created", "source_model", "source_model_sha256", "architecture", "backend",
                "precision", "max_seq_length", "labels", "inputs", "backend_settings", "calibration"):
        if manifest.get(key) is not None:
            table.add_row(key, json.dumps(manifest[key], ensure_ascii=False) if not isinstance(manifest[key], str)
                          else manifest[key])
    if "shape_profile" in manifest:
        table.add_row("shapes", describe_shapes(manifest))
    for name, check in manifest.get("checks", {}).items():
        table.add_row(f"check {name}", ("passed" if check.get("passed") else "FAILED") +
                      f", max |diff| {check['max_abs_logit_diff']:.3g} (tolerance {check['tolerance']:.3g})")
    table.add_row("files", ", ".join(f"{name} ({(bundle / name).stat().st_size / 1e6:.1f} MB)"
                                     for name in manifest["files"]))
    table.add_row("library_versions", ", ".join(f"{k} {v}" for k, v in manifest["library_versions"].items()))
    console.print(table)


def load_dataset_for(engine, data: Path, text_column, label_column, data_format):
    from .data import read_dataset

    return read_dataset(data, text_column=text_column, label_column=label_column,
                        label_names=engine.label_names, data_format=data_format)


@app.command()
@reports_errors
def infer(
    bundle: Path = typer.Option(..., help="Bundle folder written by `roberta-deploy build`."),
    data: Path = typer.Option(..., help="TSV (label<TAB>text_a with header), CSV or JSONL; labels optional."),
    output: Path = typer.Option(..., help="Folder for predictions.jsonl and metrics.json."),
    batch_size: Optional[int] = typer.Option(None, help="Texts per engine call (default: 32, or the static batch)."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="Token budget per batch (padded length x rows); bounds memory and latency."),
    bucketing: bool = typer.Option(True, help="Sort by length and pad each batch only to its longest text (1.5x fewer padded tokens on ChnSentiCorp)."),
    text_column: Optional[str] = typer.Option(None, help="Column holding the text (default: text_a, text, sentence, review)."),
    label_column: Optional[str] = typer.Option(None, help="Column holding the gold label (default: label, if present)."),
    data_format: Optional[str] = typer.Option(None, "--format", help="tsv, csv or jsonl (default: from the extension)."),
    threads: Optional[int] = typer.Option(None, help="Contexts running concurrently (default: for throughput on this "
                                                     "machine: one per core below 8 cores, one per 4 cores above)."),
    cpu_threads: Optional[int] = typer.Option(None, help="Total compute threads (default: all cores)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Classify every row of a data file; write predictions and accuracy."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .runtime.engine import THROUGHPUT, Engine
    from .infer import PREDICTIONS_FILE, classify_dataset, write_inference_outputs

    engine = Engine.load(bundle, contexts=threads, cpu_threads=cpu_threads, hint=THROUGHPUT)
    dataset = load_dataset_for(engine, data, text_column, label_column, data_format)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=status_console, transient=True) as progress:
        task = progress.add_task("classifying", total=len(dataset))
        report = classify_dataset(engine, dataset, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                                  bucketing=bucketing, on_batch_done=lambda rows: progress.advance(task, rows))
    write_inference_outputs(report, dataset, output, overwrite=overwrite)
    metrics = report.metrics
    if "accuracy" in metrics:
        console.print(f"accuracy: {metrics['accuracy']:.4f} ({metrics['correct']}/{metrics['examples']})")
    console.print(f"classified {metrics['examples']} texts in {metrics['elapsed_seconds']:.2f}s "
                  f"({metrics['texts_per_second']:.1f} texts/s); {metrics['truncated']} truncated at "
                  f"{engine.max_seq_length} tokens; wrote {output / PREDICTIONS_FILE}")


@app.command("eval")
@reports_errors
def evaluate_command(
    model: str = typer.Option(str(DEMO_MODEL_DIR), help="Checkpoint folder or hub id."),
    data: Path = typer.Option(DEMO_SAMPLES_PATH, help="Labelled texts; every row is scored."),
    output: Path = typer.Option(..., help="Folder for the export, bundles and accuracy.md/json."),
    backend: str = typer.Option("openvino", help=BACKEND_HELP),
    precisions: str = typer.Option("fp32,bf16,int8", help="Comma-separated precisions; fp32 is always the reference."),
    batch_sizes: str = typer.Option("1,32", help="Comma-separated batch sizes; results must not depend on them."),
    max_seq_length: int = typer.Option(DEFAULT_MAX_SEQ_LENGTH, help="Longest input in tokens."),
    calibration_data: Optional[Path] = typer.Option(None, help="int8 calibration texts (default: bundled samples)."),
    bucketing: bool = typer.Option(True, help="Length-bucketed batches (see infer)."),
    text_column: Optional[str] = typer.Option(None, help="Text column name."),
    label_column: Optional[str] = typer.Option(None, help="Label column name."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Accuracy table across precisions and batch sizes (builds what it needs)."""
    from .evaluate import ACCURACY_MARKDOWN, EvalOptions, evaluate
    from .precision import parse_precision_list

    report = evaluate(EvalOptions(
        model=model, data=data, output=output, backend=backend, precisions=tuple(parse_precision_list(precisions)),
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"), max_seq_length=max_seq_length,
        calibration_data=calibration_data, bucketing=bucketing, overwrite=overwrite,
        text_column=text_column, label_column=label_column), on_step=step_printer())
    table = Table(title=f"accuracy on {data} ({report['rows'][0]['examples']} texts, {backend})")
    for column in ("precision", "batch", "accuracy", "correct", "agreement w/ fp32", "max |diff| vs fp32", "truncated"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        table.add_row(row["precision"], str(row["batch_size"]), f"{row['accuracy']:.4f}",
                      f"{row['correct']}/{row['examples']}", f"{row['agreement_with_fp32']:.4f}",
                      f"{row['max_abs_logit_diff_vs_fp32']:.3g}", str(row["truncated"]))
    console.print(table)
    console.print(f"wrote {output / ACCURACY_MARKDOWN}")


@app.command()
@reports_errors
def perf(
    bundle: Path = typer.Option(..., help="Bundle folder."),
    hint: str = typer.Option("latency", help="latency: one context on every core; throughput: one 1-thread context per core "
                                             "below 8 cores (like benchmark_app -hint)."),
    threads: Optional[int] = typer.Option(None, help="Concurrent contexts, each on its own thread (like trtexec --threads / "
                                                     "benchmark_app -nstreams; default: from --hint)."),
    cpu_threads: Optional[int] = typer.Option(None, help="Total compute threads, split between contexts (default: all cores)."),
    iterations: int = typer.Option(0, help="Minimum timed calls (0: time by --duration only)."),
    duration: float = typer.Option(10.0, help="Minimum timed seconds."),
    warmup: float = typer.Option(2.0, help="Seconds run before timing (caches, kernel selection)."),
    batch_size: int = typer.Option(1, help="Texts per call."),
    seq_len: Optional[int] = typer.Option(None, help="Padded length of random inputs (default: the bundle's max)."),
    data: Optional[Path] = typer.Option(None, help="Use real texts: batches take their real, bucketed token lengths."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the full report as JSON."),
) -> None:
    """Benchmark a bundle: load and first-inference time, throughput, latency percentiles."""
    from .atomic import atomic_write_json
    from .perf import PerfOptions, run_benchmark

    report = run_benchmark(PerfOptions(bundle=bundle, threads=threads, hint=hint, cpu_threads=cpu_threads, iterations=iterations,
                                       duration=duration, warmup=warmup, batch_size=batch_size, seq_len=seq_len,
                                       data=data))
    latency = report["latency_ms"]
    shape = f"real lengths from {data}" if data else f"seq {report['seq_len']}"
    table = Table(title=f"perf {report['backend']} {report['precision']}: batch {batch_size}, {shape}, "
                        f"{report['threads']} context(s) on {report['cpu_threads']} CPU threads ({hint} hint)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [("load time", f"{report['load_seconds']:.2f} s"), ("first inference", f"{report['first_inference_ms']:.1f} ms"),
            ("timed calls", f"{report['calls']} in {report['wall_seconds']:.2f} s"),
            ("throughput", f"{report['throughput_sequences_per_second']:.1f} seq/s "
                           f"({report['throughput_tokens_per_second']:.0f} tokens/s)")]
    rows += [(f"latency {name}", f"{latency[name]:.2f} ms") for name in ("min", "mean", "median", "p90", "p95", "p99", "max")]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if json_path:
        atomic_write_json(json_path, report)


@app.command()
@reports_errors
def run(
    model: str = typer.Option(str(DEMO_MODEL_DIR), help="Checkpoint folder or hub id (default: the bundled demo model)."),
    data: Path = typer.Option(DEMO_SAMPLES_PATH, help="Labelled texts (default: the bundled sample reviews)."),
    output: Optional[Path] = typer.Option(None, help="Folder for everything (default: runs/run-<time>)."),
    backend: str = typer.Option("openvino", help=BACKEND_HELP),
    precisions: Optional[str] = typer.Option(None, help="Comma-separated (default: fp32 and every faster precision the backend runs here)."),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes for the accuracy table; the largest is used for throughput."),
    max_seq_length: int = typer.Option(DEFAULT_MAX_SEQ_LENGTH, help="Longest input in tokens."),
    calibration_data: Optional[Path] = typer.Option(None, help="int8 calibration texts (default: bundled samples)."),
    perf_seconds: float = typer.Option(3.0, help="Timed seconds per perf measurement."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """The whole pipeline: export, build fp32 and the fast precisions, eval, perf, one summary table."""
    from .run import SUMMARY_MARKDOWN, RunOptions, run_pipeline
    from .precision import parse_precision_list

    output = output or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    summary = run_pipeline(RunOptions(
        model=model, data=data, output=output, backend=backend,
        precisions=tuple(parse_precision_list(precisions)) if precisions else None,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"), max_seq_length=max_seq_length,
        calibration_data=calibration_data, perf_seconds=perf_seconds, overwrite=overwrite), on_step=step_printer())
    table = Table(title=f"{summary['backend']}: {summary['examples']} texts from {data}")
    for column in ("precision", "accuracy", "agreement w/ fp32", "batch-1 p50 ms", "batch-1 p99 ms", "texts/s batched"):
        table.add_column(column, justify="right")
    for row in summary["rows"]:
        table.add_row(row["precision"], f"{row['accuracy']:.4f}", f"{row['agreement_with_fp32']:.4f}",
                      f"{row['latency_p50_ms_batch1']:.2f}", f"{row['latency_p99_ms_batch1']:.2f}",
                      f"{row['throughput_texts_per_second']:.1f}")
    console.print(table)
    console.print(f"wrote {output / SUMMARY_MARKDOWN}")


def _register_finetune() -> None:
    try:
        from .cli_finetune import finetune_command
    except ImportError:  # pragma: no cover - module ships with the package
        return
    app.command("finetune")(reports_errors(finetune_command))


_register_finetune()


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
