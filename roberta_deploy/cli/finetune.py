"""`roberta-deploy finetune`: the command-line face of roberta_deploy.train.finetune (progress bar, summary,
one-line errors through exits.reports_errors)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

from .. import flags
from .app import BATCHING, INPUT, MODEL, OUTPUT, command, examples
from .console import console
from .exits import reports_errors


class ConfigSize(str, Enum):
    small = "small"
    base = "base"


class TaskName(str, Enum):
    single_label_classification = "single_label_classification"
    multi_label_classification = "multi_label_classification"
    regression = "regression"


@command("finetune", epilog=examples(
    "roberta-deploy finetune --model ckpt --train train.tsv --dev dev.tsv --output finetuned",
    "roberta-deploy finetune --config small --train train.tsv --dev dev.tsv --epochs 2 --output small-bert",
    "roberta-deploy finetune --model ckpt --task regression --train sts_train.csv --dev sts_dev.csv --output sts"))
@reports_errors
def finetune_command(
    train: Annotated[Path, typer.Option(help="Labelled training file (.tsv/.csv/.jsonl) with a text and a "
                                             "label column (label ids 0..k-1).", rich_help_panel=INPUT)],
    dev: Annotated[Path, typer.Option(help="Labelled dev file. Picks the epoch that is saved, so it must not "
                                           "be the test set you report.", rich_help_panel=INPUT)],
    output: Annotated[Path, typer.Option(help="Checkpoint folder to write. It appears whole or not at all; an "
                                              "existing non-empty folder is refused unless --overwrite.",
                                         rich_help_panel=OUTPUT)],
    model: Annotated[Optional[str], typer.Option(help="Checkpoint folder or hub id to fine-tune (its tokenizer "
                                                      "is used). Exclusive with --config.",
                                                 rich_help_panel=MODEL)] = None,
    config: Annotated[Optional[ConfigSize], typer.Option(help="Train a BERT from random weights instead: "
                                                              "'small' (2 layers x 128, ~13 MB, trains in minutes "
                                                              "on a laptop) or 'base' (BERT-base shape, needs far "
                                                              "more data and time).", rich_help_panel=MODEL)] = None,
    vocab: Annotated[Optional[Path], typer.Option(help="vocab.txt for --config; it fixes the embedding size. "
                                                       "Default: the built-in Chinese vocab (21,839 tokens).",
                                                  rich_help_panel=MODEL)] = None,
    epochs: Annotated[int, typer.Option(help="Passes over the training file; the epoch with the best dev "
                                             "accuracy is kept. The learning rate decays to 0 over all epochs, "
                                             "so this also shapes every epoch.",
                                        rich_help_panel=BATCHING), flags.COUNT] = 3,
    batch_size: Annotated[int, typer.Option(help="Texts per optimizer step. Larger batches use the CPU's matmul "
                                                 "units better but take fewer steps per epoch.",
                                            rich_help_panel=BATCHING), flags.COUNT] = 32,
    lr: Annotated[Optional[float], typer.Option(help="Peak learning rate (linear warm-up over 10% of the steps, "
                                                     "then linear decay). Default: 5e-5 with --model, 1e-3 with "
                                                     "--config small, 1e-4 with --config base.",
                                                rich_help_panel=BATCHING), flags.POSITIVE] = None,
    max_seq_length: Annotated[int, typer.Option(help="Tokens per text incl. [CLS]/[SEP]; longer texts are "
                                                     "truncated. Cost grows about linearly with it.",
                                                rich_help_panel=MODEL), flags.COUNT] = 128,
    seed: Annotated[int, typer.Option(help="Seeds initialisation, dropout and shuffling: the same seed, data "
                                           "and thread count give the same weights.", rich_help_panel=BATCHING)] = 42,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --output folder (only "
                                                                "after training succeeded).",
                                            rich_help_panel=OUTPUT)] = False,
    text_column: Annotated[Optional[str], typer.Option(help="Text column. Default: the first of text_a, text, "
                                                            "sentence, review, content.",
                                                       rich_help_panel=INPUT)] = None,
    label_column: Annotated[Optional[str], typer.Option(help="Label column. Default: the first of label, "
                                                             "labels, gold.", rich_help_panel=INPUT)] = None,
    label_names: Annotated[Optional[str], typer.Option(help="Comma-separated names of label ids 0..k-1, written "
                                                            "to config.json (the data may then use the names). "
                                                            "Default for 2 classes: negative,positive.",
                                                       rich_help_panel=MODEL)] = None,
    task: Annotated[TaskName, typer.Option(help="What the model learns: one label per text, several (a sigmoid per "
                                                "label; labels as a JSON list or --label-separator-joined), or a "
                                                "score (regression, e.g. STS-B similarity). Recorded in config.json "
                                                "as problem_type, which export reads.", rich_help_panel=MODEL)] =
    TaskName.single_label_classification,
    text_pair_column: Annotated[Optional[str], typer.Option(help="Second text of sentence-pair data (default: the "
                                                                 "pair columns text_a/text_b, sentence1/sentence2, "
                                                                 "premise/hypothesis or query/passage when "
                                                                 "present).", rich_help_panel=INPUT)] = None,
    label_separator: Annotated[str, typer.Option(help="Multi-label TSV/CSV cells: what separates a row's "
                                                      "labels.", rich_help_panel=INPUT)] = ",",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for training. The weights depend on it "
                                                        "(float sums), so keep it fixed to reproduce a run. "
                                                        "Default: torch's choice (one per core).",
                                                   rich_help_panel=BATCHING), flags.THREADS] = None,
) -> None:
    """Fine-tune a checkpoint, or train a small BERT from scratch, on CPU; save the best epoch on dev."""
    from ..train.finetune import DEV_MEASURES, FinetuneOptions, finetune

    names = tuple(name.strip() for name in label_names.split(",")) if label_names else None
    options = FinetuneOptions(
        train=train, dev=dev, output=output, model=model, config=config.value if config else None, vocab=vocab,
        epochs=epochs, batch_size=batch_size, lr=lr, max_seq_length=max_seq_length, seed=seed,
        overwrite=overwrite, text_column=text_column, label_column=label_column, label_names=names,
        num_threads=threads, task=task.value, text_pair_column=text_pair_column, label_separator=label_separator)
    progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=console, transient=False)
    bar = None
    measure = DEV_MEASURES[options.task]

    def on_progress(report) -> None:
        nonlocal bar
        if bar is None:  # started on the first report, so an early error prints no empty bar
            progress.start()
            bar = progress.add_task("train", total=report.total_steps, epoch=f"1/{report.epochs}", loss=0.0)
        progress.update(bar, completed=report.step, epoch=f"{report.epoch}/{report.epochs}", loss=report.loss)
        if report.dev_accuracy is not None:
            progress.console.print(f"epoch {report.epoch}: dev {measure} {report.dev_accuracy:.4f}")

    try:  # errors reach exits.reports_errors, which prints them as everywhere else
        result = finetune(options, on_progress=on_progress)
    finally:
        if bar is not None:
            progress.stop()
    console.print(f"best epoch {result.best_epoch} (dev {measure} {result.best_dev_accuracy:.4f}), "
                  f"trained in {result.train_seconds:.0f} s; checkpoint written to {result.output}")

