"""Distillation benchmark (issue 24): a teacher trained here by `finetune` on ChnSentiCorp train, students
distilled from it, every model built at each precision this CPU offers, and all of them timed side by
side on ChnSentiCorp dev with the best peer configuration of bench/compare.py (OpenVINO NNCF int8,
benchmark_app style) running the teacher.

Timing is interleaved: each round classifies the whole dev split once with every configuration, in a
rotated order, so a burst of other work on the shared cores lands on all of them alike; the median
round is reported with the spread.

    python bench/distill_bench.py --teacher T --workdir W --layers 3,2 --epochs 2 --markdown out.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling modules, when run as a script

from artifacts import log, prepare_openvino_int8  # noqa: E402
from measure import CompetingLoad  # noqa: E402
from report import machine_description  # noqa: E402
from runners import OpenVINOAsyncRunner  # noqa: E402

DATA = Path("/work/shared/data/chnsenticorp")
THREADS = 2  # bench/compare.py's
TARGET_POINTS = 0.5  # a student within this many accuracy points of its teacher ...
TARGET_SPEEDUP = 2.0  # ... at this many times the teacher's fastest build


@dataclass
class PeerPaths:
    """What bench/artifacts.prepare_openvino_int8 reads and writes, pointed at the teacher."""

    checkpoint: Path
    export: Path
    openvino_int8: Path


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", type=Path, required=True, help="checkpoint folder written by `finetune`")
    parser.add_argument("--workdir", type=Path, required=True, help="students, exports and bundles go here")
    parser.add_argument("--train", type=Path, default=DATA / "train.tsv", help="labelled rows to distil on")
    parser.add_argument("--layers", default="3,2")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--hidden-weight", type=float, default=0.0)
    parser.add_argument("--train-threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--limit", type=int, default=None, help="first N dev texts only (quick runs)")
    parser.add_argument("--timing-texts", type=int, default=None,
                        help="time the rounds on the first N of those texts (accuracy is always on all of them)")
    parser.add_argument("--output", type=Path, default=None, help="JSON of every measurement")
    parser.add_argument("--markdown", type=Path, default=None)
    return parser.parse_args(argv)


def distill_students(arguments) -> dict:
    from roberta_deploy.train.distill import DistillOptions, distill

    started = time.perf_counter()
    last = {}

    def on_progress(report):
        if report.agreement is not None:
            log(f"{report.layers} layers, epoch {report.epoch}: loss {report.loss:.4f}, held-back accuracy "
                f"{report.held_back:.4f}, agreement {report.agreement:.4f}")
        elif report.step % 50 == 0 and last.get(report.layers) != report.step:
            last[report.layers] = report.step
            log(f"{report.layers} layers: step {report.step}/{report.total_steps}")

    result = distill(DistillOptions(
        teacher=arguments.teacher, data=arguments.train, output=arguments.workdir / "students",
        layers=tuple(int(part) for part in arguments.layers.split(",")), epochs=arguments.epochs, lr=arguments.lr,
        hidden_weight=arguments.hidden_weight, num_threads=arguments.train_threads), on_progress=on_progress)
    return {"seconds": time.perf_counter() - started, "teacher_held_back": result.teacher_held_back,
            "held_back_rows": result.held_back_rows,
            "students": {student.layers: {"folder": str(student.output), "layers_kept": student.layers_kept,
                                          "held_back": student.held_back, "agreement": student.agreement,
                                          "best_epoch": student.best_epoch, "train_seconds": student.train_seconds,
                                          "reused": student.reused, "epochs": student.epochs}
                         for student in result.students}}


def build_all(models: dict[str, Path], workdir: Path) -> dict[str, dict[str, Path]]:
    """model name -> precision -> OpenVINO bundle, one per precision this CPU offers."""
    from roberta_deploy.backends import offered_precisions
    from roberta_deploy.build.bundle import BuildOptions, build_engine
    from roberta_deploy.build.export import ExportOptions, export_model

    bundles: dict[str, dict[str, Path]] = {}
    for name, checkpoint in models.items():
        export = workdir / "exports" / name
        if not (export / "manifest.json").is_file():
            log(f"exporting {name}")
            export_model(ExportOptions(model=str(checkpoint), output=export, check_data=DATA / "dev.tsv"))
        bundles[name] = {}
        for precision in offered_precisions("openvino"):
            folder = workdir / "bundles" / f"{name}-openvino-{precision}"
            if not (folder / "manifest.json").is_file():
                log(f"building {name} openvino {precision}")
                build_engine(BuildOptions(export_dir=export, output=folder, backend="openvino", precision=precision,
                                          dynamic_shape=True, batch_size=32, calibration_data=DATA / "train.tsv"))
            bundles[name][precision] = folder
    return bundles


class EngineRunner:
    """A bundle as a batch job runs it: every context of the engine computing at once through a Batcher."""

    def __init__(self, bundle: Path):
        from roberta_deploy.runtime.batcher import Batcher
        from roberta_deploy.runtime.engine import Engine

        self.engine = Engine.load(bundle, cpu_threads=THREADS, hint="throughput")
        self.batcher = Batcher(self.engine).start()

    def classify(self, texts):
        return self.batcher.run(list(texts)).logits


def time_rounds(runners: dict, texts: list[str], timed_texts: list[str], rounds: int) -> dict:
    """Every runner classifies all texts once (its accuracy, and its warm-up), then `timed_texts` once per
    round, in an order rotated each round."""
    names = list(runners)
    logits = {name: runners[name].classify(texts) for name in names}
    seconds = {name: [] for name in names}
    others = {name: [] for name in names}
    for round_index in range(rounds):
        for name in names[round_index % len(names):] + names[:round_index % len(names)]:
            with CompetingLoad() as load:
                runners[name].classify(timed_texts)
            seconds[name].append(load.wall_seconds)
            others[name].append(load.others_share)
        log(f"round {round_index + 1}/{rounds} done, load average {os.getloadavg()[0]:.1f}")
    return {name: {"seconds": seconds[name], "others_cpu_share": others[name], "logits": logits[name]}
            for name in names}


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    from roberta_deploy.data import read_dataset

    started = time.perf_counter()
    workdir = arguments.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(["python"] + sys.argv), "machine": machine_description(),
              "load_average_before": os.getloadavg(), "threads": THREADS}
    teacher_record = json.loads((arguments.teacher / "finetune.json").read_text(encoding="utf-8"))
    report["teacher"] = {"folder": str(arguments.teacher), "train_seconds": teacher_record["train_seconds"],
                         "epochs": teacher_record["epochs"], "options": teacher_record["options"],
                         "layers": json.loads((arguments.teacher / "config.json").read_text())["num_hidden_layers"]}
    log("distilling")
    report["distill"] = distill_students(arguments)
    models = {"teacher": arguments.teacher} | {f"student-{layers}": Path(student["folder"])
                                               for layers, student in report["distill"]["students"].items()}
    bundles = build_all(models, workdir)
    log("building the peer: OpenVINO NNCF int8 of the teacher, as bench/compare.py runs it")
    dev = read_dataset(DATA / "dev.tsv")
    texts, gold = dev.texts[:arguments.limit], np.asarray(dev.labels[:arguments.limit])
    peer_paths = PeerPaths(arguments.teacher, workdir / "exports" / "teacher", workdir / "peer-int8" / "model.xml")
    prepare_openvino_int8(peer_paths, read_dataset(DATA / "train.tsv").texts[:300])
    runners = {"peer openvino-int8 (teacher)": OpenVINOAsyncRunner(peer_paths.openvino_int8, arguments.teacher,
                                                                   THREADS, precision_hint=None)}
    for name, by_precision in bundles.items():
        for precision, folder in by_precision.items():
            runners[f"{name} {precision}"] = EngineRunner(folder)
    log(f"timing {len(runners)} configurations in {arguments.rounds} interleaved rounds")
    timed_texts = texts[:arguments.timing_texts]
    timed = time_rounds(runners, texts, timed_texts, arguments.rounds)
    rows = {}
    for name, measured in timed.items():
        median = statistics.median(measured["seconds"])
        rows[name] = {"reviews_per_second": len(timed_texts) / median,
                      "spread": [len(timed_texts) / max(measured["seconds"]), len(timed_texts) / min(measured["seconds"])],
                      "dev_accuracy": float((measured["logits"].argmax(1) == gold).mean()),
                      "others_cpu_share_median": statistics.median(measured["others_cpu_share"])}
    teacher_fp32 = timed["teacher fp32"]["logits"].argmax(1)
    for name in rows:
        rows[name]["agreement_with_teacher_fp32"] = float((timed[name]["logits"].argmax(1) == teacher_fp32).mean())
    report.update({"rows": rows, "dev_texts": len(texts), "timed_texts": len(timed_texts), "rounds": arguments.rounds,
                   "load_average_after": os.getloadavg(), "seconds": time.perf_counter() - started})
    report["verdicts"] = verdicts(rows)
    markdown = render(report)
    if arguments.output:
        arguments.output.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    if arguments.markdown:
        arguments.markdown.write_text(markdown, encoding="utf-8")
    sys.stdout.write(markdown)
    return 0


def fastest(rows: dict, model: str) -> str:
    return max((name for name in rows if name.startswith(model + " ")), key=lambda name: rows[name]["reviews_per_second"])


def verdicts(rows: dict) -> list[dict]:
    teacher = fastest(rows, "teacher")
    peer = next(name for name in rows if name.startswith("peer"))
    results = []
    for model in sorted({name.split(" ")[0] for name in rows if name.startswith("student-")}):
        best = fastest(rows, model)
        points = (rows[teacher]["dev_accuracy"] - rows[best]["dev_accuracy"]) * 100
        speedup = rows[best]["reviews_per_second"] / rows[teacher]["reviews_per_second"]
        results.append({"student": best, "teacher": teacher, "points_below_teacher": points, "speedup": speedup,
                        "vs_peer": rows[best]["reviews_per_second"] / rows[peer]["reviews_per_second"],
                        "met": points <= TARGET_POINTS and speedup >= TARGET_SPEEDUP})
    return results


def render(report: dict) -> str:
    machine = report["machine"]
    lines = [f"Command: `{report['command']}`", "",
             f"Machine: {machine['cpu_model']}, {machine['cores_available']} cores (shared with other engineers' "
             f"work), {THREADS} inference threads; load average {report['load_average_before'][0]:.1f} before, "
             f"{report['load_average_after'][0]:.1f} after; {machine['date']}; revision {machine['roberta_deploy_revision']}.",
             f"Run time: {report['seconds'] / 60:.1f} min (distillation {report['distill']['seconds'] / 60:.1f} min); "
             f"the teacher's training took {report['teacher']['train_seconds'] / 60:.1f} min before it.", "",
             f"Accuracy on {report['dev_texts']} ChnSentiCorp dev texts; speed on the first {report['timed_texts']} of "
             f"them in {report['rounds']} interleaved rounds: reviews/s is the median round, with the slowest and "
             "fastest round.", "",
             "| configuration | dev accuracy | agreement with teacher fp32 | reviews/s | spread | others' CPU share |",
             "|---|---|---|---|---|---|"]
    for name, row in sorted(report["rows"].items(), key=lambda item: -item[1]["reviews_per_second"]):
        lines.append(f"| {name} | {row['dev_accuracy']:.4f} | {row['agreement_with_teacher_fp32']:.4f} | "
                     f"{row['reviews_per_second']:.0f} | {row['spread'][0]:.0f}-{row['spread'][1]:.0f} | "
                     f"{row['others_cpu_share_median']:.0%} |")
    lines += ["", "| student (fastest build) | points below the teacher's fastest build | speed vs teacher | "
              "speed vs peer | target (<= 0.5 points at >= 2x) |", "|---|---|---|---|---|"]
    for verdict in report["verdicts"]:
        lines.append(f"| {verdict['student']} | {verdict['points_below_teacher']:+.2f} | {verdict['speedup']:.2f}x | "
                     f"{verdict['vs_peer']:.2f}x | {'met' if verdict['met'] else 'missed'} |")
    distilled = report["distill"]
    lines += ["", f"Held back from distillation: {distilled['held_back_rows']} train rows (teacher accuracy "
              f"{distilled['teacher_held_back']:.4f} on them)."]
    for layers, student in distilled["students"].items():
        lines.append(f"- {layers} layers (teacher layers {list(student['layers_kept'])}): held-back accuracy "
                     f"{student['held_back']:.4f}, agreement {student['agreement']:.4f}, epoch {student['best_epoch']}, "
                     f"{student['train_seconds'] / 60:.1f} min")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
