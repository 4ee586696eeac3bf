"""roberta_deploy.pipeline against the unmodified transformers text-classification pipeline."""

import json
import subprocess
import sys

import numpy as np
import pytest

import roberta_deploy
from roberta_deploy.errors import InputDataError, UsageError
from roberta_deploy.precision import TOLERANCES

TEXTS = ["房间干净整洁，床很舒服，前台服务热情。", "隔音太差了，一晚上没睡好。", "位置不错", "早餐一般，价格偏贵，不会再来。"]
CALLS = [{}, {"top_k": None}, {"top_k": 1}, {"top_k": 2}, {"function_to_apply": "sigmoid"},
         {"function_to_apply": "none", "top_k": None}]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["bert"]


@pytest.fixture(scope="module")
def ours(checkpoint, tmp_path_factory, dev_tsv):
    build_dir = tmp_path_factory.mktemp("pipeline")
    with roberta_deploy.pipeline(checkpoint, build_dir=build_dir, calibration_data=dev_tsv) as classifier:
        assert classifier.bundle_dir == build_dir / "bundle"
        export_manifest = json.loads((build_dir / "export" / "manifest.json").read_text(encoding="utf-8"))
        assert export_manifest["checks"]["onnx_vs_pytorch"]["text_source"] == str(dev_tsv)
        yield classifier


@pytest.fixture(scope="module")
def theirs(checkpoint):
    import transformers

    return transformers.pipeline("text-classification", model=str(checkpoint), device="cpu")


def assert_same(ours_result, theirs_result, tolerance):
    """Same nesting, same labels in the same order, scores within `tolerance`."""
    assert type(ours_result) is type(theirs_result)
    if isinstance(theirs_result, list):
        assert len(ours_result) == len(theirs_result)
        for mine, other in zip(ours_result, theirs_result):
            assert_same(mine, other, tolerance)
        return
    assert set(ours_result) == {"label", "score"} and type(ours_result["score"]) is float
    assert ours_result["label"] == theirs_result["label"]
    assert abs(ours_result["score"] - theirs_result["score"]) <= tolerance


@pytest.mark.parametrize("kwargs", CALLS, ids=lambda kwargs: ",".join(f"{k}={v}" for k, v in kwargs.items()) or "default")
@pytest.mark.parametrize("single", [True, False], ids=["str", "list"])
def test_results_match_transformers_pipeline(ours, theirs, kwargs, single):
    inputs = TEXTS[0] if single else TEXTS
    theirs_result = theirs(inputs, **kwargs)
    logits = np.asarray(theirs(TEXTS, top_k=None, function_to_apply="none"), dtype=object)
    bound = TOLERANCES["fp32"].bound(np.array([[entry["score"] for entry in row] for row in logits]))
    assert_same(ours(inputs, **kwargs), theirs_result, bound)


def test_label_names_come_from_the_manifest(ours):
    assert ours.label_names == ("negative", "positive")
    assert {entry["label"] for entry in ours(TEXTS[0], top_k=None)} == {"negative", "positive"}
    assert ours([]) == []


def test_defaults_given_at_construction_apply_to_every_call(ours, checkpoint):
    with roberta_deploy.pipeline(ours.bundle_dir, top_k=None, function_to_apply="none") as raw:
        result = raw(TEXTS)
        assert [len(row) for row in result] == [2] * len(TEXTS)
        logits = raw.engine.predict(TEXTS).logits
        assert [row[0]["score"] for row in result] == pytest.approx(logits.max(axis=1).tolist(), abs=1e-6)
        assert raw(TEXTS, top_k=1)[0][0]["score"] == result[0][0]["score"]


def test_an_export_folder_is_built_into_a_temporary_bundle_that_close_removes(tiny_exports):
    classifier = roberta_deploy.pipeline(tiny_exports["bert"].folder, backend="onnxruntime")
    built = classifier.bundle_dir
    assert built.is_dir() and classifier.engine.backend == "onnxruntime"
    assert classifier("位置不错")[0]["label"] in ("negative", "positive")
    classifier.close()
    assert not built.exists()


@pytest.mark.parametrize("call, error, fragment", [
    (lambda p: p(TEXTS, top_k=0), UsageError, "top_k=0"),
    (lambda p: p(TEXTS, function_to_apply="relu"), UsageError, "function_to_apply='relu'"),
    (lambda p: p([TEXTS[0], 3]), InputDataError, "input 1 is a int"),
    (lambda p: p({"text": "a", "pair": "b"}), InputDataError, "a text pair dict has keys ['pair', 'text']"),
    (lambda p: p([("a", "b", "c")]), InputDataError, "input 0 holds 3 texts"),
    (lambda p: p(["   "]), InputDataError, "empty"),
])
def test_bad_calls_raise_typed_errors(ours, call, error, fragment):
    with pytest.raises(error, match=None) as raised:
        call(ours)
    assert fragment in raised.value.problem


def test_importing_the_package_and_loading_a_bundle_never_imports_build_code(ours):
    code = ("import sys, roberta_deploy\n"
            "assert 'numpy' not in sys.modules, 'import roberta_deploy stays light'\n"
            f"classifier = roberta_deploy.pipeline({str(ours.bundle_dir)!r})\n"
            "print(classifier('位置不错')[0]['label'])\n"
            "heavy = [name for name in ('torch', 'transformers', 'nncf', 'roberta_deploy.build.export',"
            " 'roberta_deploy.build.bundle') if name in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("negative", "positive")
    assert roberta_deploy.__version__ and roberta_deploy.__version__ != "None"


def test_calls_from_several_threads_at_once_get_their_own_results(ours):
    from concurrent.futures import ThreadPoolExecutor

    inputs = [[TEXTS[(start + offset) % len(TEXTS)] for offset in range(3)] for start in range(8)]
    expected = [ours(texts) for texts in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(ours, texts) for texts in inputs]
        results = [future.result(timeout=120) for future in futures]  # a hang fails here, not forever
    # Concurrent calls may share batches (other padding), so scores agree to fp32 noise, labels exactly.
    for result, wanted in zip(results, expected):
        assert [entry["label"] for entry in result] == [entry["label"] for entry in wanted]
        assert [entry["score"] for entry in result] == pytest.approx([entry["score"] for entry in wanted], abs=1e-5)


def test_calls_run_on_the_pipelines_one_long_lived_batcher(ours):
    batcher = ours.batcher
    before = batcher.stats.texts
    ours(TEXTS)
    ours(TEXTS[0])
    assert ours.batcher is batcher and batcher.running
    assert not hasattr(ours.engine, "batcher")  # the engine holds none: the pipeline owns it
    assert batcher.stats.texts == before + len(TEXTS) + 1


PAIRS = [("房间干净整洁，床很舒服，前台服务热情。", "隔音太差了，一晚上没睡好。"), ("位置不错", "早餐一般，价格偏贵，不会再来。"),
         ("早餐一般", "位置不错")]
TASK_CALLS = [{}, {"top_k": None}, {"top_k": 1}, {"function_to_apply": "none", "top_k": None}]


@pytest.mark.parametrize("kind, model_type", [("pairs", "bert"), ("pairs", "roberta"), ("multilabel", "bert"),
                                              ("regression", "roberta"), ("cross-encoder", "bert")])
@pytest.mark.parametrize("kwargs", TASK_CALLS, ids=lambda kwargs: ",".join(f"{k}={v}" for k, v in kwargs.items())
                         or "default")
def test_pairs_and_every_task_match_transformers_pipeline(task_bundle_factory, task_checkpoints, kind, model_type,
                                                          kwargs):
    """{"text", "text_pair"} dicts, lists of them, and (text, text_pair) tuples, scored by each task's
    default function (softmax, sigmoid per label, sigmoid for one logit, none for regression)."""
    import transformers

    theirs = transformers.pipeline("text-classification", model=str(task_checkpoints[(kind, model_type)]),
                                   device="cpu")
    with roberta_deploy.pipeline(task_bundle_factory(kind, model_type, "openvino")) as ours:
        if kind == "multilabel":
            cases = [(TEXTS[0], TEXTS[0]), (TEXTS, TEXTS)]
        else:
            dicts = [{"text": a, "text_pair": b} for a, b in PAIRS]
            cases = [(dicts[0], dicts[0]), (dicts, dicts), (PAIRS[0], dicts[0]), (PAIRS, dicts)]
        for mine, transformers_input in cases:
            expected = theirs(transformers_input, **kwargs)
            assert_same(ours(mine, **kwargs), expected, TOLERANCES["fp32"].bound(np.array([4.0])))
