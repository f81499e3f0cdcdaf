"""The coordinator's reference set: a folder of images every node may train on, pinned by a content digest.

The coordinator announces the digest with each run; a node refuses a folder whose content differs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from shared_backbone.model.bundle import sha256_file


class ReferenceSetError(ValueError):
    """A reference set whose folder is missing or whose content differs from the announced digest."""


def folder_files(root: str | Path) -> list[tuple[str, Path]]:
    """(relative "/"-path, path) of every file the digest covers, sorted: hidden files and folders are not."""
    root = Path(root)
    if not root.is_dir():
        raise ReferenceSetError(f"reference set folder {root} not found")
    files = []
    for folder, subfolders, names in os.walk(root, followlinks=True):  # sources are often symlinked folders
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        files.extend(Path(folder) / name for name in names if not name.startswith("."))
    return sorted(((p.relative_to(root).as_posix(), p) for p in files), key=lambda item: item[0])


def digest_of(entries: list[tuple[str, str]]) -> str:
    """The content digest of (relative path, file sha256) pairs, sorted by path: what `folder_digest` computes."""
    digest = hashlib.sha256()
    for relative, file_sha in sorted(entries):
        digest.update(f"{relative}\0{file_sha}\n".encode())
    return digest.hexdigest()


def folder_digest(root: str | Path) -> str:
    """sha256 over every (relative path, file sha256) of a folder, in sorted order."""
    return digest_of([(relative, sha256_file(path)) for relative, path in folder_files(root)])


def verify_reference(path: str | Path, expected_digest: str) -> Path:
    """The reference folder, after checking its content is exactly the announced set."""
    actual = folder_digest(path)
    if actual != expected_digest:
        raise ReferenceSetError(
            f"reference set {path}: content digest {actual[:12]}… differs from the coordinator's {expected_digest[:12]}…"
        )
    return Path(path)
