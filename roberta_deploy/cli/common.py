"""What several commands share: help texts, stdin and stdout as files, comma-separated integer flags."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import sys
from pathlib import Path
from typing import Callable, Optional

from ..atomic import atomic_write_json
from ..data import read_dataset_chunks
from ..errors import InputDataError, UsageError

STDIO = Path("-")  # `--data -` reads stdin; `--json -` and `--output -` write stdout

BACKEND_HELP = ("Engine to build for: openvino (fastest on Intel CPUs, bf16/int8), onnxruntime (portable) or "
                "torch (PyTorch; the only one for --device cuda).")
EVAL_QUANTIZATION_HELP = ("How the int8 bundle scales activations: static (calibrated on --calibration-data) or "
                          "dynamic (onnxruntime: per batch at run time, no calibration).")
DEVICE_HELP = "cpu, cuda or cuda:N (cuda needs --backend torch and an NVIDIA GPU)."  # commands that build
RUN_DEVICE_HELP = ("cpu, cuda or cuda:N (cuda runs bundles built with `build --backend torch` on an NVIDIA GPU). "
                   "Default: the device the bundle was built for.")  # commands that load a bundle
TEXT_PAIR_HELP = ("Column holding the second text of a sentence pair (default: the pair columns text_a/text_b, "
                  "sentence1/sentence2, premise/hypothesis or query/passage when present).")
PRECISION_HELP = ("fp32, fp16, bf16 or int8 (aliases force_float32, force_float16, qint8_mixed_float16). "
                  "Lower precision is faster; each is checked against fp32 within its tolerance.")


def parse_int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not a comma-separated list of integers", f"pass e.g. {flag} 1,32") from None
    if not values or min(values) < 1:
        raise UsageError(f"{flag} {text!r} needs positive integers", f"pass e.g. {flag} 1,32")
    return values



@contextlib.contextmanager
def dataset_chunks_for(engine, data: Path, text_column, label_column, data_format, text_pair_column=None,
                       label_separator: str = ","):
    """--data, read as the bundle's task reads it: once through (every row checked, so that a bad row fails
    before any work), then as chunks read from the file as they are used. Yields (rows, a function that
    returns the chunks). `-` reads stdin into a private temporary file first (format from --data-format,
    else guessed from the first line), which lasts while the block runs. With `--output -` rows reach
    stdout as they are classified, so an engine failure midway leaves the rows before it there."""
    with contextlib.ExitStack() as stack:
        path = data
        if data == STDIO:
            path, data_format = stack.enter_context(stdin_as_file(data_format))

        def chunks():
            with errors_naming_stdin(path if data == STDIO else None):
                for chunk in read_dataset_chunks(path, text_column=text_column, label_column=label_column,
                                                 label_names=engine.label_names, data_format=data_format,
                                                 text_pair_column=text_pair_column,
                                                 text_pairs=engine.task.text_pairs, task=engine.task.kind,
                                                 label_separator=label_separator):
                    yield chunk if data != STDIO else dataclasses.replace(chunk, source="<stdin>")

        yield sum(len(chunk) for chunk in chunks()), chunks


@contextlib.contextmanager
def stdin_as_file(data_format: Optional[str]):
    """stdin copied into a private temporary file: yields (path, format)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="roberta-deploy-stdin-") as folder:
        path = Path(folder) / "stdin"
        with open(path, "wb") as handle:
            shutil.copyfileobj(sys.stdin.buffer, handle)
        with open(path, "rb") as handle:
            first_line = handle.read(1 << 16).lstrip()[:4096].split(b"\n", 1)[0]
        yield path, data_format or ("jsonl" if first_line.startswith(b"{") else
                                    "tsv" if b"\t" in first_line or b"," not in first_line else "csv")


@contextlib.contextmanager
def data_path(path: Optional[Path], data_format: Optional[str] = None):
    """A data file to read by path: `-` is stdin, copied into a private temporary file named with its format
    (from `data_format`, else guessed from the first line) for the block's duration; input errors about that
    copy name <stdin>. Anything else is yielded as it is."""
    if path != STDIO:
        yield path
        return
    with stdin_as_file(data_format) as (copy, guessed):
        named = copy.with_name(f"stdin.{guessed}")
        copy.rename(named)
        with errors_naming_stdin(named):
            yield named


def stdin_for(*parameters: str) -> Callable[[Callable], Callable]:
    """A command decorator: each of `parameters` (data file options) given as `-` reaches the command as a
    temporary copy of stdin (data_path), removed when the command returns. At most one of them may be `-`."""

    def decorate(command: Callable) -> Callable:
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            dashed = [name for name in parameters if kwargs.get(name) == STDIO]
            if len(dashed) > 1:
                flags = " and ".join("--" + name.replace("_", "-") for name in dashed)
                raise UsageError(f"{flags} cannot both read stdin", "pass a file to all but one of them")
            if not dashed:
                return command(*args, **kwargs)
            with data_path(STDIO) as copy:
                kwargs[dashed[0]] = copy
                return command(*args, **kwargs)

        return wrapper

    return decorate


@contextlib.contextmanager
def errors_naming_stdin(path: Optional[Path]):
    """Input errors about the temporary copy of stdin at `path` name <stdin> instead (None: not stdin)."""
    try:
        yield
    except InputDataError as error:
        if path is None:
            raise
        raise InputDataError(error.problem.replace(str(path), "<stdin>"), error.fix) from None



def write_json_output(path: Path, payload, flag: str) -> None:
    if path == STDIO:
        sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    else:
        atomic_write_json(path, payload, flag=flag)



def short_names(paths: list[Path]) -> list[str]:
    """The last path parts that tell the bundles apart: `int8` and `fp32`, not two absolute paths."""
    for depth in range(1, max(len(path.parts) for path in paths) + 1):
        names = [str(Path(*path.parts[-depth:])) for path in paths]
        if len(set(names)) == len(names):
            return names
    return [str(path) for path in paths]

