"""edge-runtime: offline ML inference on devices.

A local SQLite feature cache (:class:`FeatureStore`), quantized models on ONNX Runtime or LiteRT
(:class:`ModelStore`), and a runtime that serves predictions with no network in the request path.
The public API is exactly what ``__all__`` lists; modules whose names start with ``_`` are private.
"""

from __future__ import annotations

from ._config import (
    CacheSettings,
    DownloadPolicy,
    ModelSettings,
    OnWrite,
    RuntimeConfig,
    RuntimeSettings,
    ServingMode,
    SyncSettings,
    TelemetrySettings,
    load_config,
)
from ._errors import (
    BackendUnavailableError,
    BundleError,
    ConfigError,
    DefinitionError,
    EdgeRuntimeError,
    FeatureStoreError,
    HealthCheckError,
    IntegrityError,
    ModelError,
    ModelInputError,
    ModelNotFoundError,
    QuantizationError,
    RowValidationError,
    SchemaConflictError,
    SignatureError,
    StoreClosedError,
    UnknownNameError,
    VersionPolicyError,
)
from .features import *
from .features import __all__ as _features_all
from .models import *
from .models import __all__ as _models_all
from .serving import *
from .serving import __all__ as _serving_all

__version__ = "0.1.0"

_errors_all = [
    "BackendUnavailableError",
    "BundleError",
    "ConfigError",
    "DefinitionError",
    "EdgeRuntimeError",
    "FeatureStoreError",
    "HealthCheckError",
    "IntegrityError",
    "ModelError",
    "ModelInputError",
    "ModelNotFoundError",
    "QuantizationError",
    "RowValidationError",
    "SchemaConflictError",
    "SignatureError",
    "StoreClosedError",
    "UnknownNameError",
    "VersionPolicyError",
]

_config_all = [
    "CacheSettings",
    "DownloadPolicy",
    "ModelSettings",
    "OnWrite",
    "RuntimeConfig",
    "RuntimeSettings",
    "ServingMode",
    "SyncSettings",
    "TelemetrySettings",
    "load_config",
]

__all__ = [*_errors_all, *_config_all, *_features_all, *_models_all, *_serving_all]
