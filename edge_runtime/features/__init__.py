"""On-device feature definitions and the SQLite online store."""

__all__: list[str] = []
