"""The one table from error type to HTTP status, metrics outcome and text-embeddings-inference error type.

Every route turns exceptions into responses through `describe_error`; nothing else picks a status.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import (BackendError, EmptyRequestError, InputDataError, NotReadyError, NumericalCheckError, OverloadedError,
                      RequestTooLargeError, RobertaDeployError, ShapeError, UnauthorizedError, UnknownModelError,
                      UsageError)


@dataclass(frozen=True)
class ErrorStatus:
    status: int
    outcome: str  # label of roberta_deploy_requests_total{outcome=...}
    error_type: str  # text-embeddings-inference's `error_type`


# Most specific first: RequestTooLargeError, EmptyRequestError and UnknownModelError are InputDataErrors too.
ERROR_TABLE: tuple[tuple[type[BaseException], ErrorStatus], ...] = (
    (UnauthorizedError, ErrorStatus(401, "unauthorized", "Unauthorized")),
    (UnknownModelError, ErrorStatus(404, "validation", "Validation")),
    (RequestTooLargeError, ErrorStatus(413, "validation", "PayloadTooLarge")),
    (EmptyRequestError, ErrorStatus(400, "validation", "Empty")),
    (OverloadedError, ErrorStatus(429, "overloaded", "Overloaded")),
    (NotReadyError, ErrorStatus(503, "not_ready", "Unhealthy")),
    (BackendError, ErrorStatus(424, "backend_error", "Backend")),
    (NumericalCheckError, ErrorStatus(424, "backend_error", "Backend")),
    (InputDataError, ErrorStatus(422, "validation", "Validation")),
    (ShapeError, ErrorStatus(422, "validation", "Validation")),
    (UsageError, ErrorStatus(422, "validation", "Validation")),
)
INTERNAL = ErrorStatus(500, "internal_error", "Backend")
DROPPED = "dropped"  # the client went away before its answer
SUCCESS = "success"
RETRY_AFTER_SECONDS = 1
# The gRPC status (a grpc.StatusCode name) of each HTTP status above, for serve/grpc_server.py: overload and
# not-ready are UNAVAILABLE, as Triton answers them (and KServe's client retries them).
GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
              422: "INVALID_ARGUMENT", 424: "INTERNAL", 429: "UNAVAILABLE", 500: "INTERNAL", 503: "UNAVAILABLE"}


def describe_error(error: BaseException) -> tuple[ErrorStatus, str]:
    """The status row of `error` and the one-line message for the response body (never a traceback)."""
    for error_type, status in ERROR_TABLE:
        if isinstance(error, error_type):
            return status, error.one_line()  # type: ignore[attr-defined]
    if isinstance(error, RobertaDeployError):
        return ErrorStatus(422, "validation", "Validation"), error.one_line()
    return INTERNAL, f"internal error ({type(error).__name__}); the server log has the details"
