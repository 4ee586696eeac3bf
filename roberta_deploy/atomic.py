"""Outputs appear whole or not at all: everything is written under a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import OutputExistsError


@contextlib.contextmanager
def atomic_directory(final_path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `final_path`, on error it is removed.

    A folder that already exists and is not empty is refused unless `overwrite` is set, so a
    failed or mistaken command never destroys earlier work.
    """
    final_path = Path(final_path)
    check_output_folder(final_path, overwrite)
    final_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.partial-", dir=final_path.parent))
    temporary.chmod(0o777 & ~_current_umask())  # mkdtemp makes 0700; outputs are ordinary folders
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if final_path.exists():
        shutil.rmtree(final_path)
    os.replace(temporary, final_path)


def check_output_folder(final_path: str | Path, overwrite: bool = False) -> None:
    """Raise OutputExistsError when `final_path` cannot become an output folder (call it before slow work)."""
    final_path = Path(final_path)
    if final_path.exists() and not final_path.is_dir():
        raise OutputExistsError(f"output path {final_path} exists and is not a folder",
                                "choose another --output path")
    if final_path.is_dir() and any(final_path.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {final_path} already exists and is not empty",
                                "pass --overwrite or choose another --output folder")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file through a temporary name in the same folder, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_json(path: str | Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def _current_umask() -> int:
    """The process umask, read without setting it: os.umask() can only be read by changing it, and a
    change for even a moment races with every other thread creating files (a server)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022  # not Linux (or a kernel before 4.7): the usual default
