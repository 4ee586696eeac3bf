"""Result tables the commands print (rich), one function per table."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .common import short_names

def describe_shapes(manifest: dict) -> str:
    from ..shapes import ShapeProfile

    return ShapeProfile.from_dict(manifest["shape_profile"]).describe()



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



def task_eval_table(report, data: Path, backend: str) -> Table:
    """Multi-label and regression eval rows (a jobs.evaluate.EvalReport): the task's measures, agreement and
    drift against fp32."""
    names = list(report.rows[0].measures)
    table = Table(title=f"{report.task} on {data} ({report.rows[0].examples} texts, {backend} on {report.device})")
    for column in ("precision", "batch", *names, "agreement w/ fp32", "max |diff| vs fp32", "truncated"):
        table.add_column(column, justify="right")
    for row in report.rows:
        table.add_row(row.precision, str(row.batch_size),
                      *("n/a" if row.measures[name] is None else f"{row.measures[name]:.4f}" for name in names),
                      f"{row.agreement_with_fp32:.4f}", f"{row.max_abs_logit_diff_vs_fp32:.3g}", str(row.truncated))
    return table



def perf_table(report, options) -> Table:
    """perf of one bundle (a jobs.perf.PerfRun)."""
    shape = f"real lengths from {options.data}" if options.data else f"seq {report.seq_len}"
    device = report.device
    where = (f"{report.cpu_threads} CPU threads; {report.host['cpu_model']}" if device["device"] == "cpu"
             else f"{device['device']} ({device.get('name')})")
    table = Table(title=f"perf {report.backend} {report.precision}: batch {options.batch_size}, {shape}, "
                        f"{report.threads} context(s) on {where} ({options.hint} hint)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    latency = report.latency_ms
    rows = [("load time", f"{report.load_seconds:.2f} s"), ("first inference", f"{report.first_inference_ms:.1f} ms"),
            ("timed calls", f"{report.calls} in {report.wall_seconds:.2f} s"),
            ("throughput", f"{report.throughput_sequences_per_second:.1f} seq/s "
                           f"({report.throughput_tokens_per_second:.0f} tokens/s)")]
    names = percentile_names(options)
    rows += [(f"latency {name}", f"{latency[name]:.2f} ms")
             for name in ("min", "mean", *(() if "p50" in names else ("median",)), *names, "max")]
    for name, value in rows:
        table.add_row(name, value)
    return table


def percentile_names(options) -> list[str]:
    from ..jobs.perf import percentile_name

    return [percentile_name(value) for value in options.percentiles]


def compare_table(report, options) -> Table:
    """perf --compare (a jobs.perf.PerfComparison): every bundle's median round with its interval (interleaved
    rounds), latency percentiles of every call, and how much of the CPU other processes took during its rounds."""
    first = report.runs[0]
    shape = f"real lengths from {options.data}" if options.data else f"seq {first.seq_len}"
    load = first.host.get("load_average")
    table = Table(title=f"perf --compare: batch {options.batch_size}, {shape}, {options.hint} hint; "
                        f"{first.rounds['rounds']} interleaved rounds; {report.host['cpu_model']}"
                        + (f", load average {load[0]:g}" if load else ""))
    names = percentile_names(options)
    for column in ("bundle", "engine", "contexts", "seq/s (interval)", "vs first", *(f"{name} ms" for name in names),
                   "others' CPU", "load s"):
        table.add_column(column, justify="left" if column in ("bundle", "engine") else "right", no_wrap=True)
    labels = short_names([Path(run.bundle) for run in report.runs])
    for label, run in zip(labels, report.runs):
        interval = run.throughput_interval
        shares = run.rounds["others_cpu_share"]
        table.add_row(label, f"{run.backend} {run.precision}", str(run.threads),
                      f"{interval['value']:,.1f} ({interval['low']:,.1f}-{interval['high']:,.1f})",
                      f"{run.throughput_vs_first:.2f}x",
                      *(f"{run.latency_ms[name]:.2f}" for name in names),
                      f"{min(shares):.0%}-{max(shares):.0%}", f"{run.load_seconds:.2f}")
    return table
