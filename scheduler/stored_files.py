"""Contacts files kept in the database: compressed on `campaign create`, written back to a
temporary file when a daemon (on any host) ingests the campaign.

Streamed in pieces both ways, so a million-contact file never sits in memory
uncompressed.
"""

from __future__ import annotations

import hashlib
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

PIECE_BYTES = 1 << 20
COMPRESSION_LEVEL = 6


@dataclass(frozen=True)
class PackedFile:
    file_name: str
    size_bytes: int
    sha256: str
    data: bytes  # zlib


def pack(path: Path) -> PackedFile:
    """The file compressed, with its size and SHA-256 (of the original bytes)."""
    digest, compressor, parts, size = hashlib.sha256(), zlib.compressobj(COMPRESSION_LEVEL), [], 0
    with path.open("rb") as handle:
        while piece := handle.read(PIECE_BYTES):
            size += len(piece)
            digest.update(piece)
            parts.append(compressor.compress(piece))
    parts.append(compressor.flush())
    return PackedFile(path.name, size, digest.hexdigest(), b"".join(parts))


class CorruptFile(ValueError):
    """The stored bytes do not decompress to what was stored."""


def unpack(data: bytes, sha256: str, directory: Path | None = None, suffix: str = ".csv") -> Path:
    """Write the stored file to a new temporary file (the caller deletes it); checks its SHA-256."""
    digest, decompressor = hashlib.sha256(), zlib.decompressobj()
    handle = tempfile.NamedTemporaryFile("wb", suffix=suffix, prefix="insight-contacts-", dir=directory,
                                         delete=False)
    try:
        with handle:
            for start in range(0, len(data), PIECE_BYTES):
                piece = decompressor.decompress(data[start:start + PIECE_BYTES])
                digest.update(piece)
                handle.write(piece)
            rest = decompressor.flush()
            digest.update(rest)
            handle.write(rest)
    except zlib.error as exc:
        Path(handle.name).unlink(missing_ok=True)
        raise CorruptFile(f"the stored contacts file cannot be decompressed: {exc}") from None
    if digest.hexdigest() != sha256:
        Path(handle.name).unlink(missing_ok=True)
        raise CorruptFile("the stored contacts file does not match its SHA-256: it was changed in the database")
    return Path(handle.name)
