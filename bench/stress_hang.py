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

--checkout runs the children against another source tree (e.g. the commit before the fix, unpacked
with `git archive`), so "before" and "after" come from one command on one machine:

    git archive 3f480ad | tar -x -C /tmp/before
    python bench/stress_hang.py --processes 200 --checkout /tmp/before --checkout .
"""

from __future__ import annotations

import argparse
import json
import os
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


def stress(checkout: Path, bundle: Path, mode: str, processes: int, parallel: int, contexts: int,
           timeout: float, data: Path) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        outcomes = list(pool.map(lambda _: trial(checkout, bundle, mode, contexts, timeout, data), range(processes)))
    failures = sorted({outcome for outcome in outcomes if outcome.startswith("failed")})
    return {"checkout": str(checkout), "mode": mode, "processes": processes, "contexts": contexts,
            "ok": outcomes.count("ok"), "hung": outcomes.count("hung"),
            "failed": sum(outcome.startswith("failed") for outcome in outcomes), "failures": failures[:3],
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=200, help="fresh processes per checkout and mode")
    parser.add_argument("--parallel", type=int, default=2, help="processes running at once")
    parser.add_argument("--contexts", type=int, default=2, help="contexts each process runs concurrently")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a process counts as hung")
    parser.add_argument("--backend", default="openvino", choices=("openvino", "onnxruntime"))
    parser.add_argument("--modes", default="contexts,predict", help="comma-separated: contexts, predict, infer")
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
