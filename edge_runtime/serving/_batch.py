"""Batch prediction on the device: score every cached entity, vectorised, and store the results as a feature view."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime._errors import ModelInputError
from edge_runtime.features import FeatureView, Field
from edge_runtime.serving._plan import ModelPlan, output_view_name

if TYPE_CHECKING:
    from edge_runtime.serving._runtime import EdgeRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    """What one ``batch_predict`` run did."""

    model: str
    version: int
    rows: int
    seconds: float
    source_view: str
    output_view: str


def _output_fields(plan: ModelPlan) -> list[Field]:
    fields = []
    for name, _dt, shape in plan.layout.fields:
        width = int(np.prod(shape)) if shape else 1
        fields.append(Field(name=name, dtype="float32" if width == 1 else f"float32[{width}]"))
    return fields


def run_batch_predict(
    rt: EdgeRuntime, plan: ModelPlan, *, view: str | None, output_view: str | None, batch_size: int
) -> BatchResult:
    """Score every entity of ``view`` with ``plan``'s model and upsert the outputs into ``output_view``.

    All results are written in one transaction at the end, so readers see either the previous run's predictions
    or this run's, never a mix.
    """
    t0 = time.perf_counter()
    inputs = plan.inputs
    if inputs is None:
        raise ModelInputError(f"model {plan.name!r} lists no features; batch prediction needs feature inputs")
    source = view or next(
        (
            r.split(":", 1)[0]
            for r in inputs.store_refs
            if isinstance(rt.features.get_view(r.split(":", 1)[0]), FeatureView)
        ),
        None,
    )
    if source is None:
        raise ModelInputError(f"model {plan.name!r} reads no batch feature view; pass view=... to batch_predict")
    src = rt.features.get_view(source)
    keys = tuple(rt.features.join_keys(source))
    out_name = output_view or output_view_name(plan.name)
    fields = _output_fields(plan)
    _ensure_output_view(rt, out_name, src, fields)
    key_cols: dict[str, list[Any]] = {k: [] for k in keys}
    parts: dict[str, list[np.ndarray]] = {f.name: [] for f in fields}
    total = 0
    for batch in rt.features.iter_entities(source, batch_size=batch_size):
        x, _statuses, n = inputs.gather(batch)
        if n == 0:
            continue
        outputs = plan.active.run({inputs.input_name: x})
        for k in keys:
            key_cols[k].extend(row[k] for row in batch)
        for f in fields:
            arr = outputs[f.name].reshape(n, -1)
            parts[f.name].append(arr[:, 0] if arr.shape[1] == 1 else arr)
        total += n
    if total:
        columns: dict[str, Any] = dict(key_cols)
        for f in fields:
            columns[f.name] = np.concatenate(parts[f.name]).astype(np.float32)
        columns["event_timestamp"] = np.full(total, rt.now_us() / 1e6)
        rt.features.write_to_online_store(out_name, columns)
    return BatchResult(
        model=plan.name,
        version=plan.version,
        rows=total,
        seconds=time.perf_counter() - t0,
        source_view=source,
        output_view=out_name,
    )


def _ensure_output_view(rt: EdgeRuntime, name: str, src: Any, fields: list[Field]) -> None:
    try:
        existing = rt.features.get_view(name)
    except KeyError:
        existing = None
    if existing is not None and {f.name for f in existing.schema} >= {f.name for f in fields}:
        return
    rt.features.apply([FeatureView(name=name, entities=list(src.entities), schema=fields, ttl=None)])


class BatchScheduler:
    """Runs ``batch_predict`` for scheduled models in one background thread until stopped."""

    def __init__(self, rt: EdgeRuntime) -> None:
        self._rt = rt
        self._intervals: dict[str, float] = {}
        self._due: dict[str, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: dict[str, BatchResult | Exception] = {}

    def schedule(self, model: str, interval_s: float) -> None:
        """Score ``model`` now and then every ``interval_s`` seconds."""
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self._intervals[model] = interval_s
        self._due[model] = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="edge-runtime-batch", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for model, due in list(self._due.items()):
                if due <= now and not self._stop.is_set():
                    try:
                        self.last[model] = self._rt.batch_predict(model)
                    except Exception as exc:  # keep scheduling; the next run may succeed (a model may arrive)
                        log.exception("scheduled batch prediction of %s failed", model)
                        self.last[model] = exc
                    self._due[model] = time.monotonic() + self._intervals[model]
            wait = min((d - time.monotonic() for d in self._due.values()), default=3600.0)
            self._wake.wait(max(0.0, wait))
            self._wake.clear()

    def stop(self) -> None:
        """Stop the thread (waits for a run in progress to finish)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
