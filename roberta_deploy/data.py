"""Reading labelled (or unlabelled) texts from TSV, CSV or JSONL files, with errors that name the line."""

from __future__ import annotations

import csv
import io
import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import InputDataError

TEXT_COLUMN_CANDIDATES = ("text_a", "text", "sentence", "review", "content")
LABEL_COLUMN_CANDIDATES = ("label", "labels", "gold")
FORMATS = ("tsv", "csv", "jsonl")


@dataclass(frozen=True)
class Dataset:
    """Texts read from one file. `labels` is None when the file has no label column."""

    texts: list[str]
    labels: list[int] | None
    line_numbers: list[int]  # 1-based line of each row in the source file, for error messages
    source: str

    def __len__(self) -> int:
        return len(self.texts)


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
    raise InputDataError(f"cannot tell the format of {path} from its extension",
                         "name it .tsv, .csv or .jsonl, or pass --format")


def read_dataset(
    path: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: Sequence[str] | None = None,
    require_labels: bool = False,
    data_format: str | None = None,
) -> Dataset:
    """Read a data file into texts and integer labels.

    Labels may be written as integer ids or, when `label_names` is given, as those names.
    Every problem raises InputDataError naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"data file {path} does not exist", "check the path given for this file")
    raw = path.read_bytes()
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputDataError(f"{path} is not UTF-8 (byte {error.start})", "re-save the file as UTF-8") from None
    if not content.strip():
        raise InputDataError(f"data file {path} is empty", "give a file with a header line and at least one row")
    fmt = detect_format(path, data_format)
    rows = _read_jsonl(path, content) if fmt == "jsonl" else _read_delimited(path, content, fmt)
    if not rows:
        raise InputDataError(f"data file {path} has a header but no rows", "add at least one example")

    columns = list(rows[0][1].keys()) if fmt != "jsonl" else sorted({key for _, row in rows for key in row})
    text_key = _pick_column(path, columns, text_column, TEXT_COLUMN_CANDIDATES, "text", "--text-column")
    label_key = label_column
    if label_key is None:
        label_key = next((name for name in LABEL_COLUMN_CANDIDATES if name in columns), None)
    elif label_key not in columns:
        raise InputDataError(f"{path} has no column {label_key!r} (columns: {', '.join(columns)})",
                             "pass the right --label-column")
    if label_key is None and require_labels:
        raise InputDataError(f"{path} has no label column (columns: {', '.join(columns)})",
                             "add a 'label' column or pass --label-column")

    texts: list[str] = []
    labels: list[int] | None = [] if label_key is not None else None
    line_numbers: list[int] = []
    for line_number, row in rows:
        text = row.get(text_key)
        if not isinstance(text, str):
            raise InputDataError(f"{path}:{line_number}: the {text_key!r} field is missing or not a string",
                                 "give every row a text")
        if not text.strip():
            raise InputDataError(f"{path}:{line_number}: empty text", "remove the row or fill in its text")
        if not has_visible_characters(text):
            raise InputDataError(f"{path}:{line_number}: the text has only control, format or space characters "
                                 "(NUL, zero-width space...), so it gives no tokens", "remove the row or fill in its text")
        texts.append(text)
        line_numbers.append(line_number)
        if labels is not None:
            labels.append(_parse_label(path, line_number, row.get(label_key), label_names))
    return Dataset(texts=texts, labels=labels, line_numbers=line_numbers, source=str(path))


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


def _read_delimited(path: Path, content: str, fmt: str) -> list[tuple[int, dict[str, str]]]:
    lines = content.split("\n")  # only \n: texts may hold U+2028 and other separators
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if fmt == "tsv":
        parsed = [line.split("\t") for line in lines]
    else:
        try:
            parsed = list(csv.reader(io.StringIO("\n".join(lines))))
        except csv.Error as error:
            raise InputDataError(f"{path}: malformed CSV ({error})", "fix the quoting in the file") from None
        if len(parsed) != len(lines):
            raise InputDataError(f"{path}: CSV texts span several lines",
                                 "use one line per row, or write the data as JSONL")
    header = [name.strip() for name in parsed[0]]
    if len(set(header)) != len(header):
        raise InputDataError(f"{path}:1: duplicate column names in the header {header}", "rename the columns")
    rows = []
    for index, fields in enumerate(parsed[1:], start=2):
        if len(fields) != len(header):
            separator = "tab-separated" if fmt == "tsv" else "comma-separated"
            raise InputDataError(
                f"{path}:{index}: malformed row with {len(fields)} {separator} fields, expected {len(header)}",
                f"fix line {index} so that it has the columns {', '.join(header)}")
        rows.append((index, dict(zip(header, fields))))
    return rows


def _read_jsonl(path: Path, content: str) -> list[tuple[int, dict]]:
    rows = []
    for index, line in enumerate(content.split("\n"), start=1):
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
        rows.append((index, row))
    return rows
