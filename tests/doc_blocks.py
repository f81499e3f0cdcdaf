"""The fenced shell blocks of README.md and docs/*.md, their `doc-test` annotations, and the substitutions.

An annotation is the HTML comment on the line right above a block's fence:

    <!-- doc-test: SCENE [expect="text"] [requires="..."] [stop="background"] [needs="PAGE#N"] [reason="..."] -->

SCENE (default `repo`) says where the block runs: `repo` (a fresh working copy per page), `demo`
(the served tiny network demo), `make` (make targets, dry run) or `skip` (needs `reason`). With
`same-as="PAGE"` the block is not run: its commands must appear verbatim in blocks of PAGE that
are. The scenes themselves are in tests/test_doc_commands.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
SCENES = {"repo", "demo", "make", "skip"}
ATTRIBUTES = {"expect", "requires", "stop", "needs", "reason", "same-as"}
REQUIREMENTS = {"paper-weights", "upscalers"}
FENCE = re.compile(r"^```\s*([\w-]*)\s*$")
ANNOTATION = re.compile(r"^<!--\s*doc-test:(.*?)-->\s*$")
ATTRIBUTE = re.compile(r'([\w-]+)="([^"]*)"')

# The ports the docs use, replaced by free loopback ports per scene (configs/*.yaml copies too).
DOC_PORTS = (50051, 50061, 50062, 50063, 50071)
# Sizes: what the docs ask for, cut to what CI affords; the commands and flags stay the user's.
ZOO_SIZE, ZOO_PER_SOURCE, PER_KIND = 32, 30, 2
UPSCALER_SIZE, UPSCALER_PER_SOURCE = 16, 8
FINGERPRINT = re.compile(r"sha256:[0-9a-f]*…")


class AnnotationError(ValueError):
    """A `doc-test` comment that names an unknown scene or attribute, or a skip without a reason."""


@dataclass(frozen=True)
class Block:
    """One fenced shell block: where it is, its text and what its annotation says."""

    page: str
    index: int  # 1-based among the page's shell blocks: `PAGE#INDEX` names it
    line: int
    text: str
    scene: str = "repo"
    attrs: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.page}#{self.index}"


def pages() -> list[str]:
    """README.md, then docs/*.md by name: the order the scenes run in."""
    return ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]


def parse_annotation(comment: str) -> tuple[str, dict[str, str]]:
    """(scene, attributes) of the text after `doc-test:`; raises AnnotationError when it is not valid."""
    attrs = dict(ATTRIBUTE.findall(comment))
    words = ATTRIBUTE.sub("", comment).split()
    if len(words) > 1:
        raise AnnotationError(f"more than one scene in {comment!r}")
    scene = words[0] if words else "repo"
    unknown = sorted(set(attrs) - ATTRIBUTES)
    if scene not in SCENES or unknown:
        raise AnnotationError(f"unknown scene {scene!r} or attribute {unknown} in {comment!r} (scenes: {sorted(SCENES)})")
    if scene == "skip" and not attrs.get("reason", "").strip():
        raise AnnotationError(f"a skipped block needs reason=\"...\": {comment!r}")
    if attrs.get("requires") and attrs["requires"] not in REQUIREMENTS:
        raise AnnotationError(f"requires={attrs['requires']!r}: one of {sorted(REQUIREMENTS)}")
    if attrs.get("stop", "background") != "background":
        raise AnnotationError(f"stop={attrs['stop']!r}: only stop=\"background\" is known")
    return scene, attrs


def read_blocks(page: str) -> list[Block]:
    """Every fenced shell block of `page` with its annotation (the comment on the line above its fence)."""
    lines = (REPO / page).read_text().splitlines()
    blocks: list[Block] = []
    number = 0
    while number < len(lines):
        match = FENCE.match(lines[number])
        if not match:
            number += 1
            continue
        end = next((i for i in range(number + 1, len(lines)) if lines[i].strip() == "```"), len(lines))
        if match.group(1) in SHELL_LANGUAGES:
            above = ANNOTATION.match(lines[number - 1].strip()) if number else None
            scene, attrs = parse_annotation(above.group(1)) if above else ("repo", {})
            blocks.append(Block(page, len(blocks) + 1, number + 1, "\n".join(lines[number + 1 : end]), scene, attrs))
        number = end + 1
    return blocks


def commands(text: str) -> list[str]:
    """A block's commands, one per entry: continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", line).strip()
        if line:
            found.append(" ".join(line.split()))
    return found


def _sizes(line: str) -> str:
    """The documented size cuts, per command line (the upscaler networks get smaller patches still)."""
    size, per_source = (UPSCALER_SIZE, UPSCALER_PER_SOURCE) if "upscalers" in line else (ZOO_SIZE, ZOO_PER_SOURCE)
    line = re.sub(r"--image-size \d+", f"--image-size {size}", line)
    line = re.sub(r"--per-source \d+", f"--per-source {per_source}", line)
    return re.sub(r"--per-kind \d+", f"--per-kind {PER_KIND}", line)


def substitute_ports(text: str, ports: dict[int, int]) -> str:
    """Each of the docs' ports replaced by the scene's free port (commands and config copies alike)."""
    return re.sub(r"\b(%s)\b" % "|".join(map(str, DOC_PORTS)), lambda m: str(ports[int(m.group(1))]), text)


def substitute(text: str, ports: dict[int, int], fingerprint: str = "") -> str:
    """The block as the test runs it: doc ports -> free ports, sizes cut, `sha256:…` -> the real fingerprint."""
    text = substitute_ports("\n".join(_sizes(line) for line in text.splitlines()), ports)
    return FINGERPRINT.sub(f"sha256:{fingerprint}", text) if fingerprint else text
