"""Model bundles, inference backends and the on-device model store.

A bundle is a directory (or ``.tar.gz``) with ``manifest.json``, the model file and optionally ``signature.json``;
:func:`package_bundle` builds one, :func:`verify_bundle` checks one, :func:`sign_bundle` signs one.
:class:`ModelStore` installs verified bundles on the device and serves the active version of each model.
"""

from ._active import ActiveModel
from ._backend import InferenceBackend, TensorSpec, available_backends, open_backend, runnable_formats
from ._bundle import Bundle, check_health, open_bundle, package_bundle, verify_bundle
from ._manifest import FeatureInput, HealthCheck, Manifest, Quantization, TensorInfo
from ._quantize import QuantizeReport, quantize_onnx
from ._signing import KeyPairFiles, Signature, TrustedKeys, generate_keypair, key_id, sign_bundle
from ._store import ModelStore
from ._store_util import ModelVersion

__all__ = [
    "ActiveModel",
    "Bundle",
    "FeatureInput",
    "HealthCheck",
    "InferenceBackend",
    "KeyPairFiles",
    "Manifest",
    "ModelStore",
    "ModelVersion",
    "Quantization",
    "QuantizeReport",
    "Signature",
    "TensorInfo",
    "TensorSpec",
    "TrustedKeys",
    "available_backends",
    "check_health",
    "generate_keypair",
    "key_id",
    "open_backend",
    "open_bundle",
    "package_bundle",
    "quantize_onnx",
    "runnable_formats",
    "sign_bundle",
    "verify_bundle",
]
