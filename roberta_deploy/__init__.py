"""roberta-deploy: export, build, verify, run and benchmark BERT-family text classifiers on CPU engines.

`roberta_deploy.pipeline(...)` is the transformers-style entry point (see docs/api.md). Importing the
package stays light: the pipeline and everything it needs load on first use.
"""

from __future__ import annotations

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("roberta-deploy")
except _metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "pipeline", "TextClassificationPipeline"]


def __getattr__(name: str):
    # PEP 562: `roberta_deploy.pipeline` without importing numpy and the engine for `--help`.
    if name in ("pipeline", "TextClassificationPipeline"):
        from .jobs import pipeline as text_classification

        return getattr(text_classification, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
