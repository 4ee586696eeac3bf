"""The gRPC Open Inference Protocol (serve/grpc_server.py) against the clients people run, unmodified:
tritonclient.grpc in this process, KServe's InferenceGRPCClient in a subprocess over the overlay of
scripts/kserve_overlay.sh (kserve pins an older protobuf than `dev`). One in-process server over the fake
engine (no weights) with an API key serves the module; the fake engine's gate holds compute, so a request is
cancelled or runs past its deadline while it waits in the batcher, without timing."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fake_engine import expected_logits
from kserve_client import run_kserve_client
from serve_client import Background, metric, post_json, wait_until

from roberta_deploy.serve.options import Limits

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")
grpcclient = pytest.importorskip("tritonclient.grpc",
                                 reason="tritonclient.grpc needs grpcio: pip install -e '.[serve]'")
# After the skip: fake_server imports the serve extra.
from fake_server import KEY, RunningServer, ServedFakeEngine, softmax  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

AUTH = {"authorization": f"Bearer {KEY}"}
HTTP_AUTH = {"Authorization": f"Bearer {KEY}"}
TEXTS = ["酒店很干净", "a longer text here", "ok"]
PAIRS = [("房间干净吗", "很干净"), ("位置", "不错的地段")]


@pytest.fixture(scope="module")
def server():
    gate = threading.Event()
    gate.set()
    running = RunningServer(contexts=1, gate=gate, api_key=KEY, grpc_port=0,
                            limits=Limits(max_client_batch_size=4, max_input_chars=50))
    running.wait_ready(headers=HTTP_AUTH)
    wait_until(lambda: running.server.grpc_port is not None, "gRPC listens")
    running.grpc_url = f"127.0.0.1:{running.server.grpc_port}"
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as triton:
        yield triton


def text_inputs(rows) -> list:
    """tritonclient's inputs for texts ([n, 1] BYTES `text`) or pairs (and `text_pair`)."""
    columns = [rows] if isinstance(rows[0], str) else [[a for a, _ in rows], [b for _, b in rows]]
    inputs = []
    for name, column in zip(("text", "text_pair"), columns):
        tensor = grpcclient.InferInput(name, [len(column), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[text.encode()] for text in column], dtype=object))
        inputs.append(tensor)
    return inputs


def http_v2(server, rows) -> dict:
    """The same rows through the HTTP v2 route, as JSON."""
    columns = [rows] if isinstance(rows[0], str) else [[a for a, _ in rows], [b for _, b in rows]]
    inputs = [{"name": name, "shape": [len(column)], "datatype": "BYTES", "data": column}
              for name, column in zip(("text", "text_pair"), columns)]
    status, _, body = post_json(server.port, "/v2/models/fake/infer", {"inputs": inputs}, HTTP_AUTH)
    assert status == 200, body
    return {output["name"]: output for output in body["outputs"]}


@pytest.mark.parametrize("rows", [TEXTS, PAIRS], ids=["texts", "pairs"])
def test_tritonclient_grpc_classifies_as_the_http_route_does(server, client, rows):
    result = client.infer("fake", text_inputs(rows), headers=AUTH, request_id="r-1")
    logits = result.as_numpy("logits")
    np.testing.assert_allclose(logits, expected_logits(rows), rtol=1e-6)
    labels = [label.decode() for label in result.as_numpy("label").ravel()]
    assert labels == [("short", "long")[index] for index in expected_logits(rows).argmax(axis=1)]
    np.testing.assert_allclose(result.as_numpy("probabilities"), softmax(expected_logits(rows)), rtol=1e-5)
    assert result.get_response().id == "r-1"
    http = http_v2(server, rows)
    assert logits.ravel().tolist() == http["logits"]["data"]  # the same float32 values, bit for bit
    assert result.as_numpy("probabilities").ravel().tolist() == http["probabilities"]["data"]
    assert labels == http["label"]["data"]
    only = client.infer("fake", text_inputs(rows), outputs=[grpcclient.InferRequestedOutput("label")], headers=AUTH)
    assert [output.name for output in only.get_response().outputs] == ["label"]


def test_tritonclient_grpc_health_and_metadata(server, client):
    assert client.is_server_live() and client.is_server_ready(headers=AUTH)
    assert client.is_model_ready("fake", headers=AUTH)
    metadata = client.get_server_metadata(headers=AUTH)
    assert metadata.name == "roberta-deploy" and "statistics" in metadata.extensions
    model = client.get_model_metadata("fake", headers=AUTH, as_json=True)
    assert [tensor["name"] for tensor in model["inputs"]] == ["text"]
    assert [tensor["name"] for tensor in model["outputs"]] == ["logits", "probabilities", "label"]
    assert model["platform"] == "roberta-deploy_fake"


def grpc_error(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_grpc_errors_come_from_the_one_table(server, client):
    before = metric(server.port, "roberta_deploy_requests_total", headers=HTTP_AUTH, outcome="validation")
    error = grpc_error(lambda: client.infer("fake", text_inputs(TEXTS)))  # no key
    assert error.status() == "StatusCode.UNAUTHENTICATED" and "--api-key" in error.message()
    error = grpc_error(lambda: client.infer("nope", text_inputs(TEXTS), headers=AUTH))
    assert error.status() == "StatusCode.NOT_FOUND" and "fake" in error.message()
    error = grpc_error(lambda: client.infer("fake", text_inputs(TEXTS * 2), headers=AUTH))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "--max-client-batch-size" in error.message()
    wrong_type = grpcclient.InferInput("text", [1], "FP32")
    wrong_type.set_data_from_numpy(np.zeros(1, dtype=np.float32))
    error = grpc_error(lambda: client.infer("fake", [wrong_type], headers=AUTH))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "BYTES" in error.message()
    error = grpc_error(lambda: client.infer("fake", text_inputs(["x" * 60]), headers=AUTH))
    assert error.status() == "StatusCode.INVALID_ARGUMENT" and "--max-input-chars" in error.message()
    # Counted under the gRPC method, as HTTP's under its route (the unknown model under "unknown").
    after = metric(server.port, "roberta_deploy_requests_total", headers=HTTP_AUTH, outcome="validation")
    assert after - before == 4
    assert metric(server.port, "roberta_deploy_requests_total", headers=HTTP_AUTH, outcome="unauthorized",
                  route="/inference.GRPCInferenceService/ModelInfer") >= 1


def test_a_cancelled_or_late_rpc_is_dropped_before_compute(server, client):
    engine, gate = server.engine, server.gate
    dropped = metric(server.port, "roberta_deploy_batcher_dropped_total", headers=HTTP_AUTH, model="fake")
    submitted = metric(server.port, "roberta_deploy_batcher_requests_total", headers=HTTP_AUTH, model="fake")
    calls = len(engine.calls)
    gate.clear()
    try:
        computing = Background(post_json, server.port, "/predict", {"inputs": "computing"}, HTTP_AUTH)
        wait_until(lambda: len(engine.calls) == calls + 1, "the first request is inside the engine")
        # A deadline that passes while the texts wait for the held context.
        error = grpc_error(lambda: client.infer("fake", text_inputs(["late"]), headers=AUTH, client_timeout=0.5))
        assert error.status() == "StatusCode.DEADLINE_EXCEEDED"
        # An RPC its client cancels while it waits.
        answers = []
        context = client.async_infer("fake", text_inputs(["cancelled"]), lambda result, error: answers.append(error),
                                     headers=AUTH)
        # Submitted: "computing", "late" and this one (the queue alone may still hold "late" at this point).
        wait_until(lambda: metric(server.port, "roberta_deploy_batcher_requests_total", headers=HTTP_AUTH,
                                  model="fake") == submitted + 3, "the cancelled request waits in the batcher")
        context.cancel()
        wait_until(lambda: metric(server.port, "roberta_deploy_requests_total", headers=HTTP_AUTH, outcome="dropped",
                                  route="/inference.GRPCInferenceService/ModelInfer") == 2,
                   "the server notices the deadline and the cancellation")
    finally:
        gate.set()
    assert computing.result()[0] == 200
    wait_until(lambda: metric(server.port, "roberta_deploy_batcher_dropped_total", headers=HTTP_AUTH,
                              model="fake") == dropped + 2, "the batcher drops both")
    computed = [row for call_ in engine.calls[calls:] for row in call_["rows"]]
    assert len(computed) == 1  # "computing" only: neither dropped text reached the engine


def test_triton_config_statistics_and_index_over_grpc_and_http(server, client):
    client.infer("fake", text_inputs(TEXTS), headers=AUTH)
    config = client.get_model_config("fake", headers=AUTH, as_json=True)["config"]
    assert config["name"] == "fake" and config["max_batch_size"] == 4
    assert [tensor["name"] for tensor in config["input"]] == ["text"]
    assert config["instance_group"][0]["count"] == 1 and config["instance_group"][0]["kind"] == "KIND_CPU"
    assert int(config["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    stats = client.get_inference_statistics("fake", headers=AUTH, as_json=True)["model_stats"][0]
    inference = stats["inference_stats"]
    successes = int(inference["success"]["count"])
    assert successes >= 1 and int(inference["success"]["ns"]) > 0
    assert int(inference["queue"]["count"]) == successes and int(inference["compute_infer"]["ns"]) > 0
    assert int(stats["inference_count"]) >= len(TEXTS) and int(stats["execution_count"]) >= 1
    batch_rows = sum(int(batch["batch_size"]) * int(batch["compute_infer"]["count"]) for batch in stats["batch_stats"])
    assert batch_rows >= int(stats["inference_count"])  # warm-up batches are counted too
    index = client.get_model_repository_index(headers=AUTH, as_json=True)["models"]
    assert index == [{"name": "fake", "version": "1", "state": "READY"}]  # protobuf's JSON leaves out ""
    # HTTP says the same, one more request later.
    status, _, http_stats = post_json(server.port, "/v2/repository/index", {}, HTTP_AUTH)
    assert status == 200 and http_stats[0]["state"] == "READY"


def test_kserve_grpc_client_classifies_texts_and_pairs_and_gets_errors(server):
    answers = run_kserve_client(server.server.grpc_port, '''
        async def main():
            headers = (("authorization", "Bearer " + KEY),)
            async with InferenceGRPCClient(URL, timeout=30) as client:
                result = {"ready": await client.is_server_ready(headers=headers),
                          "model_ready": await client.is_model_ready("fake", headers=headers),
                          "texts": outputs(await client.infer(request(%r), headers=headers)),
                          "pairs": outputs(await client.infer(request(%r), headers=headers)),
                          "no_key": await code_of(client.infer(request(["x"]))),
                          "unknown": await code_of(client.infer(request(["x"], "nope"), headers=headers))}
            print(json.dumps(result, default=lambda value: value.decode()))
        asyncio.run(main())
    ''' % (TEXTS, PAIRS), KEY)
    assert answers["ready"] and answers["model_ready"]
    for rows, key in ((TEXTS, "texts"), (PAIRS, "pairs")):
        http = http_v2(server, rows)
        got = answers[key]
        assert np.ravel(got["logits"]).tolist() == http["logits"]["data"]
        assert np.ravel(got["probabilities"]).tolist() == http["probabilities"]["data"]
        assert got["label"] == http["label"]["data"]
    assert answers["no_key"] == "UNAUTHENTICATED" and answers["unknown"] == "NOT_FOUND"


def test_kserve_grpc_client_deadline_drops_the_texts(server):
    engine, gate = server.engine, server.gate
    dropped = metric(server.port, "roberta_deploy_batcher_dropped_total", headers=HTTP_AUTH, model="fake")
    submitted = metric(server.port, "roberta_deploy_batcher_requests_total", headers=HTTP_AUTH, model="fake")
    calls = len(engine.calls)
    gate.clear()
    try:
        computing = Background(post_json, server.port, "/predict", {"inputs": "computing"}, HTTP_AUTH)
        wait_until(lambda: len(engine.calls) == calls + 1, "the first request is inside the engine")
        answers = run_kserve_client(server.server.grpc_port, '''
            async def main():
                headers = (("authorization", "Bearer " + KEY),)
                async with InferenceGRPCClient(URL) as client:
                    print(json.dumps({"late": await code_of(client.infer(request(["late"]), timeout=0.5,
                                                                         headers=headers))}))
            asyncio.run(main())
        ''', KEY)
        assert answers["late"] == "DEADLINE_EXCEEDED"
    finally:
        gate.set()
    assert computing.result()[0] == 200
    wait_until(lambda: metric(server.port, "roberta_deploy_batcher_dropped_total", headers=HTTP_AUTH,
                              model="fake") == dropped + 1, "the batcher drops the late request")
    assert len([row for call_ in engine.calls[calls:] for row in call_["rows"]]) == 1


def test_grpc_overload_and_drain_answer_unavailable_and_finish_what_was_accepted():
    gate = threading.Event()
    gate.set()
    running = RunningServer(contexts=1, gate=gate, grpc_port=0,
                            limits=Limits(max_concurrent_requests=1, payload_limit=2000))
    try:
        running.wait_ready()
        wait_until(lambda: running.server.grpc_port is not None, "gRPC listens")
        with grpcclient.InferenceServerClient(f"127.0.0.1:{running.server.grpc_port}") as triton:
            # --payload-limit is gRPC's message limit: refused before any handler runs.
            error = grpc_error(lambda: triton.infer("fake", text_inputs(["x" * 3000]), client_timeout=30))
            assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
            warm_up_calls = len(running.engine.calls)
            gate.clear()
            answers = []
            triton.async_infer("fake", text_inputs(["held"]), lambda result, error: answers.append((result, error)))
            wait_until(lambda: len(running.engine.calls) == warm_up_calls + 1, "the held request is inside the engine")
            error = grpc_error(lambda: triton.infer("fake", text_inputs(["more"]), client_timeout=30))
            assert error.status() == "StatusCode.UNAVAILABLE" and "--max-concurrent-requests" in error.message()
            stopping = Background(running.server.stop)
            wait_until(lambda: running.server.state.draining, "the server drains")
            error = grpc_error(lambda: triton.infer("fake", text_inputs(["late"]), client_timeout=30))
            assert error.status() == "StatusCode.UNAVAILABLE"
            assert not answers  # the accepted RPC is still waiting for the engine
            gate.set()
            wait_until(lambda: answers, "the accepted RPC is answered")
            result, failure = answers[0]
            assert failure is None
            np.testing.assert_allclose(result.as_numpy("logits"), expected_logits(["held"]), rtol=1e-6)
            stopping.result()
        running.thread.join(30)
        assert not running.thread.is_alive(), "the server did not stop"
    finally:
        running.stop()


def test_grpc_port_flags_are_checked_before_anything_starts():
    import socket

    from roberta_deploy.cli.serving_flags import RayFlags
    from roberta_deploy.errors import UsageError
    from roberta_deploy.serve.options import BundleSpec, ServeOptions
    from roberta_deploy.serve.server import Server, bind, served_model

    spec = (BundleSpec("fake", path=None),)
    with pytest.raises(UsageError, match="--grpc-port 8080 is also --port"):
        ServeOptions(bundles=spec, port=8080, grpc_port=8080)
    with pytest.raises(UsageError, match="--grpc-port 70000 is not a TCP port"):
        ServeOptions(bundles=spec, grpc_port=70000)
    flags = dict.fromkeys(("address", "replicas", "autoscale", "replica_cpus", "target_ongoing_requests",
                           "bundle_cache"))
    with pytest.raises(UsageError, match="--grpc-port is not served on Ray"):
        RayFlags({**flags, "on_ray": True}).options(ServeOptions(bundles=spec, port=8000, grpc_port=8001))
    # A gRPC port another program holds: a one-line error naming the flag, raised by Server.run.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        engine = ServedFakeEngine()
        server = Server(ServeOptions(bundles=spec, grpc_port=taken.getsockname()[1]),
                        open_model=lambda bundle, options: served_model(bundle.name, engine, options))
        running = Background(server.run, bind("127.0.0.1", 0))
        with pytest.raises(UsageError, match="cannot listen for gRPC on 127.0.0.1") as caught:
            running.result()
        assert "pass another --grpc-port" in caught.value.one_line()
