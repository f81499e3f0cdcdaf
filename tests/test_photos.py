"""The real-photo corpus: at least 100 photographs with a licence each, split by scene with 15+ test photos,
read from the Debian packages `make photos` installs (digest-checked) and from Qt resource bundles."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import pytest

from attribnet.lab.datasets import packaged_photos
from attribnet.lab.datasets import photos as corpus
from attribnet.lab.datasets.qt_resources import ResourceBundle, ResourceError

PACKAGED = ("gc_erase_alpaca", "mate_aqua", "lomiri_aitzgorri")  # a GCompris .rcc member, two plain files


def _installed() -> str | None:
    try:
        for name in PACKAGED:
            corpus.load_photo(name)
    except corpus.MissingExtraError as exc:
        return str(exc)
    return None


MISSING = None if os.environ.get("ATTRIBNET_REQUIRE_UPSCALERS") == "1" else _installed()
needs_packages = pytest.mark.skipif(MISSING is not None, reason=f"photo packages not installed (`make photos`): {MISSING}")


def test_the_corpus_has_100_licensed_photos_and_a_test_split_of_15():
    assert len(corpus.PHOTOS) >= 100 and len(set(corpus.PHOTO_NAMES)) == len(corpus.PHOTOS)
    assert all(p.licence and p.scene and p.colour in corpus.COLOURS for p in corpus.PHOTOS)
    assert all(entry["licence_source"] and len(entry["sha256"]) == 64 for entry in packaged_photos.catalogue())
    for seed in (0, 1, 2):
        splits = corpus.split_photos(corpus.PHOTO_NAMES, seed)
        assert list(splits.values()).count("test") >= 15 and list(splits.values()).count("val") >= 15


@needs_packages
def test_packaged_photos_load_and_the_manifest_record_names_file_licence_and_author():
    for name in PACKAGED:
        array = corpus.load_photo(name)
        assert array.dtype.name == "uint8" and array.ndim == 3 and min(array.shape[:2]) >= 256
        record = corpus.photo_record(name)
        assert record["registry"] == "debian" and record["licence"] and record["file"].startswith("/usr/share/")
        assert record["version"] == next(e["version"] for e in packaged_photos.catalogue() if e["name"] == name)
    assert corpus.photo_record("gc_erase_alpaca")["member"].endswith(".webp")


@needs_packages
def test_a_package_that_ships_other_bytes_is_refused_with_the_make_target(tmp_path):
    entry = dict(next(e for e in packaged_photos.catalogue() if e["name"] == "mate_aqua"))
    copy = tmp_path / "aqua.jpg"
    copy.write_bytes(Path(entry["path"]).read_bytes()[:-10])
    with pytest.raises(packaged_photos.MissingPackageError, match="differs from the catalogue"):
        packaged_photos.photo_bytes({**entry, "path": str(copy)})
    with pytest.raises(packaged_photos.MissingPackageError, match="make photos"):
        packaged_photos.photo_bytes({**entry, "path": str(tmp_path / "absent.jpg")})


def _name(text: str) -> bytes:
    return struct.pack(">HI", len(text), 0) + text.encode("utf-16-be")


def write_rcc(path: Path, files: dict[str, bytes], compress: set[str]) -> None:
    """A version-2 Qt resource bundle with one directory `img` holding `files` (names sorted, as rcc does)."""
    names, blobs, entries = b"", b"", []
    offsets = {}
    for text in ["img", *sorted(files)]:
        offsets[text], names = len(names), names + _name(text)
    entries.append(struct.pack(">IHII", 0, 0x2, 1, 1) + bytes(8))  # root: one child (index 1)
    entries.append(struct.pack(">IHII", offsets["img"], 0x2, len(files), 2) + bytes(8))
    for text in sorted(files):
        payload = files[text]
        if text in compress:
            payload = struct.pack(">I", len(payload)) + zlib.compress(payload)
        entries.append(struct.pack(">IHHHI", offsets[text], 0x1 if text in compress else 0, 0, 0, len(blobs)) + bytes(8))
        blobs += struct.pack(">I", len(payload)) + payload
    tree = b"".join(entries)
    header = 4 + 16 + 4
    path.write_bytes(b"qres" + struct.pack(">IIIII", 2, header, header + len(tree), header + len(tree) + len(blobs), 0)
                     + tree + blobs + names)


def test_the_qt_resource_reader_finds_plain_and_zlib_members(tmp_path):
    files = {"a.webp": b"plain bytes" * 3, "b.txt": b"compressed " * 50}
    write_rcc(tmp_path / "x.rcc", files, compress={"b.txt"})
    bundle = ResourceBundle(tmp_path / "x.rcc")
    assert bundle.read(":/img/a.webp") == files["a.webp"] and bundle.read("img/b.txt") == files["b.txt"]
    with pytest.raises(ResourceError, match="no resource"):
        bundle.read(":/img/c.png")
    with pytest.raises(ResourceError, match="is a directory"):
        bundle.read(":/img")
    (tmp_path / "not.rcc").write_bytes(b"PK\x03\x04")
    with pytest.raises(ResourceError, match="not a Qt resource bundle"):
        ResourceBundle(tmp_path / "not.rcc")
    assert hashlib.sha256(bundle.read(":/img/a.webp")).hexdigest() == hashlib.sha256(files["a.webp"]).hexdigest()
