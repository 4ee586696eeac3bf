"""The Batcher against a fake engine (no weights): order, merging under the token budget, failure
isolation, cancellation, overload, close. Every wait has a timeout, so a hang fails the test."""

import random
import threading

import numpy as np
import pytest
from fake_engine import FakeEngine, expected_logits

from roberta_deploy.errors import BackendError, InputDataError, NotReadyError, OverloadedError, UsageError
from roberta_deploy.runtime import Batcher, RequestResult
from roberta_deploy.runtime.batching import (ONLINE_ROW_COUNTS, default_token_budget, online_lengths,
                                             online_row_count)
from roberta_deploy.runtime.online import PADDING_ALLOWANCE

WAIT_S = 20  # generous: only a hang comes near it


def wait_until(condition, what: str) -> None:
    event = threading.Event()
    for _ in range(WAIT_S * 100):
        if condition():
            return
        event.wait(0.01)
    pytest.fail(f"timed out waiting until {what}")


def texts_of_lengths(*lengths):
    return ["字" * (length - 2) for length in lengths]


def test_every_context_runs_once_on_the_starting_thread_before_any_worker_exists():
    engine = FakeEngine(contexts=3)
    batcher = Batcher(engine)
    assert not batcher.ready and not batcher.running
    batcher.start()
    try:
        warm_up = engine.calls[:3]
        assert sorted(call["context"] for call in warm_up) == [0, 1, 2]
        assert {call["thread"] for call in warm_up} == {threading.current_thread().name}
        assert batcher.ready and batcher.running
    finally:
        batcher.close()
    assert not batcher.running and not batcher.ready



def test_a_server_batcher_runs_its_largest_batch_on_every_context_before_it_is_ready():
    # The largest online batch (max length, as many rows as the budget takes) sets a context's buffers; run
    # before any request, memory does not jump minutes into serving when such a batch first arrives.
    engine = FakeEngine(contexts=2, max_seq_length=32)
    with Batcher(engine, max_batch_tokens=100, max_batch_size=8) as batcher:
        assert {call["shape"] for call in engine.calls} == {(1, len("warm-up") + 2)}  # only the short warm-up text
    engine = FakeEngine(contexts=2, max_seq_length=32)
    batcher = Batcher(engine, max_batch_tokens=100, max_batch_size=8).start(reserve_largest_batch=True)
    try:
        shapes = [(call["context"], call["shape"]) for call in engine.calls]
        assert shapes[2:] == [(0, (3, 32)), (1, (3, 32))], shapes  # 100 // 32 rows of 32 tokens on each context
        assert batcher.submit("好").result(timeout=10).logits.shape == (1, 2)
    finally:
        batcher.close()

def test_concurrent_requests_get_their_own_rows_back_in_order_with_timings():
    engine = FakeEngine(contexts=2)
    rng = np.random.default_rng(0)
    requests = [["好" * int(length) for length in rng.integers(1, 40, size=rng.integers(1, 6))] for _ in range(60)]
    results: dict[int, RequestResult] = {}

    def client(numbers):
        futures = {number: batcher.submit(requests[number]) for number in numbers}
        for number, future in futures.items():
            results[number] = future.result(timeout=WAIT_S)

    with Batcher(engine, max_wait_ms=1) as batcher:
        threads = [threading.Thread(target=client, args=(range(start, 60, 4),)) for start in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        assert not any(thread.is_alive() for thread in threads)
        stats = batcher.stats
    assert sorted(results) == list(range(60))
    for number, result in results.items():
        np.testing.assert_allclose(result.logits, expected_logits(requests[number]), rtol=1e-6)
        assert result.token_lengths.tolist() == [min(len(text) + 2, 32) for text in requests[number]]
        assert result.truncated.tolist() == [len(text) + 2 > 32 for text in requests[number]]
        assert result.compute_tokens >= result.token_lengths.sum()
        timings = result.timings
        assert min(timings.tokenization_s, timings.queue_s, timings.inference_s) >= 0
        assert timings.total_s >= timings.queue_s and timings.total_s >= timings.tokenization_s
    assert stats.requests == 60 and stats.texts == sum(map(len, requests)) and stats.failed == 0


def test_waiting_requests_are_merged_into_length_bucketed_batches_under_the_token_budget():
    gate = threading.Event()
    engine = FakeEngine(contexts=1)
    seen = []
    with Batcher(engine, max_batch_tokens=128, max_batch_size=4, max_wait_ms=0) as batcher:
        engine.gate = gate  # after the warm-up
        batcher.add_batch_listener(seen.append)
        first = batcher.submit(texts_of_lengths(5))
        wait_until(lambda: len(engine.calls) == 2, "the first request is inside the engine")
        lengths = [30, 4, 29, 5, 31, 6, 28, 7, 3, 32]  # long and short arrive interleaved
        futures = [batcher.submit(text) for text in texts_of_lengths(*lengths)]
        assert batcher.queued_texts == len(lengths)
        gate.set()
        first.result(timeout=WAIT_S)
        results = [future.result(timeout=WAIT_S) for future in futures]
    assert [int(result.token_lengths[0]) for result in results] == lengths
    batches = engine.calls[2:]
    for batch in batches:
        rows, padded = batch["shape"]
        assert rows * padded <= 128 and rows <= 4
        # Padded only to the online length at or above its longest text (few shapes for the engine).
        longest = max(len(row) for row in batch["rows"])
        assert padded == min(length for length in online_lengths(engine.max_seq_length) if length >= longest)
    # Merged, and by length: the oldest request's batch takes the texts nearest its length.
    first_batch = sorted(len(row) for row in batches[0]["rows"])
    assert len(first_batch) == 4 and first_batch[0] >= 28 and 30 in first_batch  # 30 is the oldest
    second_batch = sorted(len(row) for row in batches[1]["rows"])
    assert len(second_batch) == 4 and second_batch[-1] <= 7 and 4 in second_batch  # 4 is the oldest short one
    # The one long text left over does not pad the last short one to its length: each runs at its own.
    assert [call["shape"] for call in batches[2:]] in ([(1, 16), (1, 32)], [(1, 32), (1, 16)])
    assert sum(stat.rows for stat in seen) == len(lengths) + 1
    assert all(stat.tokens == stat.rows * stat.padded_length for stat in seen)


def test_online_batches_come_in_few_shapes_whatever_the_requests_lengths():
    # Engines keep kernels per input shape (OpenVINO's CPU cache grew by gigabytes under every shape):
    # however requests arrive, the engine sees padded lengths from online_lengths and row counts from
    # ONLINE_ROW_COUNTS or a full batch, and every text still gets its own logits.
    engine = FakeEngine(contexts=2, max_seq_length=64, max_batch=16)
    rng = random.Random(0)
    requests = [["好" * rng.randint(1, 70) for _ in range(rng.randint(1, 5))] for _ in range(300)]
    with Batcher(engine, max_batch_tokens=256, max_batch_size=16, max_wait_ms=1) as batcher:
        results: dict[int, RequestResult] = {}

        def client(numbers):
            for number in numbers:
                results[number] = batcher.submit(requests[number]).result(timeout=WAIT_S)

        threads = [threading.Thread(target=client, args=(range(start, 300, 12),)) for start in range(12)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        assert not any(thread.is_alive() for thread in threads)
    for number, result in results.items():
        np.testing.assert_allclose(result.logits, expected_logits(requests[number], 64), rtol=1e-6)
    lengths = online_lengths(64)
    shapes = {call["shape"] for call in engine.calls[2:]}  # after the two warm-up calls
    for rows, padded in shapes:
        assert padded in lengths and rows * padded <= 256
        assert rows in ONLINE_ROW_COUNTS or rows == min(16, 256 // padded)
    assert sum(len(call["rows"]) for call in engine.calls[2:]) == sum(map(len, requests))


def test_online_batches_leave_out_rows_that_would_mostly_pad():
    # At a long max length the rows waiting span every length: a batch grown to the token budget around the
    # oldest row computed 2.25x the real tokens. Rows far longer than the batch's own wait for their own.
    gate = threading.Event()
    engine = FakeEngine(contexts=1, max_seq_length=512, max_batch=16)
    with Batcher(engine, max_batch_tokens=4096, max_batch_size=8, max_wait_ms=0) as batcher:
        engine.gate = gate  # after the warm-up
        first = batcher.submit(texts_of_lengths(20))
        wait_until(lambda: len(engine.calls) == 2, "the first request is inside the engine")
        lengths = [20, 300, 22, 310, 21, 18, 305, 140]
        futures = [batcher.submit(text) for text in texts_of_lengths(*lengths)]
        gate.set()
        first.result(timeout=WAIT_S)
        results = [future.result(timeout=WAIT_S) for future in futures]
    assert [int(result.token_lengths[0]) for result in results] == lengths
    classes = online_lengths(512)
    own_class = {length: min(c for c in classes if c >= length) for length in range(1, 513)}
    for call in engine.calls[2:]:
        rows, padded = call["shape"]
        row_lengths = [len(row) for row in call["rows"]]
        assert not (min(row_lengths) <= 22 and max(row_lengths) >= 140), row_lengths  # short and long apart
        assert rows * padded <= PADDING_ALLOWANCE * sum(own_class[length] for length in row_lengths)
    assert sorted(call["shape"] for call in engine.calls[2:]) == [(4, 32), (4, 320)]  # the 140 pads little there


def test_online_lengths_and_row_counts():
    assert online_lengths(128) == (16, 32, 48, 64, 80, 96, 112, 128)
    assert online_lengths(512)[-5:] == (256, 320, 384, 448, 512) and len(online_lengths(512)) == 16
    assert online_lengths(100)[-1] == 100 and online_lengths(8) == (8,)
    assert [online_row_count(rows, cap=21) for rows in (1, 5, 7, 11, 20, 21, 40)] == [1, 4, 4, 8, 16, 21, 21]


def test_the_token_budget_does_not_grow_past_128_token_texts():
    # At max length 512 the budget once allowed 16 x 512 batches: one took an OpenVINO context from 285 MB
    # to 1.7 GB. Now a 512 bundle batches 4 full-length texts, and as many tokens as a 128 bundle otherwise.
    assert default_token_budget(512, 32, 2) == default_token_budget(128, 32, 2) == 2048
    assert default_token_budget(64, 32, 2) == 1024 and default_token_budget(512, 1, 2) == 512
    shapes = {max_seq: {(online_row_count(rows, max(1, min(32, 2048 // length))), length)
                        for length in online_lengths(max_seq) for rows in range(1, 33)} for max_seq in (128, 512)}
    assert max(rows * length for rows, length in shapes[512]) <= 2048
    assert len(shapes[512]) <= 2 * len(shapes[128]) <= 100, {key: len(value) for key, value in shapes.items()}


def test_an_engine_that_prefers_smaller_runs_caps_the_default_budget_but_not_a_given_one():
    # ONNX Runtime computed more texts/s on runs of 1,024 tokens than on the 2,048 the default gives.
    assert default_token_budget(128, 32, 2, run_token_limit=1024) == 1024
    assert default_token_budget(512, 32, 1, run_token_limit=1024) == 1024
    assert default_token_budget(64, 32, 2, run_token_limit=4096) == 1024  # a cap, never a raise
    assert default_token_budget(512, 32, 2, run_token_limit=256) == 512  # one full-length text still fits
    engine = FakeEngine(max_seq_length=32, max_batch=16)
    engine.run_token_limit = 40
    with Batcher(engine, max_wait_ms=0) as batcher:
        assert batcher.max_batch_tokens == 40
        batcher.run(["a" * length for length in range(1, 31)])
    assert engine.calls and all(rows * length <= 40 for rows, length in (call["shape"] for call in engine.calls))
    with Batcher(engine, max_batch_tokens=100) as batcher:
        assert batcher.max_batch_tokens == 100


def test_a_failing_batch_fails_only_the_requests_in_it():
    gate = threading.Event()
    engine = FakeEngine(contexts=1)
    with Batcher(engine, max_batch_size=1, max_wait_ms=0) as batcher:
        engine.gate = gate  # after the warm-up
        blocker = batcher.submit("先")
        wait_until(lambda: len(engine.calls) == 2, "the first request is inside the engine")
        good_before, bad, good_after = batcher.submit("好的"), batcher.submit("坏!"), batcher.submit("好")
        gate.set()
        with pytest.raises(BackendError, match="simulated engine failure"):
            bad.result(timeout=WAIT_S)
        for future, text in ((blocker, "先"), (good_before, "好的"), (good_after, "好")):
            np.testing.assert_allclose(future.result(timeout=WAIT_S).logits, expected_logits([text]))
        assert batcher.stats.failed == 1
        # The worker lives on.
        assert batcher.submit("还好").result(timeout=WAIT_S).logits.shape == (1, 2)


def test_a_cancelled_request_is_dropped_before_the_engine_sees_it():
    gate = threading.Event()
    engine = FakeEngine(contexts=1)
    with Batcher(engine, max_wait_ms=0) as batcher:
        engine.gate = gate  # after the warm-up
        blocker = batcher.submit("先")
        wait_until(lambda: len(engine.calls) == 2, "the first request is inside the engine")
        kept, cancelled = batcher.submit("留下"), batcher.submit("取消了")
        assert cancelled.cancel()
        gate.set()
        blocker.result(timeout=WAIT_S)
        kept.result(timeout=WAIT_S)
        stats = batcher.stats
    computed_rows = [row for call in engine.calls for row in call["rows"]]
    assert len(computed_rows) == 3  # warm-up, blocker, kept: the cancelled text never ran
    assert stats.dropped == 1


def test_a_request_cancels_only_before_it_runs():
    from concurrent.futures import Future

    from roberta_deploy.runtime.online import OnlineRequest

    encoded = FakeEngine().encoder.encode(["好", "差"])
    waiting, running = (OnlineRequest(Future(), encoded, 2, ("neg", "pos"), 0.0, 0.0) for _ in range(2))
    assert waiting.cancel() and waiting.future.cancelled() and waiting.cancelled
    assert not waiting.cancel() and not waiting.claim()  # once is enough; its rows are never computed
    assert running.claim()
    assert not running.cancel() and not running.cancelled  # a batch inside the engine is not stopped
    running.deliver(np.arange(2), np.ones((2, 2), np.float32), 4, 0.0, 0.0)
    assert running.future.result(timeout=WAIT_S).logits.shape == (2, 2)


def test_submit_past_the_queue_bound_is_refused_as_overloaded():
    gate = threading.Event()
    engine = FakeEngine(contexts=1)
    with Batcher(engine, max_queued_texts=4, max_wait_ms=0) as batcher:
        engine.gate = gate  # after the warm-up
        blocker = batcher.submit("先")
        wait_until(lambda: len(engine.calls) == 2, "the first request is inside the engine")
        accepted = batcher.submit(["一", "二", "三"])
        with pytest.raises(OverloadedError, match="3 texts are already waiting"):
            batcher.submit(["四", "五"])
        also_accepted = batcher.submit("四")
        assert batcher.stats.rejected == 1
        gate.set()
        for future in (blocker, accepted, also_accepted):
            future.result(timeout=WAIT_S)


def test_close_drains_accepted_requests_and_then_refuses_new_ones():
    gate = threading.Event()
    engine = FakeEngine(contexts=1)
    batcher = Batcher(engine, max_wait_ms=0)
    with pytest.raises(NotReadyError, match="has not started"):
        batcher.submit("早")
    batcher.start()
    engine.gate = gate  # after the warm-up
    futures = [batcher.submit(text) for text in ("一", "二二", "三三三")]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    wait_until(lambda: not batcher.ready, "close has begun")
    with pytest.raises(NotReadyError, match="closing"):
        batcher.submit("晚")
    gate.set()
    closer.join(WAIT_S)
    assert not closer.is_alive() and not batcher.running
    for future, text in zip(futures, ("一", "二二", "三三三")):
        np.testing.assert_allclose(future.result(timeout=WAIT_S).logits, expected_logits([text]))


def test_close_without_drain_fails_waiting_requests():
    gate = threading.Event()
    engine = FakeEngine(contexts=1)
    batcher = Batcher(engine, max_wait_ms=0).start()
    engine.gate = gate  # after the warm-up
    blocker = batcher.submit("先")
    wait_until(lambda: len(engine.calls) == 2, "the first request is inside the engine")
    waiting = batcher.submit("等")
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    with pytest.raises(NotReadyError, match="closed before this request ran"):
        waiting.result(timeout=WAIT_S)
    gate.set()
    closer.join(WAIT_S)
    assert not closer.is_alive()
    blocker.result(timeout=WAIT_S)  # the batch already inside the engine still finished


def test_invalid_requests_are_refused_at_submit():
    engine = FakeEngine(contexts=1, max_seq_length=8)
    with Batcher(engine) as batcher:
        with pytest.raises(InputDataError, match="text 1 is empty"):
            batcher.submit(["好", "  "])
        with pytest.raises(InputDataError, match="holds no texts"):
            batcher.submit([])
        with pytest.raises(InputDataError, match="text 0 is longer than the model's 8 tokens"):
            batcher.submit("长" * 20, truncate=False)
        result = batcher.submit("长" * 20).result(timeout=WAIT_S)
        assert result.truncated.tolist() == [True] and result.token_lengths.tolist() == [8]
    with pytest.raises(UsageError, match="max_batch_tokens 4 is below max_seq_length 8"):
        Batcher(engine, max_batch_tokens=4)
    with pytest.raises(UsageError, match="max_queued_texts 0 must be at least 1"):
        Batcher(engine, max_queued_texts=0)


def test_run_plans_the_dataset_longest_first_and_returns_input_order():
    engine = FakeEngine(contexts=2)
    rng = np.random.default_rng(1)
    texts = ["评" * int(length) for length in rng.integers(1, 60, size=300)]
    done = []
    with Batcher(engine) as batcher:
        predictions = batcher.run(texts, batch_size=8, on_batch_done=done.append)
    np.testing.assert_allclose(predictions.logits, expected_logits(texts), rtol=1e-6)
    assert sum(done) == 300
    assert predictions.truncated.sum() == sum(len(text) + 2 > 32 for text in texts)
    # Longest first, as each worker takes batches from the queue in plan order. Across the two workers the
    # calls may interleave (a worker can be descheduled between taking a batch and starting it), so the order
    # is checked per context, not over every call.
    calls = engine.calls[2:]
    for context in {call["context"] for call in calls}:
        padded = [call["shape"][1] for call in calls if call["context"] == context]
        assert padded == sorted(padded, reverse=True), padded
    lengths = [call["shape"][1] for call in calls]
    assert max(lengths) == 32 and min(lengths) < 32


def test_a_failing_batch_stops_its_run_and_the_batcher_keeps_serving():
    engine = FakeEngine(contexts=2)
    texts = ["好" * (n % 20 + 1) for n in range(100)] + ["坏!"]
    with Batcher(engine) as batcher:
        with pytest.raises(BackendError, match="simulated engine failure"):
            batcher.run(texts, batch_size=4)
        predictions = batcher.run(texts[:100], batch_size=4)
        np.testing.assert_allclose(predictions.logits, expected_logits(texts[:100]), rtol=1e-6)
        with pytest.raises(UsageError, match="one string"):
            batcher.run("好")


def test_run_chunks_gives_each_chunk_its_results_in_order_with_the_next_one_already_queued():
    engine = FakeEngine(contexts=2)
    rng = np.random.default_rng(2)
    chunks = [["评" * int(length) for length in rng.integers(1, 60, size=size)] for size in (50, 1, 73, 20)]
    read = []

    def lazily():  # records how far the batcher has read when each chunk comes back
        for chunk in chunks:
            read.append(len(read))
            yield chunk

    with Batcher(engine) as batcher:
        results = []
        for predictions in batcher.run_chunks(lazily(), batch_size=8):
            results.append((predictions, len(read)))
    for index, (chunk, (predictions, chunks_read)) in enumerate(zip(chunks, results)):
        np.testing.assert_allclose(predictions.logits, expected_logits(chunk), rtol=1e-6)
        assert chunks_read == min(index + 2, len(chunks))  # one chunk ahead, never the whole input
    assert len(results) == len(chunks)


def test_a_bad_chunk_ends_run_chunks_with_its_error_and_the_batcher_keeps_serving():
    engine = FakeEngine(contexts=2)
    with Batcher(engine) as batcher:
        results = batcher.run_chunks([["好"] * 30, ["好", "  "], ["好"] * 30], batch_size=4)
        with pytest.raises(InputDataError, match="text 1 is empty"):
            list(results)
        with pytest.raises(BackendError, match="simulated engine failure"):
            list(batcher.run_chunks([["好"] * 10, ["坏!"], ["好"] * 10], batch_size=4))
        assert [len(p) for p in batcher.run_chunks([["好"] * 3, ["好"]])] == [3, 1]


def test_a_run_chunks_iterator_left_open_does_not_hold_up_close():
    # A caller that stops iterating without closing (an exception whose traceback keeps the iterator
    # alive) must not make close() wait for it: that hung `infer` on a full disk.
    engine = FakeEngine(contexts=2)
    batcher = Batcher(engine).start()
    results = batcher.run_chunks([["好"] * 5, ["好"] * 5, ["好"] * 5])
    assert len(next(results)) == 5  # the second chunk is queued too
    closer = threading.Thread(target=batcher.close)
    closer.start()
    closer.join(WAIT_S)
    assert not closer.is_alive(), "close() waited for a suspended run_chunks"
    assert len(next(results)) == 5  # what was queued before close() was still computed
    with pytest.raises(NotReadyError):
        next(results)


def test_a_start_interrupted_between_two_workers_leaves_no_worker_running(monkeypatch):
    # Ctrl-C can land while start() launches its workers; a worker that outlives the start() that raised
    # is never closed, and one left inside the engine at exit hung `infer` or aborted it (SIGABRT).
    engine = FakeEngine(contexts=3)
    batcher = Batcher(engine)
    started = []
    original_start = threading.Thread.start

    def interrupted_start(thread):
        if thread.name.startswith("batcher-context-") and started:
            raise KeyboardInterrupt
        started.append(thread)
        original_start(thread)

    monkeypatch.setattr(threading.Thread, "start", interrupted_start)
    with pytest.raises(KeyboardInterrupt):
        batcher.start()
    monkeypatch.undo()
    assert len(started) == 1 and not started[0].is_alive() and not batcher.running
    with pytest.raises(NotReadyError):
        batcher.submit("好")


def test_a_listener_that_raises_is_counted_and_changes_nothing():
    engine = FakeEngine(contexts=1)

    def broken(stats):
        raise ValueError("listener bug")

    with Batcher(engine) as batcher:
        batcher.add_batch_listener(broken)
        result = batcher.submit(["好", "不好"]).result(timeout=WAIT_S)
        np.testing.assert_allclose(result.logits, expected_logits(["好", "不好"]))
        wait_until(lambda: batcher.stats.listener_errors == 1, "the listener error is counted")
