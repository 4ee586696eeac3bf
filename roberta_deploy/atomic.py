"""Outputs appear whole or not at all, never on top of an input, and only ever replace what this tool wrote.

A folder output is reserved before the work starts (`OutputFolder`): every problem that can be
known up front (an input in the way, a folder of someone else's files, a symbolic link, no write
permission, no space) is raised then; a lock file keeps two commands from writing the same folder
at once. The work happens in a hidden `.NAME.partial-*` sibling that replaces the folder in one
rename at the end, or is removed on any error or signal.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError, OutputExistsError, OutputLockedError
from .interrupts import raise_if_stopped

# Written into every folder this tool creates: what --overwrite looks for before it replaces one.
MARKER_FILE = ".roberta-deploy-output.json"
MANIFEST_FILE = "manifest.json"  # bundles and exports written before the marker existed carry this
MIN_FREE_BYTES = 16 * 2**20  # less than this on the output's filesystem fails before the work, not during it
# Errors of the output's filesystem, told apart from the errors of whatever the work reads.
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EIO}
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def check_not_overlapping(output: Path, inputs: Iterable[str | Path | None], flag: str = "--output") -> None:
    """Refuse an output that is, contains or sits inside an input, or is or contains the current folder."""
    target = Path(os.path.realpath(output))
    for source in inputs:
        if source is None or not os.path.exists(source):
            continue  # a hub id, or a file another check reports as missing
        source_path = Path(os.path.realpath(source))
        if target == source_path or source_path.is_relative_to(target) or target.is_relative_to(source_path):
            raise OutputError(f"{flag} {output} overlaps the input {source}: writing it would destroy that input",
                              f"choose a {flag} path outside {source}")
    cwd = Path(os.path.realpath(os.getcwd()))
    if cwd.is_relative_to(target):
        raise OutputError(f"{flag} {output} is or contains the current folder {cwd}",
                          f"choose a new folder such as {flag} out")


class OutputFolder:
    """An output folder checked before the work, locked against other writers while it is written.

        with OutputFolder(path, overwrite=..., inputs=(data, bundle)) as output:
            ... the work ...
            with output.staging() as work:
                ... write files into work ...

    The folder may be absent, empty, or (with overwrite) one this tool wrote earlier: it holds
    our marker (or a manifest) and nothing else. Anything else is refused, so --overwrite never
    deletes a file the user put there.
    """

    def __init__(self, path: str | Path, *, overwrite: bool = False, inputs: Iterable[str | Path | None] = (),
                 flag: str = "--output"):
        self.path = Path(path)
        self.overwrite = overwrite
        self.flag = flag
        self._lock_fd: int | None = None
        self._lock_path = self.path.parent / f".{self.path.name}.lock"
        self._created_parents: list[Path] = []
        check_not_overlapping(self.path, inputs, flag)
        try:
            self._check_target()
            self._check_parent()
        except OSError as error:  # e.g. a folder on the way that this user may not search
            raise _output_error(self.path, error, flag) from None

    def _check_target(self) -> None:
        path = self.path
        if path.is_symlink():
            raise OutputError(f"{self.flag} {path} is a symbolic link (to {os.readlink(path)})",
                              f"pass the folder it points to, or another {self.flag} path")
        if not path.exists():
            return
        if not path.is_dir():
            raise OutputExistsError(f"{self.flag} {path} exists and is not a folder",
                                    f"choose another {self.flag} path")
        entries = sorted(os.listdir(path))
        if not entries:
            return
        if not self.overwrite:
            raise OutputExistsError(f"output folder {path} already exists and is not empty",
                                    f"pass --overwrite or choose another {self.flag} folder")
        foreign = foreign_entries(path)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputExistsError(f"output folder {path} holds files roberta-deploy did not write ({shown})",
                                    f"--overwrite only replaces a folder this tool wrote; choose another {self.flag} folder")

    def _check_parent(self) -> None:
        existing = self.path.parent
        while not existing.exists():
            if existing.is_symlink():  # a dangling link on the way
                raise OutputError(f"{self.flag} {self.path}: {existing} is a broken symbolic link",
                                  f"choose another {self.flag} path")
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(f"{self.flag} {self.path}: {existing} is a file, not a folder",
                              f"choose another {self.flag} path")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise OutputError(f"{self.flag} {self.path}: {existing} is not writable",
                              f"choose a {self.flag} path in a folder you can write to")
        check_free_space(existing, self.flag)

    def __enter__(self) -> "OutputFolder":
        self._make_parents()
        try:
            self._lock()
            self._check_target()  # again: another command may have written it before we held the lock
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._release()

    def _make_parents(self) -> None:
        missing = []
        parent = self.path.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as error:
                self._release()
                raise _output_error(self.path, error, self.flag) from None
            self._created_parents.append(folder)

    def _lock(self) -> None:
        """flock on .NAME.lock; the loser of a race gets a clear error at once instead of waiting."""
        for _ in range(5):
            try:
                descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as error:
                raise _output_error(self.path, error, self.flag) from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise OutputLockedError(f"another roberta-deploy command is writing {self.path} right now",
                                        f"wait for it to finish, or choose another {self.flag} path") from None
            # The holder before us unlinks the file before unlocking: make sure ours is still the live one.
            try:
                same = os.stat(self._lock_path).st_ino == os.fstat(descriptor).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock_fd = descriptor
                return
            os.close(descriptor)
        raise OutputLockedError(f"another roberta-deploy command is writing {self.path} right now",
                                f"wait for it to finish, or choose another {self.flag} path")

    def _release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None
        for folder in reversed(self._created_parents):
            if not self.path.exists():
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if still empty: the command failed before writing anything
        self._created_parents = []

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A temporary sibling folder; on success it replaces the output, on any error it is removed."""
        if self._lock_fd is None:
            raise RuntimeError("OutputFolder.staging() outside its `with` block")
        final_path = self.path
        # Named before it exists, so that a Ctrl-C landing inside the mkdir still finds it to remove
        # (tempfile.mkdtemp returns the name only after the folder is made: 1 of 60 interrupted runs
        # left one behind). The umask applies, as to any folder the user makes.
        temporary = final_path.parent / f".{final_path.name}.partial-{secrets.token_hex(8)}"
        try:
            try:
                temporary.mkdir(0o777)
            except OSError as error:
                raise _output_error(final_path, error, self.flag) from None
            try:
                yield temporary
                _write_marker(temporary)
                self._check_target()  # a writer that ignores our lock may have filled it meanwhile
                raise_if_stopped()  # a Ctrl-C a library swallowed (interrupts.py) still leaves no output
                _replace_folder(temporary, final_path)
            except OSError as error:
                if error.errno in _OUTPUT_ERRNOS and error.filename in (None, *_names_under(temporary, final_path)):
                    raise _output_error(final_path, error, self.flag) from None
                raise
        except BaseException:
            shutil.rmtree(temporary, ignore_errors=True)
            raise
        self._created_parents = []  # the output exists now: its parents stay


@contextlib.contextmanager
def atomic_directory(final_path: str | Path, overwrite: bool = False,
                     inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Check and lock `final_path`, yield a temporary sibling, and put it in place on success."""
    with OutputFolder(final_path, overwrite=overwrite, inputs=inputs) as output, output.staging() as work:
        yield work


def check_output_folder(final_path: str | Path, overwrite: bool = False,
                        inputs: Iterable[str | Path | None] = ()) -> None:
    """The checks of `OutputFolder` alone, for a command that reserves its output later."""
    OutputFolder(final_path, overwrite=overwrite, inputs=inputs)


def foreign_entries(folder: Path) -> list[str]:
    """Names in `folder` that roberta-deploy did not write there (empty for its own outputs)."""
    entries = sorted(os.listdir(folder))
    written = None
    with contextlib.suppress(OSError, ValueError):
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
        if isinstance(marker, dict) and marker.get("tool") == "roberta-deploy":
            written = {name for name in marker.get("entries", []) if isinstance(name, str)}
    if written is not None:
        return [name for name in entries
                if name not in written and name != MARKER_FILE and not _leftover_of(name, written)]
    # A bundle or export from before the marker: its manifest lists every file it wrote.
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        if manifest.get("kind") in ("bundle", "export"):
            listed = {MANIFEST_FILE, *manifest["files"]}
            found = [str(path.relative_to(folder)) for path in folder.rglob("*")
                     if path.is_symlink() or not path.is_dir()]
            return sorted(name for name in found if name not in listed)
    return entries


def holds_our_marker(folder: Path) -> bool:
    """`folder` holds roberta-deploy's marker: its entries are this tool's to replace."""
    with contextlib.suppress(OSError, ValueError):
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
        return isinstance(marker, dict) and marker.get("tool") == "roberta-deploy"
    return False


def remove_abandoned_staging(folder: Path) -> list[str]:
    """Remove the staging folders and files (`.NAME.partial-*`) in `folder` whose writer is gone: nobody holds
    `.NAME.lock` (a process killed outright leaves both behind; a live writer keeps its lock). Returns the
    names removed. The caller holds the lock of `folder` itself, so no new writer starts in it meanwhile."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        names = sorted(os.listdir(folder))
    for name in (names if folder.is_dir() else []):
        if not (name.startswith(".") and ".partial-" in name):
            continue
        lock_path = folder / f"{name[:name.index('.partial-')]}.lock"
        descriptor = None
        try:
            if lock_path.exists():
                descriptor = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path = folder / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(name)
        except (BlockingIOError, FileNotFoundError):
            continue  # a live writer's, or already gone
        finally:
            if descriptor is not None:
                os.close(descriptor)
    return removed


def _leftover_of(name: str, written: set[str]) -> bool:
    """A lock file or staging folder of one of our entries (`.NAME.lock`, `.NAME.partial-*`): a process killed
    outright (SIGKILL, out of memory) leaves them behind, and they are ours as much as NAME is."""
    return any(name == f".{entry}.lock" or name.startswith(f".{entry}.partial-") for entry in written)


def _write_marker(folder: Path) -> None:
    entries = sorted(name for name in os.listdir(folder) if name != MARKER_FILE)
    (folder / MARKER_FILE).write_text(json.dumps({"tool": "roberta-deploy", "entries": entries}) + "\n",
                                      encoding="utf-8")


def _replace_folder(temporary: Path, final_path: Path) -> None:
    """Put `temporary` at `final_path` in one step: no moment without a whole output."""
    if not os.path.lexists(final_path):
        if _renameat2(temporary, final_path, _RENAME_NOREPLACE):
            return
        os.rename(temporary, final_path)
        return
    if _renameat2(temporary, final_path, _RENAME_EXCHANGE):
        shutil.rmtree(temporary)  # now holds the old output
        return
    # No renameat2 here (not Linux, or a filesystem without it): two renames, the old one kept until the end.
    previous = Path(tempfile.mkdtemp(prefix=f".{final_path.name}.old-", dir=final_path.parent))
    os.rename(final_path, previous / "old")
    os.rename(temporary, final_path)
    shutil.rmtree(previous)


def _renameat2(source: Path, destination: Path, flags: int) -> bool:
    """renameat2(2) with RENAME_NOREPLACE or RENAME_EXCHANGE; False where the system lacks it."""
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_cwd = -100
    if function(at_cwd, os.fsencode(source), at_cwd, os.fsencode(destination), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    if code == errno.EEXIST:
        raise OutputExistsError(f"{destination} appeared while this command was writing it",
                                "another program wrote there; choose another --output path")
    raise OSError(code, os.strerror(code), str(source), None, str(destination))


def _names_under(*folders: Path) -> set[str]:
    """Filenames an OSError may carry that belong to the output (the staging folder or the target)."""
    names: set[str] = {str(folder) for folder in folders}
    for folder in folders:
        with contextlib.suppress(OSError):
            names.update(str(path) for path in folder.rglob("*"))
    return names


def check_free_space(folder: Path, flag: str) -> None:
    with contextlib.suppress(OSError):
        usage = os.statvfs(folder)
        free = usage.f_bavail * usage.f_frsize
        if free < MIN_FREE_BYTES:
            raise OutputError(f"{flag}: the filesystem of {folder} has {free / 2**20:.1f} MiB free",
                              f"free some space or choose a {flag} path on another disk")


def _output_error(path: Path, error: OSError, flag: str) -> OutputError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    fixes = {errno.ENOSPC: "free some space or write to another disk",
             errno.EDQUOT: "free some space or write to another disk",
             errno.EROFS: f"choose a {flag} path on a writable filesystem"}
    return OutputError(f"cannot write {path}: {reason}",
                       fixes.get(error.errno, f"choose a {flag} path you can write to"))


def _file_target(path: Path, flag: str) -> tuple[Path, bool]:
    """(where to write, whether to write through) for the single file `path`; OutputError if it cannot be.

    Regular files (or none yet) are replaced by rename. A symbolic link is followed: its target is
    replaced, the link stays. Devices and pipes (/dev/stdout, /dev/null, a named pipe, anything under
    /proc or /dev) are written through: a rename would replace the device with a file.
    """
    try:
        mode = os.stat(path).st_mode  # follows links
    except FileNotFoundError:
        mode = None
    except OSError as error:
        raise _output_error(path, error, flag) from None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{flag} {path} is a folder", f"pass a file name, e.g. {flag} {path / 'report.json'}")
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        raise OutputError(f"{flag} {path} is neither a file nor a device", f"choose another {flag} path")
    target = Path(os.path.realpath(path))
    if mode is not None and (not stat.S_ISREG(mode) or target.parts[1:2] in (("proc",), ("dev",))):
        if not os.access(path, os.W_OK):
            raise OutputError(f"{flag} {path} is not writable", f"choose another {flag} path")
        return Path(path), True
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: {parent} is not a writable folder", f"choose another {flag} path")
    return target, False


def check_output_file(path: str | Path, inputs: Iterable[str | Path | None] = (), flag: str = "--output") -> None:
    """Everything that can be known before writing the single file `path` (see `atomic_write_text`)."""
    path = Path(path)
    target, through = _file_target(path, flag)
    check_not_overlapping(path, inputs, flag)
    if not through:
        parent = target.parent
        while not parent.exists():
            parent = parent.parent
        check_free_space(parent, flag)


def atomic_write_text(path: str | Path, text: str, flag: str = "--output") -> None:
    """Write a text file whole: a regular file (or none yet) through a temporary name and a rename.

    A symbolic link is written through to its target; a device or pipe (/dev/stdout) is written
    directly; a folder is refused. Write errors (a full disk, /dev/full) raise OutputError.
    """
    path = Path(path)
    target, through = _file_target(path, flag)
    if through:
        try:
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as error:
            raise _output_error(path, error, flag) from None
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    except OSError as error:
        raise _output_error(path, error, flag) from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp makes 0600
        raise_if_stopped()
        os.replace(temporary, target)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise _output_error(path, error, flag) from None
        raise


def atomic_write_json(path: str | Path, payload: object, flag: str = "--output") -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n", flag=flag)


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
