"""`roberta-deploy loadtest` against the in-process server over a fake engine: closed and open loops, the
report files, and bad flags. Only counts are checked, never speed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from roberta_deploy.cli import app
from roberta_deploy.serve.loadtest import LoadtestOptions, run_loadtest

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fake_server import KEY, RunningServer  # noqa: E402  (after the skip: it imports the serve extra)

TEXTS = ("short", "a longer text here", "中文的评论")


@pytest.fixture(scope="module")
def fake_server():
    server = RunningServer(api_key=KEY)
    server.wait_ready(headers={"Authorization": f"Bearer {KEY}"})
    yield server
    server.stop()


@pytest.mark.parametrize("protocol", ["predict", "hf", "v2"])
def test_closed_and_open_loops_count_answers_per_level(fake_server, protocol):
    options = LoadtestOptions(url=f"http://127.0.0.1:{fake_server.port}", texts=TEXTS, concurrency=(1, 4),
                              request_rates=(40,), duration=0.5, warmup=0.1, protocol=protocol, api_key=KEY,
                              texts_per_request=2)
    results = run_loadtest(options)
    assert [(result.mode, result.level) for result in results] == [("concurrency", 1), ("concurrency", 4),
                                                                    ("rate", 40)]
    for result in results:
        assert result.requests > 0 and result.errors == 0, result
        assert result.texts_per_second == 2 * result.requests_per_second
        # Three interleaved rounds: the median round's rate, its interval, each round's others' CPU share.
        interval = result.requests_per_second_interval
        assert result.rounds == 3 and len(result.others_cpu_share) == 3
        assert interval["low"] <= result.requests_per_second == interval["value"] <= interval["high"]
        assert result.latency_ms["p50"] <= result.latency_ms["p99"] <= result.latency_ms["max"]


PAIRS = (("房间干净吗", "很干净"), ("早餐好吗", "一般"), ("near the station?", "five minutes away"))


@pytest.mark.parametrize("protocol", ["predict", "hf", "v2"])
@pytest.mark.parametrize("per_request", [1, 2])
def test_pairs_are_sent_in_each_protocols_pair_shape(protocol, per_request):
    """Each request body, read back by the server's own parser for that protocol, holds the pairs."""
    from roberta_deploy.serve.loadtest import request_body
    from roberta_deploy.serve import hf, tei, v2
    from roberta_deploy.serve.options import Limits

    body = request_body(protocol, PAIRS[:per_request])
    if protocol == "v2":
        parsed = v2.parse_infer(body, None, Limits()).texts
    else:
        parse = tei.parse_predict if protocol == "predict" else hf.parse_text_classification
        parsed = parse(json.loads(body), Limits()).texts
    assert parsed == list(PAIRS[:per_request])


@pytest.mark.parametrize("protocol", ["predict", "hf", "v2"])
def test_a_pair_file_is_loaded_as_pairs_by_default_or_by_flag(fake_server, tmp_path, protocol):
    data = tmp_path / "pairs.tsv"
    data.write_text("label\tsentence1\tsentence2\n" + "".join(f"0\t{a}\t{b}\n" for a, b in PAIRS), encoding="utf-8")
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("question,answer\n" + "".join(f"{a},{b}\n" for a, b in PAIRS), encoding="utf-8")
    for source, flags in ((data, []), (renamed, ["--text-column", "question", "--text-pair-column", "answer"])):
        output = tmp_path / f"report-{source.stem}"
        result = CliRunner().invoke(app, ["loadtest", f"http://127.0.0.1:{fake_server.port}", "--data", str(source),
                                          *flags, "--protocol", protocol, "--concurrency", "2", "--duration",
                                          "0.3", "--warmup", "0", "--texts-per-request", "2", "--output",
                                          str(output)], env={"ROBERTA_DEPLOY_API_KEY": KEY})
        assert result.exit_code == 0, result.output
        report = json.loads((output / "loadtest.json").read_text())
        level = report["levels"][0]
        assert report["text_pairs"] is True and level["requests"] > 0 and level["errors"] == 0, report
    result = CliRunner().invoke(app, ["loadtest", f"http://127.0.0.1:{fake_server.port}", "--data", str(renamed),
                                      "--text-pair-column", "reply"])
    assert result.exit_code != 0 and "has no column 'reply'" in result.output


def test_errors_are_counted_by_status(fake_server):
    results = run_loadtest(LoadtestOptions(url=f"http://127.0.0.1:{fake_server.port}", texts=TEXTS,
                                           concurrency=(2,), duration=0.3, warmup=0))
    assert results[0].requests == 0 and results[0].errors > 0 and set(results[0].errors_by_status) == {"401"}


def test_the_command_writes_json_markdown_and_a_plot(fake_server, tmp_path):
    data = tmp_path / "texts.tsv"
    data.write_text("text_a\n" + "\n".join(TEXTS) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["loadtest", f"http://127.0.0.1:{fake_server.port}", "--data", str(data),
                                      "--concurrency", "1,2", "--request-rate", "30", "--duration", "0.4",
                                      "--warmup", "0.1", "--output", str(tmp_path / "report")],
                                env={"ROBERTA_DEPLOY_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report" / "loadtest.json").read_text())
    assert [level["level"] for level in report["levels"]] == [1, 2, 30]
    markdown = (tmp_path / "report" / "loadtest.md").read_text()
    assert "| 1 clients |" in markdown and "| 30 req/s offered |" in markdown
    assert (tmp_path / "report" / "loadtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, fragment", [
    (["--protocol", "grpc"], "--protocol"),
    (["--request-rate", "fast"], "--request-rate"),
    (["--concurrency", "0"], "--concurrency"),
])
def test_bad_flags_are_one_line_errors(tmp_path, args, fragment):
    data = tmp_path / "texts.tsv"
    data.write_text("text_a\nhello\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["loadtest", "http://127.0.0.1:9", "--data", str(data), *args])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.output


def test_an_unreachable_server_is_a_one_line_error(tmp_path):
    data = tmp_path / "texts.tsv"
    data.write_text("text_a\nhello\n", encoding="utf-8")
    for protocol in ("predict", "v2"):
        result = CliRunner().invoke(app, ["loadtest", "http://127.0.0.1:9", "--data", str(data), "--protocol", protocol])
        assert result.exit_code == 2 and "cannot reach http://127.0.0.1:9" in result.output
