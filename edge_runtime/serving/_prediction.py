"""What ``EdgeRuntime.predict`` returns: outputs, the model version, per-input statuses, cache use, latency."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class InputStatus(str, enum.Enum):
    """How one input feature of one row was obtained, so the app can decide how far to trust a prediction."""

    #: a fresh value from the feature store, the request, or an on-demand transform
    PRESENT = "present"
    #: no value was stored (or sent); the manifest's default was used
    DEFAULTED = "defaulted"
    #: the stored value was older than its view's TTL; the manifest's default was used
    EXPIRED = "expired"
    #: no value and nothing could stand in for it (precomputed mode without a model fallback): outputs are NaN
    MISSING = "missing"


#: Status codes stored with a cached prediction (one byte per input feature, in manifest order).
STATUS_CODES = (InputStatus.PRESENT, InputStatus.DEFAULTED, InputStatus.EXPIRED, InputStatus.MISSING)
STATUS_INDEX = {s: i for i, s in enumerate(STATUS_CODES)}

#: Statuses still packed as the cache stores them: (feature refs, one bytes of codes per row).
PackedStatus = tuple[Sequence[str], Sequence[bytes]]


def unpack_statuses(refs: Sequence[str], rows: Sequence[bytes]) -> dict[str, list[InputStatus]]:
    """Decode packed status codes into ``{ref: [InputStatus per row]}``."""
    return {ref: [STATUS_CODES[r[j]] for r in rows] for j, ref in enumerate(refs)}


class Prediction:
    """The answer for a list of entity rows (or of tensors): one row of outputs per entity row.

    ``outputs`` maps each model output name to a numpy array whose first dimension is the row. ``feature_status``
    maps each input feature ref to one :class:`InputStatus` per row. ``cached`` says per row whether the answer
    came from the prediction cache (or, in precomputed mode, from the feature store) without running the model.
    """

    __slots__ = ("_status", "cached", "latency_s", "mode", "model", "outputs", "version")

    def __init__(
        self,
        model: str,
        version: int,
        mode: str,
        outputs: dict[str, np.ndarray],
        feature_status: Mapping[str, Sequence[InputStatus]] | PackedStatus,
        cached: Sequence[bool],
        latency_s: float = 0.0,
    ) -> None:
        self.model = model
        self.version = version
        self.mode = mode
        self.outputs = outputs
        # Packed codes (a tuple) are decoded on first access: cache hits keep them packed until someone asks.
        self._status = feature_status
        self.cached = cached
        self.latency_s = latency_s

    @property
    def feature_status(self) -> Mapping[str, Sequence[InputStatus]]:
        """Each input feature ref → one :class:`InputStatus` per row."""
        status = self._status
        if type(status) is tuple:
            status = self._status = unpack_statuses(*status)
        return status  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.cached)

    def __getitem__(self, output: str) -> np.ndarray:
        return self.outputs[output]

    def __repr__(self) -> str:
        return (
            f"Prediction(model={self.model!r}, version={self.version}, mode={self.mode!r}, rows={len(self)}, "
            f"latency_ms={self.latency_s * 1000:.3f})"
        )

    @property
    def output(self) -> np.ndarray:
        """The first output (the usual case of a single-output model), one row per entity row."""
        return next(iter(self.outputs.values()))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python: model, version, mode, outputs as lists, statuses as strings, cached flags, latency."""
        return {
            "model": self.model,
            "version": self.version,
            "mode": self.mode,
            "outputs": {name: arr.tolist() for name, arr in self.outputs.items()},
            "feature_status": {ref: [s.value for s in st] for ref, st in self.feature_status.items()},
            "cached": list(self.cached),
            "latency_ms": self.latency_s * 1000.0,
        }
