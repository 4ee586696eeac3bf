"""Bundles load in the usual tools: transformers reads their config and tokenizer, optimum-intel and Optimum
(ONNX Runtime) load them with from_pretrained, and transformers' pipeline then gives our results.

The Optimum tests run where those packages can be imported: installed here (extras `optimum-openvino`,
`optimum-onnxruntime`), or in the overlay folders that scripts/optimum_overlays.sh installs and names
in ROBERTA_DEPLOY_OPTIMUM_OPENVINO / ROBERTA_DEPLOY_OPTIMUM_ONNXRUNTIME (.ci/run does). They pin older
transformers than `dev` installs, so the loaders run in a subprocess with the overlay in front; the
bundles are built here, as a user would build them. The rest always runs.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import roberta_deploy
from roberta_deploy.manifest import read_manifest
from roberta_deploy.precision import TOLERANCES

TEXTS = ["房间干净整洁，床很舒服，前台服务热情。", "隔音太差了，一晚上没睡好。", "位置不错", "早餐一般，价格偏贵，不会再来。"]
COMBINATIONS = [("openvino", "fp32"), ("openvino", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


MODULES = {"openvino": "optimum.intel", "onnxruntime": "optimum.onnxruntime"}
EXTRAS = {"openvino": "optimum-openvino", "onnxruntime": "optimum-onnxruntime"}
LOADER = """
import json, sys
from transformers import AutoTokenizer, pipeline
backend, bundle, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if backend == "openvino":
    from optimum.intel import OVModelForSequenceClassification as Model
else:
    from optimum.onnxruntime import ORTModelForSequenceClassification as Model
classifier = pipeline("text-classification", model=Model.from_pretrained(bundle),
                      tokenizer=AutoTokenizer.from_pretrained(bundle))
print(json.dumps(classifier(texts, top_k=None)))
"""


def loader_path(backend: str) -> str | None:
    """The PYTHONPATH entry that makes Optimum for `backend` importable ("" if it is installed here)."""
    overlay = os.environ.get(f"ROBERTA_DEPLOY_OPTIMUM_{backend.upper()}")
    if overlay:
        return overlay
    try:
        return "" if importlib.util.find_spec(MODULES[backend]) is not None else None
    except (ImportError, ValueError):
        return None


def needs(backend: str):
    return pytest.mark.skipif(loader_path(backend) is None, reason=(
        f"{MODULES[backend]} not importable: pip install 'roberta-deploy[{EXTRAS[backend]}]', or "
        f'eval "$(scripts/optimum_overlays.sh)"'))


def optimum_results(backend: str, bundle) -> list:
    """transformers.pipeline over Optimum's model of `bundle`, run as a user would in their environment."""
    path = loader_path(backend)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", LOADER, backend, str(bundle), json.dumps(TEXTS)],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend, precision", COMBINATIONS)
def test_bundle_carries_config_and_tokenizer_that_transformers_reads(bundle_factory, backend, precision):
    from transformers import AutoConfig, AutoTokenizer

    bundle = bundle_factory(backend, precision)
    manifest = read_manifest(bundle, "bundle")  # the new files are hashed and verified like the others
    engine_file = "openvino_model.xml" if backend == "openvino" else "model.onnx"
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", engine_file} <= set(manifest["files"])
    config = AutoConfig.from_pretrained(str(bundle))
    assert [config.id2label[index] for index in range(config.num_labels)] == manifest["labels"]
    assert config.label2id == {name: index for index, name in enumerate(manifest["labels"])}
    with roberta_deploy.pipeline(bundle) as ours:
        expected = ours.engine.encoder.encode(TEXTS).token_ids
    tokenized = AutoTokenizer.from_pretrained(str(bundle))(TEXTS)["input_ids"]
    assert [list(ids) for ids in tokenized] == [ids.tolist() for ids in expected]


@pytest.mark.parametrize("backend, precision", [pytest.param(b, p, marks=needs(b)) for b, p in COMBINATIONS])
def test_optimum_loads_the_bundle_and_transformers_pipeline_agrees_with_ours(bundle_factory, backend, precision):
    bundle = bundle_factory(backend, precision)
    other = optimum_results(backend, bundle)
    with roberta_deploy.pipeline(bundle, function_to_apply="none", top_k=None) as raw, \
            roberta_deploy.pipeline(bundle, top_k=None) as ours:
        logits = np.array([[entry["score"] for entry in row] for row in raw(TEXTS)])
        mine = ours(TEXTS)
    # OpenVINO runs f32 models in bf16 by default on CPUs that have it; our engine pins the recorded hint.
    tolerance = max(TOLERANCES[precision].bound(logits), TOLERANCES["bf16"].bound(logits) if backend == "openvino"
                    else 0.0)
    assert len(mine) == len(other) == len(TEXTS)
    for my_row, their_row in zip(mine, other):
        mine_by_label = {entry["label"]: entry["score"] for entry in my_row}
        theirs_by_label = {entry["label"]: entry["score"] for entry in their_row}
        assert set(mine_by_label) == set(theirs_by_label) == set(json.loads(
            (bundle / "config.json").read_text())["label2id"])
        for label, score in mine_by_label.items():
            assert abs(score - theirs_by_label[label]) <= tolerance
        if abs(my_row[0]["score"] - my_row[1]["score"]) > 2 * tolerance:
            assert my_row[0]["label"] == their_row[0]["label"]
