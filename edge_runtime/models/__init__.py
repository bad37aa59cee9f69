"""Model bundles, inference backends and the on-device model store."""

__all__: list[str] = []
