"""measurement.py: the statistics (checked against values worked out by hand), the interleaved rounds (order,
growth while the leaders overlap, the cap, busy rounds repeated), and the rule that turns intervals into a choice."""

from __future__ import annotations

import math
import time

import pytest

from roberta_deploy import measurement
from roberta_deploy.measurement import (AccuracyGate, Interval, PairedComparison, TimingPlan, compare_paired,
                                        exact_mcnemar, median_interval, rank_by_speed, texts_to_resolve,
                                        time_interleaved, wilson_interval)


def test_the_median_interval_is_the_order_statistic_interval_with_its_true_coverage():
    five = median_interval([5, 1, 4, 2, 3])
    # n = 5: no k reaches 95%, so the whole range, whose coverage is 1 - 2 / 2^5.
    assert (five.value, five.low, five.high) == (3, 1, 5) and five.confidence == pytest.approx(1 - 2 / 32)
    twenty = median_interval(range(20))
    # n = 20: k = 6 is the largest with 1 - 2 P(B(20, 1/2) <= 5) >= 95% (0.9586).
    coverage = 1 - 2 * sum(math.comb(20, i) for i in range(6)) / 2 ** 20
    assert (twenty.value, twenty.low, twenty.high) == (9.5, 5, 14) and twenty.confidence == pytest.approx(coverage)
    assert coverage >= 0.95 > 1 - 2 * sum(math.comb(20, i) for i in range(7)) / 2 ** 20


def test_wilson_interval_and_exact_mcnemar_match_worked_values():
    accuracy = wilson_interval(56, 74)
    assert accuracy.value == pytest.approx(56 / 74)
    assert (accuracy.low, accuracy.high) == pytest.approx((0.6479, 0.8402), abs=1e-4)
    assert wilson_interval(74, 74).high == 1.0 and wilson_interval(74, 74).low < 1.0
    assert exact_mcnemar(0, 6) == pytest.approx(2 / 64) and exact_mcnemar(0, 5) == pytest.approx(2 / 32)
    assert exact_mcnemar(3, 3) == 1.0 and exact_mcnemar(0, 0) == 1.0
    comparison = compare_paired([1, 0, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0])
    # Texts 1 and 3: the labels differ and only the reference matches gold; text 2: both wrong alike.
    assert (comparison.disagreements, comparison.only_reference_right, comparison.only_candidate_right) == (2, 2, 0)
    assert comparison.points_vs_reference == pytest.approx(-40.0) and comparison.disagreement_points == 40.0


def test_a_budget_the_texts_cannot_resolve_is_judged_by_agreement_and_says_so():
    assert texts_to_resolve(0.5) == 1200 and texts_to_resolve(2.0) == 300 and texts_to_resolve(0) is None
    small = AccuracyGate(0.5, 74, texts_to_resolve(0.5))
    assert not small.resolved
    assert small.note() == ("74 held-back texts cannot resolve a 0.5-point budget (one text is 1.35 points; 1,200 "
                            "labelled texts would): agreement with fp32 is the gate instead")
    one_flip_to_the_better = PairedComparison(74, 1, 0, 1, 1.0)
    assert not small.within(one_flip_to_the_better)  # 1.35 points of disagreement, whatever the labels say
    assert small.within(PairedComparison(74, 0, 0, 0, 1.0))
    large = AccuracyGate(0.5, 1200, texts_to_resolve(0.5))
    assert large.resolved and large.note() is None
    assert large.within(PairedComparison(1200, 20, 6, 6, 1.0))  # 20 flips, no net loss
    assert not large.within(PairedComparison(1200, 7, 7, 0, exact_mcnemar(7, 0)))  # 0.58 points lost
    assert "0.58 accuracy points below fp32" in large.why_not(PairedComparison(1200, 7, 7, 0, 0.0))


def test_a_faster_candidate_wins_only_clear_of_the_others_round_by_round():
    preference = {"fp32": 0, "bf16": 1, "int8": 2}.__getitem__
    # Load that varies from round to round slows everyone in it: each alone overlaps, the ratio does not.
    load = [1.0, 0.5, 0.8, 0.4, 0.9, 0.6, 1.0]
    clear = rank_by_speed({"fp32": [100 * f for f in load], "int8": [130 * f for f in load]}, preference)
    assert median_interval([100 * f for f in load]).overlaps(median_interval([130 * f for f in load]))
    assert (clear.chosen, clear.by_preference, clear.tied) == ("int8", False, ("int8",))
    assert clear.behind_fastest["fp32"].value == pytest.approx(1.3)
    tie = rank_by_speed({"fp32": [100, 100, 100, 100, 100], "bf16": [104, 99, 130, 101, 100],
                         "int8": [103, 80, 140, 98, 120]}, preference)
    assert tie.fastest == "int8" and tie.by_preference and set(tie.tied) == {"fp32", "bf16", "int8"}
    assert tie.chosen == "fp32"  # the tie goes to the more exact precision
    partial = rank_by_speed({"fp32": [100] * 5, "bf16": [150, 155, 145, 160, 150], "int8": [160, 150, 170, 158, 149]},
                            preference)
    assert partial.chosen == "bf16" and set(partial.tied) == {"bf16", "int8"}


def fake_work(order: list[str], name: str, seconds_per_call: float):
    def work() -> int:
        order.append(name)
        time.sleep(seconds_per_call)
        return 1

    return work


def test_rounds_interleave_rotate_and_stop_at_the_minimum_when_separated():
    calls: list[str] = []
    plan = TimingPlan(round_seconds=0.02, min_rounds=3, max_seconds=10, warmup_seconds=0.0)
    timings = time_interleaved({name: fake_work(calls, name, 0.005) for name in "ABC"}, plan,
                               until_separated=lambda timings: True)
    assert all(len(timing.rounds) == 3 for timing in timings.values())
    turns = [name for index, name in enumerate(calls) if index == 0 or calls[index - 1] != name]
    assert turns == list("ABC" "ABC" "BCA" "CAB")  # warm-up turns, then each round starts one later
    for timing in timings.values():
        assert all(0 <= round_.others_cpu_share <= 1 and round_.items >= 1 for round_ in timing.rounds)
        assert timing.rate.low <= timing.rate.value <= timing.rate.high


def test_rounds_grow_while_the_leaders_overlap_up_to_the_cap():
    plan = TimingPlan(round_seconds=0.02, min_rounds=2, max_seconds=0.5, warmup_seconds=0.0)
    started = time.perf_counter()
    timings = time_interleaved({name: fake_work([], name, 0.004) for name in "AB"}, plan,
                               until_separated=lambda timings: False)
    elapsed = time.perf_counter() - started
    rounds = len(timings["A"].rounds)
    assert rounds > 2 and len(timings["B"].rounds) == rounds
    assert elapsed < 0.5 + 0.2  # stops before a round would pass the cap (one round's slack for a busy machine)
    grown = time_interleaved({name: fake_work([], name, 0.004) for name in "AB"}, plan,
                             until_separated=lambda timings: len(timings["A"].rounds) >= 4)
    assert len(grown["A"].rounds) == 4


def test_a_busy_round_is_repeated_once_while_repeats_are_few_and_every_busy_round_is_counted(monkeypatch):
    busy = {"share": 0.9}
    real_exit = measurement.CpuLoad.__exit__

    def pretend(self, *exception):
        real_exit(self, *exception)
        self.others_share = busy["share"]

    monkeypatch.setattr(measurement.CpuLoad, "__exit__", pretend)
    plan = TimingPlan(round_seconds=0.01, min_rounds=2, max_seconds=5, warmup_seconds=0.0)
    timings = time_interleaved({"A": fake_work([], "A", 0.002)}, plan)
    # The first busy round is repeated; the second is not (repeats would pass a quarter of the rounds): flagged.
    assert [round_.repeated for round_ in timings["A"].rounds] == [True, False]
    assert timings["A"].busy_rounds == 2 and timings["A"].to_dict()["busy_rounds"] == 2
    busy["share"] = 0.0
    quiet = time_interleaved({"A": fake_work([], "A", 0.002)}, plan)
    assert not any(round_.repeated for round_ in quiet["A"].rounds) and quiet["A"].busy_rounds == 0
