"""The demo model that ships in the package: small, exportable, and accurate at every offered precision."""

import pytest

from roberta_deploy.defaults import DEMO_MODEL_DIR, DEMO_SAMPLES_PATH
from roberta_deploy.jobs.evaluate import EvalOptions, evaluate
from roberta_deploy.backends import offered_precisions


def test_demo_model_is_small_and_documented():
    weights = DEMO_MODEL_DIR / "model.safetensors"
    assert weights.stat().st_size <= 16 * 1024 * 1024
    readme = (DEMO_MODEL_DIR / "README.md").read_text(encoding="utf-8")
    assert "finetune" in readme and "sha256" in readme.lower()


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_demo_model_scores_on_the_dev_split_at_every_offered_precision(backend, dev_tsv, tmp_path):
    precisions = offered_precisions(backend)
    assert "fp32" in precisions and "int8" in precisions
    report = evaluate(EvalOptions(model=str(DEMO_MODEL_DIR), data=dev_tsv, output=tmp_path / "eval", backend=backend,
                                  precisions=precisions, batch_sizes=(32,), calibration_data=DEMO_SAMPLES_PATH))
    assert [row.precision for row in report.rows] == list(precisions)
    for row in report.rows:
        assert row.examples == 1200
        assert row.details["accuracy"] >= 0.88, row
        assert row.build_check["passed"], row.build_check
    fp32_accuracy = report.rows[0].details["accuracy"]
    for row in report.rows[1:]:
        assert fp32_accuracy - row.details["accuracy"] <= 0.005, row  # the fast precisions stay within 0.5 points
        assert row.agreement_with_fp32 >= 0.98
