"""`roberta-deploy distill`: the command-line face of roberta_deploy.train.distill (a progress bar, one line
per epoch, a summary; one-line errors through exits.reports_errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from .. import flags
from .app import BATCHING, INPUT, MODEL, OUTPUT, command, examples
from .common import parse_int_list
from .console import console
from .exits import reports_errors


@command("distill", epilog=examples(
    "roberta-deploy distill --teacher finetuned --data train.tsv --layers 3,2 --output students",
    "roberta-deploy distill --teacher finetuned --data train.tsv --unlabelled reviews.txt --layers 2 --epochs 5 "
    "--output students",
    "roberta-deploy deploy --model finetuned --data dev.tsv --distill 3,2 --output deployment"))
@reports_errors
def distill_command(
    teacher: Annotated[Path, typer.Option(help="Fine-tuned checkpoint folder to distil (what `finetune` writes). "
                                               "Its task, labels and tokenizer carry over to every student.",
                                          rich_help_panel=MODEL)],
    data: Annotated[Path, typer.Option(help="Labelled file (.tsv/.csv/.jsonl). A --held-back share is never "
                                            "trained on: it picks each student's epoch and measures how well "
                                            "the student agrees with the teacher.", rich_help_panel=INPUT)],
    layers: Annotated[str, typer.Option(help="Layer counts of the students, comma-separated (e.g. 3,2). Each "
                                             "starts from the teacher's embeddings and every n-th layer; fewer "
                                             "layers classify proportionally faster.", rich_help_panel=MODEL)],
    output: Annotated[Path, typer.Option(help="Folder for the students: OUTPUT/layers-K, each a normal checkpoint "
                                              "for export, build and deploy. Interrupted runs resume from "
                                              "OUTPUT/.distill-resume.", rich_help_panel=OUTPUT)],
    unlabelled: Annotated[Optional[Path], typer.Option(help="More texts (any labels ignored) that only the "
                                                            "teacher labels: in-domain text is what lets a "
                                                            "student copy the teacher beyond the gold "
                                                            "rows.", rich_help_panel=INPUT)] = None,
    held_back: Annotated[float, typer.Option(help="Share of --data's rows held back from distillation (between 0 "
                                                  "and 1).", rich_help_panel=INPUT), flags.POSITIVE] = 0.1,
    epochs: Annotated[int, typer.Option(help="Passes over the training rows; the epoch that agrees best with "
                                             "the teacher on the held-back rows is kept.",
                                        rich_help_panel=BATCHING), flags.COUNT] = 3,
    batch_size: Annotated[int, typer.Option(help="Texts per optimizer step.", rich_help_panel=BATCHING),
                          flags.COUNT] = 32,
    lr: Annotated[float, typer.Option(help="Peak learning rate (linear warm-up over 10% of the steps, then "
                                           "linear decay).", rich_help_panel=BATCHING), flags.POSITIVE] = 2e-4,
    temperature: Annotated[float, typer.Option(help="Softens teacher and student distributions in the "
                                                    "soft-label loss, so the teacher's near-misses teach too.",
                                               rich_help_panel=BATCHING), flags.POSITIVE] = 2.0,
    soft_weight: Annotated[float, typer.Option(help="Share of the loss from the teacher's soft labels (0 to 1); the "
                                                    "gold labels get the rest.", rich_help_panel=BATCHING),
                           flags.NON_NEGATIVE] = 0.7,
    hidden_weight: Annotated[float, typer.Option(help="Weight of matching the kept layers' hidden states to the "
                                                      "teacher's (0: off). Costs a teacher forward pass per "
                                                      "step.", rich_help_panel=BATCHING), flags.NON_NEGATIVE] = 0.0,
    max_seq_length: Annotated[int, typer.Option(help="Tokens per text incl. [CLS]/[SEP].", rich_help_panel=MODEL),
                              flags.COUNT] = 128,
    seed: Annotated[int, typer.Option(help="Seeds the held-back split, dropout and shuffling.",
                                      rich_help_panel=BATCHING)] = 42,
    device: Annotated[str, typer.Option(help="Where to train: cpu, or cuda / cuda:N on a machine with a GPU.",
                                        rich_help_panel=BATCHING)] = "cpu",
    checkpoint_steps: Annotated[int, typer.Option(help="Optimizer steps between resumable checkpoints (one is also "
                                                       "written after every epoch).", rich_help_panel=OUTPUT),
                                flags.COUNT] = 200,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Retrain and replace existing students. "
                                                                "Without it, a student a previous run of the "
                                                                "same inputs finished is kept.",
                                            rich_help_panel=OUTPUT)] = False,
    text_column: Annotated[Optional[str], typer.Option(help="Text column (default: the usual names).",
                                                       rich_help_panel=INPUT)] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column (default: the usual names).",
                                                        rich_help_panel=INPUT)] = None,
    text_pair_column: Annotated[Optional[str], typer.Option(help="Second text of pair data.",
                                                            rich_help_panel=INPUT)] = None,
    label_separator: Annotated[str, typer.Option(help="Multi-label TSV/CSV cells: what separates a row's "
                                                      "labels.", rich_help_panel=INPUT)] = ",",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for training (the weights depend on "
                                                        "it). Default: torch's choice.", rich_help_panel=BATCHING),
                       flags.THREADS] = None,
) -> None:
    """Distil a fine-tuned classifier into smaller students that deploy like any checkpoint."""
    from ..train.distill import DistillOptions, distill

    options = DistillOptions(
        teacher=teacher, data=data, output=output, layers=parse_int_list(layers, "--layers"), unlabelled=unlabelled,
        held_back=held_back, epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature,
        soft_weight=soft_weight, hidden_weight=hidden_weight, max_seq_length=max_seq_length, seed=seed,
        num_threads=threads, device=device, checkpoint_steps=checkpoint_steps, overwrite=overwrite,
        text_column=text_column, label_column=label_column, text_pair_column=text_pair_column,
        label_separator=label_separator)
    progress = Progress(TextColumn("{task.fields[student]} epoch {task.fields[epoch]}"), BarColumn(),
                        MofNCompleteColumn(), TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, transient=False)
    bars: dict[int, int] = {}

    def on_progress(report) -> None:
        if not bars:
            progress.start()
        if report.layers not in bars:
            bars[report.layers] = progress.add_task("distil", total=report.total_steps, student=f"{report.layers} "
                                                    "layers", epoch=f"1/{report.epochs}", loss=0.0)
        if report.resumed_from_step is not None:
            progress.console.print(f"{report.layers} layers: resumed after step {report.resumed_from_step}")
        progress.update(bars[report.layers], completed=report.step, epoch=f"{report.epoch}/{report.epochs}",
                        loss=report.loss)
        if report.agreement is not None:
            progress.console.print(f"{report.layers} layers, epoch {report.epoch}: loss {report.loss:.4f}, held-back "
                                   f"{report.measure} {report.held_back:.4f}, agreement with the teacher "
                                   f"{report.agreement:.4f}")

    try:
        result = distill(options, on_progress=on_progress)
    finally:
        if bars:
            progress.stop()
    for student in result.students:
        reused = " (reused: finished by an earlier run)" if student.reused else ""
        console.print(f"{student.layers} layers (teacher layers {', '.join(map(str, student.layers_kept))} kept): "
                      f"held-back {result.measure} {student.held_back:.4f} (teacher {result.teacher_held_back:.4f}), "
                      f"agreement with the teacher {student.agreement:.4f} on {result.held_back_rows} rows, "
                      f"epoch {student.best_epoch}; written to {student.output}{reused}")
