"""Typed errors of the library. Only the CLI turns them into one-line messages and exit codes."""

from __future__ import annotations


class RobertaDeployError(Exception):
    """Base of every error the library raises on purpose.

    `problem` says what is wrong; `fix` says what the user can do about it. The CLI prints
    them on one line as "error: <problem> (fix: <fix>)".
    """

    exit_code = 1

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        text = f"{self.problem} (fix: {self.fix})" if self.fix else self.problem
        return " ".join(text.split())


class InputDataError(RobertaDeployError):
    """A data file is missing, empty or malformed (bad row, unknown label, empty text)."""

    exit_code = 2


class UsageError(RobertaDeployError):
    """A flag, or a combination of flags, that cannot work."""

    exit_code = 2


class ModelLoadError(RobertaDeployError):
    """A checkpoint or export folder cannot be read as a sequence classifier."""

    exit_code = 3


class BundleError(RobertaDeployError):
    """A bundle or export folder is incomplete, corrupt, or from a newer schema."""

    exit_code = 3


class UnsupportedPrecisionError(RobertaDeployError):
    """A backend x precision combination that cannot run (well) on this machine."""

    exit_code = 2


class ShapeError(RobertaDeployError):
    """Inputs whose shape the engine was not built for."""

    exit_code = 2


class NumericalCheckError(RobertaDeployError):
    """Outputs drifted past the tolerance for their precision."""

    exit_code = 4


class OutputError(RobertaDeployError):
    """An output path that cannot be written: it overlaps an input, is a link or a device, or its disk
    is full, read-only or not ours to write."""

    exit_code = 2


class OverloadedError(RobertaDeployError):
    """More work is waiting than the batcher accepts; retry later (a server answers 429; exit code 1)."""


class NotReadyError(RobertaDeployError):
    """The batcher has not started, or is closing (a server answers 503; exit code 1)."""


class BackendError(RobertaDeployError):
    """The engine failed while computing a batch; only that batch's requests fail (a server answers 424;
    exit code 1)."""


class OutputExistsError(OutputError):
    """An output folder already holds something we would overwrite, or another command is writing it."""


class OutputLockedError(OutputExistsError):
    """Another command holds the output's lock right now: unlike the other OutputExistsErrors, it passes."""


# What each exit code of the command line means; README's "Exit codes" table mirrors it (a test checks).
EXIT_CODES = {
    0: "success; `serve` and `deploy` (while serving) after SIGTERM or Ctrl-C once drained (within `--drain-timeout`)",
    1: "any other library error",
    2: "bad flags or input: a usage error, a malformed data file, a precision or shape this engine does not run, "
       "an output that already exists or overlaps an input",
    3: "a checkpoint, export or bundle that cannot be loaded: missing, corrupt or from a newer schema",
    4: "a numerical check failed: outputs drifted past their precision's tolerance",
    130: "interrupted (Ctrl-C) before serving began, or any other command; workers stopped, no partial output left "
         "(a deploy folder keeps the steps it finished)",
    143: "terminated (SIGTERM), as for 130",
}


class RequestTooLargeError(InputDataError):
    """A request past a server limit (payload bytes); the message names the flag that raises it."""


class UnknownModelError(InputDataError):
    """A request names a model the server does not serve."""


class UnauthorizedError(InputDataError):
    """A request without the server's API key."""


class EmptyRequestError(InputDataError):
    """A request with nothing to compute (text-embeddings-inference answers 400 `Empty`)."""
