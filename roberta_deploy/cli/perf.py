"""`perf`: benchmark one bundle, or several side by side with --compare."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
from .app import app
from .common import DEVICE_HELP, STDIO, write_json_output
from .console import console, error_console, print_warnings, status_console
from .exits import reports_errors
from .tables import compare_table, perf_table


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

    from ..atomic import check_output_file
    from ..jobs.perf import PerfOptions, compare_bundles, parse_percentiles, run_benchmark

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

