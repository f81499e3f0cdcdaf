"""The benchmark's data: the dataset, the role of every source, and what each trainer may see.

A *setting* says what the coordinator's detector and source-aware trunk train on, what its
reference set publishes and which families the nodes' self-made negatives leave out (see
config.py): the founding setting, the fully private one, and one per family left out.

Every trainer reads a *view*: a folder of links to the sources it may use, so each run's data is
visible on disk and the split of an image (a hash of its folder and file name) is the same in
every view. The coordinator's reference set leaves the test split out, so no node ever trains on
an image any model is tested on.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from attribnet.bench.accuracy.config import DATASET_FAMILIES, PROTOCOLS, AccuracyConfig
from coordinator.config import PretextConfig
from coordinator.reference import COORDINATOR_OWN, DESCRIPTION, write_reference_set
from shared_backbone.config import DataConfig
from shared_backbone.data.datasets import MANIFEST_FILE, DatasetIndex, Sample, load_split

log = logging.getLogger(__name__)

FOUNDING, PRIVATE, LOFO = "founding", "private", "lofo"
PRIVATE_FINETUNE = "private_finetune"  # the protocol
PRIVATE_FINETUNED = "private_finetuned"  # also the report's key


def family_of(source: str) -> str:
    """A source's generator family: the text before its first `_` (`tconv_a` -> `tconv`)."""
    return source.partition("_")[0]


@dataclass(frozen=True)
class Setting:
    """Who the coordinator's detector and trunk train on, what it publishes, what negatives leave out."""

    name: str
    detector_fakes: tuple[str, ...]  # fake sources of the detector's and the source-aware trunk's training
    reference_fakes: tuple[str, ...]  # the coordinator's generators in the reference set
    exclude_families: tuple[str, ...] = ()  # left out of every node's self-made negatives
    family: str = ""  # leave-one-family-out: the family left out
    finetuned: bool = False  # the detector then fine-tuned by every node (federated, robust averaging)

    def describe(self, reals: list[str], pretext: PretextConfig) -> dict[str, list[str]]:
        """The sources each part trained on (the coordinator's pretext generators named too), for the report."""
        trained = [*reals, *self.detector_fakes]
        own = [f"{pretext.generators} pretext generators of its own"] if pretext.generators else []
        nodes = ["every node's update (federated fine-tuning: weights, no image)"] if self.finetuned else []
        return {"detector_sources": trained + (own if pretext.detector else []) + nodes,
                "trunk_sources": trained + (own if pretext.trunk else []) + nodes, "reference_sources": [*reals, *self.reference_fakes],
                "negatives_exclude_families": list(self.exclude_families)}


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

    @property
    def families(self) -> list[str]:
        """The families left out one at a time (config, else the dataset's), each a node's family."""
        families = self.config.lofo_families or DATASET_FAMILIES.get(self.config.dataset, [])
        node_families = {family_of(s) for s in self.roles.nodes}
        missing = [f for f in families if f not in node_families]
        if missing:
            raise ValueError(f"lofo_families: no node source of family {missing[0]!r} (nodes: {', '.join(self.roles.nodes)})")
        return list(families)

    def founding_setting(self) -> Setting:
        return Setting(FOUNDING, (*self.roles.nodes, *self.roles.coordinator), tuple(self.roles.coordinator))

    def settings(self) -> list[Setting]:
        """The settings besides the founding one that `protocols` asks for."""
        settings = []
        if PRIVATE in self.config.protocols:
            settings.append(Setting(PRIVATE, tuple(self.roles.coordinator), tuple(self.roles.coordinator)))
        if PRIVATE_FINETUNE in self.config.protocols:
            settings.append(Setting(PRIVATE_FINETUNED, tuple(self.roles.coordinator), tuple(self.roles.coordinator), finetuned=True))
        if LOFO in self.config.protocols:
            for family in self.families:
                kept = lambda sources: tuple(s for s in sources if family_of(s) != family)  # noqa: E731
                settings.append(Setting(f"{LOFO}-{family}", kept([*self.roles.nodes, *self.roles.coordinator]),
                                        kept(self.roles.coordinator), (family,), family))
        return settings

    def setting_view(self, setting: Setting) -> DataConfig:
        return self.view(f"detector-{setting.name}", [*self.reals, *setting.detector_fakes])

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
    unknown = [p for p in config.protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"protocols: unknown {unknown[0]!r} (choose from {', '.join(PROTOCOLS)})")
    if not roles.nodes or any(s not in roles.nodes for s in roles.late) or set(roles.late) == set(roles.nodes):
        raise ValueError("roles: give nodes, and late joiners that are some (not all) of the nodes")


def prepare(config: AccuracyConfig, data: DataConfig, workdir: Path) -> BenchData:
    """Scans the dataset, checks the roles and splits; the views live under WORKDIR/views."""
    index, splits = load_split(data)
    check_roles(config, index)
    return BenchData(config, data, index, splits["test"], workdir / "views")


def reference_set(bench: BenchData, workdir: Path, fakes: tuple[str, ...] | None = None) -> Path:
    """The coordinator's reference set: real images and its own generators (`fakes`, default all of
    them), the test split left out; one folder per distinct set of generators."""
    fakes = tuple(bench.roles.coordinator) if fakes is None else fakes
    name = "reference" if set(fakes) == set(bench.roles.coordinator) else "reference-" + ("-".join(sorted(fakes)) or "reals")
    out = workdir / name
    if not (out / DESCRIPTION).is_file():
        shutil.rmtree(out, ignore_errors=True)  # a killed run's partial copy
        view = bench.view(f"{name}-sources", [*bench.reals, *fakes])
        write_reference_set(view, out, fakes={s: COORDINATOR_OWN for s in fakes})
    return out
