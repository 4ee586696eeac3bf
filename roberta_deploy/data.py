"""Reading labelled (or unlabelled) texts from TSV, CSV or JSONL files, with errors that name the line."""

from __future__ import annotations

import csv
import json
import math
import unicodedata
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

from .errors import InputDataError
from .tasks import MULTI_LABEL, REGRESSION, SINGLE_LABEL

TEXT_COLUMN_CANDIDATES = ("text_a", "text", "sentence", "review", "content")
# Sentence-pair files (LCQMC, AFQMC, GLUE, NLI, reranking data): the first pair present is read as pairs.
TEXT_PAIR_COLUMN_CANDIDATES = (("text_a", "text_b"), ("sentence1", "sentence2"), ("premise", "hypothesis"),
                               ("query", "passage"))
LABEL_SEPARATOR = ","  # between the labels of a multi-label row in TSV/CSV ("1,3" or "sports,politics")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "gold")
FORMATS = ("tsv", "csv", "jsonl", "parquet")
PARQUET_SUFFIX = ".parquet"
CHUNK_ROWS = 8192  # rows per Dataset from read_dataset_chunks: a few seconds of work, a few MB of text


@dataclass(frozen=True)
class Dataset:
    """Texts read from one file. `labels` is None when the file has no label column."""

    texts: list[str]
    labels: list | None  # int ids; multi-label: a tuple of ids per row; regression: a float per row
    line_numbers: list[int]  # 1-based line of each row in the source file, for error messages
    source: str
    text_pairs: list[str] | None = None  # the second text of each row, for sentence-pair data
    task: str = SINGLE_LABEL  # how `labels` were read (tasks.TASKS)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def inputs(self) -> list:
        """What the engine takes: the texts, or (text, text_pair) tuples."""
        return self.texts if self.text_pairs is None else list(zip(self.texts, self.text_pairs))


def detect_format(path: Path, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise InputDataError(f"unknown data format {explicit!r}", f"use one of {', '.join(FORMATS)}")
        return explicit
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("tsv", "txt"):
        return "tsv"
    if suffix == "csv":
        return "csv"
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    if suffix == "parquet" or path.is_dir():
        return "parquet"
    raise InputDataError(f"cannot tell the format of {path} from its extension",
                         "name it .tsv, .csv, .jsonl or .parquet, or pass --data-format")


def read_dataset(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    require_labels: bool = False,
    data_format: str | None = None,
    text_pair_column: str | None = None,
    text_pairs: bool | None = None,
    task: str = SINGLE_LABEL,
    label_separator: str = LABEL_SEPARATOR,
    ignore_labels: bool = False,
) -> Dataset:
    """Read a data file into texts (or text pairs) and labels for `task`.

    Labels may be written as integer ids or, when `label_names` is given, as those names; a multi-label
    row holds a JSON list (JSONL) or `label_separator`-joined labels (TSV/CSV); a regression row a number.
    text_pairs: True when the model takes pairs (a second text column is required), False when it takes
    one text, None to read pairs when the file has a pair of the usual columns. ignore_labels: read the
    texts only (check texts for export). Every problem raises InputDataError naming the file and the line.
    """
    chunks = list(read_dataset_chunks(path, text_column=text_column, label_column=label_column, label_names=label_names,
                                      require_labels=require_labels, data_format=data_format,
                                      text_pair_column=text_pair_column, text_pairs=text_pairs, task=task,
                                      label_separator=label_separator, ignore_labels=ignore_labels,
                                      chunk_rows=None))
    first = chunks[0]
    return Dataset(texts=[text for chunk in chunks for text in chunk.texts],
                   labels=None if first.labels is None else [label for chunk in chunks for label in chunk.labels],
                   line_numbers=[number for chunk in chunks for number in chunk.line_numbers], source=first.source,
                   text_pairs=None if first.text_pairs is None else [pair for chunk in chunks
                                                                    for pair in chunk.text_pairs],
                   task=first.task)


def read_dataset_chunks(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    require_labels: bool = False,
    data_format: str | None = None,
    text_pair_column: str | None = None,
    text_pairs: bool | None = None,
    task: str = SINGLE_LABEL,
    label_separator: str = LABEL_SEPARATOR,
    ignore_labels: bool = False,
    chunk_rows: int | None = CHUNK_ROWS,
) -> Iterator[Dataset]:
    """read_dataset a chunk of `chunk_rows` rows at a time (None: one chunk), reading the file as it goes,
    so a file of any size takes the memory of one chunk. The same checks and errors as read_dataset;
    each is raised when the reading reaches it, so a caller that must not start on a bad file reads it
    through once first (infer does)."""
    path = Path(path)
    options = dict(text_column=text_column, label_column=label_column, label_names=label_names,
                   require_labels=require_labels, data_format=data_format, text_pair_column=text_pair_column,
                   text_pairs=text_pairs, task=task, label_separator=label_separator, ignore_labels=ignore_labels,
                   chunk_rows=chunk_rows)
    try:
        exists, folder = path.is_file(), path.is_dir()
    except OSError as error:  # a folder on the way that this user may not search
        raise InputDataError(f"cannot read data file {path}: {error.strerror}", "check its permissions") from None
    if folder:  # a folder of Parquet files (as Spark, pandas and Ray Data write them), one file after the other
        for part in parquet_parts(path):
            for chunk in read_dataset_chunks(part, **options):
                yield replace(chunk, source=str(path))
        return
    if not exists:
        raise InputDataError(f"data file {path} does not exist", "check the path given for this file")
    fmt = detect_format(path, data_format)
    if fmt != "parquet" and not any(line.strip() for _, line in _lines(path)):  # stops at the first line with text
        raise InputDataError(f"data file {path} is empty", "give a file with a header line and at least one row")
    if fmt == "parquet":
        columns, rows = _parquet_columns(path), _read_parquet(path)
    elif fmt == "jsonl":
        columns, rows = _jsonl_columns(path), _read_jsonl(path, _lines(path))
    else:
        columns, rows = _delimited_header(path, fmt), _read_delimited(path, _lines(path), fmt)
    text_key, pair_key = pick_text_columns(path, columns, text_column, text_pair_column, text_pairs)
    label_key = label_column
    if ignore_labels:
        label_key = None
    elif label_key is None:
        label_key = next((name for name in LABEL_COLUMN_CANDIDATES if name in columns), None)
    elif label_key not in columns:
        raise InputDataError(f"{path} has no column {label_key!r} (columns: {', '.join(columns)})",
                             "pass the right --label-column")
    if label_key is None and require_labels:
        raise InputDataError(f"{path} has no label column (columns: {', '.join(columns)})",
                             "add a 'label' column or pass --label-column")

    texts: list[str] = []
    pairs: list[str] | None = [] if pair_key is not None else None
    labels: list | None = [] if label_key is not None else None
    line_numbers: list[int] = []
    any_rows = False
    for line_number, row in rows:
        if chunk_rows is not None and len(texts) == chunk_rows:
            yield Dataset(texts=texts, labels=labels, line_numbers=line_numbers, source=str(path), text_pairs=pairs,
                          task=task)
            texts, line_numbers = [], []
            pairs = [] if pair_key is not None else None
            labels = [] if label_key is not None else None
        any_rows = True
        texts.append(_checked_text(path, line_number, row, text_key))
        if pairs is not None:
            pairs.append(_checked_text(path, line_number, row, pair_key))
        line_numbers.append(line_number)
        if labels is not None:
            labels.append(parse_task_label(task, path, line_number, row.get(label_key), label_names, label_separator))
    if not any_rows:
        raise InputDataError(f"data file {path} has a header but no rows", "add at least one example")
    yield Dataset(texts=texts, labels=labels, line_numbers=line_numbers, source=str(path), text_pairs=pairs,
                  task=task)


def _checked_text(path, line_number: int, row: dict, key: str) -> str:
    text = row.get(key)
    if not isinstance(text, str):
        raise InputDataError(f"{path}:{line_number}: the {key!r} field is missing or not a string",
                             "give every row a text")
    if not text.strip():
        raise InputDataError(f"{path}:{line_number}: empty text (column {key!r})", "remove the row or fill in its text")
    if not has_visible_characters(text):
        raise InputDataError(f"{path}:{line_number}: the text has only control, format or space characters "
                             f"(NUL, zero-width space...), so it gives no tokens (column {key!r})", "remove the row or fill in its text")
    return text


def pick_text_columns(path, columns, text_column: str | None, text_pair_column: str | None,
                      text_pairs: bool | None) -> tuple[str, str | None]:
    """The text column and, for pair data, the second text column.

    An explicit --text-pair-column always reads pairs. Otherwise the first of TEXT_PAIR_COLUMN_CANDIDATES
    present (whose first column is --text-column, when given) is read as pairs, unless the model takes
    one text (text_pairs False); a model that takes pairs (text_pairs True) needs one.
    """
    if text_pair_column is not None:
        if text_pair_column not in columns:
            raise InputDataError(f"{path} has no column {text_pair_column!r} (columns: {', '.join(columns)})",
                                 "pass the right --text-pair-column")
        first = text_column or next((a for a, b in TEXT_PAIR_COLUMN_CANDIDATES if b == text_pair_column and a in columns),
                                    None)
        text = _pick_column(path, columns, first, [name for name in TEXT_COLUMN_CANDIDATES if name != text_pair_column],
                            "text", "--text-column")
        if text == text_pair_column:
            raise InputDataError(f"--text-column and --text-pair-column both name {text!r} in {path}",
                                 "pass two different columns")
        return text, text_pair_column
    candidate = None if text_pairs is False else next(
        ((a, b) for a, b in TEXT_PAIR_COLUMN_CANDIDATES if a in columns and b in columns
         and (text_column is None or text_column == a)), None)
    if candidate is not None:
        return candidate
    if text_pairs:
        usual = ", ".join(b for _, b in TEXT_PAIR_COLUMN_CANDIDATES)
        raise InputDataError(f"the model takes text pairs but {path} has no second text column "
                             f"(columns: {', '.join(columns)})",
                             f"name it with --text-pair-column (usual names: {usual})")
    return _pick_column(path, columns, text_column, TEXT_COLUMN_CANDIDATES, "text", "--text-column"), None


def parse_task_label(task: str, path, line_number: int, value, label_names, separator: str = LABEL_SEPARATOR):
    """One row's label as `task` reads it: an id, a tuple of ids (multi-label) or a float (regression)."""
    if task == MULTI_LABEL:
        return _parse_label_set(path, line_number, value, label_names, separator)
    if task == REGRESSION:
        return _parse_score(path, line_number, value)
    return _parse_label(path, line_number, value, label_names)


def _parse_label_set(path, line_number, value, label_names, separator: str) -> tuple[int, ...]:
    """A JSON list of ids or names, or a `separator`-joined string of them; empty means no label."""
    example = '["sports", "politics"]' if label_names else "[0, 2]"
    if isinstance(value, str):
        parts = [part.strip() for part in value.split(separator)] if value.strip() else []
        if any(not part for part in parts):
            raise InputDataError(f"{path}:{line_number}: multi-label cell {value!r} has an empty label",
                                 f"join labels with {separator!r} and nothing between two separators, e.g. "
                                 f"{separator.join(['0', '2'])}")
    elif isinstance(value, list):
        parts = value
    else:
        shown = "missing" if value is None else f"a JSON {type(value).__name__} ({json.dumps(value)[:40]})"
        raise InputDataError(f"{path}:{line_number}: the multi-label labels are {shown}, not a list",
                             f"write the labels of each row as a JSON list such as {example}, or [] for none")
    labels = []
    for part in parts:
        if isinstance(part, list) or isinstance(part, dict):
            raise InputDataError(f"{path}:{line_number}: multi-label labels {json.dumps(value)[:60]} hold a nested "
                                 f"{type(part).__name__}", f"write a flat list such as {example}")
        labels.append(_parse_label(path, line_number, part, label_names))
    if len(set(labels)) != len(labels):
        raise InputDataError(f"{path}:{line_number}: multi-label labels {json.dumps(value, ensure_ascii=False)[:60]} "
                             "name a label twice", "list each label of a row once")
    return tuple(sorted(labels))


def _parse_score(path, line_number, value) -> float:
    """A finite number (JSON number or its text) for regression."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise InputDataError(f"{path}:{line_number}: missing or non-numeric score {json.dumps(value)}",
                             "give every row a number such as 3.5 in the label column")
    try:
        score = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise InputDataError(f"{path}:{line_number}: score {json.dumps(value, ensure_ascii=False)[:40]} is not a number",
                             "write regression labels as numbers such as 3.5") from None
    if not math.isfinite(score):
        raise InputDataError(f"{path}:{line_number}: score {value!r} is not finite", "write a finite number")
    return score


def has_visible_characters(text: str) -> bool:
    """False for texts that every tokenizer here reduces to nothing: whitespace, control characters
    (NUL...), format characters (zero-width spaces, BOMs, direction marks) and unassigned code points."""
    return any(not (character.isspace() or unicodedata.category(character) in _INVISIBLE_CATEGORIES)
               for character in text)


_INVISIBLE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"}


def _pick_column(path, columns, explicit, candidates, what, flag) -> str:
    if explicit is not None:
        if explicit not in columns:
            raise InputDataError(f"{path} has no column {explicit!r} (columns: {', '.join(columns)})",
                                 f"pass the right {flag}")
        return explicit
    for name in candidates:
        if name in columns:
            return name
    raise InputDataError(f"{path} has no {what} column (columns: {', '.join(columns)})",
                         f"name the column with {flag}")


def _parse_label(path, line_number, value, label_names) -> int:
    """An integer id (a JSON integer, or ASCII digits) or one of `label_names`; nothing else.

    Python's int() reads fullwidth and Arabic-Indic digits ("１", "٠") as numbers; a label written
    that way is a data problem to report, not a number to guess.
    """
    known = f" or one of {', '.join(label_names)}" if label_names else ""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputDataError(f"{path}:{line_number}: missing label", "give every row a label or drop the label column")
    if isinstance(value, bool):
        raise InputDataError(f"{path}:{line_number}: label {json.dumps(value)} is a JSON boolean, not a label",
                             f"write labels as integer ids{known}")
    if isinstance(value, int):
        label = value
    elif isinstance(value, str):
        text = value.strip()
        if label_names is not None and text in label_names:
            return list(label_names).index(text)
        if not (text.isascii() and text.isdigit()):
            raise InputDataError(f"{path}:{line_number}: unknown label {text!r}",
                                 f"labels must be integer ids in ASCII digits 0-9{known}")
        label = int(text)
    else:
        raise InputDataError(f"{path}:{line_number}: label {json.dumps(value)[:40]} is a JSON "
                             f"{type(value).__name__}, not a label", f"write labels as integer ids{known}")
    if label < 0 or (label_names is not None and label >= len(label_names)):
        count = len(label_names) if label_names is not None else "the model's number of"
        raise InputDataError(f"{path}:{line_number}: unknown label {label}",
                             f"labels must be ids from 0 to {count} - 1 for this model")
    return label


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based number, text) of each line, read as the caller goes. Split on \n only: texts may hold
    U+2028 and other separators. A BOM at the start is dropped; bytes that are not UTF-8 are an error
    naming their offset."""
    offset = 0
    try:
        handle = open(path, "rb")
    except OSError as error:
        raise InputDataError(f"cannot read data file {path}: {error.strerror}", "check its permissions") from None
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise InputDataError(f"{path} is not UTF-8 (byte {offset + error.start})",
                                     "re-save the file as UTF-8") from None
            offset += len(raw)
            yield number, line[:-1] if line.endswith("\n") else line


def _delimited_header(path: Path, fmt: str) -> list[str]:
    return _header(path, next(_split_delimited(path, _lines(path), fmt))[1])


def _jsonl_columns(path: Path) -> list[str]:
    """Every key of every row: a column may be missing from the first rows."""
    return sorted({key for _, row in _read_jsonl(path, _lines(path)) for key in row})


def _header(path: Path, fields: list[str]) -> list[str]:
    header = [name.strip() for name in fields]
    if len(set(header)) != len(header):
        raise InputDataError(f"{path}:1: duplicate column names in the header {header}", "rename the columns")
    return header


def _split_delimited(path: Path, lines: Iterator[tuple[int, str]], fmt: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every line, the header's included."""
    stripped = (line[:-1] if line.endswith("\r") else line for _, line in lines)
    if fmt == "tsv":
        yield from enumerate((line.split("\t") for line in stripped), start=1)
        return
    records = csv.reader(stripped)
    try:
        for number, fields in enumerate(records, start=1):
            if records.line_num != number:
                raise InputDataError(f"{path}: CSV texts span several lines",
                                     "use one line per row, or write the data as JSONL")
            yield number, fields
    except csv.Error as error:
        raise InputDataError(f"{path}: malformed CSV ({error})", "fix the quoting in the file") from None


def _read_delimited(path: Path, lines: Iterator[tuple[int, str]], fmt: str) -> Iterator[tuple[int, dict[str, str]]]:
    records = _split_delimited(path, lines, fmt)
    header = _header(path, next(records)[1])
    for index, fields in records:
        if len(fields) != len(header):
            separator = "tab-separated" if fmt == "tsv" else "comma-separated"
            raise InputDataError(
                f"{path}:{index}: malformed row with {len(fields)} {separator} fields, expected {len(header)}",
                f"fix line {index} so that it has the columns {', '.join(header)}")
        yield index, dict(zip(header, fields))


def _read_jsonl(path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[int, dict]]:
    for index, line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputDataError(f"{path}:{index}: invalid JSON ({error.msg})", f"fix line {index}") from None
        except RecursionError:
            raise InputDataError(f"{path}:{index}: JSON nested too deeply to read",
                                 f"fix line {index}: each line is one flat object such as "
                                 '{"text": "...", "label": 1}') from None
        if not isinstance(row, dict):
            raise InputDataError(f"{path}:{index}: each line must be a JSON object", f"fix line {index}")
        yield index, row


def parquet_parts(folder: Path) -> list[Path]:
    """The .parquet files of a folder, in name order (the order their writers numbered them in)."""
    parts = sorted(part for part in folder.iterdir() if part.suffix == PARQUET_SUFFIX and part.is_file())
    if not parts:
        raise InputDataError(f"data folder {folder} holds no {PARQUET_SUFFIX} files",
                             "give a data file, or a folder of Parquet files")
    return parts


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise InputDataError(f"reading {path} needs pyarrow, which is not installed",
                             "pip install 'roberta-deploy[ray]' (or pip install pyarrow)") from None
    try:
        return parquet.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError...: all mean the same to the user
        raise InputDataError(f"{path} is not a readable Parquet file ({str(error).splitlines()[0][:120]})",
                             "check that the file is Parquet and whole") from None


def _parquet_columns(path: Path) -> list[str]:
    return list(_parquet_file(path).schema_arrow.names)


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based row number, row) of each row: Parquet has no lines, so errors name the row."""
    number = 0
    for batch in _parquet_file(path).iter_batches(batch_size=CHUNK_ROWS):
        for row in batch.to_pylist():
            number += 1
            yield number, row
