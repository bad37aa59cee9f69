"""Serving: the runtime a device app embeds, and what its predictions look like."""

from edge_runtime.serving._batch import BatchResult
from edge_runtime.serving._prediction import InputStatus, Prediction
from edge_runtime.serving._runtime import EdgeRuntime

__all__ = ["BatchResult", "EdgeRuntime", "InputStatus", "Prediction"]
