"""Stress test for the first-inference hang: many fresh processes, each loading an engine with two or
more contexts and running them concurrently at once, each under a timeout.

The hang (issue 8) needs a fresh process: it lives in a one-time, process-wide initialization inside
OpenVINO's Python bindings (pybind11's numpy API, first touched by two threads at once). So each trial
is a new interpreter; a trial that does not finish within --timeout is counted as hung and killed.

Modes (what each child does after loading the engine):
  contexts  create the contexts, then release them into `context.run` together (fixed token ids) from
            threads held at a barrier: what any caller with its own threads does.
  predict   `engine.predict(texts)`: the library's own path (the Batcher now; InferenceQueue before).
  infer     `python -m roberta_deploy infer --bundle B --data FILE` with the CLI's defaults (two contexts on
            a 2-core machine): the command the hang was first seen in.
  race      two such `infer` runs at once on one --output (tests/cli/test_cli_hostile.py's race): ok when one
            exits 0 with a whole output and the other 2; one racing run was once seen to hang.
  sigint    one `infer` over --data repeated 30 times, sent SIGINT at a random moment after it reserved its
  sigterm   output (0.2-3 s): ok on exit 130 (143) with nothing left and no "terminate called"; the test
            once exited -6 (SIGABRT, "terminate called without an active exception").

--checkout runs the children against another source tree (e.g. the commit before the fix, unpacked
with `git archive`), so "before" and "after" come from one command on one machine:

    git archive 3f480ad | tar -x -C /tmp/before
    python bench/stress_hang.py --processes 200 --checkout /tmp/before --checkout .
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import sys, threading
import numpy as np
from roberta_deploy.runtime.engine import Engine

bundle, mode, contexts = sys.argv[1], sys.argv[2], int(sys.argv[3])
texts = ["酒店很干净，服务也好", "房间太吵了，不会再来", "一般般吧", "早餐很丰富"] * 4
engine = Engine.load(bundle, contexts=contexts, cpu_threads=contexts)
if mode == "contexts":
    runners = [engine.create_context() for _ in range(contexts)]
    # Fixed token ids: the same inputs in every process.
    input_ids = np.full((4, 16), 1000, dtype=np.int64)
    input_ids[:, 0], input_ids[:, -1] = 101, 102
    barrier = threading.Barrier(contexts)
    errors = []

    def go(context):
        try:
            barrier.wait()
            context.run(input_ids, np.ones_like(input_ids), np.zeros_like(input_ids))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=go, args=(context,), daemon=True) for context in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
else:
    engine.predict(texts, batch_size=4)
print("ok")
"""


def build_bundle(folder: Path, backend: str) -> Path:
    """A bundle of the demo model (fp32), built with the current code."""
    sys.path.insert(0, str(REPO))
    from roberta_deploy.build.bundle import BuildOptions, build_engine
    from roberta_deploy.build.export import ExportOptions, export_model
    from roberta_deploy.defaults import DEMO_MODEL_DIR

    export = export_model(ExportOptions(model=str(DEMO_MODEL_DIR), output=folder / "export"))
    bundle = folder / f"bundle-{backend}"
    build_engine(BuildOptions(export_dir=export.folder, output=bundle, backend=backend, precision="fp32"))
    return bundle


def trial(checkout: Path, bundle: Path, mode: str, contexts: int, timeout: float, data: Path) -> str:
    """'ok', 'hung' or 'failed: ...' for one fresh process."""
    environment = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"}
    if mode == "race":
        return race_trial(bundle, data, environment, timeout)
    if mode in ("sigint", "sigterm"):
        return signal_trial(bundle, data, environment, timeout, signal.SIGINT if mode == "sigint" else signal.SIGTERM)
    with tempfile.TemporaryDirectory(prefix="stress-trial-") as scratch:
        if mode == "infer":
            command = [sys.executable, "-m", "roberta_deploy", "infer", "--bundle", str(bundle), "--data", str(data),
                       "--output", str(Path(scratch) / "out"), "--threads", str(contexts)]
        else:
            command = [sys.executable, "-c", CHILD, str(bundle), mode, str(contexts)]
        try:
            # A neutral working directory: `python -c` puts it first on sys.path, where a source tree would
            # shadow the --checkout being measured.
            completed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout,
                                       cwd=scratch)
        except subprocess.TimeoutExpired:
            return "hung"
    if completed.returncode == 0 and (mode == "infer" or completed.stdout.strip().endswith("ok")):
        return "ok"
    return "failed: " + (completed.stderr.strip().splitlines() or ["exit %d" % completed.returncode])[-1]


def _infer(bundle: Path, data: Path, output: Path, environment: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "roberta_deploy", "infer", "--bundle", str(bundle), "--data",
                             str(data), "--output", str(output)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**environment, "PYTHONFAULTHANDLER": "1"}, cwd=output.parent)


def _finish(processes: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]] | None:
    """(exit code, stderr) of each, or None when one is still running after `timeout` (all are killed)."""
    deadline = time.monotonic() + timeout
    results = []
    for process in processes:
        try:
            _, stderr = process.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for other in processes:
                _record_stacks(other)
                other.kill()
                other.communicate()
            return None
        results.append((process.returncode, stderr))
    return results


def _record_stacks(process: subprocess.Popen) -> None:
    """Native stacks of every thread (gdb) and Python stacks (faulthandler on SIGABRT), appended to
    stress-hangs.log beside this script's working folder, for a hang to be read afterwards."""
    if process.poll() is not None:
        return
    with open(Path.cwd() / "stress-hangs.log", "a", encoding="utf-8") as log:
        log.write(f"==== {process.args} (pid {process.pid}), {time.strftime('%H:%M:%S')}\n")
        try:
            native = subprocess.run(["gdb", "-p", str(process.pid), "-batch", "-ex", "thread apply all bt"],
                                    capture_output=True, text=True, timeout=120).stdout
        except (OSError, subprocess.TimeoutExpired) as error:
            native = f"gdb failed: {error}"
        log.write(native)
        process.send_signal(signal.SIGABRT)  # PYTHONFAULTHANDLER=1: every thread's Python stack on stderr
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            stderr = "(no answer to SIGABRT)"
        log.write("---- stderr\n" + (stderr or "") + "\n")


def _aborted(code: int, stderr: str) -> bool:
    return code in (-signal.SIGABRT, 128 + signal.SIGABRT) or "terminate called" in stderr


def race_trial(bundle: Path, data: Path, environment: dict, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="stress-race-") as scratch:
        output = Path(scratch) / "out"
        results = _finish([_infer(bundle, data, output, environment) for _ in range(2)], timeout)
        if results is None:
            return "hung"
        if any(_aborted(code, stderr) for code, stderr in results):
            return "failed: aborted " + " / ".join(stderr.strip().splitlines()[-1:][0] if stderr.strip() else str(code)
                                                   for code, stderr in results)
        codes = sorted(code for code, _ in results)
        if codes != [0, 2]:
            return f"failed: exit codes {codes}: " + " / ".join(stderr.strip()[-200:] for _, stderr in results)
        expected = sum(1 for line in data.read_text(encoding="utf-8").splitlines()[1:] if line.strip())
        written = len((output / "predictions.jsonl").read_text(encoding="utf-8").splitlines())
        leftovers = [name for name in os.listdir(scratch) if name != "out"]
        if written != expected or leftovers:
            return f"failed: {written} of {expected} rows written, left {leftovers}"
    return "ok"


def signal_trial(bundle: Path, data: Path, environment: dict, timeout: float, sent: int) -> str:
    expected_code, expected_words = (130, "interrupted") if sent == signal.SIGINT else (143, "terminated")
    with tempfile.TemporaryDirectory(prefix="stress-signal-") as scratch:
        many = Path(scratch) / "many.tsv"
        lines = data.read_text(encoding="utf-8").split("\n", 1)
        many.write_text(lines[0] + "\n" + lines[1] * 30, encoding="utf-8")
        work = Path(scratch) / "work"
        work.mkdir()
        output = work / "out"
        process = _infer(bundle, many, output, environment)
        deadline = time.monotonic() + timeout
        while not (work / ".out.lock").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the output is reserved: the command is past its checks
        time.sleep(random.uniform(0.0, 1.0) if random.random() < 0.5 else random.uniform(0.2, 3.0))
        process.send_signal(sent)
        results = _finish([process], timeout)
        if results is None:
            return "hung"
        code, stderr = results[0]
        if _aborted(code, stderr):
            return f"failed: aborted (exit {code}): {stderr.strip().splitlines()[-1:] }"
        if code == 0:
            return "ok: finished before the signal"
        if code != expected_code or expected_words not in stderr or "Traceback" in stderr or os.listdir(work):
            return f"failed: exit {code}, left {os.listdir(work)}: {stderr.strip()[-300:]}"
    return "ok"


def stress(checkout: Path, bundle: Path, mode: str, processes: int, parallel: int, contexts: int,
           timeout: float, data: Path) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        outcomes = list(pool.map(lambda _: trial(checkout, bundle, mode, contexts, timeout, data), range(processes)))
    failures = sorted({outcome for outcome in outcomes if outcome.startswith("failed")})
    return {"checkout": str(checkout), "mode": mode, "processes": processes, "contexts": contexts,
            "ok": sum(outcome.startswith("ok") for outcome in outcomes), "hung": outcomes.count("hung"),
            "finished_before_the_signal": outcomes.count("ok: finished before the signal"),
            "failed": sum(outcome.startswith("failed") for outcome in outcomes), "failures": failures[:3],
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=200, help="fresh processes per checkout and mode")
    parser.add_argument("--parallel", type=int, default=2, help="processes running at once")
    parser.add_argument("--contexts", type=int, default=2, help="contexts each process runs concurrently")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a process counts as hung")
    parser.add_argument("--backend", default="openvino", choices=("openvino", "onnxruntime"))
    parser.add_argument("--modes", default="contexts,predict",
                        help="comma-separated: contexts, predict, infer, race, sigint, sigterm")
    parser.add_argument("--data", type=Path, default=REPO / "roberta_deploy" / "demo" / "samples.tsv",
                        help="texts for --modes infer (default: the shipped sample reviews)")
    parser.add_argument("--checkout", type=Path, action="append",
                        help="source tree the children import roberta_deploy from (repeat for before/after); "
                             "default: this one")
    parser.add_argument("--bundle", type=Path, help="bundle to load (default: the demo model, built here)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    if min(args.processes, args.parallel, args.contexts) < 1 or args.timeout <= 0:
        parser.error("--processes, --parallel, --contexts and --timeout must be positive")
    checkouts = [path.resolve() for path in (args.checkout or [REPO])]
    with tempfile.TemporaryDirectory(prefix="stress-hang-") as scratch:
        bundle = args.bundle or build_bundle(Path(scratch), args.backend)
        results = []
        for checkout in checkouts:
            for mode in [mode.strip() for mode in args.modes.split(",") if mode.strip()]:
                result = stress(checkout, bundle, mode, args.processes, args.parallel, args.contexts, args.timeout,
                                args.data.resolve())
                results.append(result)
                print(json.dumps(result, ensure_ascii=False), flush=True)
    sys.path.insert(0, str(REPO))  # this checkout's machine reader, whatever --checkout the children import
    from roberta_deploy.machine import this_cpu

    report = {"cpu": this_cpu()["model"], "cores": os.cpu_count(), "backend": args.backend, "timeout_s": args.timeout,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
              "results": results}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"{report['cpu']}, {report['backend']}:")
    for result in results:
        print(f"  {result['checkout']} {result['mode']}: {result['hung']} hung, {result['failed']} failed, "
              f"{result['ok']} ok of {result['processes']} processes ({result['seconds']} s)")


if __name__ == "__main__":
    main()
