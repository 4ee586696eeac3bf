"""The one place that maps a backend name to its implementation (imported lazily: each pulls a runtime)."""

from __future__ import annotations

from ..defaults import DEFAULT_BACKEND  # noqa: F401  (re-exported: the backend every command defaults to)
from ..errors import UnsupportedPrecisionError, UsageError
from .base import Backend

BACKENDS = ("openvino", "onnxruntime", "torch")
_INSTALL_HINTS = {"openvino": "pip install 'roberta-deploy[openvino]'",
                  "onnxruntime": "pip install 'roberta-deploy[onnxruntime]'",
                  "torch": "pip install 'roberta-deploy[torch]'"}


def offered_precisions(name: str, device: str = "cpu") -> tuple[str, ...]:
    """The precisions backend `name` builds and runs well on `device` here (asks the machine)."""
    return get_backend(name).precisions(device)


def default_precisions(name: str, device: str = "cpu") -> tuple[str, ...]:
    """What run and eval build for backend `name` when no precision is named (asks the machine)."""
    return get_backend(name).default_precisions(device)


def require_precision(name: str, precision: str, device: str = "cpu") -> Backend:
    """The backend `name`, when it runs `precision` (canonical) on `device` (canonical) here: the one place a
    job asks; UnsupportedPrecisionError naming what to use instead otherwise."""
    backend = get_backend(name)
    backend.check_device(device)
    reason = backend.unsupported_reason(precision, device)
    if reason:
        raise UnsupportedPrecisionError(f"{backend.name} cannot build {precision} "
                                        f"{'here' if device == 'cpu' else 'on ' + device}", reason)
    return backend


def get_backend(name: str) -> Backend:
    key = name.strip().lower().replace("_", "").replace("-", "")
    key = {"ov": "openvino", "ort": "onnxruntime", "pytorch": "torch"}.get(key, key)
    if key not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}", f"use one of {', '.join(BACKENDS)}")
    try:
        if key == "openvino":
            from .openvino import OpenVINOBackend
            return OpenVINOBackend()
        if key == "torch":
            from .torch import TorchBackend
            return TorchBackend()
        from .onnxruntime import ONNXRuntimeBackend
        return ONNXRuntimeBackend()
    except ImportError as error:
        _reraise_interrupt(error)
        raise UsageError(f"backend {key} is not installed ({error.name} missing)", _INSTALL_HINTS[key]) from None


def _reraise_interrupt(error: BaseException) -> None:
    """Ctrl-C or SIGTERM during the import of a runtime can surface as an ImportError of a half-imported
    module; that is the interrupt, not a missing package."""
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if not isinstance(cause, Exception):
            raise cause
        cause = cause.__cause__ or cause.__context__
