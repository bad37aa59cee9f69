"""Helpers shared by the feature-store tests (imported as a top-level module, like pytest's rootdir layout)."""

from __future__ import annotations

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


class Clock:
    """A clock tests move by hand (epoch seconds)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def row(user_id: int, ts: float = T0 - 10, **values: object) -> dict[str, object]:
    """A full profile row with defaults for every feature."""
    out: dict[str, object] = {
        "user_id": user_id,
        "age": 30,
        "score": 0.5,
        "ctr": 0.25,
        "vip": False,
        "city": "Lyon",
        "blob": b"\x00\x01",
        "emb": [1.0, 2.0, 3.0],
        "event_timestamp": ts,
    }
    out.update(values)
    return out
