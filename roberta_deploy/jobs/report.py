"""report.html: one self-contained page (inline SVG charts, no scripts, no outside files) for `run`, `eval`
and `deploy`.

Charts are drawn with matplotlib, imported only here and only when a page is drawn; without it (the
`report` extra) the page keeps its tables and says how to get the charts.
"""

from __future__ import annotations

import html

from .charts import INSTALL_CHARTS, Charts, plain_number  # noqa: F401  (INSTALL_CHARTS: what a page without charts says)
from .deploy_report import precision_label, timing_text

REPORT_HTML = "report.html"
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; line-height: 1.45; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: 0.2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #ddd; }
.meta { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; } th { background: #f4f4f4; }
.charts { display: flex; flex-wrap: wrap; gap: 1.2rem; }
figure { margin: 0; flex: 1 1 480px; max-width: 540px; } figure.small { flex: 0 1 340px; } figure svg { width: 100%; height: auto; }
td { white-space: nowrap; } td.text, td:last-child { white-space: normal; } td:last-child { min-width: 16em; } td.text { text-align: left; }
.wide { overflow-x: auto; } tbody th { text-align: left; font-weight: 600; }
figcaption { font-size: 0.85rem; color: #444; margin-top: 0.2rem; }
.note { background: #fff8e1; border: 1px solid #f0d98c; padding: 0.5rem 0.8rem; font-size: 0.9rem; }
"""


def run_report_html(summary: dict, accuracy: dict, perf_runs: dict[str, dict], sweeps: dict[str, list[dict]]) -> str:
    """The `run` page. perf_runs: {precision: {"latency": perf report, "throughput": perf report}};
    sweeps: {precision: measure_shapes results}."""
    host = next(iter(perf_runs.values()))["latency"].get("host", {}) if perf_runs else {}
    precisions = [row["precision"] for row in summary["rows"]]
    charts = Charts()
    charts.bars("chart-accuracy", "Accuracy and agreement with fp32 per precision", precisions,
                {"accuracy": [row["accuracy"] for row in summary["rows"]],
                 "agreement with fp32": [row["agreement_with_fp32"] for row in summary["rows"]]},
                ylabel="share of texts")
    percentile_names = [name for name in ("p50", "p90", "p95", "p99") if all(
        name in perf_runs[precision]["latency"]["latency_ms"] for precision in precisions)]
    charts.bars("chart-latency", "Batch-1 latency percentiles per precision (full length)", percentile_names,
                {precision: [perf_runs[precision]["latency"]["latency_ms"][name] for name in percentile_names]
                 for precision in precisions}, ylabel="ms")
    throughput = {precision: perf_runs[precision]["throughput"] for precision in precisions}
    if all("throughput_interval" in run for run in throughput.values()):
        rounds = throughput[precisions[0]]["rounds"]["rounds"]
        charts.ranges("chart-throughput", f"Throughput, batched real texts (throughput hint): median of {rounds} "
                      "interleaved rounds, with its interval", precisions,
                      [run["throughput_sequences_per_second"] for run in throughput.values()],
                      [(run["throughput_interval"]["low"], run["throughput_interval"]["high"])
                       for run in throughput.values()], xlabel="texts / s")
    if sweeps:
        for axis, other, chart_id, title in (
                ("batch_size", "seq_len", "chart-throughput-batch", "Throughput per batch size"),
                ("seq_len", "batch_size", "chart-throughput-seq", "Throughput per sequence length")):
            series, errors = {}, {}
            for precision, points in sweeps.items():
                chosen = [point for point in points if point.get("sweep") == axis]
                series[precision] = ([point[axis] for point in chosen],
                                     [point["throughput_sequences_per_second"] for point in chosen])
                errors[precision] = [(point["throughput_interval"]["low"], point["throughput_interval"]["high"])
                                     if "throughput_interval" in point else None for point in chosen]
            fixed = next((point[other] for points in sweeps.values() for point in points if point.get("sweep") == axis),
                         None)
            label = {"batch_size": "batch size", "seq_len": "sequence length (tokens)"}
            charts.lines(chart_id, f"{title} ({label[other]} {fixed}, random ids; precisions in interleaved rounds, "
                         "error bars: the median's interval)", series, xlabel=label[axis], ylabel="sequences / s",
                         errors=errors)
    table = _table(["precision", "accuracy", "agreement with fp32", "max |diff| vs fp32", "batch-1 p50 ms",
                    "batch-1 p99 ms", "texts/s batched (interval)"],
                   [[row["precision"], f"{row['accuracy']:.4f}", f"{row['agreement_with_fp32']:.4f}",
                     f"{row['max_abs_logit_diff_vs_fp32']:.3g}", f"{row['latency_p50_ms_batch1']:.2f}",
                     f"{row['latency_p99_ms_batch1']:.2f}", _with_interval(row["throughput_texts_per_second"],
                                                                         row.get("throughput_interval"))]
                    for row in summary["rows"]])
    shares = [share for runs in perf_runs.values() for run in runs.values()
              for share in run.get("rounds", {}).get("others_cpu_share", [])]
    body = [f"<h1>roberta-deploy run: {_e(summary['backend'])}: accuracy, latency and throughput of "
            f"{len(precisions)} precisions</h1>",
            _meta(f"{summary['examples']} texts from {summary['data']}; model {summary['model']}; "
                  f"max_seq_length {summary['max_seq_length']}", host, shares),
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
    charts = Charts()
    charts.bars("chart-accuracy", f"Accuracy (error bars: 95% Wilson interval), macro-F1 and agreement with fp32 "
                f"(batch {largest})", precisions,
                {"accuracy": [at_largest[p]["accuracy"] for p in precisions],
                 "macro-F1": [at_largest[p]["macro_f1"] for p in precisions],
                 "agreement with fp32": [at_largest[p]["agreement_with_fp32"] for p in precisions]},
                ylabel="share of texts",
                errors={"accuracy": [(at_largest[p]["accuracy_interval"]["low"], at_largest[p]["accuracy_interval"]["high"])
                                     if "accuracy_interval" in at_largest[p] else None for p in precisions]})
    charts.lines("chart-throughput-batch", "End-to-end throughput per batch size (real texts, bucketed)",
                 {precision: (batch_sizes, [next(row["texts_per_second"] for row in rows
                                                 if row["precision"] == precision and row["batch_size"] == size)
                                            for size in batch_sizes]) for precision in precisions},
                 xlabel="batch size", ylabel="texts / s")
    for precision in precisions:
        charts.confusion(f"chart-confusion-{precision}", f"Confusion matrix, {precision} (batch {largest})",
                         at_largest[precision]["confusion_matrix"])
    table = _table(["precision", "batch", "accuracy (95% interval)", "macro-F1", "correct", "agreement with fp32",
                    "disagree with fp32", "McNemar p", "max |diff| vs fp32", "texts/s", "truncated"],
                   [[row["precision"], row["batch_size"],
                     _with_interval(row["accuracy"], row.get("accuracy_interval"), "{:.4f}"), f"{row['macro_f1']:.4f}",
                     f"{row['correct']}/{row['examples']}", f"{row['agreement_with_fp32']:.4f}",
                     row["paired_vs_fp32"]["disagreements"] if "paired_vs_fp32" in row else "",
                     f"{row['paired_vs_fp32']['mcnemar_exact_p']:.3f}" if "paired_vs_fp32" in row else "",
                     f"{row['max_abs_logit_diff_vs_fp32']:.3g}", f"{row['texts_per_second']:.1f}", row["truncated"]]
                    for row in rows])
    body = [f"<h1>roberta-deploy eval: {_e(report['backend'])}: accuracy of {len(precisions)} precisions against "
            "fp32</h1>",
            _meta(f"{rows[0]['examples']} texts from {report['data']}; model {report['model']}; "
                  f"max_seq_length {report['max_seq_length']}", report.get("machine", {})),
            "<h2>Accuracy</h2>", table, "<h2>Charts</h2>", charts.html(), *_per_class_sections(report)]
    return _page(f"roberta-deploy eval: {report['backend']}", body)


def deployment_report_html(report: dict) -> str:
    """The `deploy` page: every candidate's accuracy, throughput and batch-1 latency with their intervals, the
    choice and why, the machine and its load. `report` is what deployment.json holds."""
    measured = [row for row in report["candidates"] if "measured" in row]
    names = [" ".join(part for part in (row.get("label"), row["backend"],
                                        precision_label(row)) if part)
             for row in measured]
    choice, settings = report["choice"], report["settings"]
    chosen = next((name for name, row in zip(names, measured) if row["bundle"] == choice["bundle"]), None)

    def interval(figure: dict | None) -> tuple[float, float] | None:
        return None if not figure else (figure["low"], figure["high"])

    charts = Charts()
    texts = report["scored_texts"]
    if report["accuracy_checked"]:
        reference = measured[0]["measured"]["accuracy"]
        charts.ranges("chart-accuracy", f"Accuracy on {texts} held-back texts, with 95% Wilson intervals; "
                      "diamonds: agreement with fp32", names, [row["measured"]["accuracy"] for row in measured],
                      [interval(row["measured"].get("accuracy_interval")) for row in measured],
                      xlabel="share of texts", upper=1.08, highlight=chosen,
                      markers={"agreement with fp32": [row["agreement_with_fp32"] for row in measured]},
                      reference_line=(reference, "fp32 accuracy"))
        charts.pareto("chart-pareto", f"Accuracy against speed, every candidate ({texts} held-back texts); the dashed "
                      "line joins those no other candidate beats on both", names,
                      [row["measured"]["texts_per_second"] for row in measured],
                      [row["measured"]["accuracy"] for row in measured], highlight=chosen)
    rounds = max((row["measured"]["throughput_rounds"]["rounds"] for row in measured), default=0)
    charts.ranges("chart-throughput", f"Throughput over {texts} texts (throughput hint): median of {rounds} "
                  "interleaved rounds, with its interval", names,
                  [row["measured"]["texts_per_second"] for row in measured],
                  [interval(row["measured"]["texts_per_second_interval"]) for row in measured],
                  xlabel="texts / s", highlight=chosen)
    if all(row["measured"].get("latency_ms_batch1") for row in measured):
        charts.ranges("chart-latency", "Batch-1 latency (latency hint, one text per call): median round's p50 with "
                      "its interval; diamonds: p99 of every call", names,
                      [row["measured"]["latency_p50_ms_interval"]["value"] for row in measured],
                      [interval(row["measured"]["latency_p50_ms_interval"]) for row in measured], xlabel="ms",
                      highlight=chosen, markers={"p99": [row["measured"]["latency_ms_batch1"]["p99"] for row in measured]})

    def cell(figure: dict | None, template: str) -> str:
        if not figure:
            return ""
        return f"{template.format(figure['value'])} ({template.format(figure['low'])}-{template.format(figure['high'])})"

    rows = []
    for row in report["candidates"]:
        figures = row.get("measured") or {}
        paired = row.get("paired_vs_fp32")
        rows.append([row.get("label") or "model", row["backend"], precision_label(row),
                     cell(figures.get("accuracy_interval"), "{:.3f}"),
                     "" if row.get("points_vs_fp32") is None else f"{row['points_vs_fp32']:+.2f}",
                     f"{paired['disagreements']} of {paired['texts']}" if paired else "",
                     f"{paired['mcnemar_exact_p']:.3f}" if paired else "",
                     cell(figures.get("texts_per_second_interval"), "{:,.0f}"),
                     cell(figures.get("latency_p50_ms_interval"), "{:.2f}"), row["verdict"]])
    table = _table(["model", "backend", "precision", "accuracy (95% interval)", "vs fp32 (points)", "disagree with fp32",
                    "McNemar p", "texts/s (interval)", "batch-1 p50 ms", "verdict"], rows)
    gate = choice.get("accuracy_gate") or {}
    notes = [f'<p class="note">{_e(gate["note"])}.</p>' if gate.get("note") else "",
             "" if report["accuracy_checked"] else '<p class="note">Accuracy was not checked: no --data was given.</p>',
             f'<p class="note">Tied within noise: {_e(", ".join(choice["tied_with"]))}.</p>'
             if choice.get("tied_within_noise") else ""]
    chosen = " ".join(part for part in (choice.get("label"), choice["backend"], precision_label(choice)) if part)
    body = [f"<h1>roberta-deploy deploy: {_e(report['model'])}: accuracy, throughput and latency of "
            f"{len(report['candidates'])} candidates</h1>",
            _meta(f"{texts} {report['scored_on']}; accuracy budget {settings['accuracy_budget_points']:g} points; "
                  f"export {report['export']['status']}", report["machine"], _others_shares(measured)),
            f"<p><strong>Chosen: {_e(chosen)}</strong> "
            f"(<code>{_e(choice['bundle'])}</code>): {_e(choice['reason'])}.</p>", *notes,
            "<h2>Candidates</h2>", table, f'<p class="meta">{_e(timing_text(settings))}.</p>',
            "<h2>Charts</h2>", charts.html(), _host_section(report["machine"])]
    return _page(f"roberta-deploy deploy: {report['model']}", body)


def _with_interval(value: float, interval: dict | None, template: str = "{:,.1f}") -> str:
    if not interval:
        return template.format(value)
    return f"{template.format(value)} ({template.format(interval['low'])}-{template.format(interval['high'])})"


def _others_shares(measured: list[dict]) -> list[float]:
    return [share for row in measured for share in row["measured"]["throughput_rounds"]["others_cpu_share"]]


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
    charts = Charts()
    if "per_label" in rows[0]:
        charts.bars("chart-measures", f"Micro-F1, macro-F1 and exact match per precision (batch {largest}, "
                    f"threshold {rows[0]['threshold']:g})", precisions,
                    {name: [at_largest[p]["measures"][name] for p in precisions] for name in names},
                    ylabel="score")
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
                  f"max_seq_length {report['max_seq_length']}", report.get("machine", {})),
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


def _meta(text: str, host: dict, others_shares: list[float] | None = None) -> str:
    """The line under a title: what was measured, when, on what, and how busy the machine was."""
    where = f" Measured {host['date']} on {host['cpu_model']}" if host.get("date") else ""
    load = host.get("load_average")
    if where and load:
        where += f", load average {load[0]:g} / {load[1]:g} / {load[2]:g} on {host.get('cpus')} CPUs"
    if others_shares:
        where += (f"; other processes took {min(others_shares):.0%}-{max(others_shares):.0%} of the CPU during "
                  "the timed rounds (the machine was shared)")
    return f'<p class="meta">{_e(text)}.{_e(where)}{"." if where else ""}</p>'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{_e(title)}</title><style>{STYLE}</style></head><body>\n"
            + "\n".join(part for part in body if part) + "\n</body></html>\n")


def _e(value) -> str:
    return html.escape("" if value is None else str(value))
