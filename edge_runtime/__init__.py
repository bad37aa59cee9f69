"""edge-runtime: offline ML inference on devices.

A local SQLite feature cache (:class:`FeatureStore`), quantized models on ONNX Runtime or LiteRT
(:class:`ModelStore`), and a runtime that serves predictions with no network in the request path.
The public API is exactly what ``__all__`` lists; modules whose names start with ``_`` are private.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from .features import (
        Aggregation,
        Entity,
        EntityRead,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        FieldStatus,
        OnDemandFeatureView,
        OnlineResponse,
        RequestSource,
        StreamFeatureView,
        WriteListener,
        load_definitions,
        on_demand_feature_view,
    )
    from .models import (
        ActiveModel,
        Bundle,
        FeatureInput,
        HealthCheck,
        InferenceBackend,
        KeyPairFiles,
        Manifest,
        ModelStore,
        ModelVersion,
        Quantization,
        QuantizeReport,
        Signature,
        TensorInfo,
        TensorSpec,
        TrustedKeys,
        available_backends,
        check_health,
        generate_keypair,
        key_id,
        open_backend,
        open_bundle,
        package_bundle,
        quantize_onnx,
        sign_bundle,
        verify_bundle,
    )
    from .serving import (
        BatchResult,
        EdgeRuntime,
        InputStatus,
        Prediction,
    )

# Names of the three big subpackages load on first use: `import edge_runtime._time` (or cloud_sync's wire format)
# must not pay for numpy, onnxruntime and the store. Errors and config are light and load at once.
_LAZY = {
    "Aggregation": ".features",
    "Entity": ".features",
    "EntityRead": ".features",
    "FeatureService": ".features",
    "FeatureStore": ".features",
    "FeatureView": ".features",
    "Field": ".features",
    "FieldStatus": ".features",
    "OnDemandFeatureView": ".features",
    "OnlineResponse": ".features",
    "RequestSource": ".features",
    "StreamFeatureView": ".features",
    "WriteListener": ".features",
    "load_definitions": ".features",
    "on_demand_feature_view": ".features",
    "ActiveModel": ".models",
    "Bundle": ".models",
    "FeatureInput": ".models",
    "HealthCheck": ".models",
    "InferenceBackend": ".models",
    "KeyPairFiles": ".models",
    "Manifest": ".models",
    "ModelStore": ".models",
    "ModelVersion": ".models",
    "Quantization": ".models",
    "QuantizeReport": ".models",
    "Signature": ".models",
    "TensorInfo": ".models",
    "TensorSpec": ".models",
    "TrustedKeys": ".models",
    "available_backends": ".models",
    "check_health": ".models",
    "generate_keypair": ".models",
    "key_id": ".models",
    "open_backend": ".models",
    "open_bundle": ".models",
    "package_bundle": ".models",
    "quantize_onnx": ".models",
    "sign_bundle": ".models",
    "verify_bundle": ".models",
    "BatchResult": ".serving",
    "EdgeRuntime": ".serving",
    "InputStatus": ".serving",
    "Prediction": ".serving",
}

__version__ = "0.1.0"

# A literal list, so type checkers and readers see the API; tests/test_public_api.py pins it.
__all__ = [
    "ActiveModel",
    "Aggregation",
    "BackendUnavailableError",
    "BatchResult",
    "Bundle",
    "BundleError",
    "CacheSettings",
    "ConfigError",
    "DefinitionError",
    "DownloadPolicy",
    "EdgeRuntime",
    "EdgeRuntimeError",
    "Entity",
    "EntityRead",
    "FeatureInput",
    "FeatureService",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureView",
    "Field",
    "FieldStatus",
    "HealthCheck",
    "HealthCheckError",
    "InferenceBackend",
    "InputStatus",
    "IntegrityError",
    "KeyPairFiles",
    "Manifest",
    "ModelError",
    "ModelInputError",
    "ModelNotFoundError",
    "ModelSettings",
    "ModelStore",
    "ModelVersion",
    "OnDemandFeatureView",
    "OnWrite",
    "OnlineResponse",
    "Prediction",
    "Quantization",
    "QuantizationError",
    "QuantizeReport",
    "RequestSource",
    "RowValidationError",
    "RuntimeConfig",
    "RuntimeSettings",
    "SchemaConflictError",
    "ServingMode",
    "Signature",
    "SignatureError",
    "StoreClosedError",
    "StreamFeatureView",
    "SyncSettings",
    "TelemetrySettings",
    "TensorInfo",
    "TensorSpec",
    "TrustedKeys",
    "UnknownNameError",
    "VersionPolicyError",
    "WriteListener",
    "available_backends",
    "check_health",
    "generate_keypair",
    "key_id",
    "load_config",
    "load_definitions",
    "on_demand_feature_view",
    "open_backend",
    "open_bundle",
    "package_bundle",
    "quantize_onnx",
    "sign_bundle",
    "verify_bundle",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
