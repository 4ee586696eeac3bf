"""report.html: one self-contained page (inline SVG charts, no scripts, no outside files) for `run`, `eval`
and `deploy`.

Charts are drawn with matplotlib, imported only here and only when a page is drawn; without it (the
`report` extra) the page keeps its tables and says how to get the charts.
"""

from __future__ import annotations

import html
import io
import re
from typing import Callable

REPORT_HTML = "report.html"
INSTALL_CHARTS = "pip install 'roberta-deploy[report]'"
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860")
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
.charts { display: flex; flex-wrap: wrap; gap: 1.2rem; }
figure { margin: 0; flex: 1 1 480px; max-width: 540px; } figure.small { flex: 0 1 340px; } figure svg { width: 100%; height: auto; }
td.text { text-align: left; } tbody th { text-align: left; font-weight: 600; }
figcaption { font-size: 0.85rem; color: #444; margin-top: 0.2rem; }
.note { background: #fff8e1; border: 1px solid #f0d98c; padding: 0.5rem 0.8rem; font-size: 0.9rem; }
"""


def run_report_html(summary: dict, accuracy: dict, perf_runs: dict[str, dict], sweeps: dict[str, list[dict]]) -> str:
    """The `run` page. perf_runs: {precision: {"latency": perf report, "throughput": perf report}};
    sweeps: {precision: measure_shapes results}."""
    host = next(iter(perf_runs.values()))["latency"].get("host", {}) if perf_runs else {}
    precisions = [row["precision"] for row in summary["rows"]]
    charts = _Charts()
    charts.bars("chart-accuracy", "Accuracy and agreement with fp32 per precision", precisions,
                {"accuracy": [row["accuracy"] for row in summary["rows"]],
                 "agreement with fp32": [row["agreement_with_fp32"] for row in summary["rows"]]},
                ylabel="share of texts", zoom_to_data=True)
    percentile_names = [name for name in ("p50", "p90", "p95", "p99") if all(
        name in perf_runs[precision]["latency"]["latency_ms"] for precision in precisions)]
    charts.bars("chart-latency", "Batch-1 latency percentiles per precision (full length)", percentile_names,
                {precision: [perf_runs[precision]["latency"]["latency_ms"][name] for name in percentile_names]
                 for precision in precisions}, ylabel="ms")
    if sweeps:
        for axis, other, chart_id, title in (
                ("batch_size", "seq_len", "chart-throughput-batch", "Throughput per batch size"),
                ("seq_len", "batch_size", "chart-throughput-seq", "Throughput per sequence length")):
            series = {}
            for precision, points in sweeps.items():
                chosen = [point for point in points if point.get("sweep") == axis]
                series[precision] = ([point[axis] for point in chosen],
                                     [point["throughput_sequences_per_second"] for point in chosen])
            fixed = next((point[other] for points in sweeps.values() for point in points if point.get("sweep") == axis),
                         None)
            label = {"batch_size": "batch size", "seq_len": "sequence length (tokens)"}
            charts.lines(chart_id, f"{title} ({label[other]} {fixed}, random ids)", series, xlabel=label[axis],
                         ylabel="sequences / s")
    table = _table(["precision", "accuracy", "agreement with fp32", "max |diff| vs fp32", "batch-1 p50 ms",
                    "batch-1 p99 ms", "texts/s batched"],
                   [[row["precision"], f"{row['accuracy']:.4f}", f"{row['agreement_with_fp32']:.4f}",
                     f"{row['max_abs_logit_diff_vs_fp32']:.3g}", f"{row['latency_p50_ms_batch1']:.2f}",
                     f"{row['latency_p99_ms_batch1']:.2f}", f"{row['throughput_texts_per_second']:.1f}"]
                    for row in summary["rows"]])
    body = [f"<h1>roberta-deploy run: {_e(summary['backend'])}</h1>",
            _meta(f"{summary['examples']} texts from {summary['data']}; model {summary['model']}; "
                  f"max_seq_length {summary['max_seq_length']}", host),
            "<h2>Summary</h2>", table, "<h2>Charts</h2>", charts.html(),
            *_per_class_sections(accuracy), _host_section(host)]
    return _page(f"roberta-deploy run: {summary['backend']}", body)


def eval_report_html(report: dict) -> str:
    """The `eval` page: accuracy, agreement and throughput per precision and batch size, per-class metrics."""
    if report.get("task", "single_label_classification") != "single_label_classification":
        return _task_eval_html(report)
    rows = report["rows"]
    precisions = list(dict.fromkeys(row["precision"] for row in rows))
    batch_sizes = sorted({row["batch_size"] for row in rows})
    largest = max(batch_sizes)
    at_largest = {row["precision"]: row for row in rows if row["batch_size"] == largest}
    charts = _Charts()
    charts.bars("chart-accuracy", f"Accuracy, macro-F1 and agreement with fp32 (batch {largest})", precisions,
                {"accuracy": [at_largest[p]["accuracy"] for p in precisions],
                 "macro-F1": [at_largest[p]["macro_f1"] for p in precisions],
                 "agreement with fp32": [at_largest[p]["agreement_with_fp32"] for p in precisions]},
                ylabel="share of texts", zoom_to_data=True)
    charts.lines("chart-throughput-batch", "End-to-end throughput per batch size (real texts, bucketed)",
                 {precision: (batch_sizes, [next(row["texts_per_second"] for row in rows
                                                 if row["precision"] == precision and row["batch_size"] == size)
                                            for size in batch_sizes]) for precision in precisions},
                 xlabel="batch size", ylabel="texts / s")
    for precision in precisions:
        charts.confusion(f"chart-confusion-{precision}", f"Confusion matrix, {precision} (batch {largest})",
                         at_largest[precision]["confusion_matrix"])
    table = _table(["precision", "batch", "accuracy", "macro-F1", "correct", "agreement with fp32",
                    "max |diff| vs fp32", "texts/s", "truncated"],
                   [[row["precision"], row["batch_size"], f"{row['accuracy']:.4f}", f"{row['macro_f1']:.4f}",
                     f"{row['correct']}/{row['examples']}", f"{row['agreement_with_fp32']:.4f}",
                     f"{row['max_abs_logit_diff_vs_fp32']:.3g}", f"{row['texts_per_second']:.1f}", row["truncated"]]
                    for row in rows])
    body = [f"<h1>roberta-deploy eval: {_e(report['backend'])}</h1>",
            _meta(f"{rows[0]['examples']} texts from {report['data']}; model {report['model']}; "
                  f"max_seq_length {report['max_seq_length']}", {}),
            "<h2>Accuracy</h2>", table, "<h2>Charts</h2>", charts.html(), *_per_class_sections(report)]
    return _page(f"roberta-deploy eval: {report['backend']}", body)


def deployment_report_html(report: dict) -> str:
    """The `deploy` page: every candidate's accuracy, agreement, throughput and batch-1 latency, the choice
    and why, the machine. `report` is what deployment.json holds."""
    measured = [row for row in report["candidates"] if "measured" in row]
    names = [_candidate_name(row) for row in measured]
    charts = _Charts()
    if report["accuracy_checked"]:
        charts.pareto("chart-pareto", "Accuracy against speed, every candidate (held-back texts); the line joins "
                      "those no other candidate beats on both", names,
                      [row["measured"]["texts_per_second"] for row in measured],
                      [row["measured"]["accuracy"] for row in measured])
        charts.bars("chart-accuracy", "Accuracy and agreement with fp32 per candidate (held-back texts)", names,
                    {"accuracy": [row["measured"]["accuracy"] for row in measured],
                     "agreement with fp32": [row["agreement_with_fp32"] for row in measured]},
                    ylabel="share of texts", zoom_to_data=True)
    charts.bars("chart-throughput", "Throughput per candidate (fastest pass, throughput hint)", names,
                {"texts/s": [row["measured"]["texts_per_second"] for row in measured]}, ylabel="texts / s")
    charts.bars("chart-latency", "Batch-1 latency per candidate (latency hint, real lengths)", ["p50", "p99"],
                {name: [row["measured"]["latency_ms_batch1"]["median"], row["measured"]["latency_ms_batch1"]["p99"]]
                 for name, row in zip(names, measured)}, ylabel="ms")

    def cell(row: dict, key: str, template: str) -> str:
        value = row.get(key, row.get("measured", {}).get(key))
        return "" if value is None else template.format(value)

    table = _table(["model", "backend", "precision", "artifacts", "accuracy", "vs fp32 (points)", "agreement with fp32",
                    "texts/s", "batch-1 p50 ms", "batch-1 p99 ms", "verdict"],
                   [[row.get("model", "teacher"), row["backend"], row["precision"],
                     row["status"],
                     cell(row, "accuracy", "{:.4f}"), cell(row, "points_vs_fp32", "{:+.2f}"),
                     cell(row, "agreement_with_fp32", "{:.4f}"), cell(row, "texts_per_second", "{:.1f}"),
                     cell(row.get("measured", {}).get("latency_ms_batch1", {}), "median", "{:.2f}"),
                     cell(row.get("measured", {}).get("latency_ms_batch1", {}), "p99", "{:.2f}"), row["verdict"]]
                    for row in report["candidates"]])
    choice, settings = report["choice"], report["settings"]
    unchecked = ("" if report["accuracy_checked"] else
                 '<p class="note">Accuracy was not checked: no --data was given.</p>')
    body = [f"<h1>roberta-deploy deploy: {_e(report['model'])}</h1>",
            _meta(f"{report['scored_texts']} {report['scored_on']}; accuracy budget "
                  f"{settings['accuracy_budget_points']:g} points; export {report['export']['status']}",
                  report["machine"]),
            f"<p><strong>Chosen: {_e(_candidate_name(choice))}</strong> "
            f"(<code>{_e(choice['bundle'])}</code>): {_e(choice['reason'])}.</p>", unchecked,
            "<h2>Candidates</h2>", table, "<h2>Charts</h2>", charts.html(), _host_section(report["machine"])]
    return _page(f"roberta-deploy deploy: {report['model']}", body)


class _Charts:
    """Collects inline SVG figures; drawing is skipped (with a note) when matplotlib is missing."""

    def __init__(self):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.available = False
        else:
            self.available = True
        self.figures: list[str] = []

    def _draw(self, chart_id: str, caption: str, paint: Callable, size: tuple[float, float] = (5.4, 3.2)) -> None:
        if not self.available:
            return
        import matplotlib
        from matplotlib.figure import Figure

        # rc_context: settings for this figure only; nothing process-wide changes.
        with matplotlib.rc_context({"svg.fonttype": "path", "font.size": 9, "axes.spines.top": False,
                                    "axes.spines.right": False, "svg.hashsalt": chart_id}):
            figure = Figure(figsize=size, layout="constrained")
            paint(figure.add_subplot())
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
        svg = buffer.getvalue()
        svg = svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside HTML
        svg = re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1', svg, count=1)
        svg = svg.replace("<svg", f'<svg role="img" aria-label="{_e(caption)}"', 1)
        small = ' class="small"' if size[0] < 4 else ""
        self.figures.append(f'<figure id="{chart_id}"{small}>{svg}<figcaption>{_e(caption)}</figcaption></figure>')

    def bars(self, chart_id: str, caption: str, groups: list[str], series: dict[str, list[float]], *, ylabel: str,
             zoom_to_data: bool = False, size: tuple[float, float] = (5.4, 3.2)) -> None:
        def paint(axes):
            width = 0.8 / max(1, len(series))
            labelled = len(groups) * len(series) <= 24  # past that, values on the bars overlap: the table has them
            for number, (name, values) in enumerate(series.items()):
                positions = [index + (number - (len(series) - 1) / 2) * width for index in range(len(groups))]
                bars = axes.bar(positions, values, width, label=name, color=COLORS[number % len(COLORS)])
                if labelled:
                    axes.bar_label(bars, fmt="%.3g" if not zoom_to_data else "%.4f",
                                   fontsize=7 if len(series) < 3 else 6, padding=1,
                                   rotation=0 if len(series) < 3 else 90)
            axes.set_xticks(range(len(groups)), groups, rotation=0 if len(groups) <= 6 else 45,
                            ha="center" if len(groups) <= 6 else "right")
            axes.set_ylabel(ylabel)
            values = [value for row in series.values() for value in row if value == value]  # NaN: no bar
            if zoom_to_data and values:
                low = min(values)
                axes.set_ylim(max(0.0, low - (1 - low) * 0.5 - 0.01), 1.0 + (1 - low) * 0.15 + 0.005)
            else:  # from zero, or below it for negative values (a correlation)
                axes.set_ylim(min(0.0, min(values, default=0) * 1.15), max(max(values, default=1) * 1.15, 1e-9))
            # Above the axes, so it never hides a bar.
            axes.legend(fontsize=8, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(series))
            axes.grid(axis="y", alpha=0.3)

        self._draw(chart_id, caption, paint, size)

    def lines(self, chart_id: str, caption: str, series: dict[str, tuple[list, list]], *, xlabel: str,
              ylabel: str) -> None:
        def paint(axes):
            for number, (name, (xs, ys)) in enumerate(series.items()):
                axes.plot(xs, ys, marker="o", label=name, color=COLORS[number % len(COLORS)])
            xs_all = sorted({x for xs, _ in series.values() for x in xs})
            if xs_all and xs_all[-1] / max(1, xs_all[0]) >= 8:
                axes.set_xscale("log", base=2)
            axes.set_xticks(xs_all, [str(x) for x in xs_all])
            axes.set_xlabel(xlabel)
            axes.set_ylabel(ylabel)
            axes.set_ylim(bottom=0)
            axes.legend(fontsize=8, frameon=False)
            axes.grid(alpha=0.3)

        self._draw(chart_id, caption, paint)

    def scatter(self, chart_id: str, caption: str, gold: list[float], predicted: dict[str, list[float]]) -> None:
        """Predicted against gold, one colour per precision, with the diagonal a perfect model lies on."""
        def paint(axes):
            values = gold + [value for points in predicted.values() for value in points]
            low, high = min(values), max(values)
            axes.plot([low, high], [low, high], color="#999", linewidth=0.8, linestyle="--", label="predicted = gold")
            for number, (name, points) in enumerate(predicted.items()):
                axes.scatter(gold, points, s=9, alpha=0.6, label=name, color=COLORS[number % len(COLORS)],
                             edgecolors="none")
            axes.set_xlabel("gold score")
            axes.set_ylabel("predicted score")
            axes.legend(fontsize=8, frameon=False)
            axes.grid(alpha=0.3)

        self._draw(chart_id, caption, paint)

    def pareto(self, chart_id: str, caption: str, names: list[str], speeds: list[float],
               accuracies: list[float]) -> None:
        """One labelled point per candidate, accuracy against texts/s, and the front of those not beaten
        on both by another."""
        def paint(axes):
            for number, (name, speed, accuracy) in enumerate(zip(names, speeds, accuracies)):
                axes.scatter([speed], [accuracy], s=24, color=COLORS[number % len(COLORS)], zorder=3)
                axes.annotate(name, (speed, accuracy), fontsize=6, xytext=(3, 3), textcoords="offset points")
            front = sorted((speed, accuracy) for speed, accuracy in zip(speeds, accuracies)
                           if not any(other_speed >= speed and other_accuracy >= accuracy
                                      and (other_speed, other_accuracy) != (speed, accuracy)
                                      for other_speed, other_accuracy in zip(speeds, accuracies)))
            if front:
                axes.plot([point[0] for point in front], [point[1] for point in front], color="#999",
                          linewidth=0.8, linestyle="--")
            axes.set_xlabel("texts / s")
            axes.set_ylabel("accuracy")
            axes.grid(alpha=0.3)

        self._draw(chart_id, caption, paint)

    def confusion(self, chart_id: str, caption: str, confusion: dict) -> None:
        def paint(axes):
            values = confusion["values"]
            labels = confusion["labels"]
            axes.imshow(values, cmap="Blues")
            peak = max(max(row) for row in values) or 1
            for row, row_values in enumerate(values):
                for column, value in enumerate(row_values):
                    axes.text(column, row, str(value), ha="center", va="center",
                              color="white" if value > peak / 2 else "black")
            axes.set_xticks(range(len(labels)), labels)
            axes.set_yticks(range(len(labels)), labels)
            axes.set_xlabel("predicted")
            axes.set_ylabel("gold")

        self._draw(chart_id, caption, paint, size=(3.4, 2.9))

    def html(self) -> str:
        if not self.available:
            return f'<p class="note">Charts need matplotlib: {_e(INSTALL_CHARTS)}</p>'
        return '<div class="charts">' + "".join(self.figures) + "</div>"


def _task_eval_html(report: dict) -> str:
    """The `eval` page of a multi-label or regression model: its measures, agreement and drift per row, and
    the charts of its task (multi-label: the measures and every label's F1 per precision; regression: the
    correlations and errors per precision, predicted against gold)."""
    rows = report["rows"]
    names = list(rows[0]["measures"])
    precisions = list(dict.fromkeys(row["precision"] for row in rows))
    batch_sizes = sorted({row["batch_size"] for row in rows})
    largest = max(batch_sizes)
    at_largest = {row["precision"]: row for row in rows if row["batch_size"] == largest}
    charts = _Charts()
    if "per_label" in rows[0]:
        charts.bars("chart-measures", f"Micro-F1, macro-F1 and exact match per precision (batch {largest}, "
                    f"threshold {rows[0]['threshold']:g})", precisions,
                    {name: [at_largest[p]["measures"][name] for p in precisions] for name in names},
                    ylabel="score", zoom_to_data=True)
        labels = list(rows[0]["per_label"])
        charts.bars("chart-per-label-f1", f"F1 of each label per precision (batch {largest})", labels,
                    {p: [at_largest[p]["per_label"][label]["f1"] for label in labels] for p in precisions},
                    ylabel="F1", size=(max(5.4, 0.45 * len(labels) * max(1, len(precisions)) ** 0.5), 3.2))
    else:
        charts.bars("chart-correlation", f"Pearson and Spearman correlation with gold per precision (batch {largest})",
                    precisions, {name: [_number(at_largest[p][name]) for p in precisions]
                                 for name in ("pearson", "spearman")}, ylabel="correlation")
        charts.bars("chart-error", f"Error against gold per precision (batch {largest})", precisions,
                    {name.upper(): [at_largest[p][name] for p in precisions] for name in ("mse", "mae")},
                    ylabel="error")
        scatter = report.get("predicted_vs_gold")
        if scatter and scatter["predicted"]:
            charts.scatter("chart-predicted-vs-gold",
                           f"Predicted against gold score ({len(scatter['gold'])} rows, batch {scatter['batch_size']})",
                           scatter["gold"], scatter["predicted"])
    charts.lines("chart-throughput-batch", "End-to-end throughput per batch size (real texts, bucketed)",
                 {precision: (batch_sizes, [next(row["texts_per_second"] for row in rows
                                                 if row["precision"] == precision and row["batch_size"] == size)
                                            for size in batch_sizes]) for precision in precisions},
                 xlabel="batch size", ylabel="texts / s")
    table = _table(["precision", "batch", *names, "agreement with fp32", "max |diff| vs fp32", "texts/s", "truncated"],
                   [[row["precision"], row["batch_size"],
                     *("n/a" if row["measures"][name] is None else f"{row['measures'][name]:.4f}" for name in names),
                     f"{row['agreement_with_fp32']:.4f}", f"{row['max_abs_logit_diff_vs_fp32']:.3g}",
                     f"{row['texts_per_second']:.1f}", row["truncated"]] for row in rows])
    body = [f"<h1>roberta-deploy eval: {_e(report['backend'])}, {_e(report['task'])}</h1>",
            _meta(f"{rows[0]['examples']} texts from {report['data']}; model {report['model']}; "
                  f"max_seq_length {report['max_seq_length']}", {}),
            f"<h2>{_e(report['task'])}</h2>", table, "<h2>Charts</h2>", charts.html(), *_per_label_sections(report)]
    return _page("roberta-deploy eval", body)


def _per_label_sections(report: dict) -> list[str]:
    """Multi-label: each precision's per-label precision, recall, F1 and support at the largest batch."""
    rows = [row for row in report["rows"] if "per_label" in row]
    if not rows:
        return []
    largest = max(row["batch_size"] for row in rows)
    sections = [f"<h2>Per label (batch {largest}, threshold {rows[0]['threshold']:g})</h2>"]
    for row in rows:
        if row["batch_size"] == largest:
            body = [[name, f"{values['precision']:.4f}", f"{values['recall']:.4f}", f"{values['f1']:.4f}",
                     values["support"]] for name, values in row["per_label"].items()]
            sections += [f"<h3>{_e(row['precision'])}</h3>",
                         _table(["label", "precision", "recall", "F1", "support"], body)]
    return sections


def _number(value) -> float:
    """A measure that may be None (no correlation of a constant series) as a float; None draws no bar."""
    return float("nan") if value is None else value


def _per_class_sections(report: dict) -> list[str]:
    rows = report["rows"]
    largest = max(row["batch_size"] for row in rows)
    sections = [f"<h2>Per class (batch {largest})</h2>"]
    for row in rows:
        if row["batch_size"] != largest or "per_class" not in row:
            continue
        names = row["confusion_matrix"]["labels"]
        body = [[name, f"{values['precision']:.4f}", f"{values['recall']:.4f}", f"{values['f1']:.4f}",
                 values["support"], *counts]
                for (name, values), counts in zip(row["per_class"].items(), row["confusion_matrix"]["values"])]
        body.append(["macro", "", "", f"{row['macro_f1']:.4f}", sum(v["support"] for v in row["per_class"].values()),
                     *[""] * len(names)])
        sections += [f"<h3>{_e(row['precision'])}</h3>",
                     _table(["label", "precision", "recall", "F1", "support", *(f"predicted {n}" for n in names)], body)]
    return sections


def _host_section(host: dict) -> str:
    if not host:
        return ""
    versions = ", ".join(f"{name} {version}" for name, version in host.get("library_versions", {}).items())
    rows = [["CPU", host.get("cpu_model")], ["speed flags", " ".join(host.get("cpu_flags", [])) or "none"],
            ["cores (logical / physical / usable)",
             f"{host.get('logical_cores')} / {host.get('physical_cores')} / {host.get('usable_cores')}"],
            ["memory", f"{host.get('memory_gib')} GiB"], ["OS", host.get("os")], ["libraries", versions],
            ["measured", host.get("date")]]
    body = "".join(f"<tr><th>{_e(name)}</th><td class=\"text\">{_e(value)}</td></tr>" for name, value in rows)
    return f"<h2>Machine</h2><table>{body}</table>"


def _meta(text: str, host: dict) -> str:
    where = f" Measured {host['date']} on {host['cpu_model']}." if host.get("date") else ""
    return f'<p class="meta">{_e(text)}.{_e(where)}</p>'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(part for part in body if part) + "\n</body></html>\n")


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _candidate_name(row: dict) -> str:
    """A deploy candidate as the report names it: backend and precision, after the student's name."""
    model = row.get("model", "teacher")
    return ("" if model == "teacher" else f"{model} ") + f"{row['backend']} {row['precision']}"
