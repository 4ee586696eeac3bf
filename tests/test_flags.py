"""Counts and durations are checked in one place: zero, negative, NaN, infinity and more threads than
cores are one-line usage errors before any work."""

import math

import pytest

from roberta_deploy.errors import UsageError
from roberta_deploy.flags import check_flags
from roberta_deploy.machine import available_cores


@pytest.mark.parametrize("arguments, message", [
    ({"batch_size": 0}, "--batch-size 0 must be a positive integer"),
    ({"threads": 0}, "--threads 0 must be a positive integer"),
    ({"cpu_threads": -1}, "--cpu-threads -1 must be a positive integer"),
    ({"seq_len": 0}, "--seq-len 0 must be a positive integer"),
    ({"max_seq_length": 0}, "--max-seq-length 0 must be a positive integer"),
    ({"max_batch_tokens": 2**40}, "--max-batch-tokens 1099511627776 must be a positive integer"),
    ({"iterations": -1}, "--iterations -1 must be zero or a positive integer"),
    ({"duration": math.nan}, "--duration nan is not a finite number"),
    ({"duration": math.inf}, "--duration inf is not a finite number"),
    ({"warmup": -0.5}, "--warmup -0.5 must be at least 0"),
    ({"duration": 90_000.0}, "--duration 90000.0 is longer than a day"),
    ({"lr": 0.0}, "--lr 0.0 must be greater than 0"),
    ({"accuracy_budget": math.nan}, "--accuracy-budget nan is not a finite number"),
])
def test_out_of_range_values_are_usage_errors(arguments, message):
    with pytest.raises(UsageError) as caught:
        check_flags(arguments)
    assert caught.value.problem == message and caught.value.fix


def test_thread_counts_stop_at_the_cores_this_process_may_use():
    cores = available_cores()
    check_flags({"threads": cores, "cpu_threads": cores})
    with pytest.raises(UsageError, match=f"--cpu-threads {cores + 1} is more than the {cores} cores"):
        check_flags({"cpu_threads": cores + 1})


def test_defaults_and_other_parameters_pass():
    check_flags({"batch_size": None, "duration": 0.0, "iterations": 0, "seed": -3, "output": "x",
                 "bucketing": False, "warmup": 2.0, "lr": 1e-5})
