import threading

import numpy as np
import pytest

from roberta_deploy.runtime.batching import online_lengths, plan_batches
from roberta_deploy.data import read_dataset
from roberta_deploy.runtime import Batcher, Prediction
from roberta_deploy.runtime.engine import Engine, default_contexts
from roberta_deploy.errors import InputDataError, ShapeError, UsageError
from roberta_deploy.precision import TOLERANCES


@pytest.fixture(scope="module")
def dev_texts(samples_tsv):
    return read_dataset(samples_tsv).texts[:150]


@pytest.fixture(scope="module")
def reference_logits(bundle_factory, dev_texts):
    """One text per call, no padding at all: the order-free ground truth."""
    engine = Engine.load(bundle_factory("onnxruntime", "fp32"))
    context = engine.create_context()
    rows = []
    for text in dev_texts:
        inputs = engine.encoder.encode_padded([text])
        rows.append(context.run(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)[0])
    return np.stack(rows)


@pytest.mark.parametrize("batch_size", [1, 7, 32])
@pytest.mark.parametrize("bucketing", [True, False])
def test_predictions_come_back_in_input_order(bundle_factory, dev_texts, reference_logits, batch_size, bucketing):
    engine = Engine.load(bundle_factory("onnxruntime", "fp32"))
    predictions = engine.predict(dev_texts, batch_size=batch_size, bucketing=bucketing)
    assert predictions.logits.shape == (len(dev_texts), 2)
    assert np.abs(predictions.logits - reference_logits).max() <= TOLERANCES["fp32"].absolute
    assert (predictions.labels == reference_logits.argmax(1)).all()


def test_bucketing_changes_no_prediction_beyond_tolerance_at_int8(bundle_factory, dev_texts):
    engine = Engine.load(bundle_factory("openvino", "int8"))
    bucketed = engine.predict(dev_texts, batch_size=16, max_batch_tokens=512)
    padded = engine.predict(dev_texts, batch_size=16, bucketing=False)
    bound = TOLERANCES["int8"].bound(padded.logits)
    assert np.abs(bucketed.logits - padded.logits).max() <= bound


def test_contexts_run_concurrently_from_threads(bundle_factory, dev_texts, reference_logits):
    engine = Engine.load(bundle_factory("openvino", "fp32"), contexts=2)
    results, errors = {}, []

    def worker(number):
        try:
            context = engine.create_context()
            for start in range(number * 10, len(dev_texts), 20):
                inputs = engine.encoder.encode_padded(dev_texts[start:start + 10])
                results[start] = context.run(inputs.input_ids, inputs.attention_mask, inputs.token_type_ids)
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(number,)) for number in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    logits = np.concatenate([results[start] for start in sorted(results)])
    assert np.abs(logits - reference_logits).max() <= TOLERANCES["fp32"].absolute


def test_the_batcher_feeds_several_contexts_in_order(bundle_factory, dev_texts, reference_logits):
    engine = Engine.load(bundle_factory("openvino", "fp32"), contexts=2)
    with Batcher(engine, contexts=2) as batcher:
        predictions = batcher.run(dev_texts, batch_size=7)
    assert np.abs(predictions.logits - reference_logits).max() <= TOLERANCES["fp32"].absolute


def test_concurrent_submits_on_a_real_bundle_match_the_reference(bundle_factory, dev_texts, reference_logits):
    engine = Engine.load(bundle_factory("openvino", "fp32"), contexts=2)
    with Batcher(engine, max_wait_ms=1) as batcher:
        futures = [(start, batcher.submit(dev_texts[start:start + 5])) for start in range(0, len(dev_texts), 5)]
        results = {start: future.result(timeout=60) for start, future in futures}
    logits = np.concatenate([results[start].logits for start in sorted(results)])
    assert np.abs(logits - reference_logits).max() <= TOLERANCES["fp32"].absolute


def test_online_padding_changes_no_prediction_beyond_tolerance_at_int8(bundle_factory, dev_texts):
    # Online batches are padded past their longest text (to a few lengths) and cut to a few row counts:
    # with the attention mask, the extra [PAD]s must not move any logit past the int8 tolerance.
    engine = Engine.load(bundle_factory("openvino", "int8"), contexts=2)
    context = engine.create_context()
    alone = np.concatenate([context.run(*engine.encoder.encode_padded([text]).as_feeds(
        ("input_ids", "attention_mask", "token_type_ids")).values()) for text in dev_texts])
    shapes = []
    with Batcher(engine, max_wait_ms=2) as batcher:
        batcher.add_batch_listener(lambda stats: shapes.append((stats.rows, stats.padded_length)))
        futures = [(start, batcher.submit(dev_texts[start:start + 3])) for start in range(0, len(dev_texts), 3)]
        results = {start: future.result(timeout=60) for start, future in futures}
    served = np.concatenate([results[start].logits for start in sorted(results)])
    lengths = online_lengths(engine.max_seq_length)
    assert {padded for _, padded in shapes} <= set(lengths)
    assert set(engine.encoder.encode(dev_texts).lengths.tolist()) - set(lengths)  # so most rows were padded
    assert np.abs(served - alone).max() <= TOLERANCES["int8"].bound(alone)


def test_contexts_share_one_full_batch_of_tokens_by_default(bundle_factory):
    engine = Engine.load(bundle_factory("openvino", "fp32"), contexts=2)
    long_texts = ["好" * 300] * 12  # every one truncated to max_seq_length
    for contexts, rows_allowed in ((1, 8), (2, 4)):
        rows_seen: list[int] = []
        with Batcher(engine, contexts=contexts) as batcher:
            batcher.run(long_texts, batch_size=8, on_batch_done=rows_seen.append)
        assert sum(rows_seen) == 12 and max(rows_seen) == rows_allowed


def test_predict_takes_one_string_as_one_text_and_holds_no_batcher(bundle_factory, dev_texts, reference_logits):
    engine = Engine.load(bundle_factory("onnxruntime", "fp32"))
    single = engine.predict(dev_texts[0])
    assert isinstance(single, Prediction)
    assert abs(single.logits - reference_logits[0]).max() <= TOLERANCES["fp32"].absolute
    assert single.label == int(reference_logits[0].argmax()) and single.label_name in engine.label_names
    threads = threading.active_count()
    three = engine.predict(dev_texts[:3])
    np.testing.assert_allclose(three.logits, reference_logits[:3], atol=TOLERANCES["fp32"].absolute)
    # predict() computes on the calling thread: no worker outlives it, and the engine owns no batcher.
    assert threading.active_count() == threads and not hasattr(engine, "batcher")
    engine.close()


def test_context_rejects_bad_arrays(bundle_factory):
    context = Engine.load(bundle_factory("onnxruntime", "fp32")).create_context()
    with pytest.raises(ShapeError, match="must be 2-D"):
        context.run(np.ones(8, np.int64), np.ones(8, np.int64))
    with pytest.raises(ShapeError, match="must hold integers"):
        context.run(np.ones((1, 8), np.float32), np.ones((1, 8), np.int64))
    with pytest.raises(ShapeError, match="differs from input_ids"):
        context.run(np.ones((1, 8), np.int64), np.ones((1, 9), np.int64))


def test_the_throughput_hint_runs_one_context_per_core_and_predicts_the_same(bundle_factory, dev_texts,
                                                                            reference_logits):
    assert default_contexts(2, "throughput", "openvino") == 2
    assert default_contexts(16, "throughput", "openvino") == 4
    assert default_contexts(2, "throughput", "onnxruntime") == 2 and default_contexts(16, "throughput", "onnxruntime") == 4
    assert default_contexts(2, "latency", "openvino") == default_contexts(2, "latency", "onnxruntime") == 1
    assert default_contexts(2, "throughput", "torch") == 1
    with pytest.raises(UsageError, match="unknown performance hint 'fast'"):
        default_contexts(2, "fast")
    engine = Engine.load(bundle_factory("openvino", "fp32"), cpu_threads=2, hint="throughput")
    assert (engine.settings.contexts, engine.settings.cpu_threads) == (2, 2)
    predictions = engine.predict(dev_texts, batch_size=8)
    assert np.abs(predictions.logits - reference_logits).max() <= TOLERANCES["fp32"].bound(reference_logits)


def test_empty_text_and_oversubscription_are_errors(bundle_factory):
    engine = Engine.load(bundle_factory("onnxruntime", "fp32"))
    with pytest.raises(InputDataError, match="text 1 is empty"):
        engine.predict(["好", " "])
    with pytest.raises(UsageError, match="oversubscribe"):
        Engine.load(bundle_factory("onnxruntime", "fp32"), contexts=4, cpu_threads=2)


def test_an_overlong_text_is_truncated_and_counted(bundle_factory):
    engine = Engine.load(bundle_factory("openvino", "fp32"))
    predictions = engine.predict(["好" * 5000, "差"])
    assert predictions.truncated.tolist() == [True, False]
    assert predictions.token_lengths.tolist() == [128, 3]


def test_plans_respect_the_token_budget_and_cover_every_index():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 129, size=500)
    plans = plan_batches(lengths, max_batch_size=32, max_seq_length=128, max_batch_tokens=1024)
    covered = np.concatenate([plan.indices for plan in plans])
    assert sorted(covered.tolist()) == list(range(500))
    for plan in plans:
        assert plan.padded_length * len(plan.indices) <= 1024
        assert len(plan.indices) <= 32
        assert lengths[plan.indices].max() == plan.padded_length  # padded only to its longest text
    unbucketed = plan_batches(lengths, max_batch_size=32, max_seq_length=128)
    padded_bucketed = sum(plan.padded_length * len(plan.indices) for plan in plans)
    assert padded_bucketed < 500 * 128 == sum(plan.padded_length * len(plan.indices)
                                               for plan in plan_batches(lengths, max_batch_size=32, max_seq_length=128,
                                                                        sort_by_length=False))
    assert len(unbucketed) >= 500 // 32


def test_a_pad_multiple_rounds_padded_lengths_up():
    lengths = np.array([3, 9, 17, 30, 126])
    plans = plan_batches(lengths, max_batch_size=2, max_seq_length=128, pad_multiple=8)
    assert [plan.padded_length for plan in plans] == [128, 32, 16]  # longest first


def test_static_buckets_pad_to_compiled_lengths():
    plans = plan_batches(np.array([5, 20, 40, 100]), max_batch_size=2, max_seq_length=128, bucket_lengths=(32, 64, 128))
    assert [(plan.indices.tolist(), plan.padded_length) for plan in plans] == [([2, 3], 128), ([0, 1], 32)]


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime", "torch"])
@pytest.mark.parametrize("name, value, message", [
    ("input_ids", 10**9, "input_ids[0, 3] is 1000000000, outside the model's vocabulary (0 to "),
    ("input_ids", -10**9, "input_ids[0, 3] is -1000000000, outside the model's vocabulary"),
    ("input_ids", 2**62, "input_ids[0, 3] is 4611686018427387904, outside the model's vocabulary"),
    ("token_type_ids", 5, "token_type_ids[0, 3] is 5, outside the model's token types (0 to 1)"),
    ("token_type_ids", -1, "token_type_ids[0, 3] is -1, outside the model's token types"),
])
def test_ids_past_the_embedding_tables_are_input_errors_on_every_backend(bundle_factory, backend, name, value,
                                                                         message):
    context = Engine.load(bundle_factory(backend, "fp32")).create_context()
    arrays = {"input_ids": np.full((2, 8), 1000, np.int64), "attention_mask": np.ones((2, 8), np.int64),
              "token_type_ids": np.zeros((2, 8), np.int64)}
    arrays[name][0, 3] = value
    with pytest.raises(InputDataError) as caught:
        context.run(arrays["input_ids"], arrays["attention_mask"], arrays["token_type_ids"])
    assert message in caught.value.problem and "tokenizer" in caught.value.fix


def test_a_model_with_one_token_type_refuses_type_id_one(bundle_factory):
    context = Engine.load(bundle_factory("onnxruntime", "fp32", model="roberta")).create_context()
    ids = np.full((1, 8), 1000, np.int64)
    context.run(ids, np.ones_like(ids), np.zeros_like(ids))
    with pytest.raises(InputDataError, match=r"token_type_ids\[0, 0\] is 1, outside the model's token types \(0 to 0\)"):
        context.run(ids, np.ones_like(ids), np.ones_like(ids))


@pytest.mark.parametrize("text", ["\x00\x00", "\u200b", "\x01\u200d\x7f"])
def test_texts_that_give_no_tokens_are_input_errors(bundle_factory, text):
    engine = Engine.load(bundle_factory("onnxruntime", "fp32"))
    with pytest.raises(InputDataError, match="text 1 gives no tokens"):
        engine.predict(["好", text])


def test_a_megabytes_long_line_is_cut_before_tokenizing_with_the_same_result(bundle_factory):
    engine = Engine.load(bundle_factory("onnxruntime", "fp32"))
    long_text = "这家酒店很好 good " * 400_000  # 5.6 million characters on one line
    predictions = engine.predict([long_text, long_text[:1000]])
    assert predictions.truncated.tolist() == [True, True]
    assert predictions.token_lengths.tolist() == [128, 128]
    assert np.array_equal(predictions.logits[0], predictions.logits[1])


def test_predictions_compute_labels_once(bundle_factory):
    predictions = Engine.load(bundle_factory("onnxruntime", "fp32")).predict(["好", "差"])
    assert predictions.labels is predictions.labels and predictions.probabilities is predictions.probabilities


def test_backend_policies_live_on_the_backends_and_the_engine_holds_no_batcher():
    import ast
    from pathlib import Path

    from roberta_deploy.backends import BACKENDS, get_backend
    from roberta_deploy.manifest import BACKEND_REQUIREMENTS
    from roberta_deploy.runtime import engine as engine_module

    for name in BACKENDS:
        backend = get_backend(name)
        assert backend.engine_files == BACKEND_REQUIREMENTS[name]["files"][0]  # declared once, in manifest.py
        assert backend.contexts_for(2, "latency") == 1
    assert get_backend("openvino").contexts_for(2, "throughput") == get_backend("onnxruntime").contexts_for(2, "throughput") == 2
    assert get_backend("torch").contexts_for(16, "throughput") == 1
    with pytest.raises(UsageError, match="unknown performance hint"):
        get_backend("onnxruntime").contexts_for(2, "fast")
    tree = ast.parse(Path(engine_module.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"batcher", "online", "offline", "workers"}  # whoever runs work owns the Batcher
