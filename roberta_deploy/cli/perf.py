"""`perf`: benchmark one bundle, or several side by side with --compare."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import flags
from ..errors import UsageError
from .app import BATCHING, INPUT, LIMITS, MODEL, OUTPUT, command, examples
from .common import RUN_DEVICE_HELP, STDIO, stdin_for, write_json_output
from .console import console, error_console, print_warnings, status_console
from .exits import reports_errors
from .tables import compare_table, perf_table


@command(epilog=examples(
    "roberta-deploy perf bundle",
    "roberta-deploy perf bundle --hint throughput --batch-size 32 --data dev.tsv --duration 5 --json perf.json",
    "roberta-deploy perf --compare bundles/openvino-fp32 bundles/openvino-int8 --duration 5",
    "roberta-deploy -q perf bundle --json - | jq .throughput"))
@reports_errors
@stdin_for("data")
def perf(
    bundles: Annotated[Optional[list[Path]], typer.Argument(help="Bundle folder(s); several (or --compare) measure "
                                                                 "each under the same settings into one table.")]
        = None,
    bundle: Annotated[Optional[Path], typer.Option(help="Bundle folder (the same as giving it as an argument).",
                                                   rich_help_panel=MODEL)] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Run every bundle given under the same settings, one "
                                                            "after the other, and print one table: --compare B1 B2 "
                                                            "...", rich_help_panel=MODEL)] = False,
    hint: Annotated[str, typer.Option(help="latency: one context on every core; throughput: one 1-thread context per "
                                           "core below 8 cores (like benchmark_app -hint).",
                                      rich_help_panel=BATCHING)] = "latency",
    threads: Annotated[Optional[int], typer.Option(help="Concurrent contexts, each on its own thread (like trtexec "
                                                        "--threads / benchmark_app -nstreams; default: from --hint).",
                                                   rich_help_panel=BATCHING), flags.THREADS] = None,
    cpu_threads: Annotated[Optional[int], typer.Option(help="Total compute threads, split between contexts (default: "
                                                            "all cores).", rich_help_panel=BATCHING),
                           flags.THREADS] = None,
    iterations: Annotated[int, typer.Option(help="Minimum timed calls (0: time by --duration only).",
                                            rich_help_panel=LIMITS), flags.COUNT_OR_ZERO] = 0,
    duration: Annotated[float, typer.Option(help="Minimum timed seconds.", rich_help_panel=LIMITS),
                        flags.SECONDS] = 10.0,
    warmup: Annotated[float, typer.Option(help="Seconds run before timing (caches, kernel selection).",
                                          rich_help_panel=LIMITS), flags.SECONDS] = 2.0,
    batch_size: Annotated[int, typer.Option(help="Texts per call.", rich_help_panel=BATCHING), flags.COUNT] = 1,
    seq_len: Annotated[Optional[int], typer.Option(help="Padded length of random inputs (default: the bundle's max).",
                                                   rich_help_panel=INPUT), flags.COUNT] = None,
    data: Annotated[Optional[Path], typer.Option(help="Use real texts: batches take their real, bucketed token "
                                                      "lengths; - reads stdin.", rich_help_panel=INPUT)] = None,
    percentiles: Annotated[str, typer.Option(help="Latency percentiles to report (benchmark_app "
                                                  "-latency_percentile), e.g. 50,90,99,99.9.",
                                             rich_help_panel=OUTPUT)] = "50,90,95,99",
    export_times: Annotated[Optional[Path], typer.Option("--export-times", help="Write every timed call (context, "
                                                                                "start, latency, shape) as JSON, like "
                                                                                "trtexec --exportTimes; - for stdout.",
                                                         rich_help_panel=OUTPUT)] = None,
    device: Annotated[Optional[str], typer.Option(help=RUN_DEVICE_HELP, rich_help_panel=MODEL)] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the full report (with host, CPU, "
                                                                     "device (a GPU's name and memory) and library "
                                                                     "versions) as JSON; - for stdout.",
                                                      rich_help_panel=OUTPUT)] = None,
) -> None:
    """Benchmark a bundle: load and first-inference time, throughput, latency percentiles."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..atomic import check_output_file
    from ..jobs.perf import PerfComparison, PerfOptions, compare_bundles, parse_percentiles, run_benchmark

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
    compared = isinstance(report, PerfComparison)
    runs = list(report.runs) if compared else [report]
    for run in runs:
        print_warnings(run.warnings)
    table = compare_table(report, options) if compared else perf_table(report, options)
    # Files before the table: a write that fails (/dev/full) is then the only line printed.
    if export_times:
        times = [{"bundle": run.bundle, "times": run.times} for run in runs]
        write_json_output(export_times, times if len(times) > 1 else times[0], "--export-times")
        runs = [replace(run, times=None) for run in runs]  # --json leaves them to --export-times
        report = replace(report, runs=tuple(runs)) if compared else runs[0]
    if json_path:
        write_json_output(json_path, report.to_json(), "--json")
    table_console.print(table)

