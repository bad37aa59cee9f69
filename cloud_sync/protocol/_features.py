"""Feature batches: columnar upserts plus tombstones for one feature view, and splitting them under the size limit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, NamedTuple

import msgpack

from cloud_sync._errors import DecodeError, EncodeError, MessageTooLargeError, ProtocolError

from ._columns import Column, build_columns, columns_from_wire, columns_to_wire
from ._envelope import Codec, Envelope, unpack_body
from ._fields import Fields
from ._topics import validate_name
from ._types import MessageType

BATCH_KINDS = ("snapshot", "delta")
_MAX_PARTS = 2**31 - 1


@dataclass(frozen=True, eq=False)
class FeatureBatch:
    """Rows to upsert into one feature view and entity keys to delete, as columns.

    ``columns`` holds join keys, features and the event timestamp, all the same length. ``tombstones`` holds the
    join keys (and optionally the event timestamp of the deletion) of rows to delete. ``kind`` is ``"snapshot"``
    (part ``part`` of ``parts`` of a full copy of the stream; the epoch changes with each snapshot) or ``"delta"``.
    """

    TYPE: ClassVar[MessageType] = MessageType.FEATURE_BATCH

    view: str
    columns: Mapping[str, Column]
    kind: str = "delta"
    tombstones: Mapping[str, Column] = field(default_factory=dict)
    part: int = 0
    parts: int = 1

    def __post_init__(self) -> None:
        try:
            validate_name(self.view, what="feature view name")
        except ProtocolError as exc:
            raise EncodeError(str(exc), field="view") from None
        if self.kind not in BATCH_KINDS:
            raise EncodeError(f"must be one of {', '.join(BATCH_KINDS)}, got {self.kind!r}", field="kind")
        if type(self.parts) is not int or not 1 <= self.parts <= _MAX_PARTS:
            raise EncodeError(f"must be an int >= 1, got {self.parts!r}", field="parts")
        if type(self.part) is not int or not 0 <= self.part < self.parts:
            raise EncodeError(f"must be an int in 0..parts-1, got {self.part!r}", field="part")
        for where, cols in (("columns", self.columns), ("tombstones", self.tombstones)):
            if len({len(c) for c in cols.values()}) > 1:
                raise EncodeError("columns have different lengths", field=where)

    @classmethod
    def from_columns(
        cls,
        view: str,
        columns: Mapping[str, Any],
        *,
        kind: str = "delta",
        dtypes: Mapping[str, str] | None = None,
        tombstones: Mapping[str, Any] | None = None,
    ) -> FeatureBatch:
        """A batch from ``{column: list | np.ndarray | Column}``; dtypes are inferred unless given in ``dtypes``."""
        return cls(
            view,
            build_columns(columns, dtypes, "columns"),
            kind=kind,
            tombstones=build_columns(tombstones, dtypes, "tombstones"),
        )

    @property
    def num_rows(self) -> int:
        """Number of rows to upsert."""
        return len(next(iter(self.columns.values()))) if self.columns else 0

    @property
    def num_tombstones(self) -> int:
        """Number of entity keys to delete."""
        return len(next(iter(self.tombstones.values()))) if self.tombstones else 0

    def to_columns(self, *, timestamps: str = "datetime64") -> dict[str, Any]:
        """The upserts as ``{column: np.ndarray | list}``, ready for ``FeatureStore.write_to_online_store``.

        ``timestamps`` chooses the form of timestamp columns (see :meth:`Column.to_python`).
        """
        return {name: col.to_python(timestamps=timestamps) for name, col in self.columns.items()}

    def tombstone_columns(self, *, timestamps: str = "datetime64") -> dict[str, Any]:
        """The deletions as ``{column: np.ndarray | list}``."""
        return {name: col.to_python(timestamps=timestamps) for name, col in self.tombstones.items()}

    def take(self, rows: tuple[int, int], tombstones: tuple[int, int]) -> FeatureBatch:
        """A batch with rows ``rows[0]:rows[1]`` and tombstones ``tombstones[0]:tombstones[1]`` of this one."""
        return replace(
            self,
            columns={k: c.take(*rows) for k, c in self.columns.items()},
            tombstones={k: c.take(*tombstones) for k, c in self.tombstones.items()},
        )

    def equals(self, other: object) -> bool:
        """Same view, kind, part and columns (NaN-aware)."""
        if not isinstance(other, FeatureBatch):
            return False
        if (self.view, self.kind, self.part, self.parts) != (other.view, other.kind, other.part, other.parts):
            return False
        for mine, theirs in ((self.columns, other.columns), (self.tombstones, other.tombstones)):
            if list(mine) != list(theirs) or not all(mine[k].equals(theirs[k]) for k in mine):
                return False
        return True

    def encode_body(self) -> bytes:
        """The msgpack body of this batch."""
        body = {
            "view": self.view,
            "kind": self.kind,
            "part": self.part,
            "parts": self.parts,
            "rows": columns_to_wire(self.columns),
        }
        if self.tombstones:
            body["tomb"] = columns_to_wire(self.tombstones)
        return msgpack.packb(body, use_bin_type=True)

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> FeatureBatch:
        """Parse a body produced by :meth:`encode_body`; DecodeError on anything else."""
        f = Fields(unpack_body(data, limit), "features.batch")
        view = f.get_str("view", max_len=128)
        kind = f.get_str("kind", choices=BATCH_KINDS)
        parts = f.get_int("parts", low=1, high=_MAX_PARTS)
        part = f.get_int("part", high=parts - 1)
        rows = columns_from_wire(f.raw("rows"), "features.batch.rows", limit)
        tomb = columns_from_wire(f.raw("tomb", {"n": 0, "c": []}), "features.batch.tomb", limit)
        try:
            return cls(view, rows, kind=kind, tombstones=tomb, part=part, parts=parts)
        except EncodeError as exc:
            raise DecodeError(str(exc), reason="body", field=f"features.batch.{exc.field}") from None


class Frame(NamedTuple):
    """One encoded message: the envelope and its wire bytes."""

    envelope: Envelope
    payload: bytes


def encode_feature_batches(
    batch: FeatureBatch,
    *,
    codec: Codec,
    device: str,
    epoch: int,
    first_seq: int,
    stream: str | None = None,
) -> list[Frame]:
    """Encode ``batch`` as one or more messages, each at most ``codec.max_message_bytes`` long.

    Each part is a self-contained batch (rows are never split across messages) with its own sequence number,
    ``first_seq``, ``first_seq + 1``, ...; ``part``/``parts`` say where it sits in the whole, which matters for
    snapshots (a device knows a snapshot is complete when all parts of the epoch are applied). Raises
    MessageTooLargeError when a single row cannot fit.
    """
    stream = stream or batch.view
    total = batch.num_rows + batch.num_tombstones
    # Room for the few bytes part/parts/seq grow by between the trial and the final encoding.
    budget = codec.max_message_bytes - 32

    def encode(piece: FeatureBatch, seq: int) -> Envelope:
        return Envelope(
            type=MessageType.FEATURE_BATCH,
            device=device,
            body=piece.encode_body(),
            stream=stream,
            epoch=epoch,
            seq_first=seq,
            seq_last=seq,
        )

    def size(piece: FeatureBatch) -> int:
        try:
            return len(codec.encode(encode(piece, first_seq)))
        except MessageTooLargeError as exc:
            return exc.size

    def piece(lo: int, hi: int) -> FeatureBatch:
        n = batch.num_rows
        return batch.take((min(lo, n), min(hi, n)), (max(lo - n, 0), max(hi - n, 0)))

    # Estimate rows per message from a sample (never encode a huge batch whole), then halve any range that
    # still comes out too large.
    sample_units = min(total, 1000)
    per_unit = size(piece(0, sample_units)) / max(sample_units, 1)
    ranges: list[tuple[int, int]] = []
    if sample_units == total and per_unit * max(total, 1) <= budget:
        pending = []  # the sample was the whole batch and it fits: one message, no more trials
        ranges.append((0, total))
    else:
        step = max(1, int(budget * 0.85 / per_unit))
        pending = [(lo, min(lo + step, total)) for lo in range(0, total, step)]
        pending.reverse()
    while pending:
        lo, hi = pending.pop()
        if hi - lo > 1 and size(piece(lo, hi)) > budget:
            mid = (lo + hi) // 2
            pending.extend([(mid, hi), (lo, mid)])
        else:
            ranges.append((lo, hi))
    while True:  # the final encoding differs from the trial by part/parts/seq: re-split in the rare overflow
        frames = []
        for i, (lo, hi) in enumerate(ranges):
            part = batch if len(ranges) == 1 else replace(piece(lo, hi), part=i, parts=len(ranges))
            env = encode(part, first_seq + i)
            try:
                frames.append(Frame(env, codec.encode(env)))
            except MessageTooLargeError as exc:
                if hi - lo <= 1:
                    what = f"row {lo}" if lo < batch.num_rows else f"tombstone {lo - batch.num_rows}"
                    raise MessageTooLargeError(
                        f"{what} of feature view {batch.view!r} does not fit in one message alone",
                        size=exc.size,
                        limit=exc.limit,
                    ) from None
                mid = (lo + hi) // 2
                ranges[i : i + 1] = [(lo, mid), (mid, hi)]
                break
        else:
            return frames
