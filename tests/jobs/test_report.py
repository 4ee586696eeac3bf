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
        self.texts: dict[str, list[tuple[str, float]]] = {}  # per figure: (text, its y) of every SVG <text>
        self.error_bars: dict[str, list[str]] = {}  # per figure: ids of the error bars drawn
        self.all_text: list[str] = []  # the page's text outside the figures
        self._figure: str | None = None
        self._text_y: float | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "figure":
            self._figure = attributes.get("id")
            self.figures[self._figure] = 0
            self.texts[self._figure], self.error_bars[self._figure] = [], []
        elif tag == "text" and self._figure:
            self._text_y = float(attributes.get("y", "nan"))
        elif tag == "g" and self._figure and (attributes.get("id") or "").startswith("errorbar-"):
            self.error_bars[self._figure].append(attributes["id"])
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

    def handle_data(self, data):
        if self._text_y is not None:
            self.texts[self._figure].append((data, self._text_y))
        elif not self._figure:
            self.all_text.append(data)

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        elif tag == "text":
            self._text_y = None


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


RUN_CHARTS = ["chart-accuracy", "chart-latency", "chart-throughput", "chart-throughput-batch", "chart-throughput-seq"]


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
    assert all(point["throughput_interval"]["low"] <= point["throughput_sequences_per_second"]
               <= point["throughput_interval"]["high"] for point in sweep)
    assert len(parsed.error_bars["chart-throughput"]) == 2  # fp32 and int8, timed in the same rounds
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


def deployment_report(count: int) -> dict:
    """What deployment.json holds for `count` measured candidates (the fields the page reads), the third chosen."""
    from roberta_deploy.build.candidates import Measurement
    from roberta_deploy.measurement import Interval

    backends = ("openvino", "onnxruntime", "torch")
    precisions = ("fp32", "bf16", "int8", "fp16")
    candidates = []
    for number in range(count):
        backend, precision = backends[number % 3], precisions[number // 3 % 4]
        rate = 500.0 + 700 * number
        figures = Measurement(predicted_labels=(1, 0) * 37, accuracy=Interval(0.757, 0.648, 0.840, 0.95),
                              texts_per_second=Interval(rate, rate * 0.9, rate * 1.1, 0.9375),
                              throughput_rounds={"rounds": 5, "rates": [rate] * 5, "others_cpu_share": [0.45] * 5},
                              latency_ms={"p50": 1.2, "p90": 2.0, "p99": 9.5, "mean": 1.5},
                              latency_p50_ms=Interval(1.2, 1.0, 1.6, 0.9375)).to_dict()
        candidates.append({"backend": backend, "precision": precision, "label": f"student{number}" if number > 5 else None,
                           "bundle": f"bundles/{backend}-{precision}-{number}", "status": "built, measured",
                           "measured": figures, "agreement_with_fp32": 1.0, "points_vs_fp32": 0.0,
                           "paired_vs_fp32": {"texts": 74, "disagreements": 0, "only_reference_right": 0,
                                              "only_candidate_right": 0, "mcnemar_exact_p": 1.0},
                           "verdict": "slower: its interval does not reach the fastest's"})
    chosen = candidates[min(2, count - 1)]
    note = ("74 held-back texts cannot resolve a 0.5-point budget (one text is 1.35 points; 1,200 labelled texts "
            "would): agreement with fp32 is the gate instead")
    return {"model": "demo <model>", "scored_texts": 74, "scored_on": "texts of --data held back from int8 calibration",
            "accuracy_checked": True, "export": {"status": "exported"}, "candidates": candidates,
            "settings": {"accuracy_budget_points": 0.5, "timing_rounds": 5, "perf_seconds": 0.5, "timing_cap": 60},
            "choice": {"backend": chosen["backend"], "precision": chosen["precision"], "bundle": chosen["bundle"],
                       "reason": "the fastest", "tied_within_noise": False, "tied_with": [],
                       "accuracy_gate": {"note": note}},
            "machine": {"date": "2026-12-02T18:00:00+00:00", "cpu_model": "AMD EPYC", "cpu_flags": ["avx2"],
                        "load_average": [3.5, 2.0, 1.0], "cpus": 2, "logical_cores": 2, "physical_cores": 2,
                        "usable_cores": 2, "memory_gib": 23.5, "os": "Linux", "library_versions": {}}}


@pytest.mark.parametrize("count", [1, 5, 12])
def test_the_deploy_report_labels_every_candidate_apart_and_draws_its_intervals(count):
    from roberta_deploy.jobs.report import deployment_report_html

    report = deployment_report(count)
    parsed = assert_self_contained_with_charts(deployment_report_html(report),
                                               ["chart-accuracy", "chart-throughput", "chart-latency"])
    names = [" ".join(part for part in (row["label"], row["backend"], row["precision"]) if part)
             for row in report["candidates"]]
    for chart in ("chart-accuracy", "chart-throughput", "chart-latency"):
        texts = parsed.texts[chart]
        # Every candidate named once, on its own line: no two names closer than the 9 px font.
        positions = sorted(y for text, y in texts if text in names)
        assert sorted(text for text, _ in texts if text in names) == sorted(names), (chart, texts)
        assert all(later - earlier >= 9 for earlier, later in zip(positions, positions[1:])), (chart, positions)
        # One error bar per candidate, from its interval.
        assert sorted(parsed.error_bars[chart]) == sorted(f"errorbar-{chart}-{n}" for n in range(count))
        # Plain numbers: never an exponent.
        assert not any("e+" in text or "e-0" in text for text, _ in texts), texts
    throughput = dict((text, y) for text, y in parsed.texts["chart-throughput"])
    assert f"{report['candidates'][-1]['measured']['texts_per_second']:,.0f}" in throughput  # e.g. 8,200
    assert "0" in throughput  # the rate axis starts at zero
    page_text = " ".join(parsed.all_text)
    assert "load average 3.5 / 2 / 1 on 2 CPUs" in page_text and "2026-12-02" in page_text
    assert "cannot resolve a 0.5-point budget" in page_text and "demo <model>" in page_text
    assert f"of {count} candidates" in page_text  # the title names what was measured

