"""report.html: self-contained, and the charts are there (checked by parsing the page)."""

import json
import sys
from html.parser import HTMLParser

import pytest

from roberta_deploy.jobs.report import INSTALL_CHARTS, eval_report_html


class PageParser(HTMLParser):
    """Figures by id with the number of SVG shapes drawn in each, plus anything that would load from outside."""

    def __init__(self):
        super().__init__()
        self.figures: dict[str, int] = {}
        self.external: list[str] = []
        self.scripts = 0
        self.tables = 0
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "figure":
            self._figure = attributes.get("id")
            self.figures[self._figure] = 0
        elif tag in ("path", "rect", "use", "image") and self._figure:
            self.figures[self._figure] += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self.tables += 1
        for name in ("src", "href", "xlink:href"):
            value = attributes.get(name) or ""
            if value and not value.startswith(("#", "data:")):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def assert_self_contained_with_charts(page: str, chart_ids: list[str]) -> PageParser:
    parsed = parse(page)
    assert parsed.external == [] and parsed.scripts == 0
    for chart_id in chart_ids:
        assert parsed.figures.get(chart_id, 0) > 10, (chart_id, parsed.figures)  # axes, ticks, bars or lines drawn
    return parsed


RUN_CHARTS = ["chart-accuracy", "chart-latency", "chart-throughput-batch", "chart-throughput-seq"]


def test_run_writes_report_html_with_every_chart(tiny_checkpoints, dev_tsv, tmp_path):
    from typer.testing import CliRunner

    from roberta_deploy.cli import app

    lines = dev_tsv.read_text(encoding="utf-8").split("\n")
    data = tmp_path / "slice.tsv"
    data.write_text("\n".join(lines[:81]) + "\n", encoding="utf-8")
    output = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_checkpoints["bert"]), "--data", str(data),
                                      "--output", str(output), "--backend", "onnxruntime", "--perf-seconds", "0.2",
                                      "--max-seq-length", "64"])
    assert result.exit_code == 0, result.output
    assert (output / "summary.md").is_file()
    page = (output / "report.html").read_text(encoding="utf-8")
    parsed = assert_self_contained_with_charts(page, RUN_CHARTS)
    assert parsed.tables >= 3  # summary, per class for each precision, machine
    sweep = json.loads((output / "perf" / "int8-sweep.json").read_text())
    assert [point["batch_size"] for point in sweep if point["sweep"] == "batch_size"] == [1, 4, 16, 64]
    assert [point["seq_len"] for point in sweep if point["sweep"] == "seq_len"] == [16, 32, 64]
    assert all(point["throughput_sequences_per_second"] > 0 for point in sweep)
    for precision in ("fp32", "int8"):
        assert f"<td>{precision}</td>" in page


def test_eval_report_has_accuracy_throughput_and_confusion_charts(tmp_path):
    rows = []
    for precision, correct in (("fp32", 90), ("int8", 88)):
        for batch_size, speed in ((1, 100.0), (32, 400.0)):
            rows.append({"precision": precision, "batch_size": batch_size, "accuracy": correct / 100,
                         "macro_f1": correct / 100 - 0.01, "correct": correct, "examples": 100,
                         "agreement_with_fp32": 1.0 if precision == "fp32" else 0.97,
                         "max_abs_logit_diff_vs_fp32": 0.0, "truncated": 3, "texts_per_second": speed,
                         "per_class": {"negative": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 50},
                                       "positive": {"precision": 0.9, "recall": 0.9, "f1": 0.9, "support": 50}},
                         "confusion_matrix": {"labels": ["negative", "positive"],
                                              "values": [[45, 5], [5, 45]]}})
    report = {"model": "m <b>", "data": "d.tsv", "backend": "openvino", "max_seq_length": 128, "rows": rows}
    page = eval_report_html(report)
    assert_self_contained_with_charts(page, ["chart-accuracy", "chart-throughput-batch", "chart-confusion-fp32",
                                             "chart-confusion-int8"])
    assert "m &lt;b&gt;" in page  # names from the data are escaped, never markup


def task_rows(measures: dict, details) -> list[dict]:
    return [{"precision": precision, "batch_size": batch_size, "examples": 40, "measures": measures,
             **details(precision), "agreement_with_fp32": 1.0 if precision == "fp32" else 0.95,
             "max_abs_logit_diff_vs_fp32": 0.01, "truncated": 0, "texts_per_second": 50.0 * batch_size}
            for precision in ("fp32", "int8") for batch_size in (1, 8)]


def test_multi_label_eval_report_charts_its_measures_and_every_labels_f1():
    labels = ["service", "room", "food", "price <b>", "location", "noise", "value", "staff"]

    def details(precision):
        shift = 0.0 if precision == "fp32" else 0.05
        return {"threshold": 0.5, "per_label": {name: {"precision": 0.8, "recall": 0.7, "f1": 0.3 + 0.08 * index - shift,
                                                       "support": 5} for index, name in enumerate(labels)}}

    report = {"model": "m", "data": "d.jsonl", "backend": "openvino", "max_seq_length": 128,
              "task": "multi_label_classification", "text_pairs": False,
              "rows": task_rows({"micro-F1": 0.61, "macro-F1": 0.55, "exact match": 0.3}, details)}
    page = eval_report_html(report)
    parsed = assert_self_contained_with_charts(page, ["chart-measures", "chart-per-label-f1", "chart-throughput-batch"])
    # A bar per label and precision, each an SVG path, beyond the axes' own shapes.
    assert parsed.figures["chart-per-label-f1"] >= parsed.figures["chart-measures"] + len(labels) * 2 - 3 * 2
    assert "price &lt;b&gt;" in page and parsed.tables >= 3  # the measures, then a per-label table per precision


def test_regression_eval_report_charts_correlation_error_and_predicted_against_gold():
    gold = [index / 10 for index in range(40)]
    report = {"model": "m", "data": "d.tsv", "backend": "onnxruntime", "max_seq_length": 128, "task": "regression",
              "text_pairs": True,
              "rows": task_rows({"pearson": 0.9, "spearman": 0.88, "mse": 0.2},
                                lambda precision: {"pearson": 0.9 if precision == "fp32" else -0.2,
                                                   "spearman": None, "mse": 0.2, "mae": 0.3}),
              "predicted_vs_gold": {"batch_size": 8, "gold": gold,
                                    "predicted": {"fp32": [value + 0.1 for value in gold],
                                                  "int8": [value - 0.1 for value in gold]}}}
    page = eval_report_html(report)
    parsed = assert_self_contained_with_charts(page, ["chart-correlation", "chart-error", "chart-predicted-vs-gold",
                                                      "chart-throughput-batch"])
    assert parsed.figures["chart-predicted-vs-gold"] >= 2 * len(gold)  # one marker per row and precision
    assert "(40 rows, batch 8)" in page
    del report["predicted_vs_gold"]  # an accuracy.json written before the sample was kept: no scatter
    assert "chart-predicted-vs-gold" not in parse(eval_report_html(report)).figures


def test_without_matplotlib_the_page_keeps_its_tables_and_says_how_to_get_charts(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    rows = [{"precision": "fp32", "batch_size": 1, "accuracy": 1.0, "macro_f1": 1.0, "correct": 1, "examples": 1,
             "agreement_with_fp32": 1.0, "max_abs_logit_diff_vs_fp32": 0.0, "truncated": 0, "texts_per_second": 1.0,
             "per_class": {"a": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}},
             "confusion_matrix": {"labels": ["a"], "values": [[1]]}}]
    page = eval_report_html({"model": "m", "data": "d", "backend": "openvino", "max_seq_length": 8, "rows": rows})
    parsed = parse(page)
    assert parsed.figures == {} and parsed.tables >= 2
    assert INSTALL_CHARTS.replace("'", "&#x27;") in page


@pytest.mark.parametrize("module", ["matplotlib", "matplotlib.pyplot"])
def test_the_cli_does_not_import_matplotlib_until_a_report_is_drawn(module):
    import subprocess

    code = f"import sys, roberta_deploy.cli, roberta_deploy.jobs.run_all, roberta_deploy.jobs.evaluate; assert {module!r} not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
