"""ONNX Runtime on all cores: one session with every thread running batches in turn, against runs side by side on
1-thread sessions (one per core, or one shared 1-thread session run from several threads at once).

A bundle's engine picks between these per run (backends/onnxruntime.py): a run that finds no other in progress
gets every thread; concurrent runs share a 1-thread-per-context session. This measures the rows/s each way on
the same inputs, in interleaved rounds (the order reversed every other round), with the spread of the rounds.

    python bench/ort_sessions.py --model <bundle>/model.onnx --shapes 1x64 8x64 16x128 1x256 --rounds 5 \\
        --seconds 2 --json docs/ort-sessions.json

Inputs are random token ids with a full attention mask; the timing depends on shape only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from report import machine_description  # noqa: E402

from roberta_deploy.atomic import atomic_write_text  # noqa: E402

MODES = {
    "one session, every thread, runs in turn": "alone",
    "a 1-thread session per core, side by side": "per-core",
    "one 1-thread session, runs side by side": "shared",
}


def session(model: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as the bundle's engine
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def feeds_for(names: list[str], rows: int, length: int, rng) -> dict:
    ids = rng.integers(1000, 20000, size=(rows, length)).astype(np.int64)
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {name: arrays[name] for name in names}


def rows_per_second(sessions: list, feeds: dict, seconds: float) -> float:
    """Every session in `sessions` runs `feeds` on its own thread for `seconds`; total rows/s."""
    counts = [0] * len(sessions)

    def work(number: int) -> None:
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            sessions[number].run(None, feeds)
            counts[number] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(number,)) for number in range(len(sessions))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) * next(iter(feeds.values())).shape[0] / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="An ONNX model, e.g. a bundle's model.onnx.")
    parser.add_argument("--shapes", nargs="+", default=["1x64", "8x64", "16x128", "1x256"], help="ROWSxLENGTH")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="Timed seconds per mode, shape and round.")
    parser.add_argument("--cores", type=int, default=None, help="Default: the cores this process may use.")
    parser.add_argument("--json", type=Path, default=None)
    arguments = parser.parse_args(argv)
    cores = arguments.cores or len(__import__("os").sched_getaffinity(0))
    shapes = [tuple(int(part) for part in text.split("x")) for text in arguments.shapes]
    per_core = [session(arguments.model, 1) for _ in range(cores)]
    shared = session(arguments.model, 1)
    candidates = {"alone": [session(arguments.model, cores)], "per-core": per_core, "shared": [shared] * cores}
    names = [entry.name for entry in shared.get_inputs()]
    rng = np.random.default_rng(0)
    results = {f"{rows}x{length}": {mode: [] for mode in candidates} for rows, length in shapes}
    for round_number in range(arguments.rounds):
        for rows, length in shapes:
            feeds = feeds_for(names, rows, length, rng)
            for mode_sessions in candidates.values():  # untimed: first-run allocations
                mode_sessions[0].run(None, feeds)
            order = list(candidates) if round_number % 2 == 0 else list(reversed(candidates))
            for mode in order:
                results[f"{rows}x{length}"][mode].append(rows_per_second(candidates[mode], feeds, arguments.seconds))
        print(f"round {round_number + 1}/{arguments.rounds} done", file=sys.stderr)
    print(f"rows/s, median (min-max) of {arguments.rounds} rounds; ratio per round against one session with every "
          f"thread; {cores} cores")
    print("| shape | " + " | ".join(MODES) + " | per core / alone, each round |")
    print("|---|" + "---:|" * len(MODES) + "---|")
    for shape, by_mode in results.items():
        cells = [f"{statistics.median(by_mode[mode]):.1f} ({min(by_mode[mode]):.1f}-{max(by_mode[mode]):.1f})"
                 for mode in MODES.values()]
        ratios = ", ".join(f"{b / a:.2f}" for a, b in zip(by_mode["alone"], by_mode["per-core"]))
        print(f"| {shape} | " + " | ".join(cells) + f" | {ratios} |")
    if arguments.json:
        report = {"machine": machine_description(), "command": " ".join(sys.argv), "cores": cores,
                  "rows_per_second": results}
        atomic_write_text(arguments.json, json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
