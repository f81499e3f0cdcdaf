"""`attribnet bench accuracy`: every protocol of the accuracy benchmark, over seeds, into one report."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from attribnet.bench.accuracy import report as rep
from attribnet.bench.accuracy.config import AccuracyConfig, resolved_roles
from attribnet.bench.accuracy.datasets import dataset
from attribnet.bench.accuracy.bench_data import BenchData, prepare, reference_set
from attribnet.bench.accuracy.seed_run import SeedRun
from shared_backbone.config import to_dict
from shared_backbone.data.perturbations import check_config as check_perturb

log = logging.getLogger(__name__)

RESULT_FILE = "accuracy.json"
SECTION = "## Accuracy"
DATASET_NAMES = {"zoo": "fingerprint zoo", "zoo_independent": "independently written zoo", "upscalers": "GAN upscalers on real photos"}


def _keys(workdir: Path) -> tuple[Path, Path]:
    from shared_backbone.model.signing import ensure_keypair

    return ensure_keypair(workdir / "keys")


def _describe(bench: BenchData, config: AccuracyConfig, reference: Path) -> dict[str, Any]:
    counts = bench.index.counts()
    test_counts: dict[str, int] = {}
    for sample in bench.test:
        test_counts[sample.source] = test_counts.get(sample.source, 0) + 1
    described = json.loads((reference / "reference.json").read_text())["sources"]
    return {
        "name": DATASET_NAMES.get(config.dataset) or Path(bench.data.root).name,
        "root": bench.data.root, "image_size": bench.data.image_size, "input": bench.data.mode,
        "per_source": min(counts.values()) if len(set(counts.values())) == 1 else counts, "test_counts": test_counts,
        "roles": to_dict(config.roles), "real_sources": bench.reals,
        "reference": ", ".join(f"{s} ({v['images']} images, {v['consent']})" for s, v in described.items()),
    }


def run_accuracy(config: AccuracyConfig, *, profile: str, command: str, step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains and evaluates every seed and setting, writes OUT/accuracy.json, returns the report."""
    step = step or (lambda label: log.info("bench accuracy: %s", label))
    check_perturb(config.robust)
    began = time.monotonic()
    config = dataclasses.replace(config, roles=resolved_roles(config.dataset, config.roles))
    out = Path(config.out)
    workdir = Path(config.workdir or out / "work")
    workdir.mkdir(parents=True, exist_ok=True)
    bench = prepare(config, dataset(config, workdir, step), workdir)
    reference, keys = reference_set(bench, workdir), _keys(workdir)
    seeds = SeedRun(config, bench, keys, workdir, step)
    per_seed = []
    for number, seed in enumerate(config.seeds, 1):
        step(f"seed {seed} ({number} of {len(config.seeds)})")
        per_seed.append(seeds.run(seed, reference))
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command, "profile": profile, "seeds": list(config.seeds),
        "machine": f"{platform.machine()}, {platform.system()}",
        "dataset": _describe(bench, config, reference),
        "settings": {"negatives": config.negatives.count, "robust": "+".join(config.robust.kinds), "alpha": config.alpha,
                     "test_perturbations": config.test_perturbations, "protocols": list(config.protocols),
                     "config": to_dict(config)},
        "wall_seconds": round(time.monotonic() - began, 1),
        "per_seed": per_seed,
    }
    report["summary"] = rep.summary(per_seed)
    report.update({k: report["summary"][k] for k in rep.TOP_KEYS if k in report["summary"]})
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT_FILE).write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return report


def _split(text: str, marker: str) -> list[str]:
    """`text` cut before every line that starts with `marker` (the first piece is what precedes them)."""
    pieces, current = [], []
    for line in text.splitlines(keepends=True):
        if line.startswith(marker) and current:
            pieces.append("".join(current))
            current = []
        current.append(line)
    pieces.append("".join(current))
    return pieces


def update_benchmarks_md(path: Path, report: dict[str, Any]) -> None:
    """Writes this dataset's block under `## Accuracy` in BENCHMARKS.md, replacing its previous one."""
    table = rep.markdown(report).strip() + "\n\n"
    title = table.split(":", 1)[0]  # "### <dataset name>"
    sections = _split(path.read_text() if path.is_file() else "# Benchmarks\n\n", "## ")
    index = next((i for i, sec in enumerate(sections) if sec.startswith(SECTION)), None)
    if index is None:
        sections.insert(1, f"{SECTION}\n\n")
        index = 1
    blocks = _split(sections[index], "### ")
    kept = [b for b in blocks[1:] if not b.startswith(title + ":")]
    sections[index] = blocks[0] + "".join(b if b.endswith("\n\n") else b + "\n" for b in kept) + table
    path.write_text("".join(sections))
