"""The schema of a manifest's ``serving`` section, checked when the manifest loads (so at install, not at predict).

Every field may be absent: ``None`` means "not set", so the runtime can merge profile > manifest > default field
by field (``serving/_plan.py``) instead of guessing from another field whether one was set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_runtime._config import OnWrite, ServingMode
from edge_runtime._errors import BundleError


@dataclass(frozen=True, kw_only=True)
class ServingDefaults:
    """A model's serving defaults as its manifest states them; ``None`` = not set by the manifest."""

    #: the serving mode (see ``ServingMode``)
    mode: ServingMode | None = None
    #: precomputed mode: the ``view:feature`` that holds the prediction
    prediction_feature: str | None = None
    #: precomputed mode: run the model when the stored prediction is missing or stale
    fallback_to_model: bool | None = None
    #: cached mode: what a feature write does to cached predictions
    on_write: OnWrite | None = None


def _choice(section: Mapping[str, Any], key: str, enum: type[ServingMode] | type[OnWrite]) -> Any:
    value = section.get(key)
    if value is None:
        return None
    try:
        return enum(value)
    except ValueError:
        choices = " | ".join(member.value for member in enum)
        raise BundleError(f"unknown value {value!r}; expected {choices}", field=f"serving.{key}") from None


def parse_serving(section: Mapping[str, Any] | None) -> ServingDefaults:
    """Check a manifest's ``serving`` object and return it typed; ``BundleError`` names the offending field."""
    if section is None:
        return ServingDefaults()
    known = {"mode", "prediction_feature", "fallback_to_model", "on_write"}
    for key in section:
        if key not in known:
            raise BundleError(f"unknown key {key!r}; expected one of {sorted(known)}", field=f"serving.{key}")
    ref = section.get("prediction_feature")
    if ref is not None and not (isinstance(ref, str) and ref.count(":") == 1 and all(ref.split(":"))):
        raise BundleError(f"must be 'view:feature', got {ref!r}", field="serving.prediction_feature")
    fallback = section.get("fallback_to_model")
    if fallback is not None and not isinstance(fallback, bool):
        raise BundleError(f"must be true or false, got {fallback!r}", field="serving.fallback_to_model")
    return ServingDefaults(
        mode=_choice(section, "mode", ServingMode),
        prediction_feature=ref,
        fallback_to_model=fallback,
        on_write=_choice(section, "on_write", OnWrite),
    )
