"""`attribnet bench perf`: what a query costs on the network versus running one full model per source.

Three ways to attribute the same encoded images, measured side by side in one run:
  network         the gateway process + N node processes over gRPC on loopback (decode, one trunk
                  pass, N heads in parallel, calibration, decision);
  shared, local   the same bundle and heads in this process (`OfflineAttributor`): the network
                  without its transport;
  N full models   what attribution costs without a shared backbone: the detector plus, per source,
                  its own full network (a trunk copy + head), all run for every query.
Every variant decodes and preprocesses the same bytes. Latency is the median over `repeats` calls
after `warmup`; throughput is images per second, for the network also with concurrent clients.
Without trained models the benchmark builds untrained ones: cost does not depend on the weights.
"""

from __future__ import annotations

import io
import json
import logging
import platform
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class PerfSettings:
    image_size: int = 64
    nodes: int = 3
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16])
    repeats: int = 30
    warmup: int = 3
    concurrency: int = 4
    seed: int = 0


# The serving benchmarks' gateway settings for `synthetic_models`: untrained heads answer at random, so the
# canary audit (on by default) would rightly quarantine them, and there is no reference set to draw canaries
# from. These benchmarks measure the serving path's mechanics; the audit is measured by tests/test_trust.py.
SYNTHETIC_GATEWAY = {"audit": {"enabled": False}}


def synthetic_models(workdir: Path, image_size: int, nodes: int) -> tuple[Path, Path, dict[str, Path]]:
    """An untrained signed bundle and `nodes` untrained heads (bundle, public key, source -> head dir)."""
    from shared_backbone.model import bundle as bundle_lib
    from shared_backbone.model import heads, networks, signing
    from shared_backbone.model.calibration import Calibration
    from shared_backbone.model.preprocessing import InputSpec

    private_key, public_key = signing.generate_keypair(workdir / "keys", overwrite=True)
    bundle_dir = workdir / "bundle"
    shutil.rmtree(bundle_dir, ignore_errors=True)  # an earlier run's bundle is signed with another key
    bundle_lib.write_bundle(
        bundle_dir, networks.build_primary(image_size), InputSpec(image_size), signing.load_private_key(private_key),
        version="perf-synthetic",
    )
    bundle = bundle_lib.load_bundle(bundle_dir, signing.load_public_key(public_key))
    head_dirs = {}
    for i in range(nodes):
        source = f"source_{i}"
        head_dirs[source] = workdir / "heads" / source
        heads.save_head(
            head_dirs[source], networks.build_head(image_size, seed=5000 + i), source=source, bundle=bundle,
            calibration=Calibration(),
        )
    return bundle_dir, public_key, head_dirs


def random_images(count: int, size: int, seed: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def time_calls(call: Callable[[], object], repeats: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        call()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    ordered = sorted(seconds)
    return {
        "median_ms": 1000 * statistics.median(seconds),
        "p90_ms": 1000 * ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "mean_ms": 1000 * statistics.fmean(seconds),
    }


class FullModels:
    """The no-shared-backbone alternative: detector + one complete network (trunk copy + head) per source."""

    def __init__(self, bundle, heads: list) -> None:
        from shared_backbone.model import networks

        self.spec = bundle.input_spec
        self.primary = bundle.load_primary()
        self.networks = []
        for head in heads:
            trunk = networks.build_trunk(bundle.load_primary())  # each source owns its own copy
            self.networks.append(networks.build_attribution_model(trunk, head.model))

    def __call__(self, images: list[bytes]) -> list[np.ndarray]:
        from shared_backbone.model.preprocessing import preprocess

        inputs = np.stack([preprocess(data, self.spec) for data in images])
        outputs = [np.asarray(self.primary(inputs, training=False))]
        outputs += [np.asarray(network(inputs, training=False)) for network in self.networks]
        return outputs


def run_perf(
    out: str | Path,
    settings: PerfSettings,
    *,
    bundle_path: str | Path | None = None,
    public_key: str | Path | None = None,
    head_dirs: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Runs the three variants and writes out/perf.json and out/BENCHMARKS.md; returns the report."""
    from attribnet.launch.local_network import start_local_network
    from shared_backbone.model import bundle as bundle_lib
    from shared_backbone.model import signing
    from shared_backbone.model.attributor import OfflineAttributor
    from shared_backbone.model.heads import load_head
    from shared_backbone.model.preprocessing import preprocess
    from shared_backbone.runtime.gateway_client import AttributionClient

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    synthetic = bundle_path is None
    if synthetic:
        bundle_path, public_key, head_dirs = synthetic_models(out / "models", settings.image_size, settings.nodes)
    if not head_dirs:
        raise ValueError("give the heads to serve (one folder per node) or no bundle at all for synthetic models")
    bundle = bundle_lib.load_bundle(bundle_path, signing.load_public_key(public_key))
    heads = [load_head(head_dirs[s], bundle) for s in sorted(head_dirs)]
    size = bundle.input_spec.image_size
    images = random_images(max(settings.batch_sizes), size, settings.seed)
    shared = OfflineAttributor(bundle, heads)
    full = FullModels(bundle, heads)

    def shared_local(batch: list[bytes]) -> object:
        return shared.attribute(np.stack([preprocess(data, bundle.input_spec) for data in batch]))

    with start_local_network(out / "network", bundle.path, public_key, head_dirs, gateway_settings=SYNTHETIC_GATEWAY) as network, \
            AttributionClient(network.gateway, timeout=60.0) as client:
        variants = {
            "network": client.attribute,
            "shared_local": lambda batch: shared.attribute(np.stack([preprocess(data, bundle.input_spec) for data in batch])),
            "full_models": full,
        }
        rows = [_latency_row(variants, images[:batch_size], settings) for batch_size in settings.batch_sizes]
        concurrent = _concurrent_throughput(client, images[:1], settings.concurrency, settings.repeats)
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": asdict(settings),
        "synthetic_models": synthetic,
        "bundle": {"version": bundle.version, "digest": bundle.digest, "image_size": size},
        "nodes": len(heads),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "parameters": _parameter_counts(shared.primary, heads[0].model),
        "latency": rows,
        "network_concurrent": concurrent,
    }
    (out / "perf.json").write_text(json.dumps(report, indent=2))
    (out / "BENCHMARKS.md").write_text(render_markdown(report))
    return report


def _latency_row(variants: dict[str, Callable[[list[bytes]], object]], batch: list[bytes], settings: PerfSettings) -> dict[str, Any]:
    """Median latency of every variant on one batch, measured back to back, and the ratios to full models."""
    row: dict[str, Any] = {"batch": len(batch)}
    for name, call in variants.items():
        row[name] = time_calls(lambda: call(batch), settings.repeats, settings.warmup)
        row[name]["images_per_s"] = len(batch) / (row[name]["median_ms"] / 1000)
        log.info("batch %d %-12s median %.1f ms", len(batch), name, row[name]["median_ms"])
    row["network_vs_full"] = row["network"]["median_ms"] / row["full_models"]["median_ms"]
    row["shared_local_vs_full"] = row["shared_local"]["median_ms"] / row["full_models"]["median_ms"]
    return row


def _parameter_counts(primary, head) -> dict[str, int]:
    from shared_backbone.model import networks

    return {
        "trunk": networks.trainable_parameter_count(networks.build_trunk(primary)),
        "primary": networks.trainable_parameter_count(primary),
        "head": networks.trainable_parameter_count(head),
    }


def _concurrent_throughput(client, batch: list[bytes], concurrency: int, repeats: int) -> dict[str, float]:
    """Images per second with `concurrency` clients each sending `repeats` requests (micro-batching helps)."""
    def worker() -> None:
        for _ in range(repeats):
            client.attribute(batch)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    seconds = time.perf_counter() - start
    return {"clients": concurrency, "requests": concurrency * repeats, "images_per_s": concurrency * repeats * len(batch) / seconds}


def render_markdown(report: dict[str, Any]) -> str:
    settings = report["settings"]
    lines = [
        "# Query cost: the attribution network vs one full model per source",
        "",
        f"Measured {report['created']} by `attribnet bench perf` on {report['machine']['platform']} "
        f"({report['machine']['processor']}); {report['nodes']} nodes, {report['bundle']['image_size']} px images, "
        f"median of {settings['repeats']} calls after {settings['warmup']} warm-up calls"
        + (", untrained (synthetic) models." if report["synthetic_models"] else f", bundle {report['bundle']['version']}."),
        "",
        "| batch | network (ms) | shared, local (ms) | N full models (ms) | network / full | shared local / full |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["latency"]:
        lines.append(
            f"| {row['batch']} | {row['network']['median_ms']:.1f} (p90 {row['network']['p90_ms']:.1f}) "
            f"| {row['shared_local']['median_ms']:.1f} | {row['full_models']['median_ms']:.1f} "
            f"| {row['network_vs_full']:.2f} | {row['shared_local_vs_full']:.2f} |"
        )
    concurrent = report["network_concurrent"]
    params = report["parameters"]
    lines += [
        "",
        f"Network throughput with {concurrent['clients']} concurrent clients sending single images: "
        f"{concurrent['images_per_s']:.1f} images/s over {concurrent['requests']} requests.",
        "",
        f"Parameters: trunk {params['trunk']}, primary module {params['primary']}, one head {params['head']}. "
        "Network = gateway decode + one trunk pass + every head in parallel over gRPC; shared, local = the same "
        "models in one process; N full models = detector + a complete trunk+head network per source.",
        "",
    ]
    return "\n".join(lines)
