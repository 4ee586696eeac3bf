"""The run-time layer: load a verified bundle and classify texts. Never imports build, export or torch code."""

from .batcher import Batcher
from .engine import Context, Engine
from .results import BatcherStats, BatchStats, Prediction, Predictions, RequestResult, RequestTimings

__all__ = ["Batcher", "BatcherStats", "BatchStats", "Context", "Engine", "Prediction", "Predictions",
           "RequestResult", "RequestTimings"]
