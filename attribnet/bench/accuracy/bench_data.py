"""The benchmark's data: the dataset, the role of every source, and what each trainer may see.

Every trainer reads a *view*: a folder of links to the sources it may use, so each run's data is
visible on disk and the split of an image (a hash of its folder and file name) is the same in
every view. The coordinator's reference set leaves the test split out, so no node ever trains on
an image any model is tested on.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from attribnet.bench.accuracy.config import AccuracyConfig
from coordinator.reference import COORDINATOR_OWN, DESCRIPTION, write_reference_set
from shared_backbone.config import DataConfig
from shared_backbone.data.datasets import MANIFEST_FILE, DatasetIndex, Sample, load_split

log = logging.getLogger(__name__)


@dataclass
class BenchData:
    """The dataset with its roles checked, and the views trainers read."""

    config: AccuracyConfig
    data: DataConfig
    index: DatasetIndex
    test: list[Sample]
    views: Path

    @property
    def reals(self) -> list[str]:
        return sorted(self.index.real_sources)

    @property
    def roles(self):
        return self.config.roles

    @property
    def founding(self) -> list[str]:
        return [s for s in self.roles.nodes if s not in self.roles.late]

    def view(self, name: str, sources: list[str]) -> DataConfig:
        """A folder linking exactly `sources` (real sources stay real) and the dataset's manifest.

        The manifest carries a dataset's own split (the upscalers' split by photograph), so every
        trainer splits a view exactly as the benchmark splits the dataset.
        """
        folder = self.views / name
        folder.mkdir(parents=True, exist_ok=True)
        root = Path(self.data.root).resolve()
        for source in sources:
            link = folder / source
            if not link.exists():
                link.symlink_to(root / source, target_is_directory=True)
        manifest = folder / MANIFEST_FILE
        if (root / MANIFEST_FILE).is_file() and not manifest.exists():
            manifest.symlink_to(root / MANIFEST_FILE)
        return dataclasses.replace(self.data, root=str(folder), real_sources=[s for s in self.reals if s in sources])

    def detector_view(self, *, late_join: bool = False) -> DataConfig:
        """Real images, the founding (or every) node's and the coordinator's own generators: never held-out ones."""
        nodes = self.founding if late_join else self.roles.nodes
        return self.view("detector-late" if late_join else "detector", [*self.reals, *nodes, *self.roles.coordinator])

    def classes_view(self) -> DataConfig:
        """Real and every node: the classes a centralized multiclass baseline learns (it sees all of them)."""
        return self.view("classes", [*self.reals, *self.roles.nodes])

    def node_view(self, source: str) -> DataConfig:
        """What one strict node holds: its own generator's images only."""
        return self.view(f"node-{source}", [source])

    def test_samples(self, sources: list[str]) -> list[Sample]:
        return [s for s in self.test if s.source in sources]


def check_roles(config: AccuracyConfig, index: DatasetIndex) -> None:
    """Refuses a role naming a missing folder, a source in two roles, or a late joiner that is no node."""
    roles = config.roles
    named = {"nodes": roles.nodes, "coordinator": roles.coordinator, "held_out": roles.held_out}
    for role, sources in {**named, "late": roles.late}.items():
        missing = [s for s in sources if s not in index.sources]
        if missing:
            raise ValueError(f"roles.{role}: no folder {missing[0]!r} in {index.root} (have {', '.join(index.sources)})")
        real = [s for s in sources if index.is_real(s)]
        if real:
            raise ValueError(f"roles.{role}: {real[0]!r} is a real source")
    seen: dict[str, str] = {}
    for role, sources in named.items():
        for source in sources:
            if source in seen:
                raise ValueError(f"source {source!r} has two roles: {seen[source]} and {role}")
            seen[source] = role
    if not roles.nodes or any(s not in roles.nodes for s in roles.late) or set(roles.late) == set(roles.nodes):
        raise ValueError("roles: give nodes, and late joiners that are some (not all) of the nodes")


def prepare(config: AccuracyConfig, data: DataConfig, workdir: Path) -> BenchData:
    """Scans the dataset, checks the roles and splits; the views live under WORKDIR/views."""
    index, splits = load_split(data)
    check_roles(config, index)
    return BenchData(config, data, index, splits["test"], workdir / "views")


def reference_set(bench: BenchData, workdir: Path) -> Path:
    """The coordinator's reference set: real images and its own generators, the test split left out."""
    out = workdir / "reference"
    if not (out / DESCRIPTION).is_file():
        view = bench.view("reference-sources", [*bench.reals, *bench.roles.coordinator])
        write_reference_set(view, out, fakes={s: COORDINATOR_OWN for s in bench.roles.coordinator})
    return out
