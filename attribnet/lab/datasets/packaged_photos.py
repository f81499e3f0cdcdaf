"""Photographs that Debian packages ship, read where `make photos` installed them.

`packaged_photos.json` beside this module is the catalogue: for each photo the package, the file
(and for a Qt resource bundle such as GCompris's `.rcc` files, the member inside it), the licence
the package states for that photo, its author where stated, and the sha256 of its bytes. Reading
checks the digest, so a different package version is an error that says so, never a silently
different dataset. The packages are wallpaper and educational-software data (`packages()`); none
is needed by `make demo`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

from attribnet.lab.datasets.qt_resources import ResourceBundle

CATALOGUE = Path(__file__).with_name("packaged_photos.json")
PHOTOS_HINT = "run `make photos` (as root: apt-get install -y {packages})"


class MissingPackageError(ImportError):
    """A Debian package of the photo corpus is not installed, or ships other bytes than the catalogue's."""


@functools.lru_cache(maxsize=1)
def catalogue() -> tuple[dict, ...]:
    """The catalogue's entries, in file order."""
    return tuple(json.loads(CATALOGUE.read_text())["photos"])


def packages() -> tuple[str, ...]:
    """The Debian packages the catalogue's photos come from."""
    return tuple(sorted({entry["package"] for entry in catalogue()}))


@functools.lru_cache(maxsize=None)
def package_version(package: str) -> str | None:
    """The installed version of a Debian package (None: not installed, or no dpkg here)."""
    if not shutil.which("dpkg-query"):
        return None
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
    version = done.stdout.strip()
    return version if done.returncode == 0 and version else None


@functools.lru_cache(maxsize=16)
def _bundle(path: str) -> ResourceBundle:
    return ResourceBundle(path)


def photo_bytes(entry: dict) -> bytes:
    """The photo's file bytes, digest-checked; MissingPackageError names the package and the Make target."""
    try:
        data = _bundle(entry["path"]).read(entry["member"]) if entry["member"] else Path(entry["path"]).read_bytes()
    except FileNotFoundError:
        hint = PHOTOS_HINT.format(packages=" ".join(packages()))
        raise MissingPackageError(f"photo {entry['name']}: {entry['path']} is missing (Debian package "
                                  f"{entry['package']}): {hint}") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise MissingPackageError(f"photo {entry['name']}: {entry['path']} {entry['member']} differs from the catalogue "
                                  f"(package {entry['package']} {package_version(entry['package'])}, catalogued "
                                  f"{entry['version']})")
    return data


def load(entry: dict) -> np.ndarray:
    """The photo as uint8 HxWx3 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(photo_bytes(entry))) as image:
        return np.asarray(image.convert("RGB"))
