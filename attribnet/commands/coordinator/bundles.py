"""`attribnet coordinator keygen | import-paper-weights | inspect-bundle`: keys and bundles from files."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger("attribnet.coordinator")


def register(actions: argparse._SubParsersAction) -> None:
    keygen = actions.add_parser("keygen", help="create the coordinator's Ed25519 signing key pair")
    keygen.add_argument("--config", help="coordinator YAML (its private_key's folder is the default --out)")
    keygen.add_argument("--out", help="folder for coordinator.key (0600) and coordinator.pub")
    keygen.add_argument("--overwrite", action="store_true", help="replace an existing key pair")
    keygen.set_defaults(handler=run_keygen)

    paper = actions.add_parser(
        "import-paper-weights", help="turn the paper's primary-module HDF5 file into a signed backbone bundle"
    )
    paper.add_argument("file", metavar="FILE.h5", help="Keras 2 HDF5 file of a primary module")
    paper.add_argument("--config", help="coordinator YAML (private_key)")
    paper.add_argument("--out", required=True, help="new bundle folder")
    paper.add_argument("--normstats", help="folder with mean.npy / std_dev.npy (required for DCT models)")
    paper.add_argument("--key", help="coordinator private key (default: private_key from --config)")
    paper.add_argument("--version", help="bundle version (default: paper-<file stem>)")
    paper.add_argument("--json", action="store_true", help="print the bundle's summary as JSON")
    paper.set_defaults(handler=run_import)

    inspect = actions.add_parser("inspect-bundle", help="verify a bundle and show its manifest")
    inspect.add_argument("bundle", metavar="BUNDLE", help="bundle folder")
    inspect.add_argument("--config", help="coordinator YAML (public_key)")
    inspect.add_argument("--public-key", help="verify the signature with this key (default: public_key from --config)")
    inspect.add_argument("--json", action="store_true", help="print the summary as JSON")
    inspect.set_defaults(handler=run_inspect)


def _config(args: argparse.Namespace, overrides: dict):
    from coordinator.config import CoordinatorConfig
    from shared_backbone.config import load_config

    return load_config(CoordinatorConfig, getattr(args, "config", None), overrides)


def bundle_summary(bundle) -> dict:
    """What an operator checks before publishing: identity, input, provenance, parameter counts."""
    manifest = bundle.manifest
    return {
        "path": str(bundle.path),
        "digest": bundle.digest,
        "version": bundle.version,
        "parent": manifest.get("parent"),
        "signature_verified": bundle.signed,
        "created": manifest.get("created"),
        "input": manifest["input"],
        "branch_layer": manifest.get("branch_layer"),
        "feature_shape": manifest["feature_shape"],
        "trainable_parameters": manifest.get("trainable_parameters", {}),
        "source": manifest.get("source", {}),
        "metrics": manifest.get("metrics", {}),
        "files": manifest["files"],
    }


def _print_summary(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return
    spec = summary["input"]
    print(f"bundle     {summary['path']}")
    print(f"digest     {summary['digest']}")
    print(f"version    {summary['version']} (parent {summary['parent'] or 'none'})")
    print(f"signature  {'verified' if summary['signature_verified'] else 'NOT checked (no public key)'}")
    print(f"input      {spec['mode']} {spec['image_size']}x{spec['image_size']}x{spec['channels']}")
    print(f"trunk      up to {summary['branch_layer']}, features {'x'.join(map(str, summary['feature_shape']))}")
    print(f"parameters {', '.join(f'{k} {v}' for k, v in sorted(summary['trainable_parameters'].items()))}")
    if summary["source"]:
        print(f"source     {', '.join(f'{k}={v}' for k, v in sorted(summary['source'].items()))}")
    if summary["metrics"]:
        print(f"metrics    {json.dumps(summary['metrics'], sort_keys=True)}")
    for name, digest in sorted(summary["files"].items()):
        print(f"file       {name} sha256 {digest}")


def run_keygen(args: argparse.Namespace) -> int:
    from shared_backbone.model import signing

    out = args.out or str(Path(_config(args, {}).private_key).parent)
    private_path, public_path = signing.generate_keypair(out, overwrite=args.overwrite)
    print(f"private key {private_path} (keep it secret)")
    print(f"public key  {public_path} (give it to every node and gateway)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from coordinator.import_weights import import_paper_weights

    config = _config(args, {"private_key": args.key})
    bundle = import_paper_weights(
        args.file, args.out, config.private_key, normstats_dir=args.normstats, version=args.version
    )
    _print_summary(bundle_summary(bundle), args.json)
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from shared_backbone.model import bundle as bundle_lib
    from shared_backbone.model import signing

    config = _config(args, {"public_key": args.public_key}) if (args.config or args.public_key) else None
    key = signing.load_public_key(config.public_key) if config and config.public_key else None
    if key is None:
        log.warning("no public key given: %s's file digests are checked, its signature is NOT", args.bundle)
    _print_summary(bundle_summary(bundle_lib.load_bundle(args.bundle, key)), args.json)
    return 0
