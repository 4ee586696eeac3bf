"""Does deploy's choice survive a noisy machine? The README's deploy command, run N times in a row into fresh
folders (nothing reused), optionally with a CPU-bound process beside it that keeps one core busy the whole time.
Each run's choice, whether it was a tie and with what, the chosen candidate's interval and the machine's load are
printed as a Markdown table (docs/deploy.md holds one).

    python bench/repeat_deploy.py --runs 5 --busy-cores 1 --markdown /tmp/repeat.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
README_DEPLOY = ["deploy", "--model", "roberta_deploy/demo/model", "--data", "roberta_deploy/demo/samples.tsv",
                 "--no-serve"]
BUSY_LOOP = "while True:\n    pass\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--busy-cores", type=int, default=1, help="CPU-bound processes beside every deploy.")
    parser.add_argument("--markdown", type=Path, default=None)
    arguments = parser.parse_args()
    busy = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(arguments.busy_cores)]
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="repeat-deploy-") as scratch:
            for number in range(1, arguments.runs + 1):
                output = Path(scratch) / f"run-{number}"
                started = time.perf_counter()
                result = subprocess.run([sys.executable, "-m", "roberta_deploy", *README_DEPLOY, "--output",
                                         str(output)], cwd=REPOSITORY, capture_output=True, text=True,
                                        env={**os.environ, "HF_HUB_OFFLINE": "1"})
                seconds = time.perf_counter() - started
                if result.returncode != 0:
                    sys.exit(f"deploy {number} exited {result.returncode}: {result.stderr.strip()[-2000:]}")
                record = json.loads((output / "deployment.json").read_text(encoding="utf-8"))
                rows.append(row_of(number, record, seconds, os.getloadavg()[0]))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        for process in busy:
            process.kill()
            process.wait()
    table = markdown(rows, arguments)
    print(table)
    if arguments.markdown:
        arguments.markdown.write_text(table, encoding="utf-8")


def row_of(number: int, record: dict, seconds: float, load: float) -> dict:
    choice = record["choice"]
    chosen = next(row for row in record["candidates"] if row["backend"] == choice["backend"]
                  and row["precision"] == choice["precision"])
    interval = chosen.get("measured", {}).get("texts_per_second_interval")
    return {"run": number, "choice": f"{choice['backend']} {choice['precision']}",
            "tied_within_noise": choice["tied_within_noise"],
            "tied_with": [name for name in choice["tied_with"] if name != f"{choice['backend']} {choice['precision']}"],
            "texts_per_second": round(choice["texts_per_second"], 1), "interval": interval,
            "seconds": round(seconds, 1), "load_average": round(load, 2)}


def markdown(rows: list[dict], arguments) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [f"`python bench/repeat_deploy.py --runs {arguments.runs} --busy-cores {arguments.busy_cores}` on "
             f"{cpu}, {os.cpu_count()} cores, {datetime.datetime.now():%Y-%m-%d %H:%M}, with {arguments.busy_cores} "
             "CPU-bound process(es) beside every run:", "",
             "| run | choice | tied within noise with | chosen texts/s (interval) | deploy s | load average after |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        interval = row["interval"]
        span = f" ({interval['low']:,.0f}-{interval['high']:,.0f})" if interval else ""
        lines.append(f"| {row['run']} | {row['choice']} | {', '.join(row['tied_with']) or 'no tie: clear winner'} | "
                     f"{row['texts_per_second']:,.0f}{span} | {row['seconds']:.0f} | {row['load_average']:g} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
