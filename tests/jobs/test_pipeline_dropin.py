"""roberta_deploy.pipeline as a drop-in for transformers.pipeline("text-classification"): every argument form
and call form that applies, run against the unmodified transformers pipeline on the same tiny checkpoint,
including the examples transformers documents for text classification."""

import itertools
import types
import warnings

import numpy as np
import pytest

import roberta_deploy
from roberta_deploy.errors import InputDataError, NotReadyError, UsageError
from roberta_deploy.precision import TOLERANCES

TEXTS = ["房间干净整洁，床很舒服，前台服务热情。", "隔音太差了，一晚上没睡好。", "位置不错", "早餐一般，价格偏贵，不会再来。"]
LONG = "这家酒店的位置很好，" * 40  # about 400 tokens: past the bundle's 128
# The examples of transformers' TextClassificationPipeline docstring and task guide, on our tiny checkpoint.
DOCUMENTED = [
    ("This movie is disgustingly good !", {}),
    ("Director tried too much.", {}),
    (["I've been waiting for a HuggingFace course my whole life.", "I hate this so much!"], {}),
    ("This restaurant is awesome", {"top_k": None}),
    ("This restaurant is awesome", {"top_k": 2}),
    ("This restaurant is awesome", {"function_to_apply": "sigmoid"}),
]
TOLERANCE = TOLERANCES["fp32"].bound(np.array([4.0]))


@pytest.fixture(scope="module")
def bundle(bundle_factory):
    return bundle_factory("openvino", "fp32")


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoints):
    return tiny_checkpoints["bert"]


@pytest.fixture(scope="module")
def theirs(checkpoint):
    import transformers

    return transformers.pipeline("text-classification", model=str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def ours(bundle):
    with roberta_deploy.pipeline("text-classification", model=bundle) as classifier:
        yield classifier


def assert_same(mine, other, tolerance=TOLERANCE):
    """Same nesting, same labels in the same order, scores within `tolerance`."""
    assert type(mine) is type(other), (mine, other)
    if isinstance(other, list):
        assert len(mine) == len(other)
        for one, two in zip(mine, other):
            assert_same(one, two, tolerance)
        return
    assert set(mine) == {"label", "score"} and type(mine["score"]) is float
    assert mine["label"] == other["label"] and abs(mine["score"] - other["score"]) <= tolerance


def creation_forms(model, tokenizer):
    """The same creation call for both libraries; `model` is a bundle for ours, the checkpoint for theirs."""
    import torch

    return [
        (("text-classification",), {"model": model}),
        (("text-classification", model), {}),
        ((), {"task": "sentiment-analysis", "model": model}),
        ((), {"model": model}),
        ((), {"model": model, "tokenizer": tokenizer}),
        ((), {"model": model, "device": -1}),
        ((), {"model": model, "device": "cpu"}),
        ((), {"model": model, "device": torch.device("cpu")}),
        ((), {"model": model, "top_k": None, "batch_size": 2}),
        ((), {"model": model, "function_to_apply": "none", "top_k": 1}),
        ((), {"model": model, "truncation": True, "max_length": 16, "padding": True}),
    ]


@pytest.mark.parametrize("form", range(11))
def test_every_creation_form_matches_transformers(bundle, checkpoint, form):
    import transformers

    args, kwargs = creation_forms(str(bundle), str(checkpoint))[form]
    their_args, their_kwargs = creation_forms(str(checkpoint), str(checkpoint))[form]
    if not their_args and "task" not in their_kwargs:
        their_kwargs["task"] = "text-classification"  # transformers infers a task from the hub, offline it cannot
    theirs = transformers.pipeline(*their_args, **their_kwargs)
    with roberta_deploy.pipeline(*args, **kwargs) as ours:
        for inputs in (TEXTS, TEXTS[0], [LONG, TEXTS[1]] if "max_length" in kwargs else TEXTS[2]):
            assert_same(ours(inputs), theirs(inputs))
        assert ours.task == theirs.task


CALLS = [
    (TEXTS, {"batch_size": 2}),
    (TEXTS, {"padding": True}),
    (TEXTS, {"padding": "longest", "top_k": None}),
    ([LONG, TEXTS[0]], {"truncation": True, "max_length": 16}),
    ([LONG, TEXTS[0]], {"truncation": True, "max_length": 8, "padding": "max_length"}),
    (LONG, {"max_length": 20, "truncation": "longest_first"}),
    (TEXTS, {"top_k": 1}),
    (TEXTS[0], {"top_k": None, "function_to_apply": "none"}),
    *DOCUMENTED,
]


@pytest.mark.parametrize("inputs, kwargs", CALLS, ids=[f"call{i}" for i in range(len(CALLS))])
def test_every_call_form_matches_transformers(ours, theirs, inputs, kwargs):
    assert_same(ours(inputs, **kwargs), theirs(inputs, **kwargs))


def test_a_generator_is_streamed_as_results_come(ours, theirs):
    pulled = []

    def texts(count):
        for index in range(count):
            pulled.append(index)
            yield TEXTS[index % len(TEXTS)]

    stream = ours(texts(400), batch_size=8)
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)
    assert len(pulled) <= 3 * 8, "the first result came before the generator was read through"
    rest = list(stream)
    assert len(pulled) == 400 and len(rest) == 399
    assert_same([first, *rest[:7]], list(itertools.islice(theirs(texts(8)), 8)))


def test_a_dataset_streams_like_transformers_key_dataset(ours, theirs):
    from torch.utils.data import Dataset
    from transformers.pipelines.pt_utils import KeyDataset

    class Rows(Dataset):
        def __len__(self):
            return len(TEXTS)

        def __getitem__(self, index):
            return {"text": TEXTS[index], "label": 0}

    assert_same(list(ours(KeyDataset(Rows(), "text"), batch_size=2)), list(theirs(KeyDataset(Rows(), "text"))))


def test_model_config_tokenizer_and_task_read_as_transformers(ours, theirs):
    assert ours.model.config.id2label == theirs.model.config.id2label
    assert ours.model.config.label2id == theirs.model.config.label2id
    assert ours.model.config.num_labels == theirs.model.config.num_labels
    assert ours.task == theirs.task == "text-classification"
    for text in TEXTS:
        assert ours.tokenizer(text)["input_ids"] == theirs.tokenizer(text)["input_ids"]


def test_long_texts_warn_once_and_truncation_false_refuses_them(bundle):
    with roberta_deploy.pipeline(bundle) as classifier:
        with pytest.warns(UserWarning, match="longer than 128 tokens"):
            classifier([LONG, TEXTS[0]])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            classifier(LONG)  # once per pipeline
            classifier(LONG, truncation=True)
        with pytest.raises(InputDataError, match="input 0 is longer than 128 tokens and truncation=False"):
            classifier(LONG, truncation=False)


def test_a_closed_pipeline_refuses_calls(bundle):
    classifier = roberta_deploy.pipeline(bundle)
    stream = classifier(text for text in TEXTS * 20)
    next(stream)
    classifier.close()
    with pytest.raises(NotReadyError, match="this pipeline was closed"):
        classifier(TEXTS[0])
    with pytest.raises(NotReadyError):
        list(stream)


@pytest.mark.parametrize("call, error, fragment", [
    (lambda p: p(b"abc"), InputDataError, "the input is bytes"),
    (lambda p: p(tuple(TEXTS[:3])), InputDataError, "input 0 holds 3 items"),
    (lambda p: p(TEXTS, foo=1), UsageError, "does not take foo="),
    (lambda p: p(TEXTS, max_length=0), UsageError, "max_length=0"),
    (lambda p: p(TEXTS, padding="sideways"), UsageError, "padding='sideways'"),
    (lambda p: p(12), InputDataError, "the input is a int"),
])
def test_inputs_that_are_not_text_are_typed_errors(ours, call, error, fragment):
    with pytest.raises(error) as raised:
        call(ours)
    assert fragment in raised.value.problem


@pytest.mark.parametrize("kwargs, fragment", [
    ({"device": 0}, "runs on cpu only, not cuda:0"),
    ({"device": "mps"}, "unknown device 'mps'"),
    ({"revision": "main"}, "does not take revision='main'"),
    ({"task": "fill-mask"}, "not a text-classification task"),
    ({"tokenizer": "bert-base-uncased-not-here"}, ""),
])
def test_creation_arguments_that_cannot_apply_are_refused(bundle, kwargs, fragment):
    arguments = dict(kwargs)
    task = arguments.pop("task", "text-classification")
    with pytest.raises((UsageError, OSError)) as raised:
        roberta_deploy.pipeline(task, model=bundle, **arguments)
    assert fragment in str(getattr(raised.value, "problem", raised.value))


def test_a_tokenizer_that_differs_from_the_bundles_is_refused(bundle, tmp_path):
    from transformers import BertTokenizerFast

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "房"]) + "\n",
                                        encoding="utf-8")
    other = BertTokenizerFast.from_pretrained(str(tmp_path))
    with pytest.raises(UsageError, match="encodes text differently"):
        roberta_deploy.pipeline(model=bundle, tokenizer=other)


def test_pairs_are_told_from_texts_by_type_never_by_length(task_bundle_factory, task_checkpoints):
    import transformers

    theirs = transformers.pipeline("text-classification", model=str(task_checkpoints[("pairs", "bert")]))
    with roberta_deploy.pipeline(task_bundle_factory("pairs", "bert")) as ours:
        pair = {"text": TEXTS[0], "text_pair": TEXTS[1]}
        assert_same(ours((TEXTS[0], TEXTS[1])), theirs(pair))  # a tuple is one pair
        assert_same(ours([(TEXTS[0], TEXTS[1]), TEXTS[2]]), [theirs(pair), *theirs([TEXTS[2]])])
        assert_same(ours([[TEXTS[0], TEXTS[1]]]), [theirs(pair)])
        with pytest.raises(InputDataError, match="holds 3 items"):
            ours(tuple(TEXTS[:3]))  # never three texts


def test_building_from_a_checkpoint_prints_a_progress_line(tiny_exports, capfd):
    with roberta_deploy.pipeline(tiny_exports["bert"].folder, backend="onnxruntime") as classifier:
        assert classifier(TEXTS[2])[0]["label"] in ("negative", "positive")
    err = capfd.readouterr().err
    assert "roberta-deploy:" in err and "building a onnxruntime fp32 bundle" in err
