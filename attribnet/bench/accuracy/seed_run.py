"""One seed of the benchmark: every setting trained, evaluated and stored as it finishes.

A setting's models are trained in WORKDIR/seed-S/SETTING-<fingerprint>/ and its results kept in
WORKDIR/results/seed-S/SETTING-<fingerprint>.json, the fingerprint being a digest of the
configuration they depend on and of `RESULTS_VERSION` (so results of older evaluation code are never
reused). A later run of the same configuration (a killed one resumed, or one that adds seeds or
settings) reads the results instead of training again; runs of other configurations in the same
workdir (another input mode, even side by side) keep theirs apart.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

from attribnet.bench.accuracy import evaluate as ev
from attribnet.bench.accuracy import out_of_scope as oos
from attribnet.bench.accuracy.config import AccuracyConfig
from attribnet.bench.accuracy.generalisation import leave_one_family_out, setting_metrics
from attribnet.bench.accuracy.oracle import ORACLE, oracle_metrics
from attribnet.bench.accuracy.bench_data import FOUNDING, PRIVATE, PRIVATE_FINETUNED, BenchData, Setting, reference_set
from attribnet.bench.accuracy.seed_metrics import seed_metrics
from attribnet.bench.accuracy.train import CLEAN, STRICT, SeedTrainer
from shared_backbone.config import to_dict
from shared_backbone.model.rule import RuleSettings


# Raised whenever a change alters what a setting's stored results hold or mean, so that no run reads results
# that older code computed. 2: the open set decides with the heads' typicality gate (2026-12-07). 3: the open
# set's closed-set baseline ranks as the rule does; the drop is split by the rule's exits (2026-12-07).
RESULTS_VERSION = 3


def _fingerprint(config: AccuracyConfig, extra: Any = None, *, finetuned: bool = False) -> str:
    """What a setting's results depend on: the config without seeds, output places and protocol list
    (and without the federation's settings unless the setting fine-tunes), and `RESULTS_VERSION`."""
    unused = ("seeds", "out", "workdir", "protocols", *(() if finetuned else ("federation",)))
    values = {k: v for k, v in to_dict(config).items() if k not in unused}
    return hashlib.sha256(json.dumps([values, extra, RESULTS_VERSION], sort_keys=True, default=str).encode()).hexdigest()


def result_path(workdir: Path, seed: int, name: str, fingerprint: str) -> Path:
    """Where one seed's setting keeps its results: one file per configuration, so none evicts another."""
    return workdir / "results" / f"seed-{seed}" / f"{name}-{fingerprint[:16]}.json"


def models_path(workdir: Path, seed: int, name: str, fingerprint: str) -> Path:
    """Where one seed's setting trains its models: one folder per configuration, so runs of other
    configurations in the same workdir (another input mode, side by side) never delete each other's."""
    return workdir / f"seed-{seed}" / f"{name}-{fingerprint[:16]}"


def _stored(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A finished setting's results of an earlier (perhaps killed) run of the same configuration."""
    try:
        saved = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return saved["metrics"] if saved.get("fingerprint") == fingerprint else None


def _store(path: Path, fingerprint: str, metrics: dict[str, Any]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"fingerprint": fingerprint, "metrics": metrics}, sort_keys=True, default=str))
    temporary.replace(path)
    return json.loads(path.read_text())["metrics"]  # what a resumed run would read: one form either way


class SeedRun:
    """One seed's settings, each trained, evaluated and stored as it finishes (a killed run resumes)."""

    def __init__(self, config: AccuracyConfig, bench: BenchData, keys: tuple[Path, Path], workdir: Path,
                 step: Callable[[str], None]) -> None:
        self.config, self.bench, self.keys, self.workdir, self.step = config, bench, keys, workdir, step
        self.rule = RuleSettings(alpha=config.alpha)
        size = bench.data.image_size
        nodes, reals = config.roles.nodes, bench.reals
        self.known = ev.TestImages(bench.test_samples([*reals, *nodes]), size, config.test_perturbations)
        self.everything = ev.TestImages(bench.test_samples([*reals, *nodes, *config.roles.held_out]), size, {})
        self.corpus = None
        if "out_of_scope" in config.protocols:
            step(f"out-of-scope corpus: {config.out_of_scope_per_kind} images per kind")
            self.corpus = oos.corpus(workdir, size, config.out_of_scope_per_kind,
                                     bench.view("out-of-scope-sources", [*reals, *config.roles.held_out]))

    def _setting(self, seed: int, name: str, extra: Any, train_and_evaluate: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        fingerprint = _fingerprint(self.config, extra, finetuned=name == PRIVATE_FINETUNED)
        path = result_path(self.workdir, seed, name, fingerprint)
        stored = _stored(path, fingerprint)
        if stored is not None:
            self.step(f"seed {seed}: {name}: results of an earlier run of this configuration ({path})")
            return stored
        out = models_path(self.workdir, seed, name, fingerprint)
        shutil.rmtree(out, ignore_errors=True)  # a killed run's half-trained models: this setting trains afresh
        return _store(path, fingerprint, train_and_evaluate(out))

    def _scope(self, bundle, heads) -> dict[str, Any]:
        truth = ev.truths(self.bench.index, self.known.samples)
        return {"out_of_scope": oos.out_of_scope_metrics(bundle, heads, self.corpus, self.rule),
                "out_of_scope_known": oos.known_metrics(bundle, heads, self.known.images(ev.CLEAN), truth,
                                                        self.config.roles.nodes, self.rule)}

    def founding(self, seed: int, reference: Path) -> dict[str, Any]:
        setting = self.bench.founding_setting()

        def run(out: Path) -> dict[str, Any]:
            models = SeedTrainer(self.config, self.bench, self.keys, reference, seed, out, self.step).run()
            self.step(f"seed {seed}: evaluate on {len(self.known.samples)} test images x {len(self.known.names)} test sets")
            metrics = {**setting.describe(self.bench.reals, self.config.pretext),
                       **seed_metrics(models, self.bench, self.known, self.everything, self.rule)}
            if self.corpus is not None:
                metrics.update(self._scope(models.bundles[CLEAN], models.heads[f"{STRICT}-{CLEAN}"]))
            return metrics

        founding_protocols = sorted(set(self.config.protocols)
                                    & {"shared", "robust", "late_join", "out_of_scope", "spectral_template"})
        return self._setting(seed, setting.name, founding_protocols, run)

    def other(self, seed: int, setting: Setting) -> dict[str, Any]:
        reference = reference_set(self.bench, self.workdir, setting.reference_fakes)

        def run(out: Path) -> dict[str, Any]:
            models = SeedTrainer(self.config, self.bench, self.keys, reference, seed, out, self.step).setting(
                setting, reference, templates=templated)
            self.step(f"seed {seed}: {setting.name}: evaluate")
            metrics = setting_metrics(models, setting, self.bench, self.everything, self.rule)
            if models.finetune:
                metrics["finetune"] = models.finetune
            if scoped:
                metrics.update(self._scope(models.bundles[setting.name], models.heads[STRICT]))
            return metrics

        private = setting.name in (PRIVATE, PRIVATE_FINETUNED)
        scoped = self.corpus is not None and private
        templated = "spectral_template" in self.config.protocols and private
        return self._setting(seed, setting.name, [setting.name, scoped, *(["spectral_template"] if templated else [])], run)

    def oracle(self, seed: int, kind: str, value: float) -> dict[str, Any]:
        """The founding setting trained and tested on data perturbed by `kind` at `value` (`oracle.py`)."""
        def run(out: Path) -> dict[str, Any]:
            return oracle_metrics(self.config, self.bench, self.keys, self.workdir, seed, kind, value, out, self.rule, self.step)

        return self._setting(seed, f"{ORACLE}-{kind}", [ORACLE, kind, value], run)

    def run(self, seed: int, reference: Path) -> dict[str, Any]:
        """{seed, the founding setting's numbers, private, leave_one_family_out, oracle, settings (who trained on what)}."""
        founding = self.founding(seed, reference)
        others = {setting.name: self.other(seed, setting) for setting in self.bench.settings()}
        result = {"seed": seed, **founding}
        describe = ("detector_sources", "trunk_sources", "reference_sources", "negatives_exclude_families")
        result["settings"] = {FOUNDING: {k: founding[k] for k in describe}, **{n: {k: m[k] for k in describe} for n, m in others.items()}}
        for name in (PRIVATE, PRIVATE_FINETUNED):
            if name in others:
                result[name] = others[name]
        lofo = leave_one_family_out(others, founding, self.bench)
        if lofo:
            result["leave_one_family_out"] = lofo
        if ORACLE in self.config.protocols:
            result[ORACLE] = {kind: self.oracle(seed, kind, value) for kind, value in self.config.test_perturbations.items()}
        return result
