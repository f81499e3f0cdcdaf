"""The paper's workflow end to end on the fingerprint zoo, offline, one step per function.

zoo -> coordinator key -> primary module -> signed bundle -> one head per generator (each trained
the way a node trains it) -> evaluation of bundle + heads (detection, one-vs-rest, multiclass argmax,
clean and perturbed) next to centralized baselines (gdaconv multiclass, DCT regression), and how
often images no generator made (noise, smooth noise, gradients, checkerboards) are pinned on a
source, with and without the typicality gate.
The steps are plain functions so the network demo can reuse them and swap `train_all_heads` for a
Flower run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attribnet.config import DemoConfig
from attribnet.demo.steps import StepTimer
from coordinator.config import CoordinatorConfig
from coordinator.publish import publish
from coordinator.reference import DESCRIPTION, write_reference_set
from coordinator.train_primary import PrimaryTrainingResult, train_primary
from node.config import NodeConfig
from node.train_head import HeadTrainingResult, train_head
from shared_backbone.config import DataConfig, PerturbConfig, TrainConfig
from shared_backbone.data.datasets import scan_dataset
from attribnet.lab.datasets.zoo import ZooConfig
from shared_backbone.training import reports
from attribnet.lab.baselines.centralized import BaselineConfig, BaselineResult, run_baseline
from shared_backbone.training.evaluation import evaluate_network, parse_perturbation
from shared_backbone.model.bundle import Bundle, load_bundle
from shared_backbone.model.signing import ensure_keypair, load_public_key

log = logging.getLogger(__name__)

Step = Callable[[str], None]


def make_zoo(settings: ZooConfig, out: Path) -> DataConfig:
    """Writes the zoo (or reuses an identical one) and returns its DataConfig."""
    from attribnet.lab.datasets.zoo import settings_from_config, write_zoo, zoo_data_config

    write_zoo(out, settings_from_config(settings), workers=settings.workers)
    return zoo_data_config(out)


def make_reference(data: DataConfig, out: Path) -> Path:
    """The coordinator's reference set: the dataset's real images, its test split left out (reused when there)."""
    if not (out / DESCRIPTION).is_file():
        write_reference_set(data, out)
    return out


def node_folders(data: DataConfig, sources: list[str], out: Path) -> dict[str, Path]:
    """One data folder per node holding only its own generator's images (a link to the dataset's folder)."""
    folders = {}
    for source in sources:
        folder = out / source
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / source).exists():
            (folder / source).symlink_to(Path(data.root).resolve() / source, target_is_directory=True)
        folders[source] = folder
    return folders


def train_and_publish(
    data: DataConfig, train: TrainConfig, perturb: PerturbConfig, private_key: Path, public_key: Path, out: Path,
    *, reference: Path | None = None, version: str = "1", progress: bool = False,
) -> tuple[PrimaryTrainingResult, Bundle]:
    """Coordinator side: train the primary module into out/primary, publish out/bundle (announcing the
    reference set), verify it."""
    result = train_primary(
        CoordinatorConfig(data=data, train=train, perturb=perturb, run_dir=str(out / "primary")), progress=progress
    )
    publish(result.run_dir, out / "bundle", private_key, version=version, reference=reference)
    return result, load_bundle(out / "bundle", load_public_key(public_key))


def generator_sources(data: DataConfig) -> list[str]:
    """Every fake source folder of the dataset: one node (and one head) each."""
    index = scan_dataset(data)
    return [s for s in index.sources if not index.is_real(s)]


def train_all_heads(
    bundle: Bundle, data: DataConfig, sources: list[str], public_key: Path, train: TrainConfig, state_root: Path,
    *, reference: Path, access: str = "strict", calibration: str = "temperature", threshold: float = 0.5,
    perturb: PerturbConfig | None = None, progress: bool = False,
) -> dict[str, HeadTrainingResult]:
    """Node side, once per source: the exact `node.train_head` a node (or Flower client) runs.

    Strict (the network's rule): each node's folder holds only its own generator's images; it
    also has the coordinator's reference set and makes its own negatives. `access="shared"` is the
    paper's comparison setting: the node's folder is the whole dataset, every other source a negative.
    """
    folders = node_folders(data, sources, state_root / "data")
    results = {}
    for source in sources:
        root = data.root if access == "shared" else str(folders[source])
        config = NodeConfig(
            source=source, node_id=source, access=access, data=dataclasses.replace(data, root=root), train=train,
            perturb=perturb or PerturbConfig(), backbone=str(bundle.path), public_key=str(public_key),
            reference=str(reference), calibration=calibration, threshold=threshold, state_dir=str(state_root / source),
        )
        results[source] = train_head(config, progress=progress)
    return results


def run_baselines(
    data: DataConfig, names: list[str], train: TrainConfig, perturbations: list[str], out: Path, *, progress: bool = False,
) -> dict[str, BaselineResult]:
    """Centralized multiclass baselines on the same splits (they see every source's data)."""
    return {
        name: run_baseline(
            BaselineConfig(model=name, task="multiclass", data=data, train=train, out=str(out / name)),
            perturbations=tuple(perturbations), progress=progress,
        )
        for name in names
    }


def out_of_scope_images(count: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Images no generator made, a quarter each: uniform noise, smooth noise, colour gradients, checkerboards."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size)
    images = []
    for i in range(count):
        kind = i % 4
        if kind == 0:
            image = rng.random((size, size, 3))
        elif kind == 1:
            coarse = rng.random((size // 8, size // 8, 3))
            image = np.kron(coarse, np.ones((8, 8, 1)))
        elif kind == 2:
            angle = rng.uniform(0, 2 * np.pi)
            field = np.add.outer(ramp * np.cos(angle), ramp * np.sin(angle))
            image = (field[..., None] - field.min()) / max(np.ptp(field), 1e-9) * rng.random(3) + rng.random(3) * 0.2
        else:
            cell = int(rng.integers(2, 9))
            board = (np.add.outer(np.arange(size) // cell, np.arange(size) // cell) % 2).astype(np.float64)
            image = board[..., None] * rng.random(3) + (1 - board[..., None]) * rng.random(3)
        images.append((np.clip(image, 0, 1) * 255).astype(np.uint8))
    return images


def out_of_scope_check(bundle: Bundle, head_dirs: dict[str, Path], count: int = 64) -> dict[str, Any]:
    """Share of out-of-scope images attributed to a source, by the full rule and by a rule without the typicality gate."""
    from shared_backbone.model.attributor import OfflineAttributor
    from shared_backbone.model.heads import load_head
    from shared_backbone.model.preprocessing import to_model_inputs
    from shared_backbone.model.rule import RuleSettings

    heads = [load_head(head_dirs[s], bundle) for s in sorted(head_dirs)]
    inputs = to_model_inputs(out_of_scope_images(count, bundle.input_spec.image_size), bundle.input_spec)
    result: dict[str, Any] = {"images": count}
    for label, typicality_alpha in (("pinned_on_a_source", RuleSettings().typicality_alpha), ("pinned_without_typicality", 0.0)):
        answers = OfflineAttributor(bundle, heads, RuleSettings(typicality_alpha=typicality_alpha)).attribute(inputs)
        result[label] = float(np.mean([a.attribution in head_dirs for a in answers]))
        result[f"{label}_detector_ignored"] = float(np.mean([
            a.attribution in head_dirs for a in
            OfflineAttributor(bundle, heads, RuleSettings(fake_threshold=0.0, typicality_alpha=typicality_alpha)).attribute(inputs)
        ]))
    return result


def summarise(
    network: dict[str, Any], heads: dict[str, HeadTrainingResult], baselines: dict[str, BaselineResult],
    primary: PrimaryTrainingResult,
) -> dict[str, Any]:
    """The numbers a reader wants, per perturbation: one flat, comparable table."""
    table: dict[str, Any] = {}
    for name, result in network.items():
        m = result["metrics"]
        row = {
            "detection_accuracy": m["detection"]["accuracy"],
            "detection_auc": m["detection"]["roc_auc"],
            "heads_multiclass_accuracy": m["multiclass"]["accuracy"],
            "heads_open_set_accuracy": m["open_set"]["accuracy"],
            "heads_fake_argmax_accuracy": m.get("fake_argmax", {}).get("accuracy"),
            "heads_fake_argmax_raw_accuracy": m.get("fake_argmax_raw", {}).get("accuracy"),
            "heads_typicality_coverage": m.get("typicality_coverage", {}).get("rate"),
            "ovr_accuracy": {s: v["accuracy"] for s, v in m.get("ovr", {}).items()},
            "ovr_auc": {s: v["roc_auc"] for s, v in m.get("ovr", {}).items()},
        }
        for model, baseline in baselines.items():
            bm = baseline.metrics.get(name, {})
            row[f"{model}_multiclass_accuracy"] = bm.get("accuracy")
            row[f"{model}_fake_argmax_accuracy"] = bm.get("fake_argmax", {}).get("accuracy")
        table[name] = row
    return {
        "primary": {k: primary.metrics[k] for k in ("best_epoch", "epochs_run", "train_seconds")},
        "heads_training": {
            s: {"best_epoch": r.metrics["best_epoch"], "test": r.metrics.get("test", {}).get("calibrated", {})}
            for s, r in heads.items()
        },
        "results": table,
    }


def run_seed(config: DemoConfig, data: DataConfig, private_key: Path, public_key: Path, out: Path, seed: int,
             step: Step, *, reference: Path, progress: bool = False) -> dict[str, Any]:
    """One full pass of the workflow with every trainer seeded by `seed`."""
    timer = StepTimer(step)

    def timed(label: str, fn, *args, **kwargs):
        return timer.run(label, label, fn, *args, **kwargs)

    primary, bundle = timed(
        f"train primary module ({config.mode}) + publish signed bundle", train_and_publish,
        dataclasses.replace(data, mode=config.mode), dataclasses.replace(config.primary, seed=seed), config.perturb, private_key, public_key, out,
        reference=reference, version=f"demo-seed{seed}", progress=progress,
    )
    sources = generator_sources(data)
    heads = timed(
        f"train {len(sources)} heads (one per generator, {config.access} access)", train_all_heads,
        bundle, data, sources, public_key, dataclasses.replace(config.head, seed=seed), out / "nodes",
        reference=reference, access=config.access, calibration=config.calibration, threshold=config.threshold,
        perturb=config.perturb, progress=progress,
    )
    network = timed(
        "evaluate bundle + heads", evaluate_network,
        bundle, {s: r.head_dir for s, r in heads.items()}, data, config.perturbations, out / "evaluation",
    )
    baselines = timed(
        f"baselines ({', '.join(config.baselines)})", run_baselines,
        dataclasses.replace(data, mode=config.baseline_mode), config.baselines, dataclasses.replace(config.baseline, seed=seed),
        config.perturbations, out / "baselines",
        progress=progress,
    )
    summary = summarise(network, heads, baselines, primary)
    summary["out_of_scope"] = timed("out-of-scope images (noise, gradients, checkerboards)", out_of_scope_check,
                                    bundle, {s: r.head_dir for s, r in heads.items()})
    summary["seed"] = seed
    summary["bundle"] = {"path": str(bundle.path), "version": bundle.version, "digest": bundle.digest,
                         "trained_on": bundle.training_sources}
    summary["timings_seconds"] = timer.seconds
    summary["files"] = {name: result["files"] for name, result in network.items()}
    return summary


def check_config(config: DemoConfig) -> None:
    """Refuses a bad setting before minutes of work, naming the key."""
    from attribnet.lab.baselines.centralized import MODELS
    from shared_backbone.model.calibration import METHODS
    from shared_backbone.model.preprocessing import MODES

    for name in config.perturbations:
        parse_perturbation(name)
    unknown = [b for b in config.baselines if b not in MODELS]
    if unknown:
        raise ValueError(f"demo config: baselines: unknown {unknown[0]!r} (expected any of {', '.join(MODELS)})")
    for key in ("mode", "baseline_mode"):
        if getattr(config, key) not in MODES:
            raise ValueError(f"demo config: {key}: expected one of {MODES}, got {getattr(config, key)!r}")
    if config.calibration not in METHODS:
        raise ValueError(f"demo config: calibration: expected one of {METHODS}, got {config.calibration!r}")
    if not config.seeds:
        raise ValueError("demo config: seeds: give at least one seed")


def run_demo(config: DemoConfig, out: str | Path, *, step: Step | None = None, progress: bool = False) -> dict[str, Any]:
    """Everything, into `out`: zoo/, keys/, seed-N/{primary,bundle,nodes,evaluation,baselines}, report.json/.md."""
    check_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    step = step or (lambda label: log.info("demo: %s", label))
    began = time.monotonic()
    if config.data_root:
        step(f"use dataset {config.data_root}")
        from attribnet.lab.datasets.zoo import zoo_data_config

        data = zoo_data_config(config.data_root)
    else:
        step(
            f"write the fingerprint zoo ({config.zoo.preset} preset, {config.zoo.per_source} images x "
            f"{len(config.zoo.sources) + 1} sources, {config.zoo.image_size} px)"
        )
        data = make_zoo(config.zoo, out / "zoo")
    step("coordinator key pair and reference set (real images, test split left out)")
    private_key, public_key = ensure_keypair(out / "keys")
    reference = make_reference(data, out / "reference")
    runs = [
        run_seed(config, data, private_key, public_key, out / f"seed-{seed}", seed, step, reference=reference, progress=progress)
        for seed in config.seeds
    ]
    manifest_path = Path(data.root) / "manifest.json"
    zoo = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    report = {
        "dataset": {
            "root": data.root, "image_size": data.image_size, "counts": scan_dataset(data).counts(),
            "zoo": {k: zoo[k] for k in ("seed", "strength", "match_bandwidth") if k in zoo},
        },
        "inputs": {"primary_and_heads": config.mode, "cnn_baselines": config.baseline_mode},
        "seeds": runs,
        "mean_over_seeds": mean_over_seeds(runs),
        "seconds": round(time.monotonic() - began, 1),
    }
    reports.write_json(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report))
    return report


def mean_over_seeds(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and std of every scalar result across seeds, per perturbation."""
    summary: dict[str, dict[str, Any]] = {}
    for name in runs[0]["results"]:
        rows = [run["results"][name] for run in runs]
        summary[name] = {}
        for key, value in rows[0].items():
            if isinstance(value, (int, float)) and all(isinstance(r.get(key), (int, float)) for r in rows):
                values = np.array([r[key] for r in rows], dtype=np.float64)
                summary[name][key] = {"mean": float(values.mean()), "std": float(values.std()), "n": len(values)}
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.3f} ± {value['std']:.3f}" if value["n"] > 1 else f"{value['mean']:.3f}"
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


def render_markdown(report: dict[str, Any]) -> str:
    """A readable report: one table per seed, the mean table, per-source one-vs-rest, file paths."""
    lines = ["# attribnet offline demo", ""]
    ds = report["dataset"]
    lines += [f"Dataset `{ds['root']}` at {ds['image_size']} px ({', '.join(f'{k} {v}' for k, v in ds['zoo'].items())}); "
              "images per source: " + ", ".join(f"{k} {v}" for k, v in ds["counts"].items()), ""]
    lines += [f"Inputs: primary module and heads `{report['inputs']['primary_and_heads']}`, "
              f"CNN baselines `{report['inputs']['cnn_baselines']}`, dctlinear log-DCT spectra.", ""]
    mean = report["mean_over_seeds"]
    perturbations = list(mean)
    keys = [k for k in mean[perturbations[0]]]
    lines += [f"## Mean over seeds {[r['seed'] for r in report['seeds']]}", "",
              "| metric | " + " | ".join(perturbations) + " |", "|---|" + "---|" * len(perturbations)]
    for key in keys:
        lines.append(f"| {key} | " + " | ".join(_fmt(mean[p].get(key)) for p in perturbations) + " |")
    for run in report["seeds"]:
        lines += ["", f"## Seed {run['seed']} (bundle {run['bundle']['version']}, digest {run['bundle']['digest'][:12]})", ""]
        seen = run["bundle"].get("trained_on", {})
        if seen:
            lines += [f"The coordinator's detector trained on {', '.join(seen['detector'])}; its trunk on the classes "
                      f"{', '.join(seen['trunk']) or '(none: no source-aware pretraining)'}. Every node here is a founding one.", ""]
        lines += ["One-vs-rest accuracy (AUC) of each calibrated head on all test images:", "",
                  "| source | " + " | ".join(perturbations) + " |", "|---|" + "---|" * len(perturbations)]
        for source in run["results"][perturbations[0]]["ovr_accuracy"]:
            cells = [f"{run['results'][p]['ovr_accuracy'][source]:.3f} ({_fmt(run['results'][p]['ovr_auc'][source])})" for p in perturbations]
            lines.append(f"| {source} | " + " | ".join(cells) + " |")
        oos = run.get("out_of_scope")
        if oos:
            lines += ["", f"Out-of-scope images ({oos['images']}: noise, smooth noise, gradients, checkerboards) attributed "
                      f"to a source: {oos['pinned_on_a_source']:.3f} with the typicality gate, "
                      f"{oos['pinned_without_typicality']:.3f} without (detector ignored: "
                      f"{oos['pinned_on_a_source_detector_ignored']:.3f} vs {oos['pinned_without_typicality_detector_ignored']:.3f})."]
        lines += ["", "Timings (s): " + ", ".join(f"{k}: {v}" for k, v in run["timings_seconds"].items()), ""]
        lines += ["Reports:"]
        for p, files in run["files"].items():
            for kind, paths in files.items():
                pngs = [v for k, v in paths.items() if v.endswith(".png")]
                lines.append(f"- {p} {kind}: " + ", ".join(f"`{v}`" for v in pngs))
    lines += ["", f"Total time {report['seconds']} s.", ""]
    lines += ["Legend: `heads_multiclass_accuracy` = the paper's rule over real + every source (primary decides real/fake, "
              "argmax of calibrated heads picks the source); `heads_fake_argmax_accuracy` = argmax of calibrated heads on fake "
              "images only (`_raw` without calibration); `*_fake_argmax_accuracy` of a baseline = its argmax over the fake "
              "classes on the same fake images; `open_set` adds `unknown` when no head clears its threshold or the winner finds "
              "the image atypical; `heads_typicality_coverage` = share of fake images their own head finds typical.", ""]
    return "\n".join(lines)
