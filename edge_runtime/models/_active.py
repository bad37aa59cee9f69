"""A loaded, health-checked model version, as :meth:`ModelStore.active` hands it out.

Swapping versions replaces the store's reference to an :class:`ActiveModel`; a caller that already holds the old
handle keeps running the old version until it lets go. The old backend is closed when the last reference to its
handle disappears (CPython's reference counting runs the finaliser at that moment), so no call ever runs on a
closed backend and no call mixes two versions.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import ModelError

from ._backend import InferenceBackend
from ._manifest import Manifest


def _close_backend(backend: InferenceBackend) -> None:
    try:
        backend.close()
    except Exception:  # closing is best effort: the handle is already unreachable
        pass


class ActiveModel:
    """One model version loaded on a backend. Use :meth:`run`; ``manifest`` says what it is and how to feed it."""

    def __init__(self, manifest: Manifest, backend: InferenceBackend, *, path: Path, digest: str) -> None:
        self.manifest = manifest
        self.backend = backend
        self.path = path
        self.digest = digest
        self.name = manifest.name
        self.version = manifest.version
        # A backend says whether its engine may run calls concurrently (onnxruntime's session can; a TFLite
        # interpreter cannot); one that does not say is serialised.
        safe = bool(getattr(backend, "thread_safe", False))
        self._lock: threading.Lock | None = None if safe else threading.Lock()
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_backend, backend)

    def run(self, feeds: Mapping[str, np.ndarray], *, raw: bool = False) -> dict[str, np.ndarray]:
        """Run this version on ``feeds`` (input name → array with a leading batch dimension)."""
        lock = self._lock
        if lock is None:
            if self._closed:
                raise ModelError(f"{self.name} v{self.version} was closed with its store")
            return self.backend.run(feeds, raw=raw)
        with lock:
            if self._closed:
                raise ModelError(f"{self.name} v{self.version} was closed with its store")
            return self.backend.run(feeds, raw=raw)

    def predict(self, x: Any) -> dict[str, np.ndarray]:
        """Run on one array for the first input (rows of the manifest's feature vector)."""
        return self.run({self.manifest.inputs[0].name: x})

    @property
    def closed(self) -> bool:
        """Whether the backend has been released."""
        return self._closed or not self._finalizer.alive

    def close(self) -> None:
        """Release the backend now (the store does this when it closes); later runs raise ModelError."""
        if self._lock is not None:
            with self._lock:
                self._closed = True
                self._finalizer()
        else:
            self._closed = True
            self._finalizer()

    def __repr__(self) -> str:
        return f"ActiveModel({self.name!r}, version={self.version}, backend={getattr(self.backend, 'name', '?')!r})"
