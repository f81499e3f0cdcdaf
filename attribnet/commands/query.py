"""`attribnet query`: ask a running gateway which source made each image.

    attribnet query --gateway 127.0.0.1:50051 [--json] [--heatmap DIR] [--token-file FILE] PATH...

Images are sent in batches; an image the gateway refuses (INVALID_ARGUMENT naming its index) is
reported on its own line and the rest of its batch is sent again, so one bad file never hides the
answers for the others. Exit code 1 when any path failed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BAD_IMAGE = re.compile(r"^image (\d+): (.*)$", re.S)
HEATMAP_BATCH = 8  # the gateway's default `max_heatmap_images`: heatmaps cost a gradient pass each


def gateway_address(value: str) -> str:
    """`HOST:PORT` (or `[IPv6]:PORT`); a bare host would silently dial gRPC's default port 443."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or (":" in host and not host.startswith("[")):
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:50051)")
    return value


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "query", help="ask a running gateway to attribute images", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    parser.add_argument("--gateway", type=gateway_address, default="127.0.0.1:50051", help="gateway HOST:PORT")
    parser.add_argument("--json", action="store_true", help="one JSON object per image per line")
    parser.add_argument("--heatmap", metavar="DIR", help="write each image's CAM overlay PNG into DIR")
    parser.add_argument("--token-file", help="file whose first line is the query token")
    parser.add_argument("--ca", help="CA certificate (PEM) to verify a TLS gateway")
    parser.add_argument("--cert", help="client certificate (PEM) for an mTLS gateway")
    parser.add_argument("--key", help="client key (PEM) for an mTLS gateway")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default 30)")
    parser.add_argument("--batch-size", type=positive_int,
                        help=f"images per request (default 16, or {HEATMAP_BATCH} with --heatmap: the gateway's heatmap limit)")
    parser.set_defaults(handler=run)


def attribute_paths(client, paths: list[str], *, heatmap: bool, batch_size: int) -> list[dict]:
    """One record per path, in order: the gateway's answer, or {'path', 'error'}."""
    from shared_backbone.runtime.gateway_client import GatewayError

    records: dict[int, dict] = {}
    pending: list[tuple[int, bytes]] = []
    for position, path in enumerate(paths):
        try:
            pending.append((position, Path(path).read_bytes()))
        except OSError as exc:
            records[position] = {"path": str(path), "error": f"cannot read file: {exc.strerror}"}
    for start in range(0, len(pending), max(batch_size, 1)):
        batch = pending[start : start + batch_size]
        while batch:
            try:
                results = client.attribute([data for _, data in batch], heatmap=heatmap)
            except GatewayError as exc:
                match = BAD_IMAGE.match(exc.details)
                if exc.code.name != "INVALID_ARGUMENT" or not match or int(match.group(1)) >= len(batch):
                    raise
                position = batch.pop(int(match.group(1)))[0]
                records[position] = {"path": str(paths[position]), "error": match.group(2)}
                continue
            for (position, _), result in zip(batch, results):
                records[position] = {"path": str(paths[position]), **result.to_dict(), "_heatmap": result.heatmap_png}
            batch = []
    return [records[i] for i in range(len(paths))]


def _table(record: dict) -> str:
    from shared_backbone.model.rule import REASONS

    if "error" in record:
        return f"{record['path']}: ERROR {record['error']}"
    backbone = record["backbone"]
    lines = [
        f"{record['path']}: {record['attribution']}{_partial(record)}  (fake score {record['fake_score']:.3f}, "
        f"backbone {backbone['version']} {backbone['digest'][:12]})"
    ]
    if record.get("out_of_scope"):
        lines.append(f"  out of scope: {record['out_of_scope']}")
    elif record["scores"]:
        width = max(len("source"), *(len(s) for s in record["scores"]))
        lines.append(f"  {'source'.ljust(width)}  calibrated     raw  threshold  p-value  typical-p")
        for source, score in sorted(record["scores"].items(), key=lambda item: -item[1]):
            mark = " <" if source == record["attribution"] else ""
            p_value = f"{record['p_values'][source]:7.3f}" if source in record["p_values"] else "      -"
            typical = record.get("typicality_p_values", {})
            typical_p = f"{typical[source]:9.3f}" if source in typical else "        -"
            lines.append(
                f"  {source.ljust(width)}  {score:10.4f}  {record['raw_scores'][source]:6.4f}  "
                f"{record['thresholds'][source]:9.3f}  {p_value}  {typical_p}{mark}"
            )
        kept = ", ".join(record["prediction_set"]) or "none (no registered source fits)"
        lines.append(f"  prediction set at alpha {record['alpha']:g}: {kept}")
    else:
        lines.append("  no source answered")
    if record.get("reason") in REASONS and not record.get("out_of_scope"):
        lines.append(f"  why: {REASONS[record['reason']]}")
    return "\n".join(lines)


def _partial(record: dict) -> str:
    """The headline's warning when nodes did not answer: their sources could not win this answer."""
    missing = record["missing_nodes"]
    if not missing:
        return ""
    reasons = record.get("missing_reasons", {})
    named = ", ".join(f"{node} ({reasons[node]})" if reasons.get(node) else node for node in missing)
    return f"  [PARTIAL: {len(missing)} node(s) did not answer: {named}]"


def run(args: argparse.Namespace) -> int:
    from shared_backbone.config import TLSConfig
    from shared_backbone.data.datasets import expand_image_paths
    from shared_backbone.runtime.gateway_client import AttributionClient
    from shared_backbone.runtime.rpc import read_secret

    token = read_secret(args.token_file or "", "--token-file")
    tls = TLSConfig(cert=args.cert or "", key=args.key or "", ca=args.ca or "") if (args.ca or args.cert) else None
    with AttributionClient(args.gateway, token=token, tls=tls, timeout=args.timeout) as client:
        records = attribute_paths(client, [str(path) for path, _ in expand_image_paths(args.paths)],
                                  heatmap=bool(args.heatmap), batch_size=args.batch_size or (HEATMAP_BATCH if args.heatmap else 16))
    heatmap_dir = Path(args.heatmap) if args.heatmap else None
    written: set[str] = set()
    for position, record in enumerate(records):
        png = record.pop("_heatmap", b"")
        if heatmap_dir and png:
            heatmap_dir.mkdir(parents=True, exist_ok=True)
            name = f"{Path(record['path']).stem}.cam.png"
            if name in written:  # same file name from another folder: keep both
                name = f"{Path(record['path']).stem}-{position}.cam.png"
            written.add(name)
            target = heatmap_dir / name
            target.write_bytes(png)
            record["heatmap"] = str(target)
        print(json.dumps(record, sort_keys=True) if args.json else _table(record))
    sys.stdout.flush()
    return 1 if any("error" in record for record in records) else 0
