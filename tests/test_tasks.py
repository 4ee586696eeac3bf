"""Every kind of sequence classifier (issue 13): sentence pairs, multi-label, regression and a one-logit
cross-encoder, each a tiny random BERT and RoBERTa. The task recorded at export, outputs against PyTorch
on every backend (fp32) and one representative per task at the lower precisions, the runtime's pair
encoding against transformers', the metrics against scikit-learn's, and data files in each layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TASK_ARCHITECTURES, TASK_MODELS, pytorch_logits

from roberta_deploy.backends import get_backend
from roberta_deploy.data import read_dataset
from roberta_deploy.defaults import DEMO_SAMPLES_PATH
from roberta_deploy.errors import InputDataError, UsageError
from roberta_deploy.jobs.infer import classify_dataset
from roberta_deploy.metrics import multilabel_metrics, regression_metrics
from roberta_deploy.precision import TOLERANCES
from roberta_deploy.runtime.batcher import Batcher
from roberta_deploy.runtime.engine import Engine
from roberta_deploy.runtime.tokenization import TextEncoder
from roberta_deploy.tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL, Task, apply_function

SAMPLES = read_dataset(DEMO_SAMPLES_PATH, ignore_labels=True).texts
# Pairs with a short and a long side and two long sides, so longest-first truncation does real work.
PAIRS = [(SAMPLES[i], SAMPLES[-1 - i]) for i in range(12)] + [
    ("位置不错", " ".join(SAMPLES[:6])), (" ".join(SAMPLES[6:12]), "早餐一般"),
    (" ".join(SAMPLES[12:18]), " ".join(SAMPLES[18:24]))]
TASK_KEYS = [(kind, model_type) for kind in TASK_MODELS for model_type in TASK_ARCHITECTURES]
BACKENDS = [name for name in ("openvino", "onnxruntime", "torch") if "fp32" in get_backend(name).precisions("cpu")]
EXPECTED = {"pairs": (SINGLE_LABEL, None, True), "multilabel": (MULTI_LABEL, MULTI_LABEL, False),
            "regression": (REGRESSION, REGRESSION, True), "cross-encoder": (REGRESSION, None, True)}


def inputs_for(kind: str) -> list:
    return SAMPLES[:15] if kind == "multilabel" else PAIRS


def key_id(key) -> str:
    return "-".join(key)


@pytest.mark.parametrize("key", TASK_KEYS, ids=key_id)
def test_export_records_the_task_from_the_checkpoint(task_exports, key):
    manifest = task_exports[key].manifest
    task, problem_type, pairs = EXPECTED[key[0]]
    assert (manifest["task"], manifest["problem_type"], manifest["text_pairs"]) == (task, problem_type, pairs)
    assert manifest["labels"] == list(TASK_MODELS[key[0]][0].values())
    check = manifest["checks"]["onnx_vs_pytorch"]
    assert check["passed"] and check["pairs"] > 0  # the parity check ran pairs too, on either tokenizer


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("key", TASK_KEYS, ids=key_id)
def test_fp32_outputs_match_pytorch_on_every_backend(task_bundle_factory, task_checkpoints, key, backend):
    kind, model_type = key
    bundle = task_bundle_factory(kind, model_type, backend, "fp32")
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["task"] == EXPECTED[kind][0] and manifest["text_pairs"] == EXPECTED[kind][2]
    check = manifest["checks"]["against_fp32_reference"]
    assert check["passed"] and check["text_pairs"] == (EXPECTED[kind][2] is True)
    inputs = inputs_for(kind)
    reference = pytorch_logits(task_checkpoints[key], inputs)
    with Engine.load(bundle) as engine:
        predictions = engine.predict(inputs)
    assert predictions.logits.shape == reference.shape
    assert np.abs(predictions.logits - reference).max() <= TOLERANCES["fp32"].bound(reference)
    if kind != "multilabel":  # the last three pairs are past 128 tokens together
        assert predictions.truncated[-3:].all() and not predictions.truncated[:12].all()
    task = Task.from_manifest(manifest)
    np.testing.assert_allclose(predictions.scores, apply_function(reference, task.score_function), atol=2e-3)


# Beyond fp32, one representative per task: an int8 and a 16-bit build this CPU offers, the backends
# rotating over the tasks, so each task meets int8 and every offered combination is met at least once.
LOWER = [(backend, precision) for backend in BACKENDS for precision in get_backend(backend).precisions("cpu")
         if precision not in ("fp32", "fp16")]
INT8 = [combination for combination in LOWER if combination[1] == "int8"]
SIXTEEN_BIT = [combination for combination in LOWER if combination[1] != "int8"]
REPRESENTATIVES = [(kind, group[index % len(group)]) for index, kind in enumerate(TASK_MODELS)
                   for group in (INT8, SIXTEEN_BIT) if group]


@pytest.mark.parametrize("kind, combination", REPRESENTATIVES, ids=lambda value: "-".join(value)
                         if isinstance(value, tuple) else value)
def test_lower_precisions_stay_within_tolerance_by_the_tasks_measure(task_bundle_factory, task_checkpoints, kind,
                                                                     combination):
    backend, precision = combination
    bundle = task_bundle_factory(kind, "bert", backend, precision)
    check = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["checks"]["against_fp32_reference"]
    assert check["passed"] and check["max_abs_logit_diff"] <= check["tolerance"]
    if kind == "multilabel":
        assert check["label_agreement"] >= 0.9 and "label_set_agreement" in check
    elif EXPECTED[kind][0] == REGRESSION:
        assert check["max_abs_score_diff"] <= check["score_tolerance"]
    reference = pytorch_logits(task_checkpoints[(kind, "bert")], inputs_for(kind))
    with Engine.load(bundle) as engine:
        logits = engine.predict(inputs_for(kind)).logits
    assert np.abs(logits - reference).max() <= TOLERANCES[precision].bound(reference)


@pytest.mark.parametrize("model_type", TASK_ARCHITECTURES)
@pytest.mark.parametrize("max_length", [16, 40, 128])
@pytest.mark.parametrize("direction", ["right", "left"])
def test_pair_encoding_matches_transformers_longest_first(task_exports, task_checkpoints, model_type, max_length,
                                                          direction):
    """Either truncation direction: transformers' truncation_side cuts each side from that end."""
    from transformers import AutoTokenizer

    export = task_exports[("pairs", model_type)]
    encoder = TextEncoder.from_folder(export.tokenizer_dir, max_length)
    theirs = AutoTokenizer.from_pretrained(str(task_checkpoints[("pairs", model_type)]), truncation_side=direction)
    limit = max_length * 64  # past this many characters a side is cut before tokenizing
    long_text = "".join(SAMPLES)[:limit * 3]
    pairs = PAIRS + [(long_text, "早餐一般"), ("早餐一般", long_text), (long_text, long_text[::-1]),
                     (long_text, " ".join(SAMPLES[:3])), (" ".join(SAMPLES[:3]), long_text[::-1])]
    ours = encoder.encode(pairs, direction)
    expected = theirs([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=max_length)
    for row in range(len(pairs)):
        assert ours.token_ids[row].tolist() == expected["input_ids"][row], row
        # Without token_type_ids (RoBERTa's tokenizer here) the model takes zeros, as it defaults to.
        assert ours.type_ids[row].tolist() == expected.get("token_type_ids", [[0] * len(ids) for ids in
                                                                              expected["input_ids"]])[row], row
    lengths = [len(ids) for ids in expected["input_ids"]]
    assert ours.truncated.tolist() == [length == max_length and length < len(theirs(a, b)["input_ids"])
                                       for length, (a, b) in zip(lengths, pairs)]
    if model_type == "bert":
        assert {0, 1} == set(np.concatenate(ours.type_ids).tolist())


@pytest.mark.parametrize("model_type", TASK_ARCHITECTURES)
def test_left_truncation_of_single_texts_matches_transformers(task_exports, task_checkpoints, model_type):
    """The end of a long text is kept, [CLS] ... [SEP] around it, also when the text is long enough to be
    cut before tokenizing (a long word at the cut, a cut inside a word)."""
    from transformers import AutoTokenizer

    max_length = 16
    encoder = TextEncoder.from_folder(task_exports[("pairs", model_type)].tokenizer_dir, max_length)
    theirs = AutoTokenizer.from_pretrained(str(task_checkpoints[("pairs", model_type)]), truncation_side="left")
    limit = max_length * 64
    joined = " ".join(SAMPLES)
    texts = SAMPLES[:4] + [joined[:limit * 3], joined[-limit * 3:], "x" * (limit * 2) + " 位置不错",
                           "位置不错 " + "y" * (limit * 2), "早餐一般" * limit]
    ours = encoder.encode(texts, "left")
    expected = theirs(texts, truncation=True, max_length=max_length)["input_ids"]
    assert [ids.tolist() for ids in ours.token_ids] == expected
    assert ours.truncated.tolist() == [len(theirs(text)["input_ids"]) > max_length for text in texts]
    assert encoder.encode(texts[4:5]).token_ids[0].tolist() != expected[4]  # the right end differs
    with pytest.raises(UsageError, match="truncation direction 'up' is unknown"):
        encoder.encode(texts, "up")


def test_pairs_and_single_texts_submitted_together_get_the_logits_each_gets_alone(task_bundle_factory):
    inputs = [item for pair, text in zip(PAIRS[:6], SAMPLES[:6]) for item in (pair, text)]
    with Engine.load(task_bundle_factory("pairs", "bert", "onnxruntime")) as engine:
        alone = np.concatenate([engine.predict([item]).logits for item in inputs])
        with Batcher(engine) as batcher:
            futures = [batcher.submit([item]) for item in inputs]  # waiting requests merge into shared batches
            merged = np.concatenate([future.result(timeout=60).logits for future in futures])
        lengths = engine.predict(inputs).token_lengths
    np.testing.assert_allclose(merged, alone, atol=1e-4)
    assert lengths.tolist() == [len(ids) for ids in engine.encoder.encode(inputs).token_ids]


@pytest.mark.parametrize("bad, message", [
    (("位置不错",), "input 0 holds 1 texts"), (("位置不错", "  "), "second text of pair 0 is empty"),
    (("位置不错", 3), "second text of pair 0"), (("\u200b", "好"), "first text of pair 0 gives no tokens")])
def test_malformed_pairs_are_input_errors(task_exports, bad, message):
    encoder = TextEncoder.from_folder(task_exports[("pairs", "bert")].tokenizer_dir, 64)
    with pytest.raises(InputDataError, match=message):
        encoder.encode([bad])


def test_multilabel_metrics_equal_scikit_learns():
    from sklearn import metrics as sk

    rng = np.random.default_rng(0)
    gold = rng.random((200, 5)) < 0.3
    predicted = rng.random((200, 5)) < 0.35
    predicted[:, 4] = False  # a label never predicted: precision 0, as zero_division=0
    gold[:, 3] = False  # a label never gold
    ours = multilabel_metrics(gold, predicted, [f"l{i}" for i in range(5)])
    assert ours["micro_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="micro", zero_division=0))
    assert ours["macro_f1"] == pytest.approx(sk.f1_score(gold, predicted, average="macro", zero_division=0))
    assert ours["micro_precision"] == pytest.approx(sk.precision_score(gold, predicted, average="micro",
                                                                       zero_division=0))
    assert ours["micro_recall"] == pytest.approx(sk.recall_score(gold, predicted, average="micro", zero_division=0))
    assert ours["exact_match"] == pytest.approx(sk.accuracy_score(gold, predicted))
    precision, recall, f1, support = sk.precision_recall_fscore_support(gold, predicted, zero_division=0)
    for index in range(5):
        row = ours["per_label"][f"l{index}"]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[index], recall[index], f1[index], support[index]))


def test_regression_metrics_equal_scipy_and_scikit_learns():
    from scipy import stats
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    rng = np.random.default_rng(1)
    gold = np.round(rng.random(300) * 5, 1)  # many ties, as STS-B scores have
    predicted = gold + rng.normal(0, 0.8, 300)
    predicted[:20] = predicted[0]  # tied predictions too
    ours = regression_metrics(gold.tolist(), predicted)
    assert ours["pearson"] == pytest.approx(stats.pearsonr(gold, predicted)[0])
    assert ours["spearman"] == pytest.approx(stats.spearmanr(gold, predicted)[0])
    assert ours["mse"] == pytest.approx(mean_squared_error(gold, predicted))
    assert ours["mae"] == pytest.approx(mean_absolute_error(gold, predicted))
    assert regression_metrics([1.0, 1.0, 1.0], [0.2, 0.5, 0.9])["pearson"] is None  # constant: no correlation


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, content, pair_columns", [
    ("lcqmc.tsv", "text_a\ttext_b\tlabel\n位置不错\t地段很好\t1\n太吵了\t很安静\t0\n", None),
    ("afqmc.jsonl", '{"sentence1": "位置不错", "sentence2": "地段很好", "label": "1"}\n'
                    '{"sentence1": "太吵了", "sentence2": "很安静", "label": 0}\n', None),
    ("nli.csv", "premise,hypothesis,label\n位置不错,地段很好,1\n太吵了,很安静,0\n", None),
    ("rerank.tsv", "query\tpassage\tlabel\n位置不错\t地段很好\t1\n太吵了\t很安静\t0\n", None),
    ("custom.tsv", "q\td\tlabel\n位置不错\t地段很好\t1\n太吵了\t很安静\t0\n", ("q", "d")),
])
def test_pair_files_in_each_layout_are_read_as_pairs(tmp_path, name, content, pair_columns):
    first, second = pair_columns or (None, None)
    dataset = read_dataset(write(tmp_path, name, content), text_column=first, text_pair_column=second,
                           label_names=["different", "same"], text_pairs=True)
    assert dataset.inputs == [("位置不错", "地段很好"), ("太吵了", "很安静")] and dataset.labels == [1, 0]


def test_a_pair_model_names_the_missing_pair_column(tmp_path):
    path = write(tmp_path, "single.tsv", "label\ttext_a\n1\t位置不错\n")
    with pytest.raises(InputDataError, match=r"single.tsv has no second text column.*") as raised:
        read_dataset(path, text_pairs=True)
    assert "--text-pair-column" in raised.value.fix and "sentence2" in raised.value.fix
    with pytest.raises(InputDataError, match="no column 'text_c'"):
        read_dataset(path, text_pair_column="text_c")
    assert read_dataset(path).text_pairs is None  # unknown: one text
    pairs_file = write(tmp_path, "pairs.tsv", "text_a\ttext_b\tlabel\n位置不错\t\t1\n")
    with pytest.raises(InputDataError, match=r"pairs.tsv:2: empty text \(column 'text_b'\)"):
        read_dataset(pairs_file)
    assert read_dataset(write(tmp_path, "p2.tsv", "text_a\ttext_b\n甲\t乙\n"), text_pairs=False).text_pairs is None


def test_the_pair_column_is_never_also_the_text_column(tmp_path):
    # `text` is a usual text column too: named as the pair column, the text comes from the next usual one.
    path = write(tmp_path, "two.tsv", "sentence\ttext\tlabel\n位置不错\t地段很好\t1\n")
    assert read_dataset(path, text_pair_column="text").inputs == [("位置不错", "地段很好")]
    with pytest.raises(InputDataError, match="both name 'text'"):
        read_dataset(path, text_column="text", text_pair_column="text")


LABEL_NAMES = ["service", "room", "food", "price"]


def test_multilabel_labels_as_json_lists_and_separated_cells(tmp_path):
    jsonl = write(tmp_path, "m.jsonl", '{"text": "甲", "labels": [0, 2]}\n{"text": "乙", "labels": ["price"]}\n'
                                       '{"text": "丙", "labels": []}\n')
    assert read_dataset(jsonl, task=MULTI_LABEL, label_names=LABEL_NAMES).labels == [(0, 2), (3,), ()]
    tsv = write(tmp_path, "m.tsv", "text\tlabels\n甲\troom,food\n乙\t3\n丙\t\n")
    assert read_dataset(tsv, task=MULTI_LABEL, label_names=LABEL_NAMES).labels == [(1, 2), (3,), ()]
    csv_file = write(tmp_path, "m.csv", 'text,labels\n甲,"0|1"\n')
    assert read_dataset(csv_file, task=MULTI_LABEL, label_names=LABEL_NAMES, label_separator="|").labels == [(0, 1)]


@pytest.mark.parametrize("name, content, message", [
    ("a.tsv", "text\tlabels\n甲\t0,,2\n", "a.tsv:2: multi-label cell '0,,2' has an empty label"),
    ("b.tsv", "text\tlabels\n甲\t0,drinks\n", "b.tsv:2: unknown label 'drinks'"),
    ("c.tsv", "text\tlabels\n甲\t1,1\n", "c.tsv:2: multi-label labels .* name a label twice"),
    ("d.jsonl", '{"text": "甲", "labels": 2}\n', "d.jsonl:1: the multi-label labels are a JSON int"),
    ("e.jsonl", '{"text": "甲", "labels": [[0]]}\n', "e.jsonl:1: multi-label labels .* hold a nested list"),
    ("f.jsonl", '{"text": "甲", "labels": [7]}\n', "f.jsonl:1: unknown label 7"),
    ("g.jsonl", '{"text": "甲"}\n{"text": "乙", "labels": [1]}\n', "g.jsonl:1: the multi-label labels are missing"),
])
def test_malformed_multilabel_cells_name_the_line_and_the_fix(tmp_path, name, content, message):
    with pytest.raises(InputDataError, match=message) as raised:
        read_dataset(write(tmp_path, name, content), task=MULTI_LABEL, label_names=LABEL_NAMES)
    assert raised.value.fix


@pytest.mark.parametrize("cell, message", [("high", 'score "high" is not a number'), ("nan", "score 'nan' is not finite"),
                                           ("", "missing or non-numeric score")])
def test_regression_scores_are_numbers(tmp_path, cell, message):
    path = write(tmp_path, "s.tsv", f"sentence1\tsentence2\tlabel\n甲\t乙\t{cell}\n")
    with pytest.raises(InputDataError, match="s.tsv:2: " + message):
        read_dataset(path, task=REGRESSION)
    assert read_dataset(write(tmp_path, "t.tsv", "sentence1\tsentence2\tlabel\n甲\t乙\t3.5\n"),
                        task=REGRESSION).labels == [3.5]


def test_infer_reports_each_tasks_metrics_and_outputs(task_bundle_factory, tmp_path):
    from roberta_deploy.atomic import OutputFolder
    from roberta_deploy.data import read_dataset_chunks
    from roberta_deploy.jobs.infer import infer_to_folder

    rows = [{"text": text, "labels": [index % 4, (index + 1) % 4] if index % 3 else []}
            for index, text in enumerate(SAMPLES[:24])]
    data = write(tmp_path, "m.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    with Engine.load(task_bundle_factory("multilabel", "roberta", "onnxruntime")) as engine:
        dataset = read_dataset(data, task=engine.task.kind, label_names=engine.label_names)
        output = OutputFolder(tmp_path / "out")
        with output:  # streamed 10 rows at a time, as `infer` does
            report = infer_to_folder(engine, read_dataset_chunks(data, task=engine.task.kind,
                                                                 label_names=engine.label_names, chunk_rows=10),
                                     output, threshold=0.4)
    scores = apply_function(report.predictions.logits, "sigmoid")
    assert report.metrics["task"] == MULTI_LABEL and report.metrics["threshold"] == 0.4
    expected = multilabel_metrics(np.array([[label in row["labels"] for label in range(4)] for row in rows]),
                                  scores >= 0.4, LABEL_NAMES)
    assert report.metrics["micro_f1"] == pytest.approx(expected["micro_f1"])
    first = json.loads((tmp_path / "out" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()[1])
    assert first["labels"] == [name for name, score in zip(LABEL_NAMES, scores[1]) if score >= 0.4]
    assert first["gold"] == [1, 2] and len(first["scores"]) == 4
    with pytest.raises(UsageError, match="--threshold 1.5"):
        classify_dataset(engine, dataset, threshold=1.5)

    pairs = write(tmp_path, "sts.tsv", "sentence1\tsentence2\tlabel\n" + "".join(
        f"{a}\t{b}\t{index % 5}.5\n" for index, (a, b) in enumerate(PAIRS[:12])))
    with Engine.load(task_bundle_factory("regression", "bert", "openvino")) as engine:
        dataset = read_dataset(pairs, task=engine.task.kind, text_pairs=engine.task.text_pairs)
        report = classify_dataset(engine, dataset)
    assert report.metrics["text_pairs"] and report.predictions.values.shape == (12,)
    assert report.metrics["pearson"] == pytest.approx(regression_metrics(dataset.labels,
                                                                         report.predictions.logits[:, 0])["pearson"])


def test_eval_tabulates_and_charts_the_tasks_measures(task_exports, tmp_path):
    from roberta_deploy.jobs.evaluate import EvalOptions, evaluate

    data = write(tmp_path, "sts.jsonl", "".join(json.dumps({"query": a, "passage": b, "label": index % 2},
                                                           ensure_ascii=False) + "\n"
                                                for index, (a, b) in enumerate(PAIRS)))
    report = evaluate(EvalOptions(model="unused", data=data, output=tmp_path / "eval", backend="onnxruntime",
                                  precisions=("fp32", "int8"), batch_sizes=(1, 8),
                                  export_dir=task_exports[("cross-encoder", "bert")].folder))
    assert report.task == REGRESSION and report.text_pairs
    assert [(row.precision, row.batch_size) for row in report.rows] == [
        ("fp32", 1), ("fp32", 8), ("int8", 1), ("int8", 8)]
    for row in report.rows:
        assert set(row.measures) == {"pearson", "spearman", "mse"} and row.agreement_with_fp32 >= 0.9
    written = json.loads((tmp_path / "eval" / "accuracy.json").read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(report.to_json()))
    assert written["rows"][0]["pearson"] == report.rows[0].details["pearson"] and "details" not in written["rows"][0]
    markdown = (tmp_path / "eval" / "accuracy.md").read_text(encoding="utf-8")
    assert "| pearson | spearman | mse |" in markdown and (tmp_path / "eval" / "report.html").is_file()
    scatter = report.predicted_vs_gold
    assert scatter["batch_size"] == 8 and scatter["gold"] == [float(index % 2) for index in range(len(PAIRS))]
    assert set(scatter["predicted"]) == {"fp32", "int8"} and all(len(points) == len(PAIRS)
                                                                 for points in scatter["predicted"].values())
    page = (tmp_path / "eval" / "report.html").read_text(encoding="utf-8")
    for chart in ("chart-correlation", "chart-error", "chart-predicted-vs-gold", "chart-throughput-batch"):
        assert f'<figure id="{chart}"' in page

    data = write(tmp_path, "m.jsonl", "".join(json.dumps({"text": text, "labels": [index % 4, (index + 1) % 4]},
                                                         ensure_ascii=False) + "\n"
                                              for index, text in enumerate(SAMPLES[:12])))
    report = evaluate(EvalOptions(model="unused", data=data, output=tmp_path / "eval-m", backend="onnxruntime",
                                  precisions=("fp32",), batch_sizes=(4,),
                                  export_dir=task_exports[("multilabel", "bert")].folder))
    assert report.task == MULTI_LABEL and "predicted_vs_gold" not in report.to_json()
    assert set(report.rows[0].measures) == {"micro-F1", "macro-F1", "exact match"}
    page = (tmp_path / "eval-m" / "report.html").read_text(encoding="utf-8")
    for chart in ("chart-measures", "chart-per-label-f1", "chart-throughput-batch"):
        assert f'<figure id="{chart}"' in page


def test_cli_infer_prints_and_writes_each_tasks_results(task_bundle_factory, tmp_path):
    from typer.testing import CliRunner

    from roberta_deploy.cli import app

    runner = CliRunner()
    data = write(tmp_path, "m.tsv", "text\tlabels\n" + "".join(f"{text}\t{index % 4},{(index + 2) % 4}\n"
                                                               for index, text in enumerate(SAMPLES[:10])))
    result = runner.invoke(app, ["infer", "--bundle", str(task_bundle_factory("multilabel", "bert", "openvino")),
                                 "--data", str(data), "--output", str(tmp_path / "m"), "--threshold", "0.3",
                                 "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert "micro-F1" in result.output and "exact match" in result.output and "(threshold 0.3)" in result.output
    header = (tmp_path / "m" / "predictions.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "index,line,text,labels,truncated,gold,score_service,score_room,score_food,score_price"
    data = write(tmp_path, "s.jsonl", "".join(json.dumps({"query": a, "passage": b, "label": float(index)},
                                                         ensure_ascii=False) + "\n" for index, (a, b) in enumerate(PAIRS)))
    result = runner.invoke(app, ["infer", "--bundle", str(task_bundle_factory("cross-encoder", "bert", "openvino")),
                                 "--data", str(data), "--output", "-"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(PAIRS) and 0 < rows[0]["score"] < 1 and rows[0]["text_pair"] == PAIRS[0][1]
    assert "pearson" in result.output
    result = runner.invoke(app, ["infer", "--bundle", str(task_bundle_factory("pairs", "bert", "openvino")),
                                 "--data", str(write(tmp_path, "one.tsv", "label\ttext_a\n1\t甲\n")), "--output", "-"])
    assert result.exit_code == 2 and "no second text column" in result.output


def test_bundles_without_a_task_load_as_single_label_and_unknown_tasks_are_refused(task_bundle_factory, tmp_path):
    import shutil

    from roberta_deploy.errors import BundleError

    bundle = tmp_path / "old"
    shutil.copytree(task_bundle_factory("pairs", "bert", "onnxruntime"), bundle)
    manifest_path = bundle / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    for key in ("task", "problem_type", "text_pairs"):  # as bundles written before issue 13
        del manifest[key]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with Engine.load(bundle) as engine:
        assert (engine.task.kind, engine.task.text_pairs, engine.task.score_function) == (SINGLE_LABEL, None, "softmax")
        assert engine.predict(PAIRS[:2]).scores.shape == (2, 3)
    manifest["task"] = "ranking"
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(BundleError, match="task 'ranking' is not one of"):
        Engine.load(bundle)


def test_deploy_refuses_to_rank_a_model_without_accuracy_before_any_build(task_checkpoints, tmp_path):
    from typer.testing import CliRunner

    from roberta_deploy.cli import app

    data = write(tmp_path, "m.jsonl", '{"text": "甲", "labels": [0]}\n')
    result = CliRunner().invoke(app, ["deploy", "--model", str(task_checkpoints[("multilabel", "bert")]),
                                      "--data", str(data), "--output", str(tmp_path / "out"), "--no-serve"])
    assert result.exit_code == 2 and "a multi_label_classification model has no accuracy" in result.output
    assert not (tmp_path / "out").exists()
