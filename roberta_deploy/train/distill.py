"""Distil a fine-tuned classifier into students with fewer layers: each student starts from the teacher's
embeddings and every n-th layer, learns the teacher's soft labels (and, if asked, its hidden states) plus
the gold labels, and is written as a plain checkpoint that records its teacher and how well it agrees
with it on labelled texts held back from distillation."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..atomic import atomic_directory
from ..build.checkpoint import checkpoint_hash, load_fast_tokenizer, quiet_transformers, resolve_checkpoint
from ..data import LABEL_SEPARATOR, Dataset, read_dataset
from ..errors import InputDataError, ModelLoadError, UsageError
from ..manifest import file_sha256
from ..build.export import trained_on_pairs
from ..tasks import DEFAULT_THRESHOLD, MULTI_LABEL, REGRESSION, SINGLE_LABEL, Task
from .finetune import MANIFEST_NAME
from .loop import (DEV_MEASURES, encode_rows, label_tensor, length_bucketed_batches, make_optimizer, model_inputs,
                   pad_batch, predict_logits, task_measure, training_torch_state)
from .student_model import student_from_teacher

MANIFEST_SCHEMA_VERSION = 1
RESUME_FOLDER = ".distill-resume"  # inside --output: one state file per student while it trains


@dataclass(frozen=True)
class DistillOptions:
    teacher: Path  # fine-tuned checkpoint folder (what `finetune` writes): its task, labels and tokenizer
    data: Path  # labelled rows: gold labels for the students, and the held-back share that judges them
    output: Path  # parent folder; student K is written to OUTPUT/layers-K, each whole or not at all
    layers: tuple[int, ...]  # layer counts of the students, each below the teacher's
    unlabelled: Path | None = None  # more texts (labels, if any, ignored) that only the teacher labels
    held_back: float = 0.1  # share of the labelled rows never trained on: picks the epoch, measures agreement
    epochs: int = 3  # passes over the training rows; the epoch that agrees best with the teacher is kept
    batch_size: int = 32
    lr: float = 2e-4  # peak rate: the student starts from trained weights but lost layers, so above fine-tuning's
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    temperature: float = 2.0  # softens both distributions of the soft-label loss (classification tasks)
    soft_weight: float = 0.7  # share of the soft-label loss; the gold-label loss gets the rest
    hidden_weight: float = 0.0  # weight of the mean squared error between kept layers' hidden states
    max_seq_length: int = 128
    seed: int = 42
    num_threads: int | None = None
    device: str = "cpu"  # torch device: cpu, cuda, cuda:N
    checkpoint_steps: int = 200  # optimizer steps between resumable checkpoints (and one at every epoch end)
    overwrite: bool = False  # replace existing students; without it a finished student of the same run is kept
    text_column: str | None = None
    label_column: str | None = None
    text_pair_column: str | None = None
    label_separator: str = LABEL_SEPARATOR


@dataclass(frozen=True)
class DistillProgress:
    """One report to `on_progress`: after every optimizer step, and once per epoch after the held-back check."""

    layers: int  # the student's layer count
    epoch: int  # 1-based
    epochs: int
    step: int
    total_steps: int
    loss: float  # the latest step's loss (or, at an epoch's end, the epoch's mean)
    held_back: float | None = None  # end of epoch: the task's measure against the gold labels
    agreement: float | None = None  # end of epoch: the same measure against the teacher's predictions
    resumed_from_step: int | None = None  # set on the first report of a run resumed from a checkpoint
    measure: str = "accuracy"  # what held_back and agreement hold (DEV_MEASURES of the task)


@dataclass(frozen=True)
class StudentResult:
    layers: int
    output: Path
    layers_kept: tuple[int, ...]  # 0-based teacher layers copied into the student, in order
    best_epoch: int
    epochs: tuple[dict, ...]  # per epoch: train_loss, held_back, agreement, seconds
    held_back: float  # best epoch's measure against gold on the held-back rows
    agreement: float  # best epoch's measure against the teacher's predictions on them
    train_seconds: float
    reused: bool = False  # found finished from an earlier run with the same inputs and options


@dataclass(frozen=True)
class DistillResult:
    teacher_layers: int
    measure: str  # DEV_MEASURES of the task
    held_back_rows: int
    teacher_held_back: float  # the teacher's measure against gold on the held-back rows
    students: tuple[StudentResult, ...] = field(default_factory=tuple)


def distill(options: DistillOptions, on_progress: Callable[[DistillProgress], None] | None = None) -> DistillResult:
    """Distil `options.teacher` into one student per entry of `options.layers`.

    Raises UsageError for impossible options, InputDataError for bad data, ModelLoadError for a teacher
    that cannot be used, OutputExistsError for an occupied student folder.
    """
    _check_options(options)
    folder = resolve_checkpoint(str(options.teacher))
    with quiet_transformers():
        teacher, tokenizer = _load_teacher(folder, options)
    task = Task.from_config(teacher.config.problem_type, teacher.config.num_labels,
                            trained_on_pairs(folder, teacher.config))
    if options.layers and max(options.layers) >= teacher.config.num_hidden_layers:
        raise UsageError(f"--layers {max(options.layers)} is not below the teacher's "
                         f"{teacher.config.num_hidden_layers} layers", "give students fewer layers than the teacher")
    labelled = _read(options.data, options, task, teacher.config, require_labels=True)
    unlabelled = _read(options.unlabelled, options, task, teacher.config, require_labels=False) \
        if options.unlabelled else None
    if unlabelled is not None and (labelled.text_pairs is None) != (unlabelled.text_pairs is None):
        raise InputDataError(f"one of {labelled.source} and {unlabelled.source} holds text pairs and the other "
                             "single texts", "give both files the same text columns")
    train_rows, held_rows = _split(len(labelled), options)
    output = Path(options.output)
    output.mkdir(parents=True, exist_ok=True)
    fingerprint = _fingerprint(options, folder)
    students = []
    with training_torch_state(options.num_threads, options.seed):
        import torch

        device = torch.device(options.device)
        teacher.to(device)
        pad_id = tokenizer.pad_token_id
        encoded = encode_rows(tokenizer, labelled, options.max_seq_length)
        extra = encode_rows(tokenizer, unlabelled, options.max_seq_length) if unlabelled else []
        rows = [encoded[index] for index in train_rows] + extra
        held = [encoded[index] for index in held_rows]
        held_gold = [labelled.labels[index] for index in held_rows]
        teacher_logits = predict_logits(teacher, rows, pad_id, options.max_seq_length)
        teacher_held = predict_logits(teacher, held, pad_id, options.max_seq_length)
        teacher_predictions = _as_labels(teacher_held, task.kind)
        gold = _gold_tensor([labelled.labels[index] for index in train_rows], len(extra), task.kind,
                            teacher.config.num_labels)
        data = _Data(rows, torch.from_numpy(teacher_logits), gold, len(train_rows), held, held_gold,
                     teacher_predictions, pad_id)
        for layers in options.layers:
            students.append(_distil_student(teacher, tokenizer, folder, layers, data, task.kind, options,
                                            fingerprint, labelled, unlabelled, on_progress))
    with_teacher = task_measure(teacher_held, held_gold, task.kind)
    return DistillResult(teacher.config.num_hidden_layers, DEV_MEASURES[task.kind], len(held_rows), with_teacher,
                         tuple(students))


@dataclass
class _Data:
    rows: list  # encoded training rows: the labelled ones first, then the unlabelled
    teacher_logits: object  # float32 tensor (rows, labels), teacher in eval mode
    gold: object  # label tensor of the rows; zeros where a row has none
    labelled_rows: int  # rows[:labelled_rows] carry gold labels
    held: list  # encoded held-back rows
    held_gold: list
    teacher_predictions: list  # the teacher's labels (or scores) of the held-back rows
    pad_id: int


def _check_options(options: DistillOptions) -> None:
    if not options.layers:
        raise UsageError("--layers names no student", "pass layer counts such as --layers 3,2")
    if min(options.layers) < 1 or len(set(options.layers)) != len(options.layers):
        raise UsageError(f"--layers {','.join(map(str, options.layers))}: each must be at least 1 and given once",
                         "pass distinct layer counts such as --layers 3,2")
    if options.epochs < 1 or options.batch_size < 1 or options.checkpoint_steps < 1:
        raise UsageError("--epochs, --batch-size and --checkpoint-steps must be at least 1", "pass positive numbers")
    if not options.lr > 0:
        raise UsageError(f"--lr must be positive, got {options.lr}", "try 2e-4")
    if not 0 < options.held_back < 1:
        raise UsageError(f"--held-back must be between 0 and 1, got {options.held_back}", "try 0.1")
    if not 0 <= options.soft_weight <= 1 or not options.temperature > 0 or options.hidden_weight < 0:
        raise UsageError("--soft-weight must be in [0, 1], --temperature positive, --hidden-weight at least 0",
                         "try --soft-weight 0.7 --temperature 2 --hidden-weight 0")
    if not 0 <= options.warmup_ratio < 1:
        raise UsageError(f"warm-up ratio must be in [0, 1), got {options.warmup_ratio}", "try 0.1")
    if options.num_threads is not None and options.num_threads < 1:
        raise UsageError("the thread count must be at least 1", "leave it unset to use torch's default")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", options.device):
        raise UsageError(f"unknown --device {options.device!r}", "use cpu, cuda or cuda:N")
    if options.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {options.device}: this machine has no CUDA GPU that torch can use",
                             "use --device cpu")


def _load_teacher(folder: Path, options: DistillOptions):
    from transformers import AutoModelForSequenceClassification

    tokenizer = load_fast_tokenizer(folder)
    try:
        teacher = AutoModelForSequenceClassification.from_pretrained(str(folder), attn_implementation="eager")
    except Exception as error:
        raise ModelLoadError(f"cannot load {options.teacher} as a sequence classifier: {error}".splitlines()[0],
                             "point --teacher at a fine-tuned checkpoint (roberta-deploy finetune writes one)") from None
    if options.max_seq_length > teacher.config.max_position_embeddings:
        raise UsageError(f"--max-seq-length {options.max_seq_length} exceeds the teacher's "
                         f"{teacher.config.max_position_embeddings} positions", "lower --max-seq-length")
    return teacher.eval(), tokenizer


def _read(path: Path, options: DistillOptions, task: Task, config, require_labels: bool) -> Dataset:
    """The labelled file (labels by id or by the teacher's names), or the unlabelled one (texts only)."""
    names = [config.id2label[index] for index in sorted(config.id2label)] if task.kind != REGRESSION else None
    dataset = read_dataset(path, text_column=options.text_column, label_column=options.label_column if
                           require_labels else None, label_names=names, require_labels=require_labels,
                           task=task.kind, text_pair_column=options.text_pair_column, text_pairs=task.text_pairs,
                           label_separator=options.label_separator, ignore_labels=not require_labels)
    if not require_labels:
        return dataset
    if task.kind == SINGLE_LABEL:
        for label, line in zip(dataset.labels, dataset.line_numbers):
            if label >= config.num_labels:
                raise InputDataError(f"{path}:{line}: label {label} is past the teacher's {config.num_labels} labels",
                                     "distil on data labelled like the teacher's training data")
    return dataset


def _split(rows: int, options: DistillOptions) -> tuple[list[int], list[int]]:
    """Seed-fixed (train rows, held-back rows) of the labelled file, each in file order."""
    import numpy as np

    held_count = max(1, round(rows * options.held_back))
    if rows - held_count < 1:
        raise InputDataError(f"{options.data} has {rows} labelled rows: too few to hold {held_count} back and "
                             "train on the rest", "give more labelled rows")
    order = np.random.default_rng(options.seed).permutation(rows)
    return sorted(order[held_count:].tolist()), sorted(order[:held_count].tolist())


def _fingerprint(options: DistillOptions, teacher_folder: Path) -> str:
    """What a resumed or reused student must share with this run: the inputs' hashes and every option
    that changes the weights."""
    recorded = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(options).items()
                if key not in ("output", "overwrite", "layers", "checkpoint_steps", "teacher", "data", "unlabelled")}
    recorded["teacher_sha256"] = checkpoint_hash(teacher_folder)
    recorded["data_sha256"] = file_sha256(Path(options.data))
    recorded["unlabelled_sha256"] = file_sha256(Path(options.unlabelled)) if options.unlabelled else None
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()


def _gold_tensor(labels: list, unlabelled_rows: int, task: str, num_labels: int):
    import torch

    gold = label_tensor(labels, task, num_labels)
    filler = torch.zeros((unlabelled_rows, *gold.shape[1:]), dtype=gold.dtype)
    return torch.cat([gold, filler])


def _as_labels(logits, task: str) -> list:
    """The teacher's predictions in the form gold labels take, so its agreement is the task's own measure."""
    import numpy as np

    if task == MULTI_LABEL:
        decisions = 1 / (1 + np.exp(-logits)) >= DEFAULT_THRESHOLD
        return [np.flatnonzero(row).tolist() for row in decisions]
    if task == REGRESSION:
        return logits[:, 0].astype(float).tolist()
    return logits.argmax(axis=1).tolist()


def _distil_student(teacher, tokenizer, teacher_folder: Path, layers: int, data: _Data, task: str,
                    options: DistillOptions, fingerprint: str, labelled: Dataset, unlabelled: Dataset | None,
                    on_progress) -> StudentResult:
    import torch

    final = Path(options.output) / f"layers-{layers}"
    reused = _finished_student(final, fingerprint, options)
    if reused is not None:
        return reused
    resume_path = Path(options.output) / RESUME_FOLDER / f"layers-{layers}.pt"
    inputs = (options.teacher, options.data, options.unlabelled)
    with atomic_directory(final, options.overwrite, inputs=inputs) as staging:
        with quiet_transformers():
            student, kept = student_from_teacher(teacher, layers)
        student.to(teacher.device)
        epochs, best_epoch, seconds = _train_student(student, teacher, kept, data, task, options, layers,
                                                     fingerprint, resume_path, on_progress)
        best = epochs[best_epoch - 1]
        student.config.distillation = {
            "teacher": str(options.teacher), "teacher_sha256": checkpoint_hash(teacher_folder),
            "teacher_layers": teacher.config.num_hidden_layers, "layers_kept": list(kept),
            "data": str(options.data), "unlabelled": str(options.unlabelled) if options.unlabelled else None,
            "held_back_rows": len(data.held), "measure": DEV_MEASURES[task],
            "held_back": best["held_back"], "agreement_with_teacher": best["agreement"]}
        result = StudentResult(layers, final, kept, best_epoch, tuple(epochs), best["held_back"], best["agreement"],
                               seconds)
        _save_student(student, tokenizer, staging, teacher_folder, labelled, unlabelled, options, result,
                      fingerprint, data, task, torch.get_num_threads())
    resume_path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        resume_path.parent.rmdir()  # only when no other student's state is left in it
    return result


def _finished_student(final: Path, fingerprint: str, options: DistillOptions) -> StudentResult | None:
    """A student an earlier run of the same inputs and options finished, unless --overwrite."""
    record = final / MANIFEST_NAME
    if options.overwrite or not record.is_file():
        return None
    try:
        manifest = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("kind") != "distill" or manifest.get("fingerprint") != fingerprint:
        return None
    return StudentResult(manifest["layers"], final, tuple(manifest["layers_kept"]), manifest["best_epoch"],
                         tuple(manifest["epochs"]), manifest["held_back"], manifest["agreement_with_teacher"],
                         manifest["train_seconds"], reused=True)


def _train_student(student, teacher, kept: tuple[int, ...], data: _Data, task: str, options: DistillOptions,
                   layers: int, fingerprint: str, resume_path: Path, on_progress):
    """The distillation loop, resumable from `resume_path`; returns (epoch records, best 1-based epoch,
    seconds) and leaves the best epoch's weights in `student`."""
    import torch

    steps_per_epoch = -(-len(data.rows) // options.batch_size)
    total_steps = steps_per_epoch * options.epochs
    optimizer, scheduler = make_optimizer(student, options.lr, options.weight_decay, options.warmup_ratio,
                                          total_steps)
    generator = torch.Generator().manual_seed(options.seed)
    state = {"epoch": 1, "position": 0, "batches": None, "losses": [], "epochs": [], "best_state": None,
             "best": float("-inf"), "best_epoch": 0, "step": 0, "seconds": 0.0}
    resumed_from = None
    if resume_path.is_file():
        saved = torch.load(resume_path, map_location="cpu", weights_only=False)
        if saved.get("fingerprint") == fingerprint:
            student.load_state_dict(saved["student"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            generator.set_state(saved["generator"])
            torch.set_rng_state(saved["rng"])
            state = saved["state"]
            resumed_from = state["step"]
    started = time.perf_counter() - state["seconds"]

    def save_state() -> None:
        state["seconds"] = time.perf_counter() - started
        resume_path.parent.mkdir(exist_ok=True)
        partial = resume_path.with_name(resume_path.name + f".partial-{os.getpid()}")
        torch.save({"fingerprint": fingerprint, "student": student.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                    "rng": torch.get_rng_state(), "state": state}, partial)
        os.replace(partial, resume_path)  # a kill mid-write leaves the previous state whole

    student.train()
    while state["epoch"] <= options.epochs:
        epoch = state["epoch"]
        if state["batches"] is None:
            state["batches"] = length_bucketed_batches(data.rows, options.batch_size, generator)
            state["position"], state["losses"] = 0, []
            state["epoch_started"] = time.perf_counter() - started
        while state["position"] < len(state["batches"]):
            batch = state["batches"][state["position"]]
            loss = _step(student, teacher, kept, data, batch, task, options)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            state["position"] += 1
            state["losses"].append(loss.item())
            if on_progress:
                on_progress(DistillProgress(layers, epoch, options.epochs, state["step"], total_steps,
                                            state["losses"][-1], resumed_from_step=resumed_from))
                resumed_from = None
            if state["step"] % options.checkpoint_steps == 0 and state["position"] < len(state["batches"]):
                save_state()
        logits = predict_logits(student, data.held, data.pad_id, options.max_seq_length)
        record = {"epoch": epoch, "train_loss": sum(state["losses"]) / len(state["losses"]),
                  "held_back": task_measure(logits, data.held_gold, task),
                  "agreement": task_measure(logits, data.teacher_predictions, task),
                  "seconds": time.perf_counter() - started - state["epoch_started"]}
        state["epochs"].append(record)
        if record["agreement"] > state["best"]:
            state["best"], state["best_epoch"] = record["agreement"], epoch
            state["best_state"] = {name: tensor.detach().cpu().clone() for name, tensor in student.state_dict().items()}
        state["epoch"], state["batches"] = epoch + 1, None
        save_state()
        if on_progress:
            on_progress(DistillProgress(layers, epoch, options.epochs, state["step"], total_steps,
                                        record["train_loss"], record["held_back"], record["agreement"],
                                        measure=DEV_MEASURES[task]))
    student.load_state_dict(state["best_state"])
    student.eval()
    return state["epochs"], state["best_epoch"], time.perf_counter() - started


def _step(student, teacher, kept: tuple[int, ...], data: _Data, batch: list[int], task: str,
          options: DistillOptions):
    """The loss of one batch: soft labels (temperature-scaled KL for one label, BCE against the teacher's
    sigmoids for several, MSE for a score), gold labels on the rows that have them, and optionally the
    hidden states of the kept layers."""
    import torch
    import torch.nn.functional as functional

    padded = pad_batch([data.rows[index] for index in batch], data.pad_id, options.max_seq_length)
    inputs = model_inputs(student, *padded)
    hidden = options.hidden_weight > 0
    output = student(**inputs, output_hidden_states=hidden)
    student_logits = output.logits
    device = student_logits.device
    teacher_logits = data.teacher_logits[batch].to(device)
    gold = data.gold[batch].to(device)
    has_gold = (torch.tensor(batch) < data.labelled_rows).to(device=device, dtype=torch.float32)
    temperature = options.temperature
    if task == MULTI_LABEL:
        soft = functional.binary_cross_entropy_with_logits(
            student_logits / temperature, torch.sigmoid(teacher_logits / temperature)) * temperature ** 2
        hard_rows = functional.binary_cross_entropy_with_logits(student_logits, gold, reduction="none").mean(dim=1)
    elif task == REGRESSION:
        soft = functional.mse_loss(student_logits, teacher_logits)  # a score has no temperature
        hard_rows = functional.mse_loss(student_logits[:, 0], gold, reduction="none")
    else:
        soft = functional.kl_div(functional.log_softmax(student_logits / temperature, dim=-1),
                                 functional.softmax(teacher_logits / temperature, dim=-1),
                                 reduction="batchmean") * temperature ** 2
        hard_rows = functional.cross_entropy(student_logits, gold, reduction="none")
    hard = (hard_rows * has_gold).sum() / has_gold.sum().clamp(min=1.0)
    loss = options.soft_weight * soft + (1 - options.soft_weight) * hard
    if hidden:
        with torch.no_grad():
            teacher_hidden = teacher(**inputs, output_hidden_states=True).hidden_states
        mask = inputs["attention_mask"].unsqueeze(-1).to(student_logits.dtype)
        pairs = [(0, 0)] + [(index + 1, layer + 1) for index, layer in enumerate(kept)]  # embeddings, then layers
        errors = [(((output.hidden_states[mine] - teacher_hidden[theirs]) ** 2) * mask).sum() / mask.sum()
                  / student.config.hidden_size for mine, theirs in pairs]
        loss = loss + options.hidden_weight * torch.stack(errors).mean()
    return loss


def _save_student(student, tokenizer, staging: Path, teacher_folder: Path, labelled: Dataset,
                  unlabelled: Dataset | None, options: DistillOptions, result: StudentResult, fingerprint: str,
                  data: _Data, task: str, threads: int) -> None:
    """A plain checkpoint (config.json records the teacher) plus finetune.json of kind `distill`, the
    training record that export reads (task, text pairs) and that a rerun checks before reusing it."""
    import tokenizers
    import torch
    import transformers

    with quiet_transformers():
        student.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
    if not (staging / "vocab.txt").exists() and (teacher_folder / "vocab.txt").is_file():
        (staging / "vocab.txt").write_bytes((teacher_folder / "vocab.txt").read_bytes())
    options_record = {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(options).items()
                      if key not in ("output", "overwrite")}
    manifest = {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "kind": "distill",
        "fingerprint": fingerprint,
        "teacher": {"path": str(options.teacher), "sha256": checkpoint_hash(teacher_folder),
                    "layers": student.config.distillation["teacher_layers"]},
        "layers": result.layers,
        "layers_kept": list(result.layers_kept),
        "data": {"path": str(options.data), "sha256": file_sha256(Path(options.data)), "rows": len(labelled),
                 "held_back_rows": len(data.held)},
        "unlabelled": {"path": str(options.unlabelled), "sha256": file_sha256(Path(options.unlabelled)),
                       "rows": len(unlabelled)} if unlabelled is not None else None,
        "options": options_record,
        "label_names": [student.config.id2label[index] for index in sorted(student.config.id2label)],
        "task": task,
        "text_pairs": labelled.text_pairs is not None,  # export reads this: the model takes pairs
        "measure": DEV_MEASURES[task],
        "epochs": list(result.epochs),
        "best_epoch": result.best_epoch,
        "held_back": result.held_back,
        "agreement_with_teacher": result.agreement,
        "train_seconds": round(result.train_seconds, 1),
        "threads": threads,
        "device": options.device,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
    }
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
