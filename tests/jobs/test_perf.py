"""perf's library side: progress reported while it runs, percentiles asked for, every call recorded."""

from roberta_deploy.jobs.perf import PerfOptions, parse_percentiles, run_benchmark


def test_progress_is_reported_through_warm_up_and_timing(bundle_factory):
    seen = []
    report = run_benchmark(PerfOptions(bundle=bundle_factory("openvino", "fp32"), duration=0.5, warmup=0.3,
                                       percentiles=parse_percentiles("50,99.9"), record_times=True),
                           on_progress=lambda phase, elapsed, planned: seen.append((phase, elapsed, planned)))
    phases = [phase for phase, _, _ in seen]
    assert "warm-up" in phases and "timing" in phases
    assert phases.index("timing") > max(index for index, phase in enumerate(phases) if phase == "warm-up")
    timing = [(elapsed, planned) for phase, elapsed, planned in seen if phase == "timing"]
    assert [elapsed for elapsed, _ in timing] == sorted(elapsed for elapsed, _ in timing)
    assert {planned for _, planned in timing} == {0.5}
    assert len(report.times) == report.calls
    assert {"p50", "p99.9", "p90", "p95", "p99"} <= set(report.latency_ms)
    assert report.to_json()["times"] == report.times and "rounds" not in report.to_json()
