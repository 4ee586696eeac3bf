"""Sentence pairs and a cross-encoder served as text-embeddings-inference serves them: pairs on /predict,
POST /rerank, and pairs as two BYTES tensors on the Open Inference Protocol (tritonclient). A real
`roberta-deploy serve` subprocess over tiny task bundles; every answer is checked against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pytorch_logits
from serve_client import call, post_json
from test_serve import ServerProcess

from roberta_deploy.tasks import apply_function

pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install -e '.[serve]'")

QUERY = "房间干净吗"
TEXTS = ["房间干净整洁，床很舒服，前台服务热情。", "隔音太差了，一晚上没睡好。", "位置不错", "早餐一般，价格偏贵，不会再来。"]
PAIRS = [(QUERY, text) for text in TEXTS]
TOLERANCE = 2e-3  # fp32 engine against PyTorch, after softmax/sigmoid


@pytest.fixture(scope="module")
def server(task_bundle_factory):
    process = ServerProcess("--bundle", f"nli={task_bundle_factory('pairs', 'bert')}",
                            "--bundle", f"rerank={task_bundle_factory('cross-encoder', 'roberta')}",
                            "--max-client-batch-size", "8")
    process.wait_ready()
    yield process
    assert process.stop() == 0


def test_pairs_on_predict_get_every_label_scored_as_pytorch(server, task_checkpoints):
    expected = apply_function(pytorch_logits(task_checkpoints[("pairs", "bert")], PAIRS), "softmax")
    names = ["entailment", "neutral", "contradiction"]
    status, headers, body = post_json(server.port, "/models/nli/predict",
                                      {"inputs": [[a, b] for a, b in PAIRS] + [[TEXTS[0]]]})
    assert status == 200 and len(body) == len(PAIRS) + 1 and int(headers["x-compute-tokens"]) > 0
    for answer, row in zip(body, expected):
        assert [entry["label"] for entry in answer] == [names[index] for index in np.argsort(-row, kind="stable")]
        assert {entry["label"]: entry["score"] for entry in answer} == pytest.approx(dict(zip(names, row.tolist())),
                                                                                     abs=TOLERANCE)
    status, _, single = post_json(server.port, "/models/nli/predict", {"inputs": [[PAIRS[1][0], PAIRS[1][1]]]})
    assert status == 200 and single[0] == body[1]
    status, _, raw = post_json(server.port, "/models/nli/predict", {"inputs": [list(PAIRS[0])], "raw_scores": True})
    logits = pytorch_logits(task_checkpoints[("pairs", "bert")], PAIRS)[0]
    assert {entry["label"]: entry["score"] for entry in raw[0]} == pytest.approx(dict(zip(names, logits.tolist())),
                                                                                 abs=TOLERANCE)


def test_hugging_face_route_takes_text_pair_dicts_as_the_pipeline_does(server, monkeypatch):
    """{"inputs": {"text", "text_pair"}} and a list of such dicts, by raw HTTP and through the unmodified
    InferenceClient (its text_classification passes a dict through as `inputs`): /predict's scores."""
    from huggingface_hub import InferenceClient, constants

    _, _, tei = post_json(server.port, "/models/nli/predict", {"inputs": [list(pair) for pair in PAIRS]})
    expected = [{entry["label"]: entry["score"] for entry in answer} for answer in tei]
    status, _, one = post_json(server.port, "/models/nli", {"inputs": {"text": PAIRS[0][0], "text_pair": PAIRS[0][1]}})
    assert status == 200 and len(one) == 1
    assert {entry["label"]: entry["score"] for entry in one[0]} == pytest.approx(expected[0], abs=1e-6)
    status, _, many = post_json(server.port, "/models/nli", {"inputs": [{"text": a, "text_pair": b} for a, b in PAIRS]
                                                              + [{"text": TEXTS[0]}]})
    assert status == 200 and len(many) == len(PAIRS) + 1
    for answer, scores in zip(many, expected):
        assert [entry["label"] for entry in answer] == sorted(scores, key=scores.get, reverse=True)
        assert {entry["label"]: entry["score"] for entry in answer} == pytest.approx(scores, abs=1e-6)
    _, _, single = post_json(server.port, "/models/nli/predict", {"inputs": TEXTS[0]})
    assert {entry["label"]: entry["score"] for entry in many[-1]} == pytest.approx(
        {entry["label"]: entry["score"] for entry in single}, abs=1e-6)  # no text_pair: one text

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the client talks to 127.0.0.1 only
    client = InferenceClient(model=f"http://127.0.0.1:{server.port}/models/nli", timeout=30)
    answer = client.text_classification({"text": PAIRS[1][0], "text_pair": PAIRS[1][1]}, top_k=2)
    assert [item.label for item in answer] == sorted(expected[1], key=expected[1].get, reverse=True)[:2]
    assert [item.score for item in answer] == pytest.approx([expected[1][item.label] for item in answer], abs=1e-6)


@pytest.mark.parametrize("inputs, fragment", [
    ({"text": QUERY, "pair": TEXTS[0]}, "a text pair dict has keys ['pair', 'text']"),
    ([[QUERY, TEXTS[0]]], "item 0 is a list; a text pair is an object here"),
    ({"text": QUERY, "text_pair": "  "}, "item 0 is empty"),
    ({"text": QUERY, "text_pair": 3}, "item 0 is int, not a string"),
])
def test_hugging_face_route_refuses_malformed_pairs(server, inputs, fragment):
    status, _, answer = post_json(server.port, "/models/nli", {"inputs": inputs})
    assert status == 422 and fragment in answer["error"] and set(answer) == {"error"}


def test_rerank_answers_as_text_embeddings_inference(server, task_checkpoints):
    logits = pytorch_logits(task_checkpoints[("cross-encoder", "roberta")], PAIRS)[:, 0]
    status, headers, body = post_json(server.port, "/models/rerank/rerank", {"query": QUERY, "texts": TEXTS})
    assert status == 200 and headers["x-inference-time"].isdigit()
    assert [rank["index"] for rank in body] == np.argsort(-logits, kind="stable").tolist()
    assert all(set(rank) == {"index", "score"} for rank in body)  # no text unless return_text
    assert [rank["score"] for rank in body] == pytest.approx((1 / (1 + np.exp(-logits)))[[r["index"] for r in body]]
                                                             .tolist(), abs=TOLERANCE)
    status, _, raw = post_json(server.port, "/models/rerank/rerank", {"query": QUERY, "texts": TEXTS,
                                                                      "raw_scores": True, "return_text": True,
                                                                      "truncate": True})
    assert [rank["text"] for rank in raw] == [TEXTS[rank["index"]] for rank in raw]
    assert [rank["score"] for rank in raw] == pytest.approx(logits[[r["index"] for r in raw]].tolist(), abs=TOLERANCE)
    # /predict on a one-logit model: its one label with the sigmoid, as TEI answers it.
    status, _, predicted = post_json(server.port, "/models/rerank/predict", {"inputs": [list(PAIRS[0])]})
    assert predicted[0] == [{"label": "LABEL_0", "score": pytest.approx(float(1 / (1 + np.exp(-logits[0]))),
                                                                        abs=TOLERANCE)}]
    # Hugging Face's shape takes the model's own function, as the pipeline does: the sigmoid here too.
    _, _, tei_single = post_json(server.port, "/models/rerank/predict", {"inputs": TEXTS[0]})
    status, _, hf_single = post_json(server.port, "/models/rerank", {"inputs": TEXTS[0]})
    assert status == 200 and hf_single[0][0]["score"] == pytest.approx(tei_single[0]["score"], abs=1e-6)
    assert 0 < hf_single[0][0]["score"] < 1
    status, _, info = call(server.port, "GET", "/models/rerank/info")
    assert status == 200 and b'"reranker"' in info and b'"text_pairs":true' in info


def test_truncation_direction_left_keeps_the_end_of_long_texts_as_transformers_truncation_side(server,
                                                                                                task_checkpoints):
    """TEI's truncation_direction on /predict and /rerank: "left" (or "Left") scores what transformers scores
    with truncation_side="left"; "right" and leaving it out score the start, as before."""
    long_text = "".join(TEXTS) * 6  # past the bundles' 128 tokens
    pairs = [(QUERY, long_text), (long_text, TEXTS[1]), (long_text, long_text[::-1])]
    nli = task_checkpoints[("pairs", "bert")]
    for direction in ("left", "Left", "right", None):
        side = "right" if direction is None else direction.lower()
        expected = apply_function(np.concatenate([pytorch_logits(nli, pairs, truncation_side=side),
                                                  pytorch_logits(nli, [long_text], truncation_side=side)]), "softmax")
        body = {"inputs": [list(pair) for pair in pairs] + [long_text]}
        if direction is not None:
            body["truncation_direction"] = direction
        status, _, answers = post_json(server.port, "/models/nli/predict", body)
        assert status == 200, answers
        for answer, row in zip(answers, expected):
            assert [entry["score"] for entry in sorted(answer, key=lambda entry: entry["label"])] == pytest.approx(
                [row[index] for index in np.argsort(["entailment", "neutral", "contradiction"])], abs=TOLERANCE)
    # The tiny random models score both ends almost alike; test_serve_app tells them apart with the fake engine.
    texts = [long_text, long_text[::-1], TEXTS[2]]
    logits = pytorch_logits(task_checkpoints[("cross-encoder", "roberta")], [(QUERY, text) for text in texts],
                            truncation_side="left")[:, 0]
    status, _, ranks = post_json(server.port, "/models/rerank/rerank", {"query": QUERY, "texts": texts,
                                                                        "truncation_direction": "left",
                                                                        "raw_scores": True})
    assert status == 200 and [rank["index"] for rank in ranks] == np.argsort(-logits, kind="stable").tolist()
    assert [rank["score"] for rank in ranks] == pytest.approx(logits[[rank["index"] for rank in ranks]].tolist(),
                                                              abs=TOLERANCE)
    status, _, refused = post_json(server.port, "/models/nli/predict", {"inputs": long_text, "truncate": False,
                                                                        "truncation_direction": "left"})
    assert status == 422 and "longer than the model's 128 tokens" in refused["error"]


def test_equal_scores_rank_in_teis_order():
    """TEI sorts ascending (stable) and reverses: of equal scores, the later index comes first."""
    from roberta_deploy.serve.options import Limits
    from roberta_deploy.serve.tei import format_rerank, parse_rerank

    request = parse_rerank({"query": "q", "texts": ["a", "b", "c", "d"]}, Limits(), label_count=1)
    ranks = format_rerank(request, np.array([[0.5], [2.0], [0.5], [0.5]], dtype=np.float32))
    assert [rank["index"] for rank in ranks] == [1, 3, 2, 0]


@pytest.mark.parametrize("body, status, error_type, fragment", [
    ({"query": QUERY, "texts": []}, 400, "Empty", "`texts` cannot be empty"),
    ({"query": QUERY, "texts": TEXTS * 3}, 422, "Validation", "12 texts, past the limit of 8"),
    ({"query": QUERY, "texts": ["  "]}, 422, "Validation", "item 0 is empty"),
    ({"query": QUERY, "texts": TEXTS, "truncation_direction": "up"}, 422, "Validation", '"up" is not right or left'),
    ({"query": 3, "texts": TEXTS}, 422, "Validation", "`query` is int"),
])
def test_rerank_errors_have_teis_status_and_error_type(server, body, status, error_type, fragment):
    got, _, answer = post_json(server.port, "/models/rerank/rerank", body)
    assert (got, answer["error_type"]) == (status, error_type) and fragment in answer["error"]
    got, _, answer = post_json(server.port, "/models/nli/rerank", {"query": QUERY, "texts": TEXTS})
    assert (got, answer["error_type"]) == (424, "Backend") and "not a re-ranker" in answer["error"]


def test_tritonclient_sends_pairs_as_two_bytes_tensors(server, task_checkpoints):
    import tritonclient.http as triton

    expected = pytorch_logits(task_checkpoints[("pairs", "bert")], PAIRS)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}", network_timeout=30.0)
    metadata = client.get_model_metadata("nli")
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["text", "text_pair"]
    for binary in (True, False):
        first = triton.InferInput("text", [len(PAIRS)], "BYTES")
        first.set_data_from_numpy(np.array([a.encode() for a, _ in PAIRS], dtype=np.object_), binary_data=binary)
        second = triton.InferInput("text_pair", [len(PAIRS)], "BYTES")
        second.set_data_from_numpy(np.array([b.encode() for _, b in PAIRS], dtype=np.object_), binary_data=binary)
        for inputs in ([first, second], [second, first]):  # either order
            result = client.infer("nli", inputs, outputs=[triton.InferRequestedOutput("logits", binary_data=binary)])
            assert np.abs(result.as_numpy("logits") - expected).max() <= TOLERANCE
    short = triton.InferInput("text_pair", [1], "BYTES")
    short.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(triton.InferenceServerException, match="one text_pair per text"):
        client.infer("nli", [first, short])
    client.close()
