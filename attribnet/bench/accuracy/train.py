"""Training everything one seed of the benchmark compares, with the code the network itself runs.

Per seed, the founding setting: the detector (clean, then retrained on perturbations as in the
paper, and once more without the late joiners), signed into bundles that announce the reference
set; on each bundle one head per node with `node.train_head` (strict access, and the paper's
shared setting for comparison); the centralized baselines (clean- and robust-trained); with the
`spectral_template` protocol, each node's spectral template from its own images and reals. Every other
setting (private, leave-one-family-out) is one detector on its own sources, its own reference set,
and one strict head per node whose negatives leave out the setting's families.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from attribnet.bench.accuracy.config import AccuracyConfig
from attribnet.bench.accuracy.bench_data import BenchData, Setting
from coordinator.config import CoordinatorConfig
from coordinator.flower.fedavg import averaging_rounds, clip_count, finetune_train
from coordinator.publish import publish
from coordinator.train_primary import train_primary
from node.config import NegativesConfig, NodeConfig
from node.finetune import finetune as finetune_round
from node.train_head import train_head
from shared_backbone.config import DataConfig, PerturbConfig
from attribnet.lab.baselines.centralized import BaselineConfig, BaselineResult, run_baseline
from attribnet.lab.baselines.spectral_template import SpectralTemplate, fit_template
from node.head_data import head_data
from shared_backbone.training.trunk_cache import load_images
from shared_backbone.model.bundle import Bundle, load_bundle
from shared_backbone.model.heads import Head, load_head
from shared_backbone.model.signing import load_private_key, load_public_key

CLEAN, ROBUST, LATE = "clean", "robust", "late"
STRICT, SHARED = "strict", "shared"


@dataclass
class SeedModels:
    """What one seed trained: bundles, head sets (name -> heads), baselines, and wall time per model."""

    bundles: dict[str, Bundle] = field(default_factory=dict)
    heads: dict[str, list[Head]] = field(default_factory=dict)
    baselines: dict[str, BaselineResult] = field(default_factory=dict)
    templates: list[SpectralTemplate] = field(default_factory=list)  # the spectral_template protocol's, one a node
    seconds: dict[str, float] = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)  # federated fine-tuning's rounds and gate, when a setting ran it


class SeedTrainer:
    """Trains one seed's models into `out`; `step` tells the user what runs."""

    def __init__(self, config: AccuracyConfig, bench: BenchData, keys: tuple[Path, Path], reference: Path, seed: int,
                 out: Path, step: Callable[[str], None]) -> None:
        self.config, self.bench, self.keys, self.reference = config, bench, keys, reference
        self.seed, self.out, self.step = seed, out, step
        self.models = SeedModels()

    def _timed(self, key: str, label: str, fn, *args, **kwargs):
        self.step(f"seed {self.seed}: {label}")
        began = time.monotonic()
        value = fn(*args, **kwargs)
        self.models.seconds[key] = self.models.seconds.get(key, 0.0) + round(time.monotonic() - began, 1)
        return value

    def detector(self, name: str, view: DataConfig, reference: Path, *, init_from: str = "",
                 perturb: PerturbConfig | None = None, exclude_families: tuple[str, ...] = ()) -> Bundle:
        """Trains the detector (and its source-aware trunk, its pretext generators without `exclude_families`)
        on `view`, signs it with `reference` announced."""
        train = self.config.robust_primary if init_from else self.config.primary
        pretext = dataclasses.replace(self.config.pretext, exclude_families=list(exclude_families))
        config = CoordinatorConfig(
            data=view, train=dataclasses.replace(train, seed=self.seed), pretext=pretext,
            perturb=perturb or PerturbConfig(), init_from=init_from, run_dir=str(self.out / f"primary-{name}"),
        )
        train_primary(config, progress=False)
        folder = self.out / f"bundle-{name}"
        publish(config.run_dir, folder, self.keys[0], version=f"bench-seed{self.seed}-{name}", reference=reference)
        bundle = load_bundle(folder, load_public_key(self.keys[1]))
        self.models.bundles[name] = bundle
        return bundle

    def node_config(self, source: str, bundle: Bundle, access: str, robust: bool, init_head: str = "", *,
                    reference: Path | None = None, negatives: NegativesConfig | None = None) -> NodeConfig:
        config = self.config
        if access == SHARED:
            negatives = NegativesConfig(count=0)  # the paper's setting
        data = self.bench.node_view(source) if access == STRICT else self.bench.classes_view()
        return NodeConfig(
            source=source, access=access, data=data, train=dataclasses.replace(config.head, seed=self.seed),
            perturb=config.robust if robust else PerturbConfig(), perturb_copies=config.perturb_copies,
            negatives=negatives or config.negatives, backbone=str(bundle.path), public_key=str(self.keys[1]),
            reference=str(reference or self.reference), init_head=init_head,
            calibration=config.calibration, state_dir=str(self.out / f"heads-{access}-{bundle.version}" / source),
        )

    def heads(self, name: str, bundle: Bundle, access: str, *, robust: bool = False, init_from: str = "",
              reference: Path | None = None, negatives: NegativesConfig | None = None) -> list[Head]:
        """One head per node on `bundle`; robust heads start from the clean ones (`init_from` head set)."""
        heads = []
        for source in self.config.roles.nodes:
            start = str(Path(self.node_config(source, self.models.bundles[CLEAN], access, False).state_dir) / "head") if init_from else ""
            node = self.node_config(source, bundle, access, robust, start, reference=reference, negatives=negatives)
            result = train_head(node, bundle, progress=False)
            heads.append(load_head(result.head_dir, bundle))
        self.models.heads[name] = heads
        return heads

    def setting(self, setting: Setting, reference: Path, *, templates: bool = False) -> SeedModels:
        """One detector on the setting's sources and a strict head per node (negatives without its families);
        `templates`: each node's spectral template too (they read no backbone, but the node's data as this setting has it)."""
        sources = ", ".join(setting.detector_fakes) or "no generator"
        bundle = self._timed("detector", f"{setting.name}: the detector and its trunk on real + {sources}", self.detector,
                             setting.name, self.bench.setting_view(setting), reference, exclude_families=setting.exclude_families)
        if setting.finetuned:
            bundle = self._timed("finetune", f"{setting.name}: federated fine-tuning by {len(self.config.roles.nodes)} nodes",
                                 self.finetune, setting.name, bundle, reference, self.bench.setting_view(setting))
        negatives = dataclasses.replace(self.config.negatives, exclude_families=list(setting.exclude_families))
        self._timed("heads_strict", f"{setting.name}: {len(self.config.roles.nodes)} strict heads", self.heads, STRICT, bundle,
                    STRICT, reference=reference, negatives=negatives)
        if templates:
            self._timed("spectral_template", f"{setting.name}: spectral templates", self.spectral_templates, bundle)
        return self.models

    def finetune(self, name: str, bundle: Bundle, reference: Path, coordinator_data: DataConfig) -> Bundle:
        """`bundle` after the federation's fine-tuning rounds, the product's code without the transport
        (`coordinator/flower/fedavg.py` runs the same over Flower): each node trains on its own data under the
        federation's objective (`node/finetune.py`), the coordinator takes the robust aggregate (refitting its
        detector's tail for the attribution objective), keeps it only if it passes its evaluation gate on its
        own held-out data, and signs it."""
        fed, primary = self.config.federation, dataclasses.replace(self.config.primary, seed=self.seed)
        train = finetune_train(primary, fed)

        def collect(number: int, weights: list[np.ndarray]) -> tuple[list[list[np.ndarray]], list[int], dict[str, str]]:
            updates, counts, report = [], [], {}
            for source in self.config.roles.nodes:
                node = dataclasses.replace(self.node_config(source, bundle, STRICT, False, reference=reference), train=train,
                                           state_dir=str(self.out / f"finetune-{name}" / source))
                update, count = finetune_round(node, bundle, weights, list(self.bench.reals), fed.finetune_objective)
                updates.append(update)
                counts.append(clip_count(count, fed.max_examples))
                report[source] = f"updated ({counts[-1]} examples)"
            return updates, counts, report

        coordinator = CoordinatorConfig(data=coordinator_data, federation=fed, train=primary, run_dir=str(self.out / f"coordinator-{name}"))
        child, outcome = averaging_rounds(coordinator, bundle, collect, load_private_key(self.keys[0]), self.out / "bundles-finetuned")
        self.models.finetune = outcome
        if child is not bundle:
            child = load_bundle(child.path, load_public_key(self.keys[1]))
        self.models.bundles[name] = child
        return child

    def baseline(self, model: str, robust: bool) -> BaselineResult:
        names = ("clean", *(f"{kind}:{value}" for kind, value in self.config.test_perturbations.items()))
        config = BaselineConfig(
            model=model, task="multiclass", data=self.bench.classes_view(), train=dataclasses.replace(self.config.baseline, seed=self.seed),
            perturb=self.config.robust if robust else PerturbConfig(), out=str(self.out / f"baseline-{model}-{ROBUST if robust else CLEAN}"),
        )
        result = run_baseline(config, perturbations=names, progress=False)
        self.models.baselines[f"{model}-{ROBUST if robust else CLEAN}"] = result
        return result

    def spectral_templates(self, bundle: Bundle) -> list[SpectralTemplate]:
        """One template per node from exactly what its strict head trains on: its own train split and the reals among
        its negatives (its public reals and the reference set's)."""
        templates = []
        for source in self.config.roles.nodes:
            data = head_data(self.node_config(source, bundle, STRICT, False), bundle)
            reals = [s for s in data.negatives["train"] if s.source in self.bench.reals]
            size = self.bench.data.image_size
            templates.append(fit_template(source, load_images(data.positives["train"], size), load_images(reals, size)))
        self.models.templates = templates
        return templates

    def run(self) -> SeedModels:
        """The founding setting: the detector sees every node; the extra protocols `protocols` asks for."""
        nodes, protocols = len(self.config.roles.nodes), self.config.protocols
        clean = self._timed("detector", "train the detector (clean) and sign its bundle", self.detector, CLEAN,
                            self.bench.detector_view(), self.reference)
        self._timed("heads_strict", f"{nodes} strict heads (own images, reference set, self-made negatives)", self.heads, f"{STRICT}-{CLEAN}", clean, STRICT)
        if "shared" in protocols:
            self._timed("heads_shared", f"{nodes} shared heads (the paper's setting: every node's images)", self.heads, f"{SHARED}-{CLEAN}", clean, SHARED)
        if "robust" in protocols:
            robust = self._timed("detector_robust", "retrain the detector on perturbations", self.detector, ROBUST, self.bench.detector_view(),
                                 self.reference, init_from=str(self.out / f"primary-{CLEAN}"), perturb=self.config.robust)
            self._timed("heads_strict_robust", "strict heads retrained on perturbations", self.heads, f"{STRICT}-{ROBUST}", robust, STRICT,
                        robust=True, init_from=CLEAN)
            if "shared" in protocols:
                self._timed("heads_shared_robust", "shared heads retrained on perturbations", self.heads, f"{SHARED}-{ROBUST}", robust, SHARED,
                            robust=True, init_from=CLEAN)
        if "late_join" in protocols:
            late = self._timed("detector_late", f"the detector without the late joiners ({', '.join(self.config.roles.late)})",
                               self.detector, LATE, self.bench.detector_view(late_join=True), self.reference)
            self._timed("heads_late", "strict heads of founding and late nodes on it", self.heads, LATE, late, STRICT)
        if "spectral_template" in protocols:
            self._timed("spectral_template", f"{nodes} spectral templates (each node's own images and reals, no backbone)",
                        self.spectral_templates, clean)
        for model in self.config.baselines:
            for robust_trained in (False, True) if "robust" in protocols else (False,):
                label = f"{model} ({'robust' if robust_trained else 'clean'}-trained, centralized: sees every source)"
                self._timed(f"{model}{'_robust' if robust_trained else ''}", label, self.baseline, model, robust_trained)
        return self.models
