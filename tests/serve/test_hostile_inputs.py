"""Hostile request bodies against the app in-process (fake engine, no weights): every one a 4xx naming what was
wrong, never a 500; bounded answers; the smaller protocol points of issue 20; a real 500 logged with the request
id its answer carries. The connection-level attacks run against a real server in test_hostile.py."""

from __future__ import annotations

import json
import logging

import pytest
from serve_client import call, metric, post_json

from roberta_deploy.serve.options import Limits
from roberta_deploy.serve.payload import MAX_JSON_DEPTH, json_depth

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fake_server import RunningServer  # noqa: E402  (after the skip: it imports the serve extra)

V2_TEXT = {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}


def v2(**fields) -> bytes:
    return json.dumps({"inputs": [V2_TEXT], **fields}).encode()


@pytest.fixture(scope="module")
def server():
    running = RunningServer(limits=Limits(max_client_batch_size=32))
    running.wait_ready()
    yield running
    running.stop()


@pytest.mark.parametrize("path, body, status, fragment", [
    # a lone surrogate on every protocol
    ("/predict", b'{"inputs": "\\ud800"}', 422, "lone surrogate"),
    ("/predict", b'{"inputs": [["ok", "\\udfff x"]]}', 422, "lone surrogate"),
    ("/", b'{"inputs": "\\ud800"}', 422, "lone surrogate"),
    ("/", b'{"inputs": {"text": "a", "text_pair": "\\ud800"}}', 422, "lone surrogate"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
                              b'"data": ["\\ud800"]}]}', 422, "lone surrogate"),
    # nesting, refused before the parser recurses
    ("/predict", b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 422, "nests 100001"),
    ("/", b"[" * 100_000, 422, "nests"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": '
                              + b"[" * 995 + b'"a"' + b"]" * 995 + b"}]}", 422, "nests"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": '
                              b'[[["a"]]]}]}', 422, "nested deeper than its shape"),
    # v2 parameters of the wrong type
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"], '
                              b'"parameters": "binary_data_size"}]}', 422, "not an object"),
    ("/v2/models/fake/infer", v2(outputs=[{"name": "label", "parameters": [1]}]), 422, "not an object"),
    ("/v2/models/fake/infer", v2(outputs=[{"name": "label", "parameters": "x"}]), 422, "not an object"),
    ("/v2/models/fake/infer", v2(outputs=[{"name": "label", "parameters": {"binary_data": "yes"}}]), 422,
     "not true or false"),
    ("/v2/models/fake/infer", v2(parameters=[1]), 422, "not an object"),
    # amplification: each output at most once
    ("/v2/models/fake/infer", v2(outputs=[{"name": "logits"}] * 60_000), 422, "asked for twice"),
    ("/v2/models/fake/infer", v2(outputs=[{"name": 7}]), 422, "unknown output 7"),
    # the smaller points
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [true], "datatype": "BYTES", "data": ["a"]}]}',
     422, "shape"),
    ("/v2/models/fake/versions/999/infer", v2(), 404, "no version '999'"),
    ("/", b'{"inputs": "a", "parameters": 0}', 422, "`parameters` must be a JSON object"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}, '
                              b'{"name": "text_pair", "shape": [1], "datatype": "BYTES", "data": [7]}]}', 422,
     "`text_pair` item 0 is int"),
])
def test_hostile_bodies_get_a_4xx_naming_the_problem(server, path, body, status, fragment):
    got, headers, content = call(server.port, "POST", path, raw=body)
    answer = json.loads(content)
    assert got == status, answer
    assert fragment in answer["error"], answer
    assert headers["x-request-id"]


def test_no_input_error_was_counted_as_internal(server):
    call(server.port, "POST", "/predict", raw=b'{"inputs": "\\ud800"}')
    assert metric(server.port, "roberta_deploy_requests_total", outcome="internal_error") == 0
    assert metric(server.port, "roberta_deploy_requests_total", outcome="validation") >= 1


def test_nesting_is_measured_outside_strings():
    assert json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == 1
    assert json_depth(b'{"a": "\\"[[[", "b": [[1]]}') == 3
    assert json_depth(b"") == 0
    assert MAX_JSON_DEPTH >= 8  # every protocol's own bodies nest 5 deep at most


def test_a_full_request_asking_for_every_output_stays_small(server):
    """The largest answer a request may ask for: max texts, every output once, in JSON."""
    texts = ["好" * 10] * 32
    body = {"inputs": [{"name": "text", "shape": [32], "datatype": "BYTES", "data": texts}],
            "outputs": [{"name": name} for name in ("logits", "probabilities", "label")]}
    status, _, content = call(server.port, "POST", "/v2/models/fake/infer", body)
    assert status == 200
    assert len(content) < 20 * len(json.dumps(body))


def test_v2_versions_other_than_1_are_unknown(server):
    assert call(server.port, "GET", "/v2/models/fake/versions/1")[0] == 200
    assert call(server.port, "GET", "/v2/models/fake/versions/2")[0] == 404
    assert call(server.port, "GET", "/v2/models/fake/versions/7/ready")[0] == 404
    assert call(server.port, "POST", "/v2/models/fake/versions/1/infer", raw=v2())[0] == 200


def test_info_names_a_local_source_model_without_its_path():
    from roberta_deploy.serve.models import public_source

    assert public_source("/home/ops/models/chinese-roberta/") == "chinese-roberta"
    assert public_source("hfl/chinese-roberta-wwm-ext") == "hfl/chinese-roberta-wwm-ext"
    assert public_source(None) is None


def test_a_non_ascii_api_key_matches_its_utf8_header():
    key = "ключ-密钥"
    running = RunningServer(api_key=key)
    try:
        header = {"Authorization": b"Bearer " + key.encode()}
        running.wait_ready(headers=header)
        assert call(running.port, "POST", "/predict", {"inputs": "a"}, header)[0] == 200
        assert call(running.port, "POST", "/predict", {"inputs": "a"}, {"Authorization": "Bearer wrong"})[0] == 401
    finally:
        running.stop()


def test_a_500_is_logged_with_the_request_id_its_answer_carries(caplog):
    running = RunningServer()
    try:
        running.wait_ready()

        def broken(texts, truncation_direction="right"):
            raise RuntimeError("the encoder broke")

        running.engine.encoder.encode = broken
        with caplog.at_level(logging.ERROR, logger="roberta_deploy.serve"):
            status, headers, body = post_json(running.port, "/predict", {"inputs": "a"})
        assert status == 500
        request_id = headers["x-request-id"]
        assert request_id in body["error"] and "Traceback" not in body["error"]
        records = [record for record in caplog.records if request_id in record.getMessage()]
        assert records and records[0].exc_info and "the encoder broke" in str(records[0].exc_info[1])
        assert metric(running.port, "roberta_deploy_requests_total", outcome="internal_error") == 1
    finally:
        running.stop()
