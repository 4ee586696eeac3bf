"""`roberta-deploy serve --grpc-port 0` on a tiny real bundle: gRPC, Triton's extensions, KServe v1,
/openapi.json and /docs, process metrics, each through the client its users run where one exists, and
every answer compared with the HTTP routes' and the engine's own. One server serves the module."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from kserve_client import run_kserve_client
from serve_client import call, post_json, wait_until
from test_serve import AUTH, KEY, ServerProcess

from roberta_deploy.data import read_dataset
from roberta_deploy.runtime.engine import Engine

grpcclient = pytest.importorskip("tritonclient.grpc",
                                 reason="tritonclient.grpc needs grpcio: pip install -e '.[serve]'")
import tritonclient.http as httpclient  # noqa: E402

GRPC_LISTENING = re.compile(r"gRPC .* listening on 127\.0\.0\.1:(\d+)")
GRPC_AUTH = {"authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def texts(dev_tsv) -> list[str]:
    return read_dataset(dev_tsv).texts[:6]


@pytest.fixture(scope="module")
def bundle(bundle_factory):
    return bundle_factory("openvino", "fp32")


@pytest.fixture(scope="module")
def reference(bundle, texts):
    return Engine.load(bundle).predict(texts)


@pytest.fixture(scope="module")
def server(bundle):
    process = ServerProcess("--bundle", f"tiny={bundle}", "--grpc-port", "0", env={"ROBERTA_DEPLOY_API_KEY": KEY})
    process.wait_ready(AUTH)
    wait_until(lambda: GRPC_LISTENING.search("\n".join(process.lines)), "the gRPC port is printed")
    process.grpc_port = int(GRPC_LISTENING.search("\n".join(process.lines)).group(1))
    yield process
    assert process.stop() == 0  # SIGTERM: HTTP and gRPC drained, exit 0


def grpc_inputs(rows) -> list:
    columns = [rows] if isinstance(rows[0], str) else [[a for a, _ in rows], [b for _, b in rows]]
    inputs = []
    for name, column in zip(("text", "text_pair"), columns):
        tensor = grpcclient.InferInput(name, [len(column)], "BYTES")
        tensor.set_data_from_numpy(np.array([text.encode() for text in column], dtype=object))
        inputs.append(tensor)
    return inputs


def test_grpc_answers_as_http_and_the_engine(server, texts, reference):
    pairs = [(texts[0], texts[1]), (texts[2], texts[3])]
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as client:
        for rows in (texts, pairs):
            result = client.infer("tiny", grpc_inputs(rows), headers=GRPC_AUTH)
            inputs = [{"name": tensor.name(), "shape": [len(rows)], "datatype": "BYTES",
                       "data": [row if isinstance(row, str) else row[index] for row in rows]}
                      for index, tensor in enumerate(grpc_inputs(rows))]
            status, _, body = post_json(server.port, "/v2/models/tiny/infer", {"inputs": inputs}, AUTH)
            assert status == 200
            http = {output["name"]: output["data"] for output in body["outputs"]}
            assert result.as_numpy("logits").ravel().tolist() == http["logits"]
            assert result.as_numpy("probabilities").ravel().tolist() == http["probabilities"]
            assert [label.decode() for label in result.as_numpy("label")] == http["label"]
            if rows is texts:
                np.testing.assert_allclose(result.as_numpy("logits"), reference.logits, atol=1e-4)
        assert client.is_model_ready("tiny", headers=GRPC_AUTH)


def test_kserve_grpc_client_answers_as_http(server, texts):
    pairs = [[texts[0], texts[1]], [texts[2], texts[3]]]
    answers = run_kserve_client(server.grpc_port, '''
        async def main():
            headers = (("authorization", "Bearer " + KEY),)
            async with InferenceGRPCClient(URL, timeout=60) as client:
                result = {"texts": outputs(await client.infer(request(%r, "tiny"), headers=headers)),
                          "pairs": outputs(await client.infer(request(%r, "tiny"), headers=headers))}
            print(json.dumps(result, default=lambda value: value.decode()))
        asyncio.run(main())
    ''' % (texts, [tuple(pair) for pair in pairs]), KEY)
    for rows, key in ((texts, "texts"), (pairs, "pairs")):
        columns = [rows] if key == "texts" else [[a for a, _ in rows], [b for _, b in rows]]
        inputs = [{"name": name, "shape": [len(column)], "datatype": "BYTES", "data": column}
                  for name, column in zip(("text", "text_pair"), columns)]
        status, _, body = post_json(server.port, "/v2/models/tiny/infer", {"inputs": inputs}, AUTH)
        assert status == 200
        http = {output["name"]: output["data"] for output in body["outputs"]}
        got = answers[key]
        assert np.ravel(got["logits"]).tolist() == http["logits"]
        assert np.ravel(got["probabilities"]).tolist() == http["probabilities"]
        assert got["label"] == http["label"]


def test_tritonclient_http_config_statistics_and_index(server, texts):
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    config = client.get_model_config("tiny", headers=AUTH)
    assert config["name"] == "tiny" and config["platform"] == "roberta-deploy_openvino"
    assert config["parameters"]["precision"]["string_value"] == "fp32"
    before = client.get_inference_statistics("tiny", headers=AUTH)["model_stats"][0]
    post_json(server.port, "/predict", {"inputs": texts[:3]}, AUTH)
    after = client.get_inference_statistics("", headers=AUTH)["model_stats"][0]
    assert after["name"] == "tiny"
    assert after["inference_stats"]["success"]["count"] == before["inference_stats"]["success"]["count"] + 1
    assert after["inference_count"] == before["inference_count"] + 3
    for stage in ("success", "queue", "compute_input", "compute_infer"):
        assert after["inference_stats"][stage]["ns"] > before["inference_stats"][stage]["ns"]
    assert after["execution_count"] > before["execution_count"]
    assert after["last_inference"] >= int(time.time() * 1000) - 60_000
    assert client.get_model_repository_index(headers=AUTH) == [{"name": "tiny", "version": "1", "state": "READY",
                                                                 "reason": ""}]
    with grpcclient.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as grpc_client:
        grpc_config = grpc_client.get_model_config("tiny", headers=GRPC_AUTH, as_json=True)["config"]
        assert grpc_config["name"] == config["name"] and grpc_config["max_batch_size"] == config["max_batch_size"]
        grpc_stats = grpc_client.get_inference_statistics("tiny", headers=GRPC_AUTH, as_json=True)["model_stats"][0]
        assert int(grpc_stats["inference_count"]) == after["inference_count"]


def test_kserve_v1_predict_is_shaped_as_the_huggingface_runtime(server, texts, reference):
    status, _, body = post_json(server.port, "/v1/models/tiny:predict", {"instances": texts}, AUTH)
    assert status == 200 and body == {"predictions": reference.labels.tolist()}
    status, _, body = post_json(server.port, "/v1/models/tiny:predict",
                                {"instances": texts[:2], "return_probabilities": True}, AUTH)
    assert status == 200
    for row, probabilities in zip(body["predictions"], reference.probabilities[:2]):
        assert list(row) == [str(index) for index in range(len(probabilities))]
        assert list(row.values()) == pytest.approx(probabilities.tolist(), abs=1e-4)
    status, _, body = post_json(server.port, "/v1/models/tiny:predict",
                                {"instances": [[texts[0], texts[1]]], "return_raw_logits": True}, AUTH)
    assert status == 200 and len(body["predictions"][0]) == len(reference.label_names)
    status, _, body = post_json(server.port, "/v1/models/tiny:predict", {"instances": "not a list"}, AUTH)
    assert status == 422 and "instances" in body["error"]
    status, _, body = post_json(server.port, "/v1/models/nope:predict", {"instances": texts}, AUTH)
    assert status == 404
    assert json.loads(call(server.port, "GET", "/v1/models/tiny", headers=AUTH)[2]) == {"name": "tiny", "ready": True}
    assert json.loads(call(server.port, "GET", "/v1/models", headers=AUTH)[2]) == {"models": ["tiny"]}


def test_kserve_rest_client_speaks_v1_to_serve(server, texts, reference):
    answers = run_kserve_client(server.port, '''
        async def main():
            headers = {"authorization": "Bearer " + KEY}
            client = InferenceRESTClient(RESTConfig(protocol="v1"))
            base = "http://" + URL
            result = {"live": await client.is_server_live(base),
                      "ready": await client.is_model_ready(base, "tiny", headers=headers),
                      "predict": await client.infer(base, {"instances": %r}, model_name="tiny", headers=headers)}
            try:
                await client.infer(base, {"instances": %r}, model_name="tiny")
            except Exception as error:
                result["no_key"] = error.response.status_code
            await client.close()
            print(json.dumps(result))
        asyncio.run(main())
    ''' % (texts, texts[:1]), KEY)
    assert answers["live"] and answers["ready"]
    assert answers["predict"] == {"predictions": reference.labels.tolist()}
    assert answers["no_key"] == 401


def test_metrics_have_process_figures(server):
    status, _, content = call(server.port, "GET", "/metrics", headers=AUTH)
    from roberta_deploy.serve.metrics import metric_value

    text = content.decode()
    assert status == 200
    assert metric_value(text, "process_resident_memory_bytes") > 10_000_000  # a real process, tens of MB at least
    assert metric_value(text, "process_open_fds") > 0 and metric_value(text, "process_cpu_seconds_total") > 0
