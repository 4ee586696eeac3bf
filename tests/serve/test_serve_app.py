"""The server's app in-process, over the real Batcher and a fake engine (no weights): every protocol over raw
HTTP, the error table, limits, auth, readiness, overload, dropped clients, merging and drain. The fake
engine's gate holds compute, so in-flight and queued states are reached without timing. Every wait and
HTTP call has a timeout, so a hang fails the test."""

from __future__ import annotations

import json
import socket
import struct
import threading

import numpy as np
import pytest
from fake_engine import expected_logits, token_ids
from serve_client import Background, call, metric, post_json, wait_until

from roberta_deploy.runtime.batching import online_lengths
from roberta_deploy.serve.options import Limits

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
from fake_server import KEY, RunningServer, softmax  # noqa: E402  (after the skip: it imports the serve extra)

@pytest.fixture
def start_server():
    servers = []

    def start(*args, **kwargs) -> RunningServer:
        servers.append(RunningServer(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def shared_server():
    server = RunningServer(limits=Limits(max_client_batch_size=4, payload_limit=2000, max_input_chars=50))
    server.wait_ready()
    yield server
    server.stop()


def test_readiness_waits_for_warm_up_while_liveness_answers_at_once(start_server):
    gate = threading.Event()  # holds the warm-up inference
    server = start_server(gate=gate)
    wait_until(lambda: call(server.port, "GET", "/v2/health/live")[0] == 200, "the server listens")
    assert call(server.port, "GET", "/health")[0] == 503
    assert call(server.port, "GET", "/v2/health/ready")[0] == 503
    status, headers, body = post_json(server.port, "/predict", {"inputs": "abc"})
    assert status == 503 and "warming up" in body["error"] and headers["retry-after"] == "1"
    gate.set()
    server.wait_ready()
    assert call(server.port, "GET", "/v2/health/ready")[0] == 200
    assert call(server.port, "GET", "/v2/models/fake/ready")[0] == 200
    assert any(event.startswith("ready") for event in server.events)


def test_predict_answers_every_label_sorted_with_timing_headers(shared_server):
    texts = ["ab", "a much longer text"]
    probabilities = softmax(expected_logits(texts))
    status, headers, body = post_json(shared_server.port, "/predict", {"inputs": texts[0]})
    assert status == 200
    assert [entry["label"] for entry in body] == ["long", "short"]  # sum of ids/100 outweighs the length
    assert body[0]["score"] == pytest.approx(probabilities[0].max(), rel=1e-5)
    assert body[0]["score"] >= body[1]["score"]
    for name in ("x-queue-time", "x-tokenization-time", "x-inference-time", "x-total-time"):
        assert headers[name].isdigit()
    # Tokens computed, padding included: online batches are padded to the next of a few lengths.
    padded = next(length for length in online_lengths(32) if length >= len(texts[0]) + 2)
    assert int(headers["x-compute-tokens"]) == padded
    for inputs in (texts, [[text] for text in texts]):
        status, _, body = post_json(shared_server.port, "/predict", {"inputs": inputs})
        assert status == 200 and len(body) == 2
        for row, answer in zip(probabilities, body):
            assert {entry["label"]: entry["score"] for entry in answer} == pytest.approx(
                {"short": row[0], "long": row[1]}, rel=1e-5)
    status, _, body = post_json(shared_server.port, "/predict", {"inputs": texts, "raw_scores": True})
    assert {entry["label"]: entry["score"] for entry in body[1]} == pytest.approx(
        dict(zip(("short", "long"), expected_logits(texts)[1])), rel=1e-5)


def test_hugging_face_shape_at_the_root(shared_server):
    text = "hello"
    logits = expected_logits([text])[0]
    status, _, body = post_json(shared_server.port, "/", {"inputs": text})
    assert status == 200 and len(body) == 1 and len(body[0]) == 2
    assert {entry["label"]: entry["score"] for entry in body[0]} == pytest.approx(
        dict(zip(("short", "long"), softmax(logits[None])[0])), rel=1e-5)
    status, _, body = post_json(shared_server.port, "/", {"inputs": [text, "x"], "parameters": {
        "top_k": 1, "function_to_apply": "none"}})
    assert status == 200 and [len(answer) for answer in body] == [1, 1]
    assert body[0][0] == {"label": "long", "score": pytest.approx(float(logits[1]), rel=1e-5)}
    status, _, body = post_json(shared_server.port, "/", {"inputs": text, "parameters": {"top_k": 0}})
    assert status == 422 and "top_k" in body["error"]


def test_open_inference_protocol_json_and_binary_tensors(shared_server):
    port = shared_server.port
    status, _, body = call(port, "GET", "/v2")
    assert status == 200 and json.loads(body)["name"] == "roberta-deploy"
    status, _, body = call(port, "GET", "/v2/models/fake")
    metadata = json.loads(body)
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [output["name"] for output in metadata["outputs"]] == ["logits", "probabilities", "label"]
    texts = ["abc", "defgh"]
    request = {"id": "r1", "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [[t] for t in texts]}]}
    status, _, body = post_json(port, "/v2/models/fake/infer", request)
    assert status == 200 and body["id"] == "r1" and body["model_name"] == "fake"
    outputs = {output["name"]: output for output in body["outputs"]}
    assert outputs["logits"]["shape"] == [2, 2]
    assert np.allclose(np.array(outputs["logits"]["data"]).reshape(2, 2), expected_logits(texts), rtol=1e-5)
    assert outputs["label"]["data"] == ["long", "long"]
    # Binary tensors both ways, as tritonclient sends them by default.
    elements = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
    header = json.dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(elements)}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}},
                                     {"name": "label", "parameters": {"binary_data": False}}]}).encode()
    status, headers, content = call(port, "POST", "/v2/models/fake/infer", raw=header + elements,
                                    headers={"Inference-Header-Content-Length": str(len(header)),
                                             "Content-Type": "application/octet-stream"})
    assert status == 200, content
    json_size = int(headers["inference-header-content-length"])
    answer = json.loads(content[:json_size])
    assert [output["name"] for output in answer["outputs"]] == ["logits", "label"]
    logits = np.frombuffer(content[json_size:], dtype="<f4").reshape(2, 2)
    assert answer["outputs"][0]["parameters"]["binary_data_size"] == 16
    assert np.allclose(logits, expected_logits(texts), rtol=1e-5)
    assert answer["outputs"][1]["data"] == ["long", "long"]


@pytest.mark.parametrize("path, body, status, fragment", [
    ("/predict", b"{not json", 422, "not valid JSON"),
    ("/predict", b'{"inputs": 3}', 422, "not a text"),
    ("/predict", b'{"text": "a"}', 422, "no `inputs`"),
    ("/predict", b'{"inputs": "   "}', 422, "empty"),
    ("/predict", b'{"inputs": ["a", 7]}', 422, "not a string"),
    ("/predict", b'{"inputs": [["a", "b", "c"]]}', 422, "holds 3 texts"),
    ("/rerank", b'{"query": "a"}', 422, "needs `query` and `texts`"),
    ("/rerank", b'{"query": "a", "texts": []}', 400, "`texts` cannot be empty"),
    ("/rerank", b'{"query": "a", "texts": ["b"]}', 424, "model is not a re-ranker model"),
    ("/predict", b'{"inputs": "a", "truncate": "yes"}', 422, "truncate"),
    ("/", b'[1, 2]', 422, "no `inputs`"),
    ("/", b'{"inputs": "a", "parameters": {"temperature": 1}}', 422, "unknown parameter"),
    ("/models/nope/predict", b'{"inputs": "a"}', 404, "no model named 'nope'"),
    ("/v2/models/nope/infer", b'{}', 404, "no model named 'nope'"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1]}]}', 422,
     "not BYTES"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}',
     422, "'text'"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}',
     422, "shape"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],'
                              b' "outputs": [{"name": "hidden"}]}', 422, "unknown output"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}, '
                              b'["x"]]}', 422, "do not match the model's inputs"),
    ("/v2/models/fake/infer", b'{"inputs": [{"name": ["text"], "shape": [1], "datatype": "BYTES", "data": ["a"]}]}',
     422, "do not match the model's inputs"),
    ("/nowhere", b"{}", 404, "no route"),
])
def test_bad_requests_get_a_clear_4xx_never_a_500(shared_server, path, body, status, fragment):
    got, headers, content = call(shared_server.port, "POST", path, raw=body)
    answer = json.loads(content)
    assert got == status, answer
    assert fragment in answer["error"] and "Traceback" not in answer["error"]
    assert ("error_type" in answer) == path.endswith(("/predict", "/rerank"))  # TEI's body shape on its routes only
    if path == "/rerank":
        assert answer["error_type"] == {400: "Empty", 424: "Backend", 422: "Validation"}[status]


def test_each_limit_is_answered_413_or_422_naming_its_flag(shared_server):
    port = shared_server.port
    status, _, body = post_json(port, "/predict", {"inputs": ["a"] * 5})
    assert status == 422 and "--max-client-batch-size" in body["error"] and "4" in body["error"]
    status, _, body = post_json(port, "/predict", {"inputs": "a" * 51})
    assert status == 422 and "--max-input-chars" in body["error"]
    status, _, body = post_json(port, "/predict", {"inputs": "a" * 2100})
    assert status == 413 and "--payload-limit" in body["error"] and body["error_type"] == "PayloadTooLarge"
    status, _, body = post_json(port, "/v2/models/fake/infer", {"inputs": [
        {"name": "text", "shape": [5], "datatype": "BYTES", "data": ["a"] * 5}]})
    assert status == 422 and "--max-client-batch-size" in body["error"]
    # Past the model's 32 tokens: truncated by default, refused when the request says not to truncate.
    long_text = "b" * 40
    status, _, body = post_json(port, "/predict", {"inputs": long_text})
    assert status == 200
    status, _, body = post_json(port, "/predict", {"inputs": long_text, "truncate": False})
    assert status == 422 and "32 tokens" in body["error"]
    assert metric(port, "roberta_deploy_texts_truncated_total", model="fake") >= 1
    assert metric(port, "roberta_deploy_requests_total", route="/predict", outcome="validation") >= 4


def test_truncation_direction_picks_the_end_of_a_long_text_that_is_kept(shared_server):
    """TEI's truncation_direction reaches the tokenizer: "left" keeps the end, "right" (the default) the start."""
    long_text = "a" * 20 + "z" * 20  # past the fake model's 32 tokens
    answers = {}
    for direction in ("left", "Left", "right", None):
        body = {"inputs": [long_text], "raw_scores": True}
        if direction is not None:
            body["truncation_direction"] = direction
        status, _, answer = post_json(shared_server.port, "/predict", body)
        assert status == 200, answer
        answers[direction] = sorted(entry["score"] for entry in answer[0])
    for direction, left in (("left", True), ("Left", True), ("right", False), (None, False)):
        ids = token_ids(long_text, 32, left=left)
        assert answers[direction] == pytest.approx(sorted([len(ids), sum(ids) / 100]), abs=1e-4)
    assert answers["left"] != answers["right"]
    status, _, body = post_json(shared_server.port, "/predict", {"inputs": "a", "truncation_direction": 1})
    assert status == 422 and "`truncation_direction` 1 is not right or left" in body["error"]


def test_api_key_is_required_everywhere_but_liveness(start_server):
    server = start_server(api_key=KEY)
    good = {"Authorization": f"Bearer {KEY}"}
    server.wait_ready(headers=good)
    assert call(server.port, "GET", "/v2/health/live")[0] == 200
    for method, path, body in (("GET", "/health", None), ("GET", "/info", None), ("GET", "/metrics", None),
                               ("POST", "/predict", {"inputs": "a"}), ("POST", "/", {"inputs": "a"}),
                               ("GET", "/v2/health/ready", None), ("GET", "/v2/models/fake", None),
                               ("POST", "/v2/models/fake/infer", {"inputs": []})):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            status, response_headers, content = call(server.port, method, path, body, headers)
            assert status == 401, (method, path, headers)
            assert response_headers["www-authenticate"] == "Bearer"
            assert "--api-key" in json.loads(content)["error"]
    assert post_json(server.port, "/predict", {"inputs": "a"}, good)[0] == 200


def test_overload_is_answered_429_at_once_with_retry_after(start_server):
    gate = threading.Event()
    gate.set()
    server = start_server(gate=gate, limits=Limits(max_concurrent_requests=2))
    server.wait_ready()
    gate.clear()  # warm-up done; now every batch waits in the engine
    held = [Background(post_json, server.port, "/predict", {"inputs": f"held {n}"}) for n in range(2)]
    wait_until(lambda: metric(server.port, "roberta_deploy_requests_in_flight") == 2, "two requests are in flight")
    status, headers, body = post_json(server.port, "/predict", {"inputs": "one too many"})
    assert status == 429 and headers["retry-after"] == "1"
    assert "--max-concurrent-requests" in body["error"] and body["error_type"] == "Overloaded"
    gate.set()
    assert [request.result()[0] for request in held] == [200, 200]
    assert metric(server.port, "roberta_deploy_requests_total", route="/predict", outcome="overloaded") == 1


def test_a_disconnected_client_is_dropped_before_compute_and_counted(start_server):
    gate = threading.Event()
    gate.set()
    server = start_server(contexts=1, gate=gate)
    server.wait_ready()
    warm_up_calls = len(server.engine.calls)  # the warm-up text and the largest batch, on each context
    gate.clear()
    computing = Background(post_json, server.port, "/predict", {"inputs": "computing"})
    wait_until(lambda: len(server.engine.calls) == warm_up_calls + 1, "the first request is inside the engine")
    body = json.dumps({"inputs": "abandoned"}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: metric(server.port, "roberta_deploy_queue_size", model="fake") == 1,
                   "the second request waits in the batcher")
    wait_until(lambda: metric(server.port, "roberta_deploy_requests_total", outcome="dropped") == 1,
               "the server notices the disconnect")
    gate.set()
    assert computing.result()[0] == 200
    wait_until(lambda: metric(server.port, "roberta_deploy_batcher_dropped_total", model="fake") == 1,
               "the batcher drops the abandoned request")
    computed = [row for call_ in server.engine.calls[warm_up_calls:] for row in call_["rows"]]
    assert len(computed) == 1  # "computing" only: the abandoned text never reached the engine


def test_concurrent_requests_are_merged_into_one_batch(start_server):
    gate = threading.Event()
    gate.set()
    server = start_server(contexts=1, gate=gate)
    server.wait_ready()
    warm_up_calls = len(server.engine.calls)
    gate.clear()
    first = Background(post_json, server.port, "/predict", {"inputs": "first"})
    wait_until(lambda: len(server.engine.calls) == warm_up_calls + 1, "the first request is inside the engine")
    texts = ["two", "three", "four", "five"]
    waiting = [Background(post_json, server.port, "/predict", {"inputs": text}) for text in texts]
    wait_until(lambda: metric(server.port, "roberta_deploy_queue_size", model="fake") == 4, "four requests wait")
    gate.set()
    answers = [request.result() for request in waiting]
    assert first.result()[0] == 200 and all(status == 200 for status, _, _ in answers)
    for (_, _, body), row in zip(answers, softmax(expected_logits(texts))):
        assert {entry["label"]: entry["score"] for entry in body} == pytest.approx(
            {"short": row[0], "long": row[1]}, rel=1e-5)
    assert metric(server.port, "roberta_deploy_batch_size_count", model="fake") == 2
    assert metric(server.port, "roberta_deploy_batch_size_sum", model="fake") == 5
    # Padded and real tokens: "first" alone, then the four (lengths + 2 specials), each batch padded to 16.
    assert metric(server.port, "roberta_deploy_batch_tokens_sum", model="fake") == 16 + 4 * 16
    assert metric(server.port, "roberta_deploy_batch_real_tokens_total", model="fake") == sum(
        len(text) + 2 for text in ["first", *texts])


def test_stop_answers_every_accepted_request_then_ends(start_server):
    gate = threading.Event()
    gate.set()
    server = start_server(gate=gate)
    server.wait_ready()
    gate.clear()
    in_flight = [Background(post_json, server.port, "/predict", {"inputs": f"text {n}"}) for n in range(3)]
    wait_until(lambda: metric(server.port, "roberta_deploy_requests_in_flight") == 3, "three requests in flight")
    stopper = Background(server.server.stop)
    stopper.result()
    assert server.server.state.draining
    gate.set()
    assert [request.result()[0] for request in in_flight] == [200, 200, 200]
    server.thread.join(30)
    assert not server.thread.is_alive()
    with pytest.raises(OSError):
        call(server.port, "GET", "/v2/health/live", timeout=5)


def test_several_models_each_with_their_own_batcher(start_server):
    server = start_server(names=("alpha", "beta"))
    server.wait_ready()
    status, _, body = post_json(server.port, "/models/beta/predict", {"inputs": "abc"})
    assert status == 200
    status, _, body = post_json(server.port, "/v2/models/alpha/infer", {"inputs": [
        {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["abc"]}]})
    assert status == 200 and body["model_name"] == "alpha"
    status, _, body = post_json(server.port, "/models/beta", {"inputs": "abc"})
    assert status == 200 and len(body[0]) == 2
    # Each engine: a warm-up text and the largest batch on each of its 2 contexts, then its own requests.
    assert len(server.engines["alpha"].calls) == 4 + 1 and len(server.engines["beta"].calls) == 4 + 2
    status, _, info = call(server.port, "GET", "/info")
    assert json.loads(info)["models"] == ["alpha", "beta"] and json.loads(info)["model_id"] == "alpha"


def test_a_bundle_that_fails_to_load_stops_the_server_with_its_error():
    from roberta_deploy.errors import BundleError
    from roberta_deploy.serve.options import BundleSpec, ServeOptions
    from roberta_deploy.serve.server import Server, bind

    def fail_to_load(spec, options):
        raise BundleError("model.bin does not match its manifest hash", "rebuild the bundle")

    server = Server(ServeOptions(bundles=(BundleSpec("broken", path=None),)), open_model=fail_to_load)
    sock = bind("127.0.0.1", 0)
    run = Background(server.run, sock)
    with pytest.raises(BundleError, match="manifest hash"):
        run.result()
    with pytest.raises(OSError):
        call(server.port, "GET", "/v2/health/live", timeout=5)
