"""The command line's manners: --version, -v/-q, completion, - for stdin/stdout, plain unwrapped errors,
documented exit codes, and perf reports on par with benchmark_app and trtexec."""

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import roberta_deploy
from roberta_deploy import errors
from roberta_deploy.cli import app
from roberta_deploy.cli.exits import reports_errors

runner = CliRunner()
README = Path(__file__).resolve().parents[2] / "README.md"
TIMEOUT = 300


def invoke(*args, stdin=None):
    return runner.invoke(app, [str(arg) for arg in args], input=stdin)


def cli(*args, stdin=None):
    """The real command in a subprocess, with pipes (not a terminal) for stdin, stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "roberta_deploy", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=TIMEOUT, env=dict(os.environ, COLUMNS="80"))


@pytest.fixture(scope="module")
def bundle(bundle_factory):
    return bundle_factory("openvino", "fp32")


def test_version_comes_from_the_package_metadata():
    from importlib import metadata

    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"roberta-deploy {metadata.version('roberta-deploy')}"
    assert roberta_deploy.__version__ == metadata.version("roberta-deploy")


def test_shell_completion_is_offered():
    result = invoke("--help")
    assert "--install-completion" in result.output and "--show-completion" in result.output
    assert "Exit codes: 0 success" in result.output


def test_error_fixes_keep_their_brackets(capsys):
    @reports_errors
    def fails():
        raise errors.UsageError("backend openvino is not installed", "pip install 'roberta-deploy[openvino]'")

    with pytest.raises(typer.Exit) as raised:
        fails()
    assert raised.value.exit_code == 2
    assert capsys.readouterr().err == ("error: backend openvino is not installed "
                                       "(fix: pip install 'roberta-deploy[openvino]')\n")


def test_errors_are_not_wrapped_or_read_as_markup_when_piped(tmp_path):
    missing = tmp_path / "[bold]a-folder-name-long-enough-to-push-the-error-line-past-eighty-columns" / "bundle"
    result = cli("inspect", missing)
    assert result.returncode == errors.BundleError.exit_code
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) > 120, result.stderr
    assert lines[0].startswith("error: ") and str(missing) in lines[0]


def test_quiet_hides_steps_and_verbose_shows_library_logs(tiny_exports, tmp_path, samples_tsv):
    export = tiny_exports["bert"].folder
    common = ["build", "--export", export, "--backend", "onnxruntime", "--calibration-data", samples_tsv]
    loud = cli("-v", *common, "--output", tmp_path / "loud")
    assert loud.returncode == 0, loud.stderr
    assert "building onnxruntime fp32" in loud.stderr  # a step
    assert "INFO roberta_deploy.manifest:" in loud.stderr and "match their manifest hashes" in loud.stderr
    quiet = cli("-q", *common, "--output", tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "" and "built onnxruntime fp32 bundle" in quiet.stdout
    assert cli("-q", "-v", "inspect", tmp_path / "quiet").returncode == 2


def test_readme_documents_every_exit_code_and_error_class():
    rows = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| (\d+) \| ([^|]+) \|([^|]*)\|$", line)
        if match:
            rows[int(match.group(1))] = (match.group(2).strip(), set(re.findall(r"`(\w+)`", match.group(3))))
    assert {code: meaning for code, (meaning, _) in rows.items()} == errors.EXIT_CODES
    classes = [errors.RobertaDeployError, *errors.RobertaDeployError.__subclasses__()]
    for error_class in classes:
        assert error_class.__name__ in rows[error_class.exit_code][1], error_class
    assert invoke("infer", "--bundle", "nowhere", "--data", "x.tsv", "--output", "out").exit_code == 3


def test_infer_reads_stdin_and_writes_predictions_to_stdout(bundle, tmp_path):
    data = "label\ttext_a\n1\t房间干净，服务热情\n0\t隔音太差了\n"
    result = cli("infer", "--bundle", bundle, "--data", "-", "--output", "-", stdin=data)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["text"] for row in rows] == ["房间干净，服务热情", "隔音太差了"]
    assert [row["gold"] for row in rows] == [1, 0]
    for row in rows:
        assert row["score"] == max(row["probabilities"]) and row["label_name"] in ("negative", "positive")
    assert "accuracy: " in result.stderr and "wrote stdout" in result.stderr
    assert list(tmp_path.iterdir()) == []
    as_csv = cli("infer", "--bundle", bundle, "--data", "-", "--output", "-", "--format", "csv",
                 stdin='{"text": "位置不错"}\n{"text": "早餐一般"}\n')
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [row["text"] for row in table] == ["位置不错", "早餐一般"]
    assert set(table[0]) == {"index", "line", "text", "label", "label_name", "score", "truncated",
                             "probability_negative", "probability_positive"}
    bad = cli("infer", "--bundle", bundle, "--data", "-", "--output", "-", stdin="label\ttext_a\nmaybe\t好\n")
    assert bad.returncode == 2 and "<stdin>:2" in bad.stderr and bad.stdout == ""


def test_infer_writes_csv_and_per_class_metrics(bundle, dev_tsv, tmp_path):
    result = invoke("infer", "--bundle", bundle, "--data", dev_tsv, "--output", tmp_path / "out", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open(encoding="utf-8")))
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(rows) == metrics["examples"] == 1200
    gold = [int(row["gold"]) for row in rows]
    predicted = [int(row["label"]) for row in rows]
    positive = metrics["per_class"]["positive"]
    true_positive = sum(g == p == 1 for g, p in zip(gold, predicted))
    assert positive["precision"] == pytest.approx(true_positive / max(1, predicted.count(1)))
    assert positive["recall"] == pytest.approx(true_positive / gold.count(1))
    assert positive["support"] == gold.count(1)
    assert sum(map(sum, metrics["confusion_matrix"]["values"])) == 1200
    assert 0 <= metrics["macro_f1"] <= 1 and "macro-F1" in result.output and "precision" in result.output
    assert invoke("infer", "--bundle", bundle, "--data", dev_tsv, "--output", tmp_path / "x",
                  "--format", "tsv").exit_code == 2


def test_perf_reports_percentiles_host_and_every_iteration(bundle, tmp_path):
    result = cli("perf", bundle, "--duration", 0.3, "--warmup", 0.1, "--iterations", 20, "--percentiles", "50,99.9",
                 "--export-times", tmp_path / "times.json", "--json", "-")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout holds only the JSON; the table went to stderr
    assert "latency p99.9" in result.stderr
    latency = report["latency_ms"]
    assert latency["min"] <= latency["p50"] <= latency["p99.9"] <= latency["max"]
    host = report["host"]
    assert host["cpu_model"] and host["logical_cores"] >= 1 and host["date"].startswith("20")
    assert host["library_versions"]["openvino"] and "numpy" in host["library_versions"]
    times = json.loads((tmp_path / "times.json").read_text())
    assert len(times["times"]) == report["calls"] >= 20
    starts = [entry["start_ms"] for entry in times["times"]]
    assert starts == sorted(starts)
    assert sorted(entry["latency_ms"] for entry in times["times"])[0] == pytest.approx(latency["min"], abs=1e-3)
    assert "times" not in report
    assert invoke("perf", bundle, "--percentiles", "50,101").exit_code == 2


def test_perf_compare_runs_every_bundle_under_the_same_settings(bundle_factory, tmp_path):
    first, second = bundle_factory("openvino", "fp32"), bundle_factory("onnxruntime", "fp32")
    result = invoke("perf", "--compare", first, second, "--duration", 0.2, "--warmup", 0, "--batch-size", 2,
                    "--json", tmp_path / "compare.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "compare.json").read_text())
    assert [run["bundle"] for run in report["runs"]] == [str(first), str(second)]
    assert [run["backend"] for run in report["runs"]] == ["openvino", "onnxruntime"]
    assert {run["batch_size"] for run in report["runs"]} == {2}
    assert report["runs"][0]["throughput_vs_first"] == 1.0
    for run in report["runs"]:  # timed together in interleaved rounds: the median round and its interval
        rounds, interval = run["rounds"], run["throughput_interval"]
        assert rounds["rounds"] == 5 and len(rounds["others_cpu_share"]) == 5
        assert interval["low"] <= run["throughput_sequences_per_second"] == interval["value"] <= interval["high"]
        assert run["calls"] >= 5 and run["latency_ms"]["min"] <= run["latency_ms"]["max"]
    assert "vs first" in result.output and first.name in result.output
    assert invoke("perf", "--compare", first).exit_code == 2
