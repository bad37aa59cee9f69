"""``EdgeRuntime``: the one object a device app embeds to get predictions offline."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np

from edge_runtime._config import OnWrite, RuntimeConfig, ServingMode, load_config, parse_mode
from edge_runtime._errors import ModelInputError, StoreClosedError
from edge_runtime._outbox import Outbox
from edge_runtime._telemetry import TelemetryRecorder
from edge_runtime._time import Clock, now_us
from edge_runtime.features import FeatureStore, load_definitions
from edge_runtime.models import ModelStore
from edge_runtime.serving._batch import BatchResult, BatchScheduler, run_batch_predict
from edge_runtime.serving._cache import PredictionCache
from edge_runtime.serving._components import RuntimeComponent, component_factory
from edge_runtime.serving._modes import predict_cached, predict_online, predict_precomputed
from edge_runtime.serving._plan import ModelPlan, compile_plan
from edge_runtime.serving._prediction import InputStatus, Prediction
from edge_runtime.serving._recompute import RecomputeWorker

log = logging.getLogger(__name__)

_ONLINE, _CACHED, _TENSORS = ServingMode.ONLINE, ServingMode.CACHED, ServingMode.TENSORS
_MODES: dict[object, ServingMode] = {**{m.value: m for m in ServingMode}, **{m: m for m in ServingMode}}
FEATURES_DB = "features.db"
MODELS_DIR = "models"
TELEMETRY_DB = "telemetry.db"


class EdgeRuntime:
    """Predictions on the device, with no network in the request path.

    One data directory holds the feature store (``features.db``, which also holds the prediction cache), the
    model store (``models/``) and the telemetry outbox (``telemetry.db``). Use it as a context manager or call
    :meth:`close`. ``clock`` (epoch seconds) drives TTLs, stream windows and cache validity, for tests.
    """

    def __init__(
        self, config: RuntimeConfig | None = None, *, clock: Clock | None = None, start_sync: bool = True
    ) -> None:
        self.config = config = config or RuntimeConfig()
        self._clock: Clock = clock or time.time
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._closers: list[Any] = []
        try:
            self.features = FeatureStore(
                self.data_dir / FEATURES_DB, clock=self._clock, max_rows_per_view=config.cache.max_rows_per_view
            )
            self._closers.append(self.features)
            if config.definitions is not None:
                self.features.apply(load_definitions(config.definitions))
            keys = list(config.sync.trusted_keys) if config.sync else []
            pins = {m.name: m.pin_version for m in config.models if m.pin_version is not None}
            self.models = ModelStore(
                self.data_dir / MODELS_DIR,
                trusted_keys=keys or None,
                backend=None if config.runtime.backend == "auto" else config.runtime.backend,
                threads=config.runtime.threads,
                policy=pins or "latest",
            )
            self._closers.append(self.models)
            self._cache = PredictionCache(
                self.data_dir / FEATURES_DB, clock=self._clock, max_rows=config.cache.prediction_cache_max_rows
            )
            self._closers.append(self._cache)
            self.telemetry: TelemetryRecorder | None = None
            if config.telemetry.enabled:
                outbox = Outbox(self.data_dir / TELEMETRY_DB)
                self._closers.append(outbox)
                self.telemetry = TelemetryRecorder(
                    outbox,
                    period_s=config.telemetry.period_s,
                    epsilon=config.telemetry.epsilon,
                    min_predictions=config.telemetry.min_predictions,
                    epsilon_per_day=config.telemetry.epsilon_per_day,
                    clock=self._clock,
                )
        except BaseException:
            self._close_all()
            raise
        self._closed = False
        self._plans: dict[str, ModelPlan] = {}
        self._plan_lock = threading.Lock()
        self._recompute_worker = RecomputeWorker(self._recompute_written)
        self.features.add_write_listener(self._on_feature_write)
        self._scheduler = BatchScheduler(self)
        for m in config.models:
            if m.batch_interval_s:
                self._scheduler.schedule(m.name, m.batch_interval_s)
        self._components: dict[str, RuntimeComponent] = {}
        if config.sync is not None and start_sync:
            # A [sync] table names the sync component; its package registers the factory (no import of it here).
            try:
                self.attach("sync", component_factory("sync")(self), start=True)
            except BaseException:
                self.close()
                raise

    @classmethod
    def from_config(cls, path: str | Path, *, data_dir: str | Path | None = None, **kwargs: Any) -> EdgeRuntime:
        """A runtime for the device profile at ``path`` (``data_dir`` overrides the profile's)."""
        return cls(load_config(path, data_dir=data_dir), **kwargs)

    # --- predictions ---------------------------------------------------------------------------------------------

    def predict(
        self,
        model: str,
        entity_rows: object = None,
        request_data: object = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        mode: ServingMode | str | None = None,
    ) -> Prediction:
        """Predict with the active version of ``model``.

        ``entity_rows``: a list of dicts or a dict of columns with each row's join keys (and request data); many
        rows run as one batched model call. ``request_data``: a dict for every row, or a list of dicts. ``inputs``:
        tensors by input name, for models that take no features. ``mode`` overrides the profile and manifest.
        """
        t0 = perf_counter()
        if self._closed:
            raise StoreClosedError(f"the runtime over {self.data_dir} is closed")
        plan = self._plan(model)
        chosen = _MODES.get(mode) if mode is not None else None
        if chosen is None:
            chosen = self._mode(plan, mode, inputs)
        if chosen is _ONLINE:
            result = predict_online(plan, entity_rows, request_data)
        elif chosen is _CACHED:
            result = predict_cached(self, plan, entity_rows, request_data)
        elif chosen is _TENSORS:
            result = self._predict_tensors(plan, inputs)
        else:
            result = predict_precomputed(self, plan, entity_rows, request_data)
        result.latency_s = perf_counter() - t0
        if self.telemetry is not None:
            self._record(plan, result)
        return result

    def batch_predict(
        self, model: str, *, view: str | None = None, output_view: str | None = None, batch_size: int = 20_000
    ) -> BatchResult:
        """Score every entity cached in ``view`` (default: the model's first feature view) and store the
        predictions in the feature view ``output_view`` (default ``<model>_predictions``), in one transaction."""
        return run_batch_predict(self, self._plan(model), view=view, output_view=output_view, batch_size=batch_size)

    def schedule_batch_predict(self, model: str, interval_s: float) -> None:
        """Run :meth:`batch_predict` for ``model`` every ``interval_s`` seconds in a background thread."""
        self._scheduler.schedule(model, interval_s)

    def _predict_tensors(self, plan: ModelPlan, inputs: Mapping[str, Any] | None) -> Prediction:
        if inputs is None:
            raise ModelInputError(f"model {plan.name!r} in mode 'tensors' needs inputs={{input name: array}}")
        feeds = {k: np.asarray(v) for k, v in inputs.items()}
        outputs = plan.active.run(feeds)
        n = len(next(iter(outputs.values()))) if outputs else 0
        return Prediction(
            model=plan.name,
            version=plan.version,
            mode=ServingMode.TENSORS.value,
            outputs=outputs,
            feature_status={},
            cached=[False] * n,
        )

    # --- plans ---------------------------------------------------------------------------------------------------

    def _plan(self, model: str) -> ModelPlan:
        active = self.models.active(model)
        plan = self._plans.get(model)
        if plan is not None and plan.active is active:
            return plan
        with self._plan_lock:
            plan = self._plans.get(model)
            if plan is None or plan.active is not active:
                plan = compile_plan(active, self.config.model(model), self.features)
                self._plans[model] = plan
        return plan

    def _mode(self, plan: ModelPlan, mode: ServingMode | str | None, inputs: object) -> ServingMode:
        """The mode when ``predict`` was not given a known one: the default, or an error naming the bad value."""
        if mode is None:
            return ServingMode.TENSORS if inputs is not None else plan.mode
        return parse_mode(mode, key="mode")

    # --- cache maintenance ---------------------------------------------------------------------------------------

    def cache_for(self, plan: ModelPlan) -> Any:
        """The prediction cache of ``plan``'s model (created, with its triggers, on first use)."""
        cache = plan.cache
        if cache is None:
            if plan.inputs is None:
                raise ModelInputError(f"model {plan.name!r} has no features; cached mode needs entity-keyed inputs")
            cache = plan.cache = self._cache.model(
                plan.name, plan.version, plan.inputs.join_keys, plan.layout, plan.deps
            )
        return cache

    @property
    def prediction_cache(self) -> PredictionCache:
        """The prediction cache (for inspection: ``count(model)``)."""
        return self._cache

    def _on_feature_write(self, view: str, keys: list[tuple[Any, ...]]) -> None:
        """After a write commits: queue the written keys for models configured with on_write=recompute, so the
        writer (an app, the sync agent) returns at once. (Invalidation itself happens in SQLite triggers, inside
        the write's own transaction.)"""
        for plan in list(self._plans.values()):
            if plan.on_write is OnWrite.RECOMPUTE and plan.cache is not None and view in plan.dep_views:
                self._recompute_worker.submit(view, keys)
                return

    def _recompute_written(self, view: str, keys: list[tuple[Any, ...]]) -> None:
        """On the recompute worker: refresh the cached predictions of ``keys`` for every model that wants it."""
        for plan in list(self._plans.values()):
            if plan.on_write is not OnWrite.RECOMPUTE or plan.cache is None or view not in plan.dep_views:
                continue
            if plan.inputs is None:
                continue
            view_keys = self.features.join_keys(view)
            if tuple(view_keys) != plan.inputs.join_keys:
                continue  # rows keyed more finely than the view: nothing to name them by
            rows = [dict(zip(view_keys, k, strict=True)) for k in keys]
            try:
                predict_cached(self, plan, rows, None)
            except Exception:
                log.exception("recomputing cached predictions of %s after a write to %s failed", plan.name, view)

    def wait_for_recompute(self, timeout: float | None = 10.0) -> bool:
        """Block until predictions queued for recompute-on-write are cached; False if ``timeout`` passed first."""
        return self._recompute_worker.wait_idle(timeout)

    def now_us(self) -> int:
        """The runtime clock's current time in epoch microseconds."""
        return now_us(self._clock)

    @property
    def clock(self) -> Clock:
        """The runtime's clock (epoch seconds)."""
        return self._clock

    # --- status, telemetry, lifecycle ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What runs here: profile, models (active, previous, mode), feature views, cache sizes, sync, telemetry."""
        models = []
        for name in self.models.names():
            active = self.models.active_version(name)
            settings = self.config.model(name)
            models.append(
                {
                    "name": name,
                    "active": active,
                    "previous": self.models.previous_version(name),
                    "mode": (settings.mode.value if settings.mode else None)
                    or (self._plans[name].mode.value if name in self._plans else None),
                    "cached_predictions": self._cache.count(name),
                }
            )
        return {
            "profile": self.config.profile,
            "data_dir": str(self.data_dir),
            "models": models,
            "features": self.features.stats(),
            "sync": None,
            **{name: dict(component.status()) for name, component in self._components.items()},
            "telemetry": {
                "enabled": self.telemetry is not None,
                "pending_reports": len(self.telemetry.outbox) if self.telemetry is not None else 0,
            },
        }

    def _record(self, plan: ModelPlan, result: Prediction) -> None:
        assert self.telemetry is not None
        counts: dict[str, dict[str, int]] = {}
        for ref, statuses in result.feature_status.items():
            c = {"missing": 0, "expired": 0, "defaulted": 0}
            for s in statuses:
                if s is not InputStatus.PRESENT:
                    c[s.value] += 1
            counts[ref] = c
        first = result.output.reshape(len(result), -1)[:64, 0].tolist() if len(result) else []
        self.telemetry.record(
            plan.name,
            plan.version,
            rows=len(result),
            latency_s=result.latency_s,
            first_outputs=first,
            cache_hits=sum(result.cached),
            feature_status_counts=counts,
        )
        self.telemetry.maybe_flush()

    def attach(self, name: str, component: RuntimeComponent, *, start: bool = False) -> RuntimeComponent:
        """Run ``component`` with this runtime: its ``status()`` appears under ``name`` in :meth:`status`, and
        :meth:`close` stops it first. ``start=True`` starts it too. Returns the component."""
        if not isinstance(component, RuntimeComponent):
            raise TypeError(f"{component!r} is not a RuntimeComponent (start, stop, status)")
        if name in self._components:
            raise ValueError(f"a component named {name!r} is already attached")
        self._components[name] = component
        if start:
            component.start()
        return component

    def component(self, name: str) -> RuntimeComponent | None:
        """The component attached as ``name``, or None."""
        return self._components.get(name)

    @property
    def agent(self) -> Any:
        """The attached sync agent (the ``"sync"`` component), or None."""
        return self._components.get("sync")

    def warm_up(self, model: str | None = None) -> dict[str, int]:
        """Load, verify and health-check the active version of ``model`` (default: every installed model) and
        compile its serving plan now, so the first real prediction does not pay for it. Records no telemetry.
        Returns model name → active version."""
        names = [model] if model is not None else [n for n in self.models.names() if self.models.active_version(n)]
        return {name: self._plan(name).version for name in names}

    def close(self) -> None:
        """Stop the scheduler and the sync agent, flush telemetry, and close every store."""
        if self._closed:
            return
        self._closed = True
        self._scheduler.stop()
        self._recompute_worker.stop()
        for name, component in reversed(list(self._components.items())):
            try:
                component.stop()
            except Exception:
                log.exception("stopping component %r failed", name)
        self._components.clear()
        if self.telemetry is not None:
            try:
                self.telemetry.flush()
            except Exception:
                log.exception("flushing telemetry on close failed")
        self._plans.clear()
        self._close_all()

    def _close_all(self) -> None:
        for obj in reversed(self._closers):
            try:
                obj.close()
            except Exception:
                log.exception("closing %r failed", obj)
        self._closers.clear()

    def __enter__(self) -> EdgeRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
