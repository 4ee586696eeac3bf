"""Big files through `infer`: rows/s and peak memory at 10,000 and 200,000 rows.

Issue 9 measured the writer as quadratic (1.5 s for 10k rows, 76.9 s for 80k, 200k unfinished after
580 s), then the reader as holding every text (peak RSS 232 MB at 10k rows, 362 MB at 200k). `infer`
now reads, classifies and writes a chunk at a time. This script generates rows from the bundled demo
reviews and runs the real command, `python -m roberta_deploy infer`, on each file in a fresh process:
rows/s end to end and as metrics.json counts them, the process's peak RSS, and other processes'
share of the CPU meanwhile (the machine is shared).

    python bench/big_file.py --rows 10000,200000 --output runs/big-file
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, when run as a script

from measure import _system_busy_seconds  # noqa: E402

from roberta_deploy.defaults import DEMO_SAMPLES_PATH  # noqa: E402
from roberta_deploy.machine import this_cpu  # noqa: E402

def generate_rows(count: int, path: Path) -> None:
    """`count` labelled rows cycling through the demo reviews (short hotel and shop reviews)."""
    lines = DEMO_SAMPLES_PATH.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header + "\n")
        for index in range(count):
            handle.write(rows[index % len(rows)] + "\n")


def _cpu_with_children() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_cli(bundle: Path, data: Path, output: Path) -> dict:
    """The real command in a fresh child process: wall time, the child's own peak RSS, and other
    processes' share of the CPU meanwhile. The child is wrapped in a one-line Python parent so that
    RUSAGE_CHILDREN holds that one run only (it keeps the largest child ever waited for)."""
    command = [sys.executable, "-m", "roberta_deploy", "-q", "infer", "--bundle", str(bundle), "--data", str(data),
               "--output", str(output)]
    wrapper = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    busy, ours = _system_busy_seconds(), _cpu_with_children()
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"infer failed: {completed.stderr}")
    wall = time.perf_counter() - started
    others = (_system_busy_seconds() - busy) - (_cpu_with_children() - ours)
    metrics = json.loads((output / "metrics.json").read_text())
    return {"rows": metrics["examples"], "wall_seconds": wall, "rows_per_second": metrics["examples"] / wall,
            "infer_seconds": metrics["elapsed_seconds"], "infer_rows_per_second": metrics["texts_per_second"],
            "peak_rss_mb": int(completed.stdout.split()[-1]) / 1024, "others_cpu_share": max(0.0, others) / (wall * (os.cpu_count() or 1)),
            "predictions_mb": (output / "predictions.jsonl").stat().st_size / 1e6}


def build_demo_bundle(folder: Path) -> Path:
    from roberta_deploy.build.bundle import BuildOptions, build_engine
    from roberta_deploy.build.export import ExportOptions, export_model
    from roberta_deploy.defaults import DEMO_MODEL_DIR

    export_model(ExportOptions(model=str(DEMO_MODEL_DIR), output=folder / "export"))
    build_engine(BuildOptions(export_dir=folder / "export", output=folder / "bundle"))
    return folder / "bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,200000", help="comma-separated file sizes")
    parser.add_argument("--bundle", type=Path, help="bundle to run (default: the demo model, openvino fp32)")
    parser.add_argument("--output", type=Path, required=True, help="folder for the files, outputs and result.json")
    arguments = parser.parse_args()
    arguments.output.mkdir(parents=True, exist_ok=True)
    bundle = arguments.bundle or build_demo_bundle(arguments.output)
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": this_cpu()["model"],
               "cores": len(os.sched_getaffinity(0)), "bundle": str(bundle),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sizes": []}
    for rows in (int(value) for value in arguments.rows.split(",")):
        data = arguments.output / f"rows-{rows}.tsv"
        generate_rows(rows, data)
        result = run_cli(bundle, data, arguments.output / f"cli-{rows}")
        results["sizes"].append(result)
        print(json.dumps(result), flush=True)
    (arguments.output / "result.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"`{results['command']}` on {results['cpu']} ({results['cores']} cores), {results['date']}.", "",
             "| rows | `infer` end to end rows/s (process start to exit) | rows/s read, classified and written "
             "(metrics.json) | peak RSS (MB) | predictions (MB) | others' CPU share |",
             "|---|---|---|---|---|---|"]
    for size in results["sizes"]:
        lines.append(f"| {size['rows']:,} | {size['rows_per_second']:.0f} | {size['infer_rows_per_second']:.0f} | "
                     f"{size['peak_rss_mb']:.0f} | {size['predictions_mb']:.0f} | {size['others_cpu_share']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
