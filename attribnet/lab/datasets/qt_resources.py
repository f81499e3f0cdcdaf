"""Reads one file out of a compiled Qt resource bundle (`.rcc`), as Debian's GCompris ships its photos.

The format (Qt's `rcc` tool, versions 1-3): a `qres` header with the offsets of a tree of entries,
a data block and a names block. Each tree entry names a directory (its children's count and first
index) or a file (the offset of its data: a 4-byte size, then the bytes, zlib-compressed with a
4-byte length prefix when flagged, zstd-compressed when flagged so). Only lookup by path is needed:
the catalogue names each photo by its path inside the bundle.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

MAGIC = b"qres"
COMPRESSED_ZLIB, DIRECTORY, COMPRESSED_ZSTD = 0x1, 0x2, 0x4


class ResourceError(ValueError):
    """The bundle is not a Qt resource file, or holds no such path."""


class ResourceBundle:
    """One `.rcc` file held in memory; `read(":/a/b.webp")` returns that file's bytes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data = self.path.read_bytes()
        if self.data[:4] != MAGIC:
            raise ResourceError(f"{self.path}: not a Qt resource bundle (no 'qres' header)")
        self.version, self.tree, self.blobs, self.names = struct.unpack(">IIII", self.data[4:20])
        if self.version not in (1, 2, 3):
            raise ResourceError(f"{self.path}: Qt resource format version {self.version} is not supported (1-3)")
        self.entry_size = 14 if self.version == 1 else 22

    def _name(self, offset: int) -> str:
        start = self.names + offset
        (length,) = struct.unpack(">H", self.data[start:start + 2])
        return self.data[start + 6:start + 6 + 2 * length].decode("utf-16-be")

    def _entry(self, index: int) -> tuple[str, int, int, int]:
        """(name, flags, a, b): for a directory a = child count, b = first child; for a file b = data offset."""
        at = self.tree + index * self.entry_size
        name_offset, flags = struct.unpack(">IH", self.data[at:at + 6])
        a, b = struct.unpack(">II", self.data[at + 6:at + 14])
        return (self._name(name_offset) if index else ""), flags, a, b

    def _find(self, parts: list[str]) -> tuple[int, int]:
        index = 0
        for part in parts:
            _, flags, count, first = self._entry(index)
            if not flags & DIRECTORY:
                raise ResourceError(f"{self.path}: no directory on the way to {part!r}")
            children = {self._entry(first + i)[0]: first + i for i in range(count)}
            if part not in children:
                raise ResourceError(f"{self.path}: no resource {'/'.join(parts)!r} (missing {part!r})")
            index = children[part]
        _, flags, _, offset = self._entry(index)
        if flags & DIRECTORY:
            raise ResourceError(f"{self.path}: {'/'.join(parts)!r} is a directory")
        return flags, offset

    def read(self, member: str) -> bytes:
        """The bytes of the file at `member` (":/dir/file" or "dir/file"), decompressed."""
        flags, offset = self._find([p for p in member.lstrip(":").split("/") if p])
        start = self.blobs + offset
        (size,) = struct.unpack(">I", self.data[start:start + 4])
        blob = self.data[start + 4:start + 4 + size]
        if flags & COMPRESSED_ZLIB:
            return zlib.decompress(blob[4:])
        if flags & COMPRESSED_ZSTD:
            raise ResourceError(f"{self.path}: {member} is zstd-compressed, which this reader does not decode")
        return blob
