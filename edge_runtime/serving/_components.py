"""The runtime's plug point for components that run beside serving (the sync agent is one).

The device library never imports the packages that provide them: a component is found through the
``edge_runtime.components`` entry-point group (``setup.cfg`` of the providing package declares, for instance,
``sync = cloud_sync.agent:DeviceAgent.for_runtime``), loaded only when a profile asks for it, the way inference
backends are chosen by a lazy registry (``models/_backend.py``). Apps and tests can also build a component
themselves and hand it to :meth:`EdgeRuntime.attach`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from edge_runtime._errors import ConfigError

if TYPE_CHECKING:
    from edge_runtime.serving._runtime import EdgeRuntime

#: The entry-point group that names component factories: ``name = module:callable(runtime) -> component``.
COMPONENT_GROUP = "edge_runtime.components"


@runtime_checkable
class RuntimeComponent(Protocol):
    """Something an :class:`EdgeRuntime` starts, reports on and stops with itself (e.g. the sync agent)."""

    def start(self) -> object:
        """Start background work (threads, connections); returns promptly."""
        ...

    def stop(self) -> None:
        """Stop background work and release what ``start`` took; safe to call twice."""
        ...

    def status(self) -> Mapping[str, Any]:
        """A JSON-ready summary for ``EdgeRuntime.status()``."""
        ...


ComponentFactory = Callable[["EdgeRuntime"], RuntimeComponent]


def component_factory(name: str) -> ComponentFactory:
    """The factory registered for component ``name`` in the ``edge_runtime.components`` entry-point group."""
    found = [ep for ep in entry_points(group=COMPONENT_GROUP) if ep.name == name]
    if not found:
        raise ConfigError(
            f"the profile asks for the {name!r} component, but no installed package provides it",
            key=name,
            expected=f"a package registering {name!r} in the {COMPONENT_GROUP!r} entry-point group"
            " (for [sync]: edge-runtime's cloud_sync, installed with it)",
        )
    factory: ComponentFactory = found[0].load()
    return factory
