"""A bounds check of a TFLite flatbuffer's structure, for engines that load models without verifying them.

tflite-runtime 2.14 builds a model from a file without flatbuffer verification, so a truncated or overwritten file
segfaults the process instead of raising. :func:`flatbuffer_problem` walks the parts of the model the interpreter
reads and checks every offset and length against the file size, in well under a millisecond for a 4 MB model.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

_U32 = struct.Struct("<I")
_I32 = struct.Struct("<i")
_U16 = struct.Struct("<H")
_U64 = struct.Struct("<Q")


class _Truncated(Exception):
    pass


class _Reader:
    """Bounds-checked reads of flatbuffer tables and vectors (the subset of the format a TFLite model uses)."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data, self.size = data, len(data)

    def read(self, fmt: struct.Struct, pos: int) -> int:
        if pos < 0 or pos + fmt.size > self.size:
            raise _Truncated(f"offset {pos} is outside the {self.size}-byte file")
        value: int = fmt.unpack_from(self.data, pos)[0]
        return value

    def table(self, pos: int) -> tuple[int, int, int]:
        """(table position, vtable position, vtable size) after checking the vtable lies in the file."""
        vtable = pos - self.read(_I32, pos)
        vsize = self.read(_U16, vtable)
        self.read(_U16, vtable + max(vsize, 4) - 2)
        inline_size = self.read(_U16, vtable + 2)  # the table's own bytes (its scalars and offsets)
        if pos + inline_size > self.size:
            raise _Truncated(f"a table at {pos} runs past the end of the {self.size}-byte file")
        return pos, vtable, vsize

    def field(self, table: tuple[int, int, int], index: int) -> int | None:
        pos, vtable, vsize = table
        slot = 4 + 2 * index
        if slot + 2 > vsize:
            return None
        offset = self.read(_U16, vtable + slot)
        return pos + offset if offset else None

    def target(self, table: tuple[int, int, int], index: int) -> int | None:
        at = self.field(table, index)
        return None if at is None else at + self.read(_U32, at)

    def vector(self, pos: int | None, item_size: int) -> int:
        """Length of the vector at ``pos`` (0 for an absent field), after checking it ends inside the file."""
        if pos is None:
            return 0
        length = self.read(_U32, pos)
        if pos + 4 + length * item_size > self.size:
            raise _Truncated(f"a {length}-element vector at {pos} runs past the end of the {self.size}-byte file")
        return length

    def tables(self, pos: int | None) -> list[tuple[int, int, int]]:
        if pos is None:
            return []
        return [self.table(at + self.read(_U32, at)) for at in range(pos + 4, pos + 4 + 4 * self.vector(pos, 4), 4)]


def file_problem(path: str | Path) -> str | None:
    """:func:`flatbuffer_problem` for a file, memory-mapped so only the bytes the check reads are paged in."""
    with open(path, "rb") as f:
        if Path(path).stat().st_size < 8:
            return flatbuffer_problem(f.read())
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return flatbuffer_problem(data)


def flatbuffer_problem(data: bytes | mmap.mmap) -> str | None:
    """Why ``data`` is not a structurally sound TFLite flatbuffer, or None.

    Field indices follow the TFLite schema (``schema.fbs``): Model.operator_codes=1, subgraphs=2,
    description=3, buffers=4; SubGraph.tensors=0, inputs=1, outputs=2, operators=3, name=4; Tensor.shape=0,
    name=3, quantization=4, sparsity=6, shape_signature=7; Operator.inputs=1, outputs=2, builtin_options=4,
    custom_options=5; QuantizationParameters.min/max/scale/zero_point=0-3; Buffer.data=0, offset=1, size=2.

    Walks the model's operator codes, subgraphs (tensors, operators, their index vectors) and buffers, checking
    every offset and vector length against the file size — what a truncated or overwritten file breaks. It does
    not validate values (a model that passes may still fail to load, with a clean error from the engine).
    """
    if len(data) < 8:
        return f"{len(data)} bytes is too short for a flatbuffer"
    identifier = bytes(data[4:8])
    if identifier != b"TFL3":
        return f"file identifier is {identifier!r}, expected b'TFL3'"
    r = _Reader(data)
    try:
        model = r.table(r.read(_U32, 0))
        r.tables(r.target(model, 1))  # operator codes
        r.vector(r.target(model, 3), 1)  # description
        for subgraph in r.tables(r.target(model, 2)):
            for tensor in r.tables(r.target(subgraph, 0)):
                r.vector(r.target(tensor, 0), 4)  # shape
                r.vector(r.target(tensor, 3), 1)  # name
                quant = r.target(tensor, 4)
                if quant is not None:
                    q = r.table(quant)
                    for index, size in ((0, 4), (1, 4), (2, 4), (3, 8)):  # min, max, scale, zero_point
                        r.vector(r.target(q, index), size)
                sparsity = r.target(tensor, 6)
                if sparsity is not None:
                    r.table(sparsity)
                r.vector(r.target(tensor, 7), 4)  # shape signature
            r.vector(r.target(subgraph, 1), 4)  # inputs
            r.vector(r.target(subgraph, 2), 4)  # outputs
            for op in r.tables(r.target(subgraph, 3)):
                r.vector(r.target(op, 1), 4)  # inputs
                r.vector(r.target(op, 2), 4)  # outputs
                options = r.target(op, 4)
                if options is not None:
                    r.table(options)
                r.vector(r.target(op, 5), 1)  # custom options
            r.vector(r.target(subgraph, 4), 1)  # name
        for buffer in r.tables(r.target(model, 4)):
            r.vector(r.target(buffer, 0), 1)  # inline data
            offset_at, size_at = r.field(buffer, 1), r.field(buffer, 2)
            if offset_at is not None and size_at is not None:
                offset, size = r.read(_U64, offset_at), r.read(_U64, size_at)
                if offset > 1 and offset + size > len(data):
                    raise _Truncated(f"buffer data at {offset}+{size} runs past the end of the file")
    except _Truncated as exc:
        return f"truncated or corrupt ({exc})"
    return None
