"""The `roberta-deploy` command line. The only place that prints, draws progress, and turns typed
errors into one-line messages and exit codes. Heavy libraries load inside each command."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .defaults import DEFAULT_BACKEND, DEFAULT_MAX_SEQ_LENGTH, DEMO_MODEL_DIR, DEMO_SAMPLES_PATH
from .errors import EXIT_CODES, RobertaDeployError, UsageError
from .flags import check_flags

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Export, build, evaluate, benchmark and run BERT-family text classifiers on "
                       "OpenVINO and ONNX Runtime.",
                  epilog="Exit codes: " + "; ".join(f"{code} {meaning.split(':')[0]}" for code, meaning in EXIT_CODES.items())
                  + ".")
# Nothing printed is read as markup (a fix such as pip install 'roberta-deploy[openvino]' keeps its
# brackets, and so do user paths), and lines are never hard-wrapped: piped output stays greppable.
# Off a terminal, tables take their natural width instead of squeezing figures into 80 columns.
PIPE_WIDTH = 1000
console = Console(markup=False, highlight=False, soft_wrap=True,  # results, on stdout
                  width=None if sys.stdout.isatty() else PIPE_WIDTH)
status_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True,  # steps, progress; -q hides
                         width=None if sys.stderr.isatty() else PIPE_WIDTH)
error_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True,  # errors; never hidden
                        width=None if sys.stderr.isatty() else PIPE_WIDTH)
STDIO = Path("-")  # `--data -` reads stdin; `--json -` and `--output -` write stdout

BACKEND_HELP = ("Engine to build for: openvino (fastest on Intel CPUs, bf16/int8), onnxruntime (portable) or "
                "torch (PyTorch; the only one for --device cuda).")
DEVICE_HELP = "cpu, cuda or cuda:N (cuda needs --backend torch and an NVIDIA GPU)."
TEXT_PAIR_HELP = ("Column holding the second text of a sentence pair (default: the pair columns text_a/text_b, "
                  "sentence1/sentence2, premise/hypothesis or query/passage when present).")
PRECISION_HELP = ("fp32, fp16, bf16 or int8 (aliases force_float32, force_float16, qint8_mixed_float16). "
                  "Lower precision is faster; each is checked against fp32 within its tolerance.")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so outputs and workers are cleaned up."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def reports_errors(command: Callable) -> Callable:
    """Check every count and duration flag (flags.check_flags), then run the command; turn library
    errors into `error: ... (fix: ...)` on stderr and the error's exit code, Ctrl-C into 130 and
    SIGTERM into 143, after the command's outputs and workers were cleaned up."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            check_flags(kwargs)
            return command(*args, **kwargs)
        except RobertaDeployError as error:
            error_console.print(Text.assemble(("error:", "red"), " ", error.one_line()))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            error_console.print("interrupted; no partial output was left")
            end_within(EXIT_GRACE_S, EXIT_INTERRUPTED)
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Terminated:
            error_console.print("terminated; no partial output was left")
            end_within(EXIT_GRACE_S, EXIT_TERMINATED)
            raise typer.Exit(EXIT_TERMINATED) from None

    return wrapper


def end_within(seconds: float, code: int) -> None:
    """End the process with `code` if its exit takes longer than `seconds` from now.

    After Ctrl-C or SIGTERM our outputs are cleaned up and our workers joined, but the interpreter's exit
    still waits for other libraries' threads: `import openvino` sends a telemetry event from a thread pool
    (forking a child to do it), and a Ctrl-C landing inside an import left that thread blocked on an import
    lock for good, so the process never exited (2 of 60 interrupted `infer` runs, stacks in docs/benchmarks.md).
    A daemon timer still runs while the interpreter waits for those threads. Called on Ctrl-C and SIGTERM
    at once, and by main() for every exit.
    """
    timer = threading.Timer(seconds, os._exit, args=(code,))
    timer.daemon = True
    timer.start()


def print_warnings(warnings) -> None:
    """Things the library says once and the user should see (not errors; -q does not hide them)."""
    for warning in warnings:
        error_console.print(f"warning: {warning}")


def step_printer(prefix: str = "") -> Callable[[str], None]:
    started = time.perf_counter()
    return lambda message: status_console.print(
        Text.assemble((f"{time.perf_counter() - started:6.1f}s", "dim"), f" {prefix}{message}"))


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_GRACE_S = 20.0  # once a command is done, how long the interpreter's own exit may take


def _print_version(value: bool) -> None:
    if value:
        console.print(f"roberta-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True,
                                help="Log what the library does to stderr; -v also lets OpenVINO, NNCF, ONNX Runtime "
                                     "and transformers print their own progress and advice, -vv adds debug detail."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print results and errors only: no steps, no progress bars."),
) -> None:
    """Export, build, evaluate, benchmark and run BERT-family text classifiers on OpenVINO and ONNX Runtime."""
    if verbose and quiet:
        raise typer.BadParameter("-v and -q contradict each other; pass one")
    status_console.quiet = quiet
    if verbose:
        # The application configures logging; the library only logs (and lets third-party output
        # through when its own logger is enabled at INFO, see roberta_deploy.logs).
        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, stream=sys.stderr,
                            format="%(levelname)s %(name)s: %(message)s", force=True)


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
    backend: str = typer.Option(DEFAULT_BACKEND, help=BACKEND_HELP),
    precision: str = typer.Option("fp32", help=PRECISION_HELP + " `auto` picks the fastest within --accuracy-budget."),
    device: str = typer.Option("cpu", help=DEVICE_HELP + " The bundle is verified there and runs there by default."),
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
    text_pair_column: Optional[str] = typer.Option(None, help=TEXT_PAIR_HELP + " In --calibration-data."),
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
        export_dir=export, output=output, backend=backend, precision=precision, device=device,
        dynamic_shape=dynamic_shape,
        batch_size=batch_size, max_seq_length=max_seq_length, min_batch=min_batch, max_batch=max_batch,
        min_seq=min_seq, max_seq=max_seq, seq_buckets=parse_int_list(seq_buckets, "--seq-buckets") if seq_buckets else (),
        calibration_data=calibration_data, calibration_samples=calibration_samples,
        verification_samples=verification_samples, allow_tolerance_failure=allow_tolerance_failure,
        overwrite=overwrite, text_pair_column=text_pair_column)
    if canonical_precision(precision, allow_auto=True) == AUTO:
        from .build.autoselect import build_fastest_within_budget

        result = build_fastest_within_budget(options, accuracy_budget, on_step=step_printer())
    else:
        result = build_engine(options, on_step=step_printer())
    manifest = result.manifest
    check = manifest["checks"]["against_fp32_reference"]
    verdict = "passed" if check["passed"] else "FAILED (kept: --allow-tolerance-failure)"
    selection = manifest.get("precision_selection")
    if selection:
        for candidate in selection["candidates"]:
            measured = (f"accuracy {candidate['accuracy']:.4f} ({candidate['points_vs_fp32']:+.2f} points vs fp32), "
                        f"{candidate['texts_per_second']:.0f} texts/s " if "accuracy" in candidate else "")
            console.print(f"  {candidate['precision']}: {measured}-> {candidate['verdict']}")
    from .tasks import agreement_text

    console.print(f"built {manifest['backend']} {manifest['precision']} bundle at {output} "
                  f"({describe_shapes(manifest)}); vs fp32: max |diff| {check['max_abs_logit_diff']:.3g} "
                  f"(tolerance {check['tolerance']:.3g}), {agreement_text(check)} "
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


@contextlib.contextmanager
def dataset_chunks_for(engine, data: Path, text_column, label_column, data_format, text_pair_column=None,
                       label_separator: str = ","):
    """--data, read as the bundle's task reads it: once through (every row checked, so that a bad row fails
    before any work), then as chunks read from the file as they are used. Yields (rows, a function that
    returns the chunks). `-` reads stdin into a private temporary file first (format from --data-format,
    else guessed from the first line), which lasts while the block runs. With `--output -` rows reach
    stdout as they are classified, so an engine failure midway leaves the rows before it there."""
    from .data import read_dataset_chunks

    with contextlib.ExitStack() as stack:
        path = data
        if data == STDIO:
            path, data_format = stack.enter_context(stdin_as_file(data_format))

        def chunks():
            with errors_naming_stdin(path if data == STDIO else None):
                for chunk in read_dataset_chunks(path, text_column=text_column, label_column=label_column,
                                                 label_names=engine.label_names, data_format=data_format,
                                                 text_pair_column=text_pair_column,
                                                 text_pairs=engine.task.text_pairs, task=engine.task.kind,
                                                 label_separator=label_separator):
                    yield chunk if data != STDIO else dataclasses.replace(chunk, source="<stdin>")

        yield sum(len(chunk) for chunk in chunks()), chunks


@contextlib.contextmanager
def stdin_as_file(data_format: Optional[str]):
    """stdin copied into a private temporary file: yields (path, format)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="roberta-deploy-stdin-") as folder:
        path = Path(folder) / "stdin"
        with open(path, "wb") as handle:
            shutil.copyfileobj(sys.stdin.buffer, handle)
        with open(path, "rb") as handle:
            first_line = handle.read(1 << 16).lstrip()[:4096].split(b"\n", 1)[0]
        yield path, data_format or ("jsonl" if first_line.startswith(b"{") else
                                    "tsv" if b"\t" in first_line or b"," not in first_line else "csv")


@contextlib.contextmanager
def errors_naming_stdin(path: Optional[Path]):
    """Input errors about the temporary copy of stdin at `path` name <stdin> instead (None: not stdin)."""
    from .errors import InputDataError

    try:
        yield
    except InputDataError as error:
        if path is None:
            raise
        raise InputDataError(error.problem.replace(str(path), "<stdin>"), error.fix) from None


@app.command()
@reports_errors
def infer(
    bundle: Path = typer.Option(..., help="Bundle folder written by `roberta-deploy build`."),
    data: Path = typer.Option(..., help="TSV (label<TAB>text_a with header), CSV or JSONL; labels optional; - reads stdin."),
    output: Path = typer.Option(..., help="Folder for predictions and metrics.json; - writes the predictions to "
                                          "stdout (and the summary to stderr)."),
    output_format: str = typer.Option("jsonl", "--format", help="Predictions as jsonl (every field) or csv "
                                                                "(one probability column per label)."),
    batch_size: Optional[int] = typer.Option(None, help="Texts per engine call (default: 32, or the static batch)."),
    max_batch_tokens: Optional[int] = typer.Option(None, help="Token budget per batch (padded length x rows); bounds memory and latency."),
    bucketing: bool = typer.Option(True, help="Sort by length and pad each batch only to its longest text (1.5x fewer padded tokens on ChnSentiCorp)."),
    text_column: Optional[str] = typer.Option(None, help="Column holding the text (default: text_a, text, sentence, review)."),
    text_pair_column: Optional[str] = typer.Option(None, help=TEXT_PAIR_HELP),
    label_column: Optional[str] = typer.Option(None, help="Column holding the gold label (default: label, if present)."),
    label_separator: str = typer.Option(",", help="Multi-label models: what separates the labels of a row in a TSV/CSV "
                                                  "cell (JSONL rows give a list)."),
    threshold: float = typer.Option(0.5, help="Multi-label models: the sigmoid score from which a label is predicted."),
    data_format: Optional[str] = typer.Option(None, "--data-format", help="Input as tsv, csv or jsonl (default: from the "
                                                                          "extension; for stdin, from the first line)."),
    threads: Optional[int] = typer.Option(None, help="Contexts running concurrently (default: for throughput on this "
                                                     "machine: one per core below 8 cores, one per 4 cores above)."),
    cpu_threads: Optional[int] = typer.Option(None, help="Total compute threads (default: all cores)."),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP + " Default: the device the bundle was built for."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Classify (or score) every row of a data file; write predictions and the metrics of the bundle's task."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .atomic import OutputFolder
    from .runtime.engine import THROUGHPUT, Engine
    from .infer import (check_output_format, check_threshold, classify_and_write, infer_to_folder,
                        predictions_file)

    check_output_format(output_format)
    check_threshold(threshold)
    # The output is checked and locked before the engine loads: an output on top of an input, a folder
    # of someone else's files or a second writer is refused before any work.
    reserved = (contextlib.nullcontext() if output == STDIO
                else OutputFolder(output, overwrite=overwrite, inputs=(bundle, data)))
    with reserved as output_folder, contextlib.ExitStack() as stack:
        # Closing the engine stops and joins its batcher's workers, on Ctrl-C and SIGTERM too: a worker
        # left inside the engine at interpreter exit aborts the process (exit 134).
        engine = stack.enter_context(Engine.load(bundle, contexts=threads, cpu_threads=cpu_threads,
                                                 hint=THROUGHPUT, device=device))
        print_warnings(engine.warnings)
        # Read, classified and written a chunk at a time: memory stays flat however big the file is.
        rows, chunks = stack.enter_context(dataset_chunks_for(engine, data, text_column, label_column, data_format,
                                                              text_pair_column, label_separator))
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=status_console, transient=True) as progress:
            task = progress.add_task("classifying", total=rows)
            options = dict(batch_size=batch_size, max_batch_tokens=max_batch_tokens, bucketing=bucketing,
                           on_batch_done=lambda done: progress.advance(task, done), threshold=threshold)
            if output == STDIO:
                report = classify_and_write(engine, chunks(), sys.stdout, output_format, **options)
                sys.stdout.flush()
            else:
                report = infer_to_folder(engine, chunks(), output_folder, output_format, **options)
    # With predictions on stdout, the summary goes to stderr so the two never mix.
    summary_console = error_console if output == STDIO else console
    metrics = report.metrics
    if "accuracy" in metrics:
        summary_console.print(f"accuracy: {metrics['accuracy']:.4f} ({metrics['correct']}/{metrics['examples']}); "
                              f"macro-F1 {metrics['macro_f1']:.4f}")
        summary_console.print(per_class_table(metrics))
    elif "micro_f1" in metrics:
        summary_console.print(f"micro-F1 {metrics['micro_f1']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, exact match "
                              f"{metrics['exact_match']:.4f} (threshold {metrics['threshold']})")
        summary_console.print(per_label_table(metrics))
    elif "pearson" in metrics:
        summary_console.print("pearson {}, spearman {}, mse {:.4g}".format(
            *(f"{metrics[key]:.4f}" if metrics[key] is not None else "n/a (constant)" for key in ("pearson", "spearman")),
            metrics["mse"]))
    written = "stdout" if output == STDIO else output / predictions_file(output_format)
    summary_console.print(f"classified {metrics['examples']} texts in {metrics['elapsed_seconds']:.2f}s "
                          f"({metrics['texts_per_second']:.1f} texts/s); {metrics['truncated']} truncated at "
                          f"{engine.max_seq_length} tokens; wrote {written}")


def per_label_table(metrics: dict) -> Table:
    """Multi-label: precision, recall, F1 and support per label."""
    table = Table()
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, row in metrics["per_label"].items():
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]))
    return table


def per_class_table(metrics: dict, title: str | None = None) -> Table:
    """Precision, recall, F1 and support per label, then the confusion matrix's row for that label."""
    names = metrics["confusion_matrix"]["labels"]
    table = Table(title=title)
    for column in ("label", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name in names:
        table.add_column(f"-> {name}", justify="right")
    for name, values in zip(names, metrics["confusion_matrix"]["values"]):
        row = metrics["per_class"][name]
        table.add_row(name, f"{row['precision']:.4f}", f"{row['recall']:.4f}", f"{row['f1']:.4f}", str(row["support"]),
                      *(str(value) for value in values))
    return table


@app.command("eval")
@reports_errors
def evaluate_command(
    model: str = typer.Option(str(DEMO_MODEL_DIR), help="Checkpoint folder or hub id."),
    data: Path = typer.Option(DEMO_SAMPLES_PATH, help="Labelled texts; every row is scored."),
    output: Path = typer.Option(..., help="Folder for the export, bundles and accuracy.md/json."),
    backend: str = typer.Option(DEFAULT_BACKEND, help=BACKEND_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    precisions: Optional[str] = typer.Option(None, help="Comma-separated precisions (default: fp32 and the faster ones "
                                                        "the backend runs well here); fp32 is always the reference."),
    batch_sizes: str = typer.Option("1,32", help="Comma-separated batch sizes; results must not depend on them."),
    max_seq_length: int = typer.Option(DEFAULT_MAX_SEQ_LENGTH, help="Longest input in tokens."),
    calibration_data: Optional[Path] = typer.Option(None, help="int8 calibration texts (default: bundled samples)."),
    bucketing: bool = typer.Option(True, help="Length-bucketed batches (see infer)."),
    text_column: Optional[str] = typer.Option(None, help="Text column name."),
    text_pair_column: Optional[str] = typer.Option(None, help=TEXT_PAIR_HELP),
    label_column: Optional[str] = typer.Option(None, help="Label column name."),
    threshold: float = typer.Option(0.5, help="Multi-label models: the sigmoid score from which a label is predicted."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Accuracy table (or the task's measures) across precisions and batch sizes (builds what it needs)."""
    from .evaluate import ACCURACY_MARKDOWN, EvalOptions, evaluate
    from .report import REPORT_HTML
    from .precision import parse_precision_list

    report = evaluate(EvalOptions(
        model=model, data=data, output=output, backend=backend, device=device,
        precisions=tuple(parse_precision_list(precisions)) if precisions else None,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"), max_seq_length=max_seq_length,
        calibration_data=calibration_data, bucketing=bucketing, overwrite=overwrite,
        text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
        threshold=threshold), on_step=step_printer())
    if report["task"] != "single_label_classification":
        console.print(task_eval_table(report, data, backend))
        console.print(f"wrote {output / ACCURACY_MARKDOWN} and {output / REPORT_HTML}")
        return
    table = Table(title=f"accuracy on {data} ({report['rows'][0]['examples']} texts, {backend} on {report['device']})")
    for column in ("precision", "batch", "accuracy", "macro-F1", "correct", "agreement w/ fp32", "max |diff| vs fp32",
                   "truncated"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        table.add_row(row["precision"], str(row["batch_size"]), f"{row['accuracy']:.4f}", f"{row['macro_f1']:.4f}",
                      f"{row['correct']}/{row['examples']}", f"{row['agreement_with_fp32']:.4f}",
                      f"{row['max_abs_logit_diff_vs_fp32']:.3g}", str(row["truncated"]))
    console.print(table)
    largest_batch = max(row["batch_size"] for row in report["rows"])
    for row in report["rows"]:
        if row["batch_size"] == largest_batch:
            console.print(per_class_table(row, title=f"{row['precision']} per class (batch {largest_batch})"))
    console.print(f"wrote {output / ACCURACY_MARKDOWN} and {output / REPORT_HTML}")


def task_eval_table(report: dict, data: Path, backend: str) -> Table:
    """Multi-label and regression eval rows: the task's measures, agreement and drift against fp32."""
    names = list(report["rows"][0]["measures"])
    table = Table(title=f"{report['task']} on {data} ({report['rows'][0]['examples']} texts, {backend} on "
                        f"{report['device']})")
    for column in ("precision", "batch", *names, "agreement w/ fp32", "max |diff| vs fp32", "truncated"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        table.add_row(row["precision"], str(row["batch_size"]),
                      *("n/a" if row["measures"][name] is None else f"{row['measures'][name]:.4f}" for name in names),
                      f"{row['agreement_with_fp32']:.4f}", f"{row['max_abs_logit_diff_vs_fp32']:.3g}",
                      str(row["truncated"]))
    return table


@app.command()
@reports_errors
def perf(
    bundles: Optional[list[Path]] = typer.Argument(None, help="Bundle folder(s); several (or --compare) measure each "
                                                              "under the same settings into one table."),
    bundle: Optional[Path] = typer.Option(None, help="Bundle folder (the same as giving it as an argument)."),
    compare: bool = typer.Option(False, "--compare", help="Run every bundle given under the same settings, one after "
                                                          "the other, and print one table: --compare B1 B2 ..."),
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
    percentiles: str = typer.Option("50,90,95,99", help="Latency percentiles to report (benchmark_app "
                                                        "-latency_percentile), e.g. 50,90,99,99.9."),
    export_times: Optional[Path] = typer.Option(None, "--export-times", help="Write every timed call (context, start, "
                                                                             "latency, shape) as JSON, like trtexec "
                                                                             "--exportTimes; - for stdout."),
    device: Optional[str] = typer.Option(None, help=DEVICE_HELP + " Default: the device the bundle was built for."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the full report (with host, CPU, "
                                                                  "device (a GPU's name and memory) and library "
                                                                  "versions) as JSON; - for stdout."),
) -> None:
    """Benchmark a bundle: load and first-inference time, throughput, latency percentiles."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .atomic import check_output_file
    from .perf import PerfOptions, compare_bundles, parse_percentiles, run_benchmark

    chosen = ([bundle] if bundle else []) + list(bundles or [])
    if not chosen:
        raise UsageError("no bundle given", "pass a bundle folder: roberta-deploy perf BUNDLE (or --bundle BUNDLE)")
    if STDIO in (json_path, export_times) and json_path == export_times:
        raise UsageError("--json - and --export-times - would both write stdout", "send one of them to a file")
    for path, flag in ((json_path, "--json"), (export_times, "--export-times")):
        if path is not None and path != STDIO:
            check_output_file(path, inputs=(*chosen, data), flag=flag)  # a folder, an input: before the run
    options = PerfOptions(bundle=chosen[0], threads=threads, hint=hint, cpu_threads=cpu_threads, iterations=iterations,
                          duration=duration, warmup=warmup, batch_size=batch_size, seq_len=seq_len, data=data,
                          percentiles=parse_percentiles(percentiles), record_times=export_times is not None,
                          device=device)
    # With JSON on stdout, the table goes to stderr so stdout stays one JSON document.
    table_console = error_console if STDIO in (json_path, export_times) else console
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=status_console,
                  transient=True) as progress:
        task = progress.add_task("loading", total=None)

        def on_progress(phase: str, elapsed: float, planned: float) -> None:
            progress.update(task, description=f"{prefix}{phase}", completed=min(elapsed, planned) if planned else None,
                            total=planned or None)

        prefix = ""
        if compare or len(chosen) > 1:
            def on_bundle(number: int, path: Path) -> None:
                nonlocal prefix
                prefix = f"{number + 1}/{len(chosen)} {path.name}: "
                progress.update(task, description=f"{prefix}loading", completed=0, total=None)

            report = compare_bundles(chosen, options, on_progress, on_bundle)
        else:
            report = run_benchmark(options, on_progress)
    for run in report["runs"] if report.get("mode") == "compare" else [report]:
        print_warnings(run["warnings"])
    table = compare_table(report, options) if report.get("mode") == "compare" else perf_table(report, options)
    runs = report["runs"] if report.get("mode") == "compare" else [report]
    # Files before the table: a write that fails (/dev/full) is then the only line printed.
    if export_times:
        times = [{"bundle": run["bundle"], "times": run.pop("times")} for run in runs]
        write_json_output(export_times, times if len(times) > 1 else times[0], "--export-times")
    if json_path:
        write_json_output(json_path, report, "--json")
    table_console.print(table)


def write_json_output(path: Path, payload, flag: str) -> None:
    from .atomic import atomic_write_json

    if path == STDIO:
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        atomic_write_json(path, payload, flag=flag)


def perf_table(report: dict, options) -> Table:
    shape = f"real lengths from {options.data}" if options.data else f"seq {report['seq_len']}"
    device = report["device"]
    where = (f"{report['cpu_threads']} CPU threads; {report['host']['cpu_model']}" if device["device"] == "cpu"
             else f"{device['device']} ({device.get('name')})")
    table = Table(title=f"perf {report['backend']} {report['precision']}: batch {options.batch_size}, {shape}, "
                        f"{report['threads']} context(s) on {where} ({options.hint} hint)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    latency = report["latency_ms"]
    rows = [("load time", f"{report['load_seconds']:.2f} s"), ("first inference", f"{report['first_inference_ms']:.1f} ms"),
            ("timed calls", f"{report['calls']} in {report['wall_seconds']:.2f} s"),
            ("throughput", f"{report['throughput_sequences_per_second']:.1f} seq/s "
                           f"({report['throughput_tokens_per_second']:.0f} tokens/s)")]
    names = percentile_names(options)
    rows += [(f"latency {name}", f"{latency[name]:.2f} ms")
             for name in ("min", "mean", *(() if "p50" in names else ("median",)), *names, "max")]
    for name, value in rows:
        table.add_row(name, value)
    return table


def percentile_names(options) -> list[str]:
    from .perf import percentile_name

    return [percentile_name(value) for value in options.percentiles]


def compare_table(report: dict, options) -> Table:
    first = report["runs"][0]
    shape = f"real lengths from {options.data}" if options.data else f"seq {first['seq_len']}"
    table = Table(title=f"perf --compare: batch {options.batch_size}, {shape}, {options.hint} hint; "
                        f"{report['host']['cpu_model']}")
    names = percentile_names(options)
    for column in ("bundle", "engine", "contexts", "seq/s", "vs first", *(f"{name} ms" for name in names), "load s"):
        table.add_column(column, justify="left" if column in ("bundle", "engine") else "right", no_wrap=True)
    labels = short_names([Path(run["bundle"]) for run in report["runs"]])
    for label, run in zip(labels, report["runs"]):
        table.add_row(label, f"{run['backend']} {run['precision']}", str(run["threads"]),
                      f"{run['throughput_sequences_per_second']:.1f}", f"{run['throughput_vs_first']:.2f}x",
                      *(f"{run['latency_ms'][name]:.2f}" for name in names), f"{run['load_seconds']:.2f}")
    return table


def short_names(paths: list[Path]) -> list[str]:
    """The last path parts that tell the bundles apart: `int8` and `fp32`, not two absolute paths."""
    for depth in range(1, max(len(path.parts) for path in paths) + 1):
        names = [str(Path(*path.parts[-depth:])) for path in paths]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]


@app.command()
@reports_errors
def run(
    model: str = typer.Option(str(DEMO_MODEL_DIR), help="Checkpoint folder or hub id (default: the bundled demo model)."),
    data: Path = typer.Option(DEMO_SAMPLES_PATH, help="Labelled texts (default: the bundled sample reviews)."),
    output: Optional[Path] = typer.Option(None, help="Folder for everything (default: runs/run-<time>)."),
    backend: str = typer.Option(DEFAULT_BACKEND, help=BACKEND_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    precisions: Optional[str] = typer.Option(None, help="Comma-separated (default: fp32 and the faster ones the backend runs well here, as OpenVINO reports it for this CPU)."),
    batch_sizes: str = typer.Option("1,32", help="Batch sizes for the accuracy table; the largest is used for throughput."),
    max_seq_length: int = typer.Option(DEFAULT_MAX_SEQ_LENGTH, help="Longest input in tokens."),
    calibration_data: Optional[Path] = typer.Option(None, help="int8 calibration texts (default: bundled samples)."),
    perf_seconds: float = typer.Option(3.0, help="Timed seconds per perf measurement."),
    sweep: bool = typer.Option(True, help="Also measure throughput per batch size and per sequence length (a quarter "
                                          "of --perf-seconds each) for the charts in report.html."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """The whole pipeline: export, build fp32 and the fast precisions, eval, perf, summary.md and report.html."""
    from .report import REPORT_HTML
    from .run import SUMMARY_MARKDOWN, RunOptions, run_pipeline
    from .precision import parse_precision_list

    output = output or Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    summary = run_pipeline(RunOptions(
        model=model, data=data, output=output, backend=backend, device=device,
        precisions=tuple(parse_precision_list(precisions)) if precisions else None,
        batch_sizes=parse_int_list(batch_sizes, "--batch-sizes"), max_seq_length=max_seq_length,
        calibration_data=calibration_data, perf_seconds=perf_seconds, sweep=sweep, overwrite=overwrite),
        on_step=step_printer())
    table = Table(title=f"{summary['backend']}: {summary['examples']} texts from {data}")
    for column in ("precision", "accuracy", "agreement w/ fp32", "batch-1 p50 ms", "batch-1 p99 ms", "texts/s batched"):
        table.add_column(column, justify="right")
    for row in summary["rows"]:
        table.add_row(row["precision"], f"{row['accuracy']:.4f}", f"{row['agreement_with_fp32']:.4f}",
                      f"{row['latency_p50_ms_batch1']:.2f}", f"{row['latency_p99_ms_batch1']:.2f}",
                      f"{row['throughput_texts_per_second']:.1f}")
    console.print(table)
    console.print(f"wrote {output / SUMMARY_MARKDOWN} and {output / REPORT_HTML}")


def _register_finetune() -> None:
    try:
        from .cli_finetune import finetune_command
    except ImportError:  # pragma: no cover - module ships with the package
        return
    app.command("finetune")(reports_errors(finetune_command))


_register_finetune()


def _register_serving() -> None:
    from .cli_serve import loadtest_command, serve_command

    app.command("serve")(reports_errors(serve_command))
    app.command("loadtest")(reports_errors(loadtest_command))
    from .cli_deploy import deploy_command

    app.command("deploy")(reports_errors(deploy_command))


_register_serving()


def main() -> None:
    # SIGTERM unwinds like Ctrl-C: staging folders are removed and workers joined before the exit.
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        app()
    except SystemExit as ended:
        # Whatever the outcome, the exit itself is bounded too: a signal can land inside a weakref callback
        # of the import system, where Python ignores the exception and the import lock may stay taken,
        # so that another library's thread (OpenVINO's telemetry) waits for it, and the exit for that thread.
        end_within(EXIT_GRACE_S, ended.code if isinstance(ended.code, int) else 0 if ended.code is None else 1)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
