"""Big files through `infer`: rows/s and peak memory at 10,000 and 200,000 rows.

Issue 9 measured the writer as quadratic (predictions.labels recomputed per row: 1.5 s for 10k rows,
76.9 s for 80k, 200k unfinished after 580 s). This script generates rows from the bundled demo
reviews, then for each size, in a process of its own (so peak RSS belongs to that size alone):
loads the engine, reads the file, classifies it and writes predictions.jsonl + metrics.json exactly
as `infer` does, timing each phase and the other processes' share of the CPU meanwhile. The old
per-row writer runs beside the new one on the same predictions, at the sizes where it finishes.
Then the real command, `python -m roberta_deploy infer`, runs end to end on each file.

    python bench/big_file.py --rows 10000,200000 --output runs/big-file
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, when run as a script

from measure import CompetingLoad  # noqa: E402

from roberta_deploy.defaults import DEMO_SAMPLES_PATH  # noqa: E402
from roberta_deploy.machine import this_cpu  # noqa: E402

OLD_WRITER_MAX_ROWS = 20_000  # quadratic: 200k rows would take over an hour


def generate_rows(count: int, path: Path) -> None:
    """`count` labelled rows cycling through the demo reviews (short hotel and shop reviews)."""
    lines = DEMO_SAMPLES_PATH.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], [line for line in lines[1:] if line.strip()]
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(header + "\n")
        for index in range(count):
            handle.write(rows[index % len(rows)] + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def old_writer_seconds(predictions, dataset, path: Path) -> float:
    """The writer before issue 9: `predictions.labels` was an argmax over every row, read once per row."""
    started = time.perf_counter()
    logits = predictions.logits
    probabilities = predictions.probabilities
    with open(path, "w", encoding="utf-8") as handle:
        for index, text in enumerate(dataset.texts):
            label = int(logits.argmax(axis=1)[index])
            row = {"index": index, "line": dataset.line_numbers[index], "text": text, "label": label,
                   "label_name": predictions.label_names[label],
                   "probabilities": [round(float(value), 6) for value in probabilities[index]],
                   "truncated": bool(predictions.truncated[index])}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return time.perf_counter() - started


def measure_in_this_process(bundle: Path, data: Path, output: Path, result_path: Path) -> None:
    from roberta_deploy.atomic import OutputFolder
    from roberta_deploy.data import read_dataset
    from roberta_deploy.infer import classify_dataset, write_inference_outputs
    from roberta_deploy.runtime.engine import THROUGHPUT, Engine

    result: dict = {}
    started = time.perf_counter()
    with OutputFolder(output) as output_folder:
        engine = Engine.load(bundle, hint=THROUGHPUT)
        result["load_seconds"] = time.perf_counter() - started
        with CompetingLoad() as reading:
            dataset = read_dataset(data, label_names=engine.label_names)
        result["read_seconds"], result["rss_after_read_mb"] = reading.wall_seconds, peak_rss_mb()
        with CompetingLoad() as classifying:
            report = classify_dataset(engine, dataset)
        result["classify_seconds"], result["rss_after_classify_mb"] = classifying.wall_seconds, peak_rss_mb()
        with CompetingLoad() as writing:
            write_inference_outputs(report, dataset, output_folder)
        result["write_seconds"], result["peak_rss_mb"] = writing.wall_seconds, peak_rss_mb()
    rows = len(dataset)
    result.update({"rows": rows, "accuracy": report.metrics.get("accuracy"),
                   "others_cpu_share_classify": classifying.others_share,
                   "others_cpu_share_write": writing.others_share,
                   "classify_rows_per_second": rows / result["classify_seconds"],
                   "write_rows_per_second": rows / result["write_seconds"],
                   "predictions_mb": (output / "predictions.jsonl").stat().st_size / 1e6})
    if rows <= OLD_WRITER_MAX_ROWS:
        with tempfile.TemporaryDirectory() as scratch:
            result["old_writer_seconds"] = old_writer_seconds(report.predictions, dataset, Path(scratch) / "p.jsonl")
    result_path.write_text(json.dumps(result, indent=2) + "\n")


def run_cli(bundle: Path, data: Path, output: Path) -> dict:
    """The real command in a child process: wall time and the child's peak RSS."""
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "roberta_deploy", "-q", "infer", "--bundle", str(bundle),
                                "--data", str(data), "--output", str(output)], capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"infer failed: {completed.stderr}")
    wall = time.perf_counter() - started
    rows = json.loads((output / "metrics.json").read_text())["examples"]
    return {"wall_seconds": wall, "rows_per_second": rows / wall,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


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
    parser.add_argument("--child", nargs=4, metavar=("BUNDLE", "DATA", "OUTPUT", "RESULT"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        measure_in_this_process(*(Path(value) for value in arguments.child))
        return
    arguments.output.mkdir(parents=True, exist_ok=True)
    bundle = arguments.bundle or build_demo_bundle(arguments.output)
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": this_cpu()["model"],
               "cores": len(os.sched_getaffinity(0)), "bundle": str(bundle),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "sizes": []}
    for rows in (int(value) for value in arguments.rows.split(",")):
        data = arguments.output / f"rows-{rows}.tsv"
        generate_rows(rows, data)
        result_path = arguments.output / f"result-{rows}.json"
        subprocess.run([sys.executable, __file__, "--output", str(arguments.output), "--child", str(bundle),
                        str(data), str(arguments.output / f"phases-{rows}"), str(result_path)], check=True)
        phases = json.loads(result_path.read_text())
        phases["cli"] = run_cli(bundle, data, arguments.output / f"cli-{rows}")
        results["sizes"].append(phases)
        print(json.dumps(phases), flush=True)
    (arguments.output / "result.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))


def markdown(results: dict) -> str:
    lines = [f"`{results['command']}` on {results['cpu']} ({results['cores']} cores), {results['date']}.", "",
             "| rows | classify rows/s | write rows/s | old writer (s) | new writer (s) | peak RSS (MB) | "
             "`infer` end to end rows/s | `infer` peak RSS (MB) | others' CPU share |",
             "|---|---|---|---|---|---|---|---|---|"]
    for size in results["sizes"]:
        old = f"{size['old_writer_seconds']:.2f}" if "old_writer_seconds" in size else "not run"
        lines.append(f"| {size['rows']:,} | {size['classify_rows_per_second']:.0f} | {size['write_rows_per_second']:.0f} | "
                     f"{old} | {size['write_seconds']:.2f} | {size['peak_rss_mb']:.0f} | "
                     f"{size['cli']['rows_per_second']:.0f} | {size['cli']['peak_rss_mb']:.0f} | "
                     f"{size['others_cpu_share_classify']:.0%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
