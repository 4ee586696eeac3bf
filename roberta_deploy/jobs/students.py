"""deploy --distill: students of the deployed model, distilled on --data minus the texts that judge every
candidate, and exported, so that each joins the candidates as one more model to build at every precision."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..atomic import atomic_write_text
from ..build.checkpoint import checkpoint_hash
from ..build.export import ExportArtifact, ExportOptions, export_model
from ..data import Dataset
from ..errors import BundleError
from ..train.distill import DistillOptions, distill

STUDENTS_DIR = "students"  # inside the deployment folder
TRAINING_FILE = "distill-data.jsonl"  # --data without the scored texts: what the students learn from
DEFAULT_DISTILL_EPOCHS = 3


@dataclass(frozen=True)
class Student:
    name: str  # "student-K": the model's name in the candidates and the prefix of its bundles
    layers: int
    checkpoint: Path
    export: ExportArtifact
    record: dict  # for deployment.json: teacher layers kept, held-back agreement, how it was made


def prepare_students(teacher: Path, dataset: Dataset, scoring: Dataset, layers: tuple[int, ...], folder: Path,
                     max_seq_length: int, epochs: int = DEFAULT_DISTILL_EPOCHS,
                     on_step: Callable[[str], None] | None = None) -> list[Student]:
    """Distil (or reuse) one student per layer count into `folder`, never on a text of `scoring`, and
    export each (or reuse its export). A student or export of the same inputs is reused."""
    step = on_step or (lambda message: None)
    folder.mkdir(parents=True, exist_ok=True)
    scored = set(scoring.line_numbers)
    rows = []
    for index, line in enumerate(dataset.line_numbers):
        if line in scored:
            continue
        row = {"text_a": dataset.texts[index], "label": dataset.labels[index]}
        if dataset.text_pairs is not None:
            row["text_b"] = dataset.text_pairs[index]
        rows.append(json.dumps(row, ensure_ascii=False))
    training_file = folder / TRAINING_FILE
    text = "\n".join(rows) + "\n"
    if not training_file.is_file() or training_file.read_text(encoding="utf-8") != text:
        atomic_write_text(training_file, text)
    step(f"distilling {len(layers)} student(s) of {', '.join(map(str, layers))} layers on {len(rows)} texts of --data "
         f"(the {len(scoring)} scored texts are never trained on)")
    result = distill(DistillOptions(teacher=teacher, data=training_file, output=folder, layers=layers,
                                    epochs=epochs, max_seq_length=max_seq_length),
                     on_progress=lambda report: step(
                         f"student of {report.layers} layers, epoch {report.epoch}: agreement with the teacher "
                         f"{report.agreement:.4f}") if report.agreement is not None else None)
    students = []
    for trained in result.students:
        name = f"student-{trained.layers}"
        if trained.reused:
            step(f"{name}: reusing {trained.output} (distilled before from the same teacher, data and options)")
        export = _export(trained.output, folder / f"{name}-export", max_seq_length, step)
        record = {"name": name, "layers": trained.layers, "teacher_layers_kept": list(trained.layers_kept),
                  "checkpoint": str(trained.output.relative_to(folder.parent)),
                  "checkpoint_sha256": checkpoint_hash(trained.output),
                  "held_back_agreement_with_teacher": trained.agreement, "held_back_accuracy": trained.held_back,
                  "held_back_rows": result.held_back_rows, "epochs": epochs, "reused": trained.reused}
        students.append(Student(name, trained.layers, trained.output, export, record))
    return students


def _export(checkpoint: Path, folder: Path, max_seq_length: int, step) -> ExportArtifact:
    if folder.exists():
        try:
            export = ExportArtifact.load(folder)
            if (export.manifest["source_model_sha256"] == checkpoint_hash(checkpoint)
                    and export.manifest["max_seq_length"] == max_seq_length):
                return export
        except BundleError:
            pass
    step(f"exporting {checkpoint.name}")
    return export_model(ExportOptions(model=str(checkpoint), output=folder, max_seq_length=max_seq_length,
                                      overwrite=True))
