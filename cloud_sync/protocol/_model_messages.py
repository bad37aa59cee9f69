"""The typed bodies of the model messages: release manifest, chunk requests, chunks and install reports."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from cloud_sync._errors import EncodeError

from ._envelope import unpack_body
from ._fields import Fields
from ._messages import check_name, pack_body, read_name
from ._types import MessageType

_MAX_CHUNKS = 1 << 20
_MAX_CHUNK_BYTES = 4 * 1024 * 1024
_MAX_WINDOW = 1024
INSTALL_OUTCOMES = ("installed", "failed", "refused", "rolled_back")


@dataclass(frozen=True)
class ModelManifestMessage:
    """cloud → device (retained): a model release.

    ``manifest`` and ``signature`` are the bundle's ``manifest.json`` and ``signature.json`` bytes, carried
    opaquely (the device verifies them with the model store's code; the manifest's own sha256 and size are what
    the signature covers). ``size``/``sha256`` repeat the model file's size and digest for the transfer, and
    ``chunk_sha256`` lists the sha256 of every ``chunk_size`` piece of the file, so each chunk is checked the
    moment it arrives (and a resumed ``.part`` file chunk by chunk) and a bad one is fetched again alone.
    """

    TYPE: ClassVar[MessageType] = MessageType.MODEL_MANIFEST

    model: str
    version: int
    manifest: bytes
    signature: bytes
    size: int
    sha256: bytes
    chunk_size: int
    chunk_sha256: tuple[bytes, ...]

    @property
    def chunk_count(self) -> int:
        """Number of chunks of the model file."""
        return len(self.chunk_sha256)

    def encode_body(self) -> bytes:
        """The msgpack body."""
        check_name(self.model, "model")
        if not 0 < self.chunk_size <= _MAX_CHUNK_BYTES:
            raise EncodeError(f"must be 1..{_MAX_CHUNK_BYTES}", field="chunk_size")
        if len(self.chunk_sha256) != _chunk_count(self.size, self.chunk_size):
            raise EncodeError("must have one digest per chunk", field="chunk_sha256")
        return pack_body(
            {
                "model": self.model,
                "version": self.version,
                "manifest": self.manifest,
                "sig": self.signature,
                "size": self.size,
                "sha256": self.sha256,
                "chunk_size": self.chunk_size,
                "chunks": self.chunk_count,
                "chunk_sha256": b"".join(self.chunk_sha256),
            }
        )

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> ModelManifestMessage:
        """Parse a body; DecodeError on anything malformed (including a chunk list that does not fit ``size``)."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        size = f.get_int("size", high=2**40)
        chunk_size = f.get_int("chunk_size", low=1, high=_MAX_CHUNK_BYTES)
        count = f.get_int("chunks", high=_MAX_CHUNKS)
        if count != _chunk_count(size, chunk_size):
            raise f.fail("chunks", f"{count} chunks of {chunk_size} bytes cannot hold {size} bytes")
        digests = f.get_bytes("chunk_sha256", length=32 * count)
        return cls(
            read_name(f, "model"),
            f.get_int("version", low=1),
            f.get_bytes("manifest", max_len=1 << 20),
            f.get_bytes("sig", max_len=1 << 16),
            size,
            f.get_bytes("sha256", length=32),
            chunk_size,
            tuple(digests[i : i + 32] for i in range(0, len(digests), 32)),
        )


def _chunk_count(size: int, chunk_size: int) -> int:
    return math.ceil(size / chunk_size) if size else 0


@dataclass(frozen=True)
class ModelChunkRequest:
    """device → cloud: send chunks ``chunks`` (indices) of ``model`` version ``version`` — a window of a few."""

    TYPE: ClassVar[MessageType] = MessageType.MODEL_CHUNK_REQUEST

    model: str
    version: int
    chunks: tuple[int, ...]

    def encode_body(self) -> bytes:
        """The msgpack body."""
        if not 0 < len(self.chunks) <= _MAX_WINDOW:
            raise EncodeError(f"must request 1..{_MAX_WINDOW} chunks", field="chunks")
        return pack_body({"model": self.model, "version": self.version, "chunks": list(self.chunks)})

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> ModelChunkRequest:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        chunks = f.get_list("chunks", max_len=_MAX_WINDOW)
        if not chunks or not all(type(c) is int and 0 <= c < _MAX_CHUNKS for c in chunks):
            raise f.fail("chunks", f"must be 1..{_MAX_WINDOW} chunk indices")
        return cls(read_name(f, "model"), f.get_int("version", low=1), tuple(chunks))


@dataclass(frozen=True)
class ModelChunk:
    """cloud → device: chunk ``index`` (bytes ``index*chunk_size`` onwards) of ``model`` version ``version``."""

    TYPE: ClassVar[MessageType] = MessageType.MODEL_CHUNK

    model: str
    version: int
    index: int
    data: bytes

    def encode_body(self) -> bytes:
        """The msgpack body."""
        return pack_body({"model": self.model, "version": self.version, "index": self.index, "data": self.data})

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> ModelChunk:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        return cls(
            read_name(f, "model"),
            f.get_int("version", low=1),
            f.get_int("index", high=_MAX_CHUNKS - 1),
            f.get_bytes("data", max_len=_MAX_CHUNK_BYTES),
        )


@dataclass(frozen=True)
class InstallReport:
    """device → cloud: what happened to ``model`` version ``version`` (``outcome``, with ``reason`` on failure)."""

    TYPE: ClassVar[MessageType] = MessageType.INSTALL_REPORT

    model: str
    version: int
    outcome: str
    reason: str = ""
    active_version: int = 0
    duration_ms: int = 0

    def encode_body(self) -> bytes:
        """The msgpack body."""
        if self.outcome not in INSTALL_OUTCOMES:
            raise EncodeError(f"must be one of {', '.join(INSTALL_OUTCOMES)}", field="outcome")
        return pack_body(
            {
                "model": self.model,
                "version": self.version,
                "outcome": self.outcome,
                "reason": self.reason,
                "active": self.active_version,
                "ms": self.duration_ms,
            }
        )

    @classmethod
    def decode_body(cls, data: bytes, *, limit: int = 2**31) -> InstallReport:
        """Parse a body; DecodeError on anything malformed."""
        f = Fields(unpack_body(data, limit), cls.TYPE.value)
        return cls(
            read_name(f, "model"),
            f.get_int("version", low=1),
            f.get_str("outcome", choices=INSTALL_OUTCOMES),
            f.get_str("reason", max_len=4096, default=""),
            f.get_int("active", default=0),
            f.get_int("ms", default=0),
        )
