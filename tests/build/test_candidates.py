"""build/candidates.py: the one loop (build each spec, a numerical rejection recorded and the rest going on) and
the rule `choose` applies to what was measured (the budget's gate, then speed with ties to the more exact
precision and the simpler backend). The loop on real bundles is covered by tests/jobs/test_deploy.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from roberta_deploy.build.candidates import (Candidate, CandidateSpec, Measurement, build_candidates, choose)
from roberta_deploy.errors import NumericalCheckError, UsageError
from roberta_deploy.measurement import AccuracyGate, Interval, texts_to_resolve

GOLD = [1, 0] * 50  # 100 texts


def measured(backend: str, precision: str, rate: tuple[float, float, float], flips: int = 0,
             label: str = "", rates: list[float] | None = None) -> Candidate:
    """A candidate whose labels equal gold except on its first `flips` texts; five rounds, by default the
    median `value` and the range low-high in the same rounds for everyone (so speeds compare cleanly)."""
    labels = [1 - gold if index < flips else gold for index, gold in enumerate(GOLD)]
    value, low, high = rate
    rates = rates or [low, value, high, value, value]
    return Candidate(CandidateSpec(backend, precision, label=label), bundle=Path("unused"), measurement=Measurement(
        predicted_labels=tuple(labels), accuracy=None, texts_per_second=Interval(value, low, high, 0.9375),
        throughput_rounds={"rounds": 5, "rates": rates}))


def test_the_loop_builds_every_spec_records_rejections_and_stops_on_other_errors():
    specs = [CandidateSpec("openvino", "fp32"), CandidateSpec("openvino", "int8"),
             CandidateSpec("onnxruntime", "int8", export_dir=Path("student"), label="student")]
    seen = []

    def build_one(spec):
        if spec.precision == "int8" and not spec.label:
            raise NumericalCheckError("max |diff| 0.9 past 0.1", "")
        return Path("bundles") / spec.folder_name

    built = build_candidates(specs, build_one, on_built=seen.append)
    assert [c.rejected for c in built] == [None, "max |diff| 0.9 past 0.1", None]
    assert built[2].bundle == Path("bundles/student-onnxruntime-int8") and built[2].spec.name == "student onnxruntime int8"
    assert seen == built

    def broken(spec):
        raise UsageError("no such backend", "")

    with pytest.raises(UsageError):
        build_candidates(specs, broken)


def test_a_clear_win_goes_to_the_fastest_within_the_budget():
    candidates = [measured("openvino", "fp32", (100, 95, 105)), measured("openvino", "bf16", (200, 190, 210)),
                  measured("openvino", "int8", (300, 290, 310), flips=1)]
    gate = AccuracyGate(2.0, 100, texts_to_resolve(2.0))  # 300 texts would resolve 2 points: gate by agreement
    choice = choose(candidates, GOLD, gate)
    assert choice.chosen is candidates[2] and not choice.tied_within_noise  # 1 point of disagreement: within 2
    assert choice.speedup_vs_reference == pytest.approx(3.0)
    assert candidates[2].comparison.disagreements == 1 and candidates[2].comparison.points_vs_reference == -1.0
    assert candidates[0].verdict.startswith("slower") and candidates[2].verdict.startswith("chosen: fastest")
    strict = [measured("openvino", "fp32", (100, 95, 105)), measured("openvino", "bf16", (200, 190, 210)),
              measured("openvino", "int8", (300, 290, 310), flips=1)]
    assert choose(strict, GOLD, AccuracyGate(0.5, 100, texts_to_resolve(0.5))).chosen is strict[1]
    assert strict[2].verdict == ("rejected: disagrees with fp32 on 1 of 100 texts (1.00 points), past the "
                                 "0.5-point budget")


def test_a_tie_within_noise_goes_to_the_more_exact_precision_then_the_simpler_backend():
    # Round by round the int8 lead comes and goes: 0.87x to 2.7x the others.
    candidates = [measured("openvino", "fp32", (100, 60, 140), rates=[140, 100, 60, 100, 100]),
                  measured("openvino", "bf16", (120, 90, 150), rates=[150, 120, 90, 120, 120]),
                  measured("openvino", "int8", (130, 95, 160), rates=[130, 95, 160, 130, 130]),
                  measured("onnxruntime", "fp32", (110, 70, 150), rates=[150, 110, 70, 110, 110])]
    choice = choose(candidates, None, None)
    assert choice.tied_within_noise and choice.chosen is candidates[3]  # fp32 on ONNX Runtime: fewest conversions
    assert {c.spec.name for c in choice.tied} == {c.spec.name for c in candidates}
    assert candidates[3].verdict.startswith("chosen: tied within noise with")
    assert candidates[2].verdict == "tied within noise with onnxruntime fp32, which is preferred"


def test_what_may_not_be_chosen_and_what_is_past_the_budget_get_their_verdicts():
    candidates = [Candidate(CandidateSpec("onnxruntime", "int8"), rejected="drifted past tolerance"),
                  measured("openvino", "fp32", (100, 95, 105)), measured("openvino", "int8", (300, 290, 310))]
    choice = choose(candidates, GOLD, None,
                    lambda c: None if c.spec.precision == "int8" else "--precision int8 was asked for")
    assert choice.reference is candidates[1] and choice.chosen is candidates[2]
    assert candidates[0].verdict == "rejected: drifted past tolerance"
    assert candidates[1].verdict == "not chosen: --precision int8 was asked for"
    with pytest.raises(NumericalCheckError, match="no candidate that may be chosen is within the 0.5-point"):
        choose([measured("openvino", "fp32", (100, 95, 105)), measured("openvino", "int8", (300, 290, 310), flips=3)],
               GOLD, AccuracyGate(0.5, 100, 1200), lambda c: None if c.spec.precision == "int8" else "no")


def test_a_measurement_survives_deployment_json():
    original = measured("openvino", "int8", (300, 290, 310)).measurement
    assert Measurement.from_dict(original.to_dict()) == original


def test_onnxruntime_offers_int8_once_per_mode_and_only_the_dynamic_one_is_renamed():
    from roberta_deploy.backends import get_backend
    from roberta_deploy.build.candidates import specs_for

    specs = specs_for(get_backend("onnxruntime"), ("fp32", "int8"))
    assert [(spec.name, spec.folder_name) for spec in specs] == [
        ("onnxruntime fp32", "onnxruntime-fp32"), ("onnxruntime int8", "onnxruntime-int8"),
        ("onnxruntime int8 dynamic", "onnxruntime-int8-dynamic")]
    assert CandidateSpec("onnxruntime", "int8", quantization="static") == specs[1]  # static is the default
    assert [spec.folder_name for spec in specs_for(get_backend("openvino"), ("int8",))] == ["openvino-int8"]


def test_a_tie_between_int8_modes_goes_to_the_calibrated_one():
    # Tied round by round; the calibrated build's outputs do not depend on what a text is batched with.
    candidates = [measured("onnxruntime", "fp32", (100, 90, 110)),
                  measured("onnxruntime", "int8", (200, 150, 250), rates=[150, 200, 250, 200, 200]),
                  measured("onnxruntime", "int8", (205, 160, 240), rates=[240, 205, 160, 205, 205])]
    candidates[2].spec = CandidateSpec("onnxruntime", "int8", quantization="dynamic")
    choice = choose(candidates, None, None)
    assert choice.chosen is candidates[1] and choice.tied_within_noise
    assert candidates[2].verdict == "tied within noise with onnxruntime int8, which is preferred"
