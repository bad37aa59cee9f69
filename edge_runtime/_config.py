"""Device profiles: frozen, keyword-only dataclasses validated on construction, loaded from TOML.

A profile (one per device kind, see ``device_configs/``) says how many threads to use, which backend and
model variant to prefer, how big the caches may grow, how and when to sync, and whether telemetry is on.
Every value is checked when the dataclass is built; :func:`load_config` turns a TOML file into a
:class:`RuntimeConfig` and any mistake into a :class:`~edge_runtime.ConfigError` naming the file, the key
and what was expected.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError
from ._toml import TomlTable, load_toml


class ServingMode(str, enum.Enum):
    """How ``EdgeRuntime.predict`` answers for a model (the serving modes of the design brief)."""

    #: look up features (batch, stream aggregates, request data, on-demand), run the model
    ONLINE = "online"
    #: read a prediction precomputed in the cloud (or by batch_predict) from a feature view; no model runs
    PRECOMPUTED = "precomputed"
    #: serve a cached prediction; on a miss run the model and cache the result
    CACHED = "cached"
    #: the caller passes tensors; no features are read
    TENSORS = "tensors"


MODE_CHOICES = " | ".join(m.value for m in ServingMode)


def parse_mode(value: object, *, key: str, context: str = "") -> ServingMode:
    """``value`` as a :class:`ServingMode`, or a :class:`ConfigError` naming ``key`` and the valid modes."""
    try:
        return ServingMode(value)
    except ValueError:
        raise ConfigError(
            f"{context}unknown serving mode {value!r}", key=key, expected=MODE_CHOICES, got=value
        ) from None


class OnWrite(str, enum.Enum):
    """What a feature write does to cached predictions of the entities it touches."""

    INVALIDATE = "invalidate"
    RECOMPUTE = "recompute"


BACKEND_CHOICES = ("auto", "onnxruntime", "litert", "tflite-runtime")
VARIANTS = ("onnx-int8", "onnx-fp32", "tflite-int8", "tflite-fp32")


def _require(cond: bool, key: str, message: str, expected: str, got: object) -> None:
    if not cond:
        raise ConfigError(message, key=key, expected=expected, got=got)


@dataclass(frozen=True, kw_only=True)
class RuntimeSettings:
    """Engine settings: threads per model, backend, and which model variants to prefer."""

    threads: int = 1
    backend: str = "auto"
    variant_preference: tuple[str, ...] = VARIANTS

    def __post_init__(self) -> None:
        _require(1 <= self.threads <= 64, "runtime.threads", "must be between 1 and 64", "1..64", self.threads)
        _require(
            self.backend in BACKEND_CHOICES,
            "runtime.backend",
            f"unknown backend {self.backend!r}",
            " | ".join(BACKEND_CHOICES),
            self.backend,
        )
        for v in self.variant_preference:
            _require(v in VARIANTS, "runtime.variant_preference", f"unknown variant {v!r}", " | ".join(VARIANTS), v)


@dataclass(frozen=True, kw_only=True)
class CacheSettings:
    """Budgets for the on-device caches."""

    #: default maximum rows per feature view (least recently written entities are evicted); None = unbounded
    max_rows_per_view: int | None = None
    #: maximum cached predictions per model
    prediction_cache_max_rows: int = 100_000

    def __post_init__(self) -> None:
        if self.max_rows_per_view is not None:
            _require(
                self.max_rows_per_view > 0,
                "cache.max_rows_per_view",
                "must be positive",
                "a positive integer",
                self.max_rows_per_view,
            )
        _require(
            self.prediction_cache_max_rows > 0,
            "cache.prediction_cache_max_rows",
            "must be positive",
            "a positive integer",
            self.prediction_cache_max_rows,
        )


@dataclass(frozen=True, kw_only=True)
class DownloadPolicy:
    """When the sync agent may download large payloads (model files)."""

    #: whether this device's link is metered (a phone tether, a cellular modem)
    metered: bool = False
    #: whether downloads may happen over a metered link
    allow_metered: bool = False
    #: hours of the day [start, end) in ``timezone`` when large downloads may run; None = any time
    allowed_hours: tuple[int, int] | None = None
    #: IANA timezone the allowed hours are read in
    timezone: str = "UTC"
    #: byte budget per calendar day for model downloads; None = unlimited
    max_bytes_per_day: int | None = None

    def __post_init__(self) -> None:
        if self.allowed_hours is not None:
            start, end = self.allowed_hours
            _require(
                0 <= start <= 23 and 0 <= end <= 24 and start != end,
                "sync.download.allowed_hours",
                "must be two distinct hours",
                "[start, end] with 0 <= start <= 23, 0 <= end <= 24",
                self.allowed_hours,
            )
        if self.max_bytes_per_day is not None:
            _require(
                self.max_bytes_per_day > 0,
                "sync.download.max_bytes_per_day",
                "must be positive",
                "a positive integer",
                self.max_bytes_per_day,
            )
        try:
            from zoneinfo import ZoneInfo

            ZoneInfo(self.timezone)
        except Exception as exc:
            raise ConfigError(
                f"unknown timezone {self.timezone!r}",
                key="sync.download.timezone",
                expected="an IANA timezone name such as 'UTC' or 'Europe/Berlin'",
                got=self.timezone,
            ) from exc


@dataclass(frozen=True, kw_only=True)
class SyncSettings:
    """How the device agent reaches the cloud."""

    broker_url: str
    device_id: str
    credentials_file: Path | None = None
    topic_prefix: str = "edge"
    keepalive_s: int = 60
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 120.0
    #: trusted Ed25519 public keys (PEM files) that model manifests must be signed with
    trusted_keys: tuple[Path, ...] = ()
    download: DownloadPolicy = field(default_factory=DownloadPolicy)

    def __post_init__(self) -> None:
        scheme = self.broker_url.split("://", 1)[0] if "://" in self.broker_url else ""
        _require(
            scheme in ("mqtt", "mqtts", "unix"),
            "sync.broker",
            f"unsupported broker URL {self.broker_url!r}",
            "mqtt://host:port, mqtts://host:port or unix:///path/to/socket",
            self.broker_url,
        )
        bad = set("/+#\0 ") & set(self.device_id)
        _require(
            bool(self.device_id) and not bad and len(self.device_id) <= 128,
            "sync.device_id",
            f"invalid device id {self.device_id!r}",
            "1-128 characters without '/', '+', '#', spaces or NUL",
            self.device_id,
        )
        _require(0 < self.keepalive_s <= 3600, "sync.keepalive_s", "out of range", "1..3600", self.keepalive_s)
        _require(
            0 < self.reconnect_min_s <= self.reconnect_max_s,
            "sync.reconnect_min_s",
            "must be positive and at most reconnect_max_s",
            f"0 < reconnect_min_s <= {self.reconnect_max_s}",
            self.reconnect_min_s,
        )


@dataclass(frozen=True, kw_only=True)
class TelemetrySettings:
    """Private, aggregate-only telemetry. Off unless a profile opts in."""

    enabled: bool = False
    #: length of one reporting period in seconds (at least 300)
    period_s: float = 3600.0
    #: Laplace-noise privacy budget per report (smaller = noisier); None = no noise (Python only; a profile says
    #: ``noise = false``)
    epsilon: float | None = 1.0
    #: the fewest predictions one model's report may describe (fewer are held back for a later period)
    min_predictions: int = 20
    #: the ε all of one UTC day's reports may spend together; reports past it wait for the next day
    epsilon_per_day: float = 24.0

    def __post_init__(self) -> None:
        from ._telemetry import MIN_PERIOD_S, MIN_PREDICTIONS

        _require(
            self.period_s >= MIN_PERIOD_S,
            "telemetry.period_s",
            f"must be at least {MIN_PERIOD_S:g} seconds, so one report never describes one prediction",
            f">= {MIN_PERIOD_S:g}",
            self.period_s,
        )
        _require(
            self.min_predictions >= MIN_PREDICTIONS,
            "telemetry.min_predictions",
            f"must be at least {MIN_PREDICTIONS}",
            f">= {MIN_PREDICTIONS}",
            self.min_predictions,
        )
        if self.epsilon is not None:
            _require(self.epsilon > 0, "telemetry.epsilon", "must be positive", "a number > 0", self.epsilon)
            _require(
                self.epsilon_per_day >= self.epsilon,
                "telemetry.epsilon_per_day",
                "must allow at least one report",
                f">= epsilon ({self.epsilon})",
                self.epsilon_per_day,
            )


@dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """Per-model serving settings from the profile (override the manifest's ``serving`` section)."""

    name: str
    mode: ServingMode | None = None
    #: precomputed mode: the feature view and feature that hold the prediction
    prediction_feature: str | None = None
    #: precomputed mode: run the model when the stored prediction is missing or stale (None = the manifest's
    #: ``serving.fallback_to_model``, else true)
    fallback_to_model: bool | None = None
    #: cached mode: what a feature write does to the entity's cached prediction (None = the manifest's
    #: ``serving.on_write``, else invalidate)
    on_write: OnWrite | None = None
    #: pinned version (None = latest installed)
    pin_version: int | None = None
    #: seconds between scheduled batch_predict runs (None = on demand only)
    batch_interval_s: float | None = None

    def __post_init__(self) -> None:
        _require(bool(self.name), "models.name", "must not be empty", "a model name", self.name)
        if self.prediction_feature is not None:
            _require(
                ":" in self.prediction_feature,
                f"models.{self.name}.prediction_feature",
                "must be 'view:feature'",
                "view:feature",
                self.prediction_feature,
            )


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    """Everything a device runtime needs. Build it in Python or load a profile with :func:`load_config`."""

    #: profile name (for status and telemetry)
    profile: str = "default"
    #: directory holding the feature store, model store, prediction cache and telemetry outbox
    data_dir: Path = Path("edge-data")
    #: a definitions file (TOML) applied to the feature store on start
    definitions: Path | None = None
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    sync: SyncSettings | None = None
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    models: tuple[ModelSettings, ...] = ()

    def model(self, name: str) -> ModelSettings:
        """The settings for model ``name`` (defaults when the profile does not mention it)."""
        for m in self.models:
            if m.name == name:
                return m
        return ModelSettings(name=name)


_TOP_KEYS = frozenset({"profile", "data_dir", "definitions", "runtime", "cache", "sync", "telemetry", "models"})


def load_config(path: str | Path, *, data_dir: str | Path | None = None) -> RuntimeConfig:
    """Parse a device profile. Relative paths in it are relative to the file; ``$VARS`` and ``~`` expand.

    ``data_dir`` overrides the profile's data directory (the CLI's ``--data-dir``).
    """
    path = Path(path)
    root = TomlTable(load_toml(path), file=path)
    try:
        return _parse(root, path, data_dir)
    except ConfigError as exc:
        if exc.file is None:  # a dataclass check: add the file to the message
            raise ConfigError(
                str(exc).split(": ", 1)[-1], file=path, key=exc.key, expected=exc.expected, got=exc.got
            ) from exc
        raise


def _path(base: Path, value: str) -> Path:
    p = Path(os.path.expandvars(os.path.expanduser(value)))
    return p if p.is_absolute() else (base.parent / p)


def _parse(root: TomlTable, path: Path, data_dir: str | Path | None) -> RuntimeConfig:
    root.check_unknown(_TOP_KEYS)
    rt = root.table("runtime")
    rt.check_unknown({"threads", "backend", "variant_preference"})
    prefs = rt.get("variant_preference", list, list(VARIANTS))
    for i, v in enumerate(prefs):
        if v not in VARIANTS:
            raise rt.error(f"variant_preference[{i}]", f"unknown variant {v!r}", expected=" | ".join(VARIANTS), got=v)
    runtime = RuntimeSettings(
        threads=rt.get("threads", int, 1),
        backend=rt.get("backend", str, "auto"),
        variant_preference=tuple(prefs),
    )
    ca = root.table("cache")
    ca.check_unknown({"max_rows_per_view", "prediction_cache_max_rows"})
    cache = CacheSettings(
        max_rows_per_view=ca.get("max_rows_per_view", int, None),
        prediction_cache_max_rows=ca.get("prediction_cache_max_rows", int, 100_000),
    )
    te = root.table("telemetry")
    te.check_unknown({"enabled", "period_s", "epsilon", "noise", "min_predictions", "epsilon_per_day"})
    telemetry = TelemetrySettings(
        enabled=te.get("enabled", bool, False),
        period_s=te.get("period_s", float, 3600.0),
        epsilon=te.get("epsilon", float, 1.0) if te.get("noise", bool, True) else None,
        min_predictions=te.get("min_predictions", int, 20),
        epsilon_per_day=te.get("epsilon_per_day", float, 24.0),
    )
    # sync is on when a [sync] table exists, unless it says enabled = false; an offline profile's broker,
    # device id and key paths are then not validated, so no environment variable or /etc file is needed
    sync_on = "sync" in root.data and root.table("sync").get("enabled", bool, True)
    sync = _parse_sync(root, path) if sync_on else None
    models = tuple(_parse_model(t) for t in root.tables("models"))
    definitions = root.get("definitions", str, None)
    return RuntimeConfig(
        profile=root.get("profile", str, path.stem),
        data_dir=Path(data_dir) if data_dir is not None else _path(path, root.get("data_dir", str, "edge-data")),
        definitions=_path(path, definitions) if definitions else None,
        runtime=runtime,
        cache=cache,
        sync=sync,
        telemetry=telemetry,
        models=models,
    )


def _parse_sync(root: TomlTable, path: Path) -> SyncSettings:
    sy = root.table("sync")
    sy.check_unknown(
        {
            "enabled",
            "broker",
            "device_id",
            "credentials_file",
            "topic_prefix",
            "keepalive_s",
            "reconnect_min_s",
            "reconnect_max_s",
            "trusted_keys",
            "download",
        }
    )
    dl = sy.table("download")
    dl.check_unknown({"metered", "allow_metered", "allowed_hours", "timezone", "max_bytes_per_day"})
    hours = dl.get("allowed_hours", list, None)
    if hours is not None and (
        len(hours) != 2 or not all(isinstance(h, int) and not isinstance(h, bool) for h in hours)
    ):
        raise dl.error("allowed_hours", "expected two integers", expected="[start_hour, end_hour]", got=hours)
    download = DownloadPolicy(
        metered=dl.get("metered", bool, False),
        allow_metered=dl.get("allow_metered", bool, False),
        allowed_hours=(hours[0], hours[1]) if hours else None,
        timezone=dl.get("timezone", str, "UTC"),
        max_bytes_per_day=dl.get("max_bytes_per_day", int, None),
    )
    device_id = os.path.expandvars(sy.get("device_id", str))
    if "$" in device_id:
        raise sy.error(
            "device_id",
            f"{device_id!r} names an environment variable that is not set",
            expected="a device id, or ${VAR} with VAR set in the environment",
            got=device_id,
        )
    creds = sy.get("credentials_file", str, None)
    keys = sy.get("trusted_keys", list, [])
    return SyncSettings(
        broker_url=os.path.expandvars(sy.get("broker", str)),
        device_id=device_id,
        credentials_file=_path(path, creds) if creds else None,
        topic_prefix=sy.get("topic_prefix", str, "edge"),
        keepalive_s=sy.get("keepalive_s", int, 60),
        reconnect_min_s=sy.get("reconnect_min_s", float, 1.0),
        reconnect_max_s=sy.get("reconnect_max_s", float, 120.0),
        trusted_keys=tuple(_path(path, k) for k in keys),
        download=download,
    )


def _parse_model(t: TomlTable) -> ModelSettings:
    t.check_unknown(
        {
            "name",
            "mode",
            "prediction_feature",
            "fallback_to_model",
            "on_write",
            "pin_version",
            "batch_interval_s",
        }
    )
    mode = t.get("mode", str, None)
    on_write = t.get("on_write", str, None)
    kwargs: dict[str, Any] = {}
    if mode is not None:
        try:
            kwargs["mode"] = ServingMode(mode)
        except ValueError:
            raise t.error("mode", f"unknown mode {mode!r}", expected=MODE_CHOICES, got=mode) from None
    if on_write is not None:
        try:
            kwargs["on_write"] = OnWrite(on_write)
        except ValueError:
            raise t.error(
                "on_write", f"unknown value {on_write!r}", expected="invalidate | recompute", got=on_write
            ) from None
    return ModelSettings(
        name=t.get("name", str),
        prediction_feature=t.get("prediction_feature", str, None),
        fallback_to_model=t.get("fallback_to_model", bool, None),
        pin_version=t.get("pin_version", int, None),
        batch_interval_s=t.get("batch_interval_s", float, None),
        **kwargs,
    )
