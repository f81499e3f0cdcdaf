"""`attribnet data zoo | upscalers | out-of-scope | normstats | perturb | info`: datasets, the
fingerprint zoo (and its independent second implementation), the real-generator benchmark, the
out-of-scope corpus, DCT normstats and perturbed test sets.

`--config FILE.yaml` is read as a `DataConfig` (its top level, or the `data:` section of a
coordinator/node/baseline file; `zoo` reads `ZooConfig` keys or a `zoo:` section, `upscalers`
`UpscalersConfig` keys or an `upscalers:` section); flags override it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("attribnet.data")

IMPLEMENTATIONS = ("zoo", "independent")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="datasets, the fingerprint zoo, normstats, perturbed test sets")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    zoo = actions.add_parser("zoo", help="write the fingerprint zoo (a benchmark that needs no download)")
    _add_builder_flags(
        zoo, "zoo", "ZooConfig", out="output folder, empty or absent", per_source=2000,
        seed="zoo seed: scenes and generator weights", sources="comma-separated generator sources <arch>_<instance>",
    )
    zoo.add_argument("--preset", choices=("benchmark", "easy"), help="zoo.preset (easy = for quick tests)")
    zoo.add_argument("--strength", type=float, help="fingerprint strength, 0 = the preset's (zoo.strength)")
    zoo.add_argument(
        "--implementation", choices=IMPLEMENTATIONS,
        help="zoo (default) or independent: a second zoo written apart from the first, for evaluation (zoo.implementation)",
    )
    zoo.set_defaults(handler=run_zoo)

    oos = actions.add_parser("out-of-scope", help="write an out-of-scope corpus: images no generator made, a folder per kind")
    oos.add_argument("--out", required=True, help="output folder, empty or absent")
    oos.add_argument("--image-size", type=int, default=64, help="square image size in pixels (default 64; tiny images 8-16)")
    oos.add_argument("--per-kind", type=int, default=100, help="images per kind (default 100)")
    oos.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    oos.add_argument("--from", dest="source_dataset", metavar="DATASET_DIR",
                     help="dataset (e.g. a zoo) whose real and fake images the content-matched kinds resample and JPEG")
    oos.add_argument("--json", action="store_true", help="print the manifest's kinds as JSON")
    oos.set_defaults(handler=run_out_of_scope)

    ups = actions.add_parser("upscalers", help="write the real-generator benchmark: GAN upscalers, real photos")
    _add_builder_flags(
        ups, "upscalers", "UpscalersConfig", out="output folder: empty, absent, or an unfinished build of the same settings",
        per_source=1000, seed="seed: photo split, patch positions", sources="comma-separated upscaler sources, see --list",
    )
    ups.add_argument("--photos", help="comma-separated photos, default all (upscalers.photos)")
    ups.add_argument("--list", action="store_true", help="list the available sources and photos, then exit")
    ups.set_defaults(handler=run_upscalers)

    normstats = actions.add_parser("normstats", help="per-coefficient log-DCT mean/std (mean.npy, std_dev.npy)")
    _add_data_flags(normstats)
    normstats.add_argument("--out", required=True, help="folder for mean.npy and std_dev.npy")
    normstats.add_argument("--split", choices=("train", "val", "test", "all"), default="train", help="images to use (default train)")
    normstats.add_argument("--json", action="store_true", help="print a summary as JSON")
    normstats.set_defaults(handler=run_normstats)

    perturb = actions.add_parser("perturb", help="write a perturbed copy of a dataset (same folders and file names)")
    _add_data_flags(perturb)
    perturb.add_argument("--out", required=True, help="output folder, empty or absent")
    perturb.add_argument("--kind", required=True, choices=("blur", "crop", "jpeg", "noise"), help="perturbation")
    perturb.add_argument("--value", required=True, type=float, help="blur sigma, crop fraction, JPEG quality or noise sigma")
    perturb.add_argument("--seed", type=int, default=0, help="seed for crop positions and noise")
    perturb.add_argument("--json", action="store_true", help="print the record as JSON")
    perturb.set_defaults(handler=run_perturb)

    info = actions.add_parser("info", help="sources, counts, real/fake, classes, split sizes, unreadable files")
    _add_data_flags(info)
    info.add_argument("--no-check", action="store_true", help="do not decode every file")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(handler=run_info)


def _add_builder_flags(
    parser: argparse.ArgumentParser, section: str, schema: str, *, out: str, per_source: int, seed: str, sources: str
) -> None:
    """The flags every dataset builder shares, each naming its YAML key."""
    parser.add_argument("--config", help=f"YAML with {schema} keys (or a {section}: section)")
    parser.add_argument("--out", help=f"{out} ({section}.out)")
    parser.add_argument("--image-size", type=int, help=f"square image size in pixels ({section}.image_size, default 64)")
    parser.add_argument("--per-source", type=int, help=f"images per source ({section}.per_source, default {per_source})")
    parser.add_argument("--seed", type=int, help=f"{seed} ({section}.seed)")
    parser.add_argument("--sources", help=f"{sources} ({section}.sources)")
    parser.add_argument("--workers", type=int, help=f"processes ({section}.workers, default 2)")
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")


def _builder_config(args: argparse.Namespace, schema: type, section: str, **flags: Any):
    """A builder's config: --config (top level or `section:`) overridden by the shared and `flags` flags."""
    from shared_backbone.config import build, read_section

    values, where = read_section(args.config, section)
    shared = {
        "out": args.out,
        "image_size": args.image_size,
        "per_source": args.per_source,
        "seed": args.seed,
        "sources": _split_list(args.sources),
        "workers": args.workers,
    }
    return build(schema, {**values, **{k: v for k, v in {**shared, **flags}.items() if v is not None}}, where)


def _add_data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML with DataConfig keys (or a data: section)")
    parser.add_argument("--data", help="dataset folder, one sub-folder per source (data.root)")
    parser.add_argument("--image-size", type=int, help="square size images are cropped/resized to (data.image_size; a zoo's own size by default)")
    parser.add_argument("--real", help="comma-separated real source folders (data.real_sources)")
    parser.add_argument("--source-ids", help="seed-style source_ids.csv naming the fake sources (data.source_ids)")
    parser.add_argument("--arch-level", action="store_true", default=None, help="group sources by architecture (data.arch_level)")
    parser.add_argument("--split-seed", type=int, help="data.split_seed")


def _split_list(text: str | None) -> list[str] | None:
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def data_config(args: argparse.Namespace):
    """DataConfig from --config (top level or `data:` section) overridden by the flags."""
    from shared_backbone.config import ConfigError, DataConfig, build, read_section

    values, where = read_section(args.config, "data")
    flags = {
        "root": args.data,
        "image_size": args.image_size,
        "real_sources": _split_list(args.real),
        "source_ids": args.source_ids,
        "arch_level": args.arch_level,
        "split_seed": args.split_seed,
    }
    values = {**values, **{k: v for k, v in flags.items() if v is not None}}
    config = build(DataConfig, values, where)
    if not config.root:
        raise ConfigError("no dataset given: use --data DIR or data.root in --config")
    if "image_size" not in values:
        config.image_size = _zoo_image_size(Path(config.root)) or config.image_size
    return config


def _zoo_image_size(root: Path) -> int | None:
    """A zoo's own image size, the natural default for a zoo folder."""
    try:
        return int(json.loads((root / "manifest.json").read_text())["image_size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _progress(label: str):
    """A tqdm bar on an interactive stderr, periodic log lines otherwise."""
    from tqdm import tqdm

    if sys.stderr.isatty():
        bar = None

        def update(done: int, total: int) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=total, desc=label, unit="img", leave=False)
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()

        return update
    step = {"next": 0.0}

    def log_update(done: int, total: int) -> None:
        if done / total >= step["next"] or done == total:
            log.info("%s: %d/%d", label, done, total)
            step["next"] = done / total + 0.25

    return log_update


def run_zoo(args: argparse.Namespace) -> int:
    from attribnet.lab.datasets.zoo import REAL_SOURCE, ZooConfig, settings_from_config, write_zoo

    config = _builder_config(args, ZooConfig, "zoo", preset=args.preset, strength=args.strength, implementation=args.implementation)
    started = time.monotonic()
    if config.implementation == "independent":
        manifest = _write_independent_zoo(config)
    elif config.implementation == "zoo":
        settings = settings_from_config(config)
        manifest = write_zoo(config.out, settings, workers=max(1, config.workers), progress=_progress("zoo"))
    else:
        raise ValueError(f"zoo.implementation must be one of {IMPLEMENTATIONS}, got {config.implementation!r}")
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({**manifest, "out": config.out, "seconds": round(seconds, 1)}, indent=2))
    else:
        count = manifest["per_source"] * len(manifest["sources"])
        fakes = ", ".join(sorted(s for s in manifest["sources"] if s != REAL_SOURCE))
        print(f"wrote {count} images ({manifest['image_size']} px, {manifest['per_source']} per source) to {config.out} in {seconds:.1f}s")
        implementation = manifest.get("implementation", "zoo")
        print(f"real: {REAL_SOURCE}; generators: {fakes}" + ("; independent implementation" if implementation == "independent" else ""))
    return 0


def _write_independent_zoo(config) -> dict:
    """The second zoo from the same ZooConfig keys (one process: `workers` does not apply)."""
    from attribnet.lab.datasets.zoo import PRESETS
    from attribnet.lab.datasets.zoo_independent import write_independent_zoo

    if config.preset not in PRESETS:
        raise ValueError(f"zoo.preset must be one of {PRESETS}, got {config.preset!r}")
    if config.strength < 0:
        raise ValueError(f"zoo.strength must be >= 0, got {config.strength}")
    return write_independent_zoo(
        config.out, image_size=config.image_size, per_source=config.per_source, seed=config.seed,
        sources=config.sources, strength=config.strength or None, easy=config.preset == "easy", progress=_progress("zoo"),
    )


def run_out_of_scope(args: argparse.Namespace) -> int:
    from attribnet.lab.datasets.out_of_scope import write_out_of_scope

    started = time.monotonic()
    manifest = write_out_of_scope(
        args.out, image_size=args.image_size, per_kind=args.per_kind, seed=args.seed,
        source_dataset=args.source_dataset, progress=_progress("out-of-scope"),
    )
    seconds = time.monotonic() - started
    if args.json:
        summary = {k: manifest[k] for k in ("image_size", "per_kind", "seed", "source_dataset", "kinds", "omitted_kinds")}
        print(json.dumps({**summary, "out": args.out, "seconds": round(seconds, 1)}, indent=2))
        return 0
    count = sum(kind["count"] for kind in manifest["kinds"].values())
    print(f"wrote {count} out-of-scope images ({len(manifest['kinds'])} kinds, {args.per_kind} each) to {args.out} in {seconds:.1f}s")
    for kind, reason in manifest["omitted_kinds"].items():
        print(f"  omitted {kind}: {reason} (use --from DATASET_DIR)")
    return 0


def run_upscalers(args: argparse.Namespace) -> int:
    from attribnet.lab.datasets.upscalers import UpscalersConfig, settings_from_config, write_upscalers

    if args.list:
        return _list_upscalers(args.json)
    config = _builder_config(args, UpscalersConfig, "upscalers", photos=_split_list(args.photos))
    started = time.monotonic()
    settings = settings_from_config(config)
    manifest = write_upscalers(config.out, settings, workers=max(1, config.workers), progress=_progress("upscalers"))
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({**manifest, "out": config.out, "seconds": round(seconds, 1)}, indent=2))
        return 0
    count = manifest["per_source"] * len(manifest["sources"])
    print(f"wrote {count} images ({settings.image_size} px, {settings.per_source} per source) to {config.out} in {seconds:.1f}s")
    for name, seconds_spent in sorted(manifest["finished_sources"].items(), key=lambda item: -item[1]):
        print(f"  {name:<16} {manifest['sources'][name]['architecture']:<8} {seconds_spent:7.1f} worker-s")
    splits = {name: sorted(p for p, s in manifest["group_splits"].items() if s == name) for name in ("train", "val", "test")}
    print("photo split: " + "; ".join(f"{name} {', '.join(photos)}" for name, photos in splits.items()))
    print(f"suggested open-set hold-out architecture: {manifest['holdout_architecture']}")
    return 0


def _list_upscalers(as_json: bool) -> int:
    from attribnet.lab.datasets.photos import PHOTOS
    from attribnet.lab.datasets.upscalers import CATALOGUE, DEFAULT_SOURCES, HOLDOUT_ARCHITECTURE

    rows = [{**dataclasses.asdict(spec), "default": name in DEFAULT_SOURCES} for name, spec in CATALOGUE.items()]
    photos = [dataclasses.asdict(p) for p in PHOTOS]
    if as_json:
        print(json.dumps({"sources": rows, "photos": photos, "holdout_architecture": HOLDOUT_ARCHITECTURE}, indent=2))
        return 0
    print(f"{'source':<16} {'default':<7} {'arch':<8} {'package':<19} {'model':<24} scale noise")
    for row in rows:
        noise = "" if row["noise"] is None else row["noise"]
        default = "yes" if row["default"] else ""
        model = f"{row['package']:<19} {row['model']:<24}"
        print(f"{row['name']:<16} {default:<7} {row['architecture']:<8} {model} {row['scale']:>5} {noise:>5}")
    print(f"hold-out architecture (open set): {HOLDOUT_ARCHITECTURE}")
    print(f"photos: {len(photos)} (`--json` lists each with its package, colour and licence)")
    for package, count in collections.Counter(p["distribution"] for p in photos).most_common():
        print(f"  {count:>4}  {package}")
    return 0


def run_normstats(args: argparse.Namespace) -> int:
    from shared_backbone.data.stats import normstats_for

    config = data_config(args)
    stats, used, skipped = normstats_for(config, args.split, progress=_progress("normstats"))
    stats.save(args.out)
    summary = {
        "out": args.out,
        "image_size": config.image_size,
        "split": args.split,
        "images": used,
        "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
        "mean_of_mean": float(stats.mean.mean()),
        "mean_of_std": float(stats.std.mean()),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"normstats of {used} {args.split} images at {config.image_size} px -> {Path(args.out) / 'mean.npy'}, {Path(args.out) / 'std_dev.npy'}")
        for path, reason in skipped:
            print(f"skipped unreadable {path}: {reason}")
    return 0


def run_perturb(args: argparse.Namespace) -> int:
    from attribnet.lab.datasets.perturbed_copy import perturb_dataset

    config = data_config(args)
    record = perturb_dataset(
        config.root, args.out, args.kind, args.value, seed=args.seed,
        image_size=args.image_size or 0, progress=_progress("perturb"),
    )
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        size = f" at {args.image_size} px" if args.image_size else ""
        print(f"wrote {record['images']} images with {args.kind} {args.value:g}{size} to {args.out}")
        for item in record["skipped"]:
            print(f"skipped unreadable {item['path']}: {item['reason']}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Exit code 1 when any file is unreadable, so scripts can check a dataset before a long run."""
    from shared_backbone.data.stats import describe_dataset

    config = data_config(args)
    summary = describe_dataset(config, check=not args.no_check, progress=None if args.no_check else _progress("check"))
    manifest = Path(config.root) / "manifest.json"
    if manifest.is_file():
        try:
            zoo = json.loads(manifest.read_text())
            keys = ("dataset", "image_size", "per_source", "seed", "strength", "match_bandwidth", "holdout_architecture",
                    "complete")
            summary["zoo"] = {k: zoo[k] for k in keys if k in zoo}
        except json.JSONDecodeError as exc:
            summary["zoo"] = {"error": f"{manifest}: invalid JSON ({exc})"}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_info(summary)
    return 1 if summary["unreadable"] else 0


def _print_info(summary: dict) -> None:
    splits = summary["splits"]
    print(f"dataset {summary['root']}: {summary['images']} images, {len(summary['sources'])} sources")
    print(f"classes: {', '.join(summary['classes'])}" + ("  (arch level)" if summary["arch_level"] else ""))
    by = f"seed {summary['split_seed']}" if summary["split_by"] == "file hash" else "the manifest's photo split"
    print(f"splits ({by}): train {splits['train']}, val {splits['val']}, test {splits['test']}")
    width = max(len(s["name"]) for s in summary["sources"])
    print(f"{'source':<{width}}  kind  class{'':<9} count   train    val   test")
    for s in summary["sources"]:
        sp = s["splits"]
        print(f"{s['name']:<{width}}  {s['kind']:<4}  {s['class']:<14} {s['count']:5d}  {sp['train']:6d} {sp['val']:6d} {sp['test']:6d}")
    if "zoo" in summary:
        print("zoo manifest: " + ", ".join(f"{k}={v}" for k, v in summary["zoo"].items()))
    if not summary["checked"]:
        print("files not decoded (--no-check)")
    elif summary["unreadable"]:
        print(f"{len(summary['unreadable'])} unreadable file(s):")
        for item in summary["unreadable"]:
            print(f"  {item['path']}: {item['reason']}")
    else:
        print("every file decodes")
