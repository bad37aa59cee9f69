"""The exception hierarchy of ``edge_runtime``.

Every error the package raises on purpose derives from :class:`EdgeRuntimeError`, so an app can catch one class.
Subclasses carry the facts a caller needs (the file, the key, the row, the column, what was expected) as
attributes, and library errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class EdgeRuntimeError(Exception):
    """Root of every error raised by edge_runtime."""

    #: Exit status the CLI uses when this error ends a command.
    exit_code: int = 1


# --- configuration and definitions -------------------------------------------------------------------------


class ConfigError(EdgeRuntimeError, ValueError):
    """A configuration value (from Python or a TOML file) is missing or has the wrong type or value.

    ``file`` is the TOML file (None for values given in Python), ``key`` the dotted key, ``expected`` what
    would have been accepted and ``got`` what was found.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        key: str | None = None,
        expected: str | None = None,
        got: object = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.key = key
        self.expected = expected
        self.got = got
        where = ""
        if self.file:
            where += f"{self.file}: "
        if key:
            where += f"{key}: "
        super().__init__(f"{where}{message}")


class DefinitionError(ConfigError):
    """A feature definition (entity, field, view, service, source) is invalid."""


# --- feature store -------------------------------------------------------------------------------------------


class FeatureStoreError(EdgeRuntimeError):
    """Base class of errors raised by the feature store."""


class SchemaConflictError(FeatureStoreError):
    """``apply`` was asked for a change the stored data cannot follow (for example a feature changing type)."""

    def __init__(self, message: str, *, view: str, feature: str | None = None) -> None:
        self.view = view
        self.feature = feature
        super().__init__(message)


class UnknownNameError(FeatureStoreError, KeyError):
    """A view, feature, service, stream or entity that is not registered. ``available`` lists what exists."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.available = sorted(available)
        shown = ", ".join(self.available) if self.available else "(none registered)"
        super().__init__(f"unknown {kind} {name!r}; available: {shown}")

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


class RowValidationError(FeatureStoreError, ValueError):
    """A row given to a write is invalid; the whole batch was rejected and nothing was written.

    ``row`` is the 0-based index of the row in the batch, ``column`` the offending column (None when the row as a
    whole is wrong).
    """

    def __init__(self, message: str, *, target: str, row: int | None, column: str | None) -> None:
        self.target = target
        self.row = row
        self.column = column
        where = f"{target}"
        if row is not None:
            where += f", row {row}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message} (nothing was written)")


class StoreClosedError(FeatureStoreError):
    """The store was used after ``close()``."""


# --- models ---------------------------------------------------------------------------------------------------


class ModelError(EdgeRuntimeError):
    """Base class of errors raised by model bundles, backends and the model store."""


class BundleError(ModelError):
    """A model bundle is malformed: a missing file, a bad manifest, a size or hash that does not match."""

    def __init__(self, message: str, *, path: str | Path | None = None, field: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.field = field
        prefix = f"{self.path}: " if self.path else ""
        if field:
            prefix += f"{field}: "
        super().__init__(prefix + message)


class IntegrityError(BundleError):
    """A file's size or sha256 differs from what its manifest declares."""


class SignatureError(ModelError):
    """A bundle's signature is missing, invalid, from an untrusted key, or expired."""


class BackendUnavailableError(ModelError):
    """An inference backend's library is not installed or cannot run here. ``hint`` says how to fix it."""

    def __init__(self, backend: str, reason: str, *, hint: str | None = None) -> None:
        self.backend = backend
        self.reason = reason
        self.hint = hint
        msg = f"backend {backend!r} is unavailable: {reason}"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)


class ModelInputError(ModelError, ValueError):
    """Inputs given to a model do not match its signature (missing input, wrong dtype or shape)."""

    def __init__(self, message: str, *, input_name: str | None = None) -> None:
        self.input_name = input_name
        super().__init__(message)


class HealthCheckError(ModelError):
    """A model failed its warm-up or health check and was not activated."""


class VersionPolicyError(ModelError):
    """An install or activation is refused by the version policy (a downgrade, a pinned version)."""


class ModelNotFoundError(ModelError, KeyError):
    """No such model or model version in the store. ``available`` lists what exists."""

    def __init__(self, message: str, *, available: Iterable[str] = ()) -> None:
        self.available = sorted(available)
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0])


class QuantizationError(ModelError):
    """Quantising a model was asked for wrongly or failed: a missing or unreadable model file, static mode without
    calibration data, or the ``quantize`` extra (onnx) not installed. ``path`` is the file concerned, if any."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        super().__init__(f"{self.path}: {message}" if self.path else message)
