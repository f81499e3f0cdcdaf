"""The robustness oracle: for each test perturbation, the same models trained and tested on perturbed data.

"Within 2 points of clean" is no target where little fingerprint survives a perturbation (JPEG at
64 px); the ceiling is what the same model class reaches when everything it holds is perturbed.
For each `test_perturbations` entry the dataset gets a perturbed copy (`attribnet data perturb`:
same layout, names and manifest, so the same split), and the founding setting runs on it exactly
as on the clean data: the detector and its reference set, one strict head per node (own perturbed
images, the copy's reference set, self-made negatives) and the centralized baselines. They are
tested on the copy's test split, the perturbed test images. Deterministic perturbations (`jpeg`,
`blur`) give exactly the images the clean- and robust-trained models are tested on; random ones
(`noise`, `crop`, `multi`) the same distribution with other draws.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

from attribnet.bench.accuracy import evaluate as ev
from attribnet.bench.accuracy.bench_data import BenchData, prepare, reference_set
from attribnet.bench.accuracy.config import AccuracyConfig
from attribnet.bench.accuracy.seed_metrics import test_set_metrics
from attribnet.bench.accuracy.train import CLEAN, SeedTrainer
from attribnet.lab.datasets.perturbed_copy import PERTURBATION_FILE, perturb_dataset
from shared_backbone.model.rule import RuleSettings

ORACLE = "oracle"


def perturbed_copy(bench: BenchData, workdir: Path, kind: str, value: float) -> Path:
    """WORKDIR/oracle-data/KIND-VALUE: the dataset perturbed once at the model's size (shared by every seed)."""
    folder = workdir / "oracle-data" / f"{kind}-{value:g}"
    if not (folder / PERTURBATION_FILE).is_file():
        shutil.rmtree(folder, ignore_errors=True)  # a killed run's partial copy
        perturb_dataset(bench.data.root, folder, kind, value, image_size=bench.data.image_size)
    return folder


def oracle_bench(config: AccuracyConfig, bench: BenchData, workdir: Path, kind: str, value: float,
                 oracle_dir: Path) -> BenchData:
    """The benchmark's data on the perturbed copy: the same roles, the founding setting only, no test
    perturbations; its views under ORACLE_DIR."""
    copy = perturbed_copy(bench, workdir, kind, value)
    oracle_config = dataclasses.replace(config, protocols=[], test_perturbations={})
    return prepare(oracle_config, dataclasses.replace(bench.data, root=str(copy)), oracle_dir)


def oracle_metrics(config: AccuracyConfig, bench: BenchData, keys: tuple[Path, Path], workdir: Path, seed: int,
                   kind: str, value: float, out: Path, rule: RuleSettings, step: Callable[[str], None]) -> dict[str, Any]:
    """{method: accuracy} of the founding setting trained and tested on data perturbed by `kind` at `value`."""
    oracle_dir = workdir / f"{ORACLE}-{kind}"  # the copy's views and reference set
    copy = oracle_bench(config, bench, workdir, kind, value, oracle_dir)
    reference = reference_set(copy, oracle_dir)
    step(f"seed {seed}: oracle for {kind} {value:g}: the founding setting trained on perturbed data")
    models = SeedTrainer(copy.config, copy, keys, reference, seed, out, step).run()
    known = ev.TestImages(copy.test_samples([*copy.reals, *copy.roles.nodes]), copy.data.image_size, {})
    return test_set_metrics(models, copy, known, CLEAN, rule)[ev.CLEAN]
