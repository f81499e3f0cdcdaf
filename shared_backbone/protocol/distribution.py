"""Wire names of `DistributionService` (how a joining node fetches the bundle, key and reference set).

One definition for both sides: the file sets, the ticket's metadata key, and the rule for a
catalogue path, which the coordinator applies to what it lists and the node to what it writes
(a path from the network never leaves the folder it is written into).
"""

from __future__ import annotations

BUNDLE = "bundle"  # a file of the signed backbone bundle folder
REFERENCE = "reference"  # a file of the reference set folder
SETS = (BUNDLE, REFERENCE)
FETCH_TICKET = "x-fetch-ticket"  # metadata of Fetch: the ticket Open returned
MAX_PATH_LENGTH = 512
MAX_PATH_PARTS = 8


class UnsafePath(ValueError):
    """A catalogue path that is absolute, climbs out of its folder, or is otherwise unusable."""


def check_relative_path(path: str) -> list[str]:
    """The parts of a "/"-separated relative path; UnsafePath unless every part is a plain name."""
    if not path or len(path) > MAX_PATH_LENGTH:
        raise UnsafePath(f"path {path[:80]!r}: empty or longer than {MAX_PATH_LENGTH} characters")
    parts = path.split("/")
    if len(parts) > MAX_PATH_PARTS:
        raise UnsafePath(f"path {path[:80]!r}: more than {MAX_PATH_PARTS} levels")
    for part in parts:
        if part in ("", ".", "..") or "\\" in part or "\0" in part or part.startswith(".") or ":" in part:
            raise UnsafePath(f"path {path[:80]!r}: part {part[:40]!r} is not a plain file or folder name")
    return parts


def check_set(name: str) -> str:
    if name not in SETS:
        raise UnsafePath(f"set {name[:40]!r}: not one of {', '.join(SETS)}")
    return name
