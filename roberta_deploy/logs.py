"""The library's loggers, and whether the application wants other libraries' output let through.

The library never configures logging. It mutes the progress bars and advice that transformers, NNCF
and ONNX Runtime print on their own, unless the application enabled roberta_deploy's INFO logs
(the CLI's -v does; so does `logging.basicConfig(level=logging.INFO)` in a user's program).
"""

from __future__ import annotations

import logging

ROOT_LOGGER_NAME = "roberta_deploy"


def get_logger(module_name: str) -> logging.Logger:
    return logging.getLogger(module_name)


def third_party_output_wanted() -> bool:
    return logging.getLogger(ROOT_LOGGER_NAME).isEnabledFor(logging.INFO)
