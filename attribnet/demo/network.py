"""The whole attribution network on one machine: zoo -> backbone -> Flower federation -> live gateway -> report.

Unlike the offline demo (`attribnet/demo/offline.py`), every answer here comes over gRPC from real
processes: the coordinator's gateway (`attribnet coordinator serve`) and one `attribnet node
serve` per generator, each serving the head its node trained in the Flower run. The report is
computed from those answers only, so it measures what a user of the network would get.

Layout under OUT: zoo/, keys/, primary/, bundle/, coordinator/ (federation result), network/
(registry, node state folders = Flower node state with their enrolment tokens, process logs),
network-report/ (predictions, metrics, confusion matrix PNG), network-report.json/.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from attribnet.config import DemoConfig
from attribnet.demo.steps import StepTimer
from coordinator.config import CoordinatorConfig, FederationConfig
from shared_backbone.config import DataConfig
from shared_backbone.training import reports
from shared_backbone.model.rule import AMBIGUOUS, REAL, UNKNOWN

log = logging.getLogger(__name__)

QUERY_BATCH = 32  # images per Attribute request (the gateway allows max_images, 64 by default)
QUERY_TIMEOUT = 60.0  # seconds per request: the first one waits for the gateway's TensorFlow warm-up


def node_settings(sources: list[str], data: DataConfig, public_key: Path, network_dir: Path, ports: dict[str, int],
                  access: str = "strict") -> list[dict[str, Any]]:
    """One Flower node config per generator, sharing its state folder and node id with the node service.

    The service started later (`attribnet.launch.local_network`) uses NETWORK/node-SOURCE as state
    and the source as node id, so it finds the head the ClientApp saved there and proves the same
    identity secret when it registers (the registry refuses a node id claimed with another
    secret). Strict (the network's rule): each node's data folder holds only its own generator's
    images, and the reference set comes from the coordinator's announcement; `shared` (the paper's
    comparison setting) gives every node the whole dataset.
    """
    from attribnet.demo.offline import node_folders

    folders = node_folders(data, sources, network_dir / "node-data")
    return [
        {
            "source": source, "node-id": source, "data-dir": data.root if access == "shared" else str(folders[source]),
            "state-dir": str(network_dir / f"node-{source}"), "public-key": str(public_key),
            "endpoint": f"127.0.0.1:{ports[source]}", "access": access,
        }
        for source in sources
    ]


def federation_config(config: DemoConfig, bundle_path: Path, keys: tuple[Path, Path], out: Path, nodes: int,
                      reference: Path) -> CoordinatorConfig:
    """The coordinator's side of the run: the published bundle, its reference set, the shared registry, head settings."""
    return CoordinatorConfig(
        bundle=str(bundle_path), private_key=str(keys[0]), public_key=str(keys[1]), reference=str(reference),
        registry=str(out / "network" / "registry.sqlite"),
        federation=FederationConfig(
            min_nodes=nodes, wait_for_nodes=120.0, round_timeout=900.0, poll_interval=0.5,
            head_train=dataclasses.replace(config.head, seed=config.seeds[0]), calibration=config.calibration,
            result_file=str(out / "coordinator" / "federation-result.json"),
        ),
    )


def query_network(gateway: str, paths: list[Path], *, batch: int = QUERY_BATCH, timeout: float = QUERY_TIMEOUT) -> tuple[list[Any], list[float]]:
    """Every image through the gateway in batches; (one Attribution per image, seconds per request)."""
    from shared_backbone.runtime.gateway_client import AttributionClient

    answers, latencies = [], []
    with AttributionClient(gateway, timeout=timeout) as client:
        for start in range(0, len(paths), batch):
            images = [p.read_bytes() for p in paths[start:start + batch]]
            began = time.perf_counter()
            results = client.attribute(images)
            latencies.append(time.perf_counter() - began)
            if len(results) != len(images):
                raise RuntimeError(f"gateway answered {len(results)} results for {len(images)} images (batch at {start})")
            answers.extend(results)
    return answers, latencies


def attribution_report(answers: list[Any], truths: list[str], ids: list[str], sources: list[str], out_dir: Path) -> dict[str, Any]:
    """Per-source and overall accuracy, confusion matrix (PNG) and the rule's exits of the network's answers.

    Classes are `real` + every generator of the dataset (also those whose node failed), so a
    missing head shows up as that source's images attributed elsewhere."""
    from shared_backbone.training.classification_metrics import multiclass_metrics
    from shared_backbone.model.rule import closed_set

    classes = [REAL, *sources]
    position = {name: i for i, name in enumerate(classes)}
    unknown = len(classes)
    true = np.array([position[t] for t in truths])
    extra = {UNKNOWN: unknown, AMBIGUOUS: unknown + 1}  # answers that name no class: wrong for every class
    predicted = np.array([position.get(a.attribution, extra.get(a.attribution, unknown)) for a in answers])
    scores = np.array([[a.scores.get(s, 0.0) for s in sources] for a in answers])  # a missing node's score counts as 0
    metrics = multiclass_metrics(true, predicted, classes)
    closed = np.array([position.get(closed_set(a.fake_score, a.raw_scores, a.fake_threshold).attribution, unknown)  # ranked as the
                       for a in answers])  # demo's gateway ranks (`rank_by: raw`)
    closed_metrics = multiclass_metrics(true, closed, classes)
    files = reports.write_multiclass_report(
        out_dir, ids, classes, true, predicted, metrics, name="network", title="attribution through the network",
        scores=scores, score_names=sources, extra_predicted=[UNKNOWN, AMBIGUOUS],
        columns={"reason": [a.reason for a in answers], "prediction_set": ["+".join(a.prediction_set) for a in answers],
                 **{f"p_{s}": [a.p_values.get(s, float("nan")) for a in answers] for s in sources}},
    )
    return {
        "n": int(len(answers)),
        "accuracy": metrics["accuracy"],
        "per_source": {name: {"accuracy": v["recall"], "n": v["support"]} for name, v in metrics["per_class"].items()},
        "unknown": int((predicted == unknown).sum()),
        "ambiguous": int((predicted == unknown + 1).sum()),
        "by_reason": {r: [a.reason for a in answers].count(r) for r in sorted({a.reason for a in answers})},  # the rule's exits
        "closed_set": {  # the paper's rule without `unknown`: argmax of the heads' raw scores
            "accuracy": closed_metrics["accuracy"],
            "per_source": {name: v["recall"] for name, v in closed_metrics["per_class"].items()},
        },
        "confusion_matrix": metrics["confusion_matrix"],
        "classes": classes,
        "predicted_classes": [*classes, UNKNOWN, AMBIGUOUS][: len(metrics["confusion_matrix"][0])],  # matrix columns
        "files": files,
    }


def offline_agreement(bundle: Any, head_dirs: dict[str, Path], paths: list[Path], answers: list[Any]) -> dict[str, Any]:
    """How often the network's answer equals the same bundle + heads run in this process.

    Both sides round trunk features to float16 (the wire format), so a difference means a node that
    did not answer, or float rounding of a different batch composition deciding a near-tie.
    """
    from shared_backbone.model.attributor import OfflineAttributor
    from shared_backbone.model.heads import load_head
    from shared_backbone.model.preprocessing import preprocess

    attributor = OfflineAttributor(bundle, [load_head(head_dirs[s], bundle) for s in sorted(head_dirs)])
    offline = []
    for start in range(0, len(paths), QUERY_BATCH):
        offline.extend(attributor.attribute(np.stack([preprocess(p, bundle.input_spec) for p in paths[start:start + QUERY_BATCH]])))
    same = sum(o.attribution == a.attribution for o, a in zip(offline, answers))
    diffs = [abs(o.calibrated[s] - a.scores[s]) for o, a in zip(offline, answers) for s in o.calibrated if s in a.scores]
    return {"n": len(answers), "same_attribution": same, "fraction": same / max(len(answers), 1),
            "max_score_difference": max(diffs, default=0.0)}


def render_markdown(report: dict[str, Any]) -> str:
    """The report a person reads: accuracy table, missing nodes, latency, files."""
    att = report["attribution"]
    lines = ["# attribnet network demo", "",
             f"{att['n']} held-out test images of `{report['dataset']['root']}` sent to the gateway "
             f"`{report['network']['gateway']}` ({report['network']['nodes']} node processes), "
             f"backbone {report['bundle']['version']} ({report['bundle']['digest'][:12]}).", "",
             f"**Overall accuracy: {att['accuracy']:.3f}** ({att['unknown']} answered `unknown`, {att['ambiguous']} `ambiguous`); "
             f"closed set (argmax, no `unknown`): {att['closed_set']['accuracy']:.3f}. Answers by the rule's step that gave them: "
             + ", ".join(f"`{r}` {n}" for r, n in att["by_reason"].items()) + ".", "",
             "| class | test images | accuracy | closed-set accuracy |", "|---|---|---|---|"]
    for name, row in att["per_source"].items():
        lines.append(f"| {name} | {row['n']} | {row['accuracy']:.3f} | {att['closed_set']['per_source'][name]:.3f} |")
    fed = report["federation"]
    lines += ["", f"Federation ({fed['engine']}): {len(fed['registered'])} head(s) registered"
              + (f", failed: {', '.join(f'{k} ({v})' for k, v in fed['problems'].items())}" if fed["problems"] else "") + "."]
    missing = report["missing_nodes"]
    lines += [f"Missing nodes: {', '.join(f'{k} ({v} images)' for k, v in missing.items()) if missing else 'none'}."]
    agree = report["offline_agreement"]
    lines += [f"Same answer as bundle + heads run offline: {agree['same_attribution']}/{agree['n']} images "
              f"(max calibrated score difference {agree['max_score_difference']:.2g})."]
    lat = report["latency"]
    lines += [f"Latency per query ({lat['requests']} requests of up to {lat['batch']} images): median {lat['median_ms']:.1f} ms "
              f"({lat['median_ms_per_image']:.2f} ms/image).", ""]
    lines += [f"Confusion matrix: `{att['files']['confusion_matrix']}`", f"Predictions: `{att['files']['predictions']}`", ""]
    lines += ["Timings (s): " + ", ".join(f"{k}: {v}" for k, v in report["timings_seconds"].items())
              + f"; total {report['seconds']} s.", ""]
    return "\n".join(lines)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so `with network` stops the processes either way.

    Both are installed again here because Flower's simulation replaces the SIGINT handler (Ctrl-C
    then did nothing). Outside the main thread (where handlers cannot be set) signals keep theirs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(number).name)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _serve_until_interrupted(gateway: str, step: Callable[[str], None]) -> None:
    """Announces the gateway address once it reports SERVING, then blocks until SIGINT/SIGTERM."""
    from shared_backbone.runtime.gateway_client import AttributionClient

    with AttributionClient(gateway, timeout=5.0) as client:
        status = client.health()
    if status != "SERVING":
        raise RuntimeError(f"gateway {gateway} reports {status}, not SERVING")
    step(f"gateway listening on {gateway}")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        log.info("network demo: interrupted, stopping every process")


def run_network_demo(
    config: DemoConfig, out: Path, *, serve: bool = False, port: int = 0, progress: bool = False,
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole story into `out`; returns the report (also out/network-report.json and .md).

    With `serve`, the network stays up afterwards (gateway on `port`, 0 = any free port) until
    SIGINT/SIGTERM, then every process is stopped.
    """
    with _sigterm_interrupts():
        return _run(config, out, serve=serve, port=port, progress=progress, step=step)


def _prepare(config: DemoConfig, out: Path, timer: StepTimer) -> tuple[DataConfig, tuple[Path, Path], Path]:
    """The dataset (written unless given), the coordinator's keys and the network folder."""
    from attribnet.demo.offline import make_zoo
    from shared_backbone.model.signing import ensure_keypair
    from attribnet.lab.datasets.zoo import zoo_data_config

    if config.data_root:
        data = zoo_data_config(config.data_root)
    else:
        data = timer.run("zoo", f"zoo ({config.zoo.preset} preset, {config.zoo.per_source} images/source, {config.zoo.image_size} px)",
                         make_zoo, config.zoo, out / "zoo")
    keys = ensure_keypair(out / "keys")
    network_dir = out / "network"
    network_dir.mkdir(parents=True, exist_ok=True)
    return data, keys, network_dir


def _federate(config: DemoConfig, data: DataConfig, bundle: Any, keys: tuple[Path, Path], reference: Path, out: Path,
              network_dir: Path, timer: StepTimer) -> tuple[Any, str, dict[str, int]]:
    """One Flower simulation in which every generator's node trains its head: (result, result file, node ports)."""
    from attribnet.demo.offline import generator_sources
    from attribnet.launch.flower_processes import free_port
    from attribnet.launch.flower_runs import run_federation

    sources = generator_sources(data)
    ports = {source: free_port() for source in sources}
    nodes = node_settings(sources, data, keys[1], network_dir, ports, config.access)
    fed_config = federation_config(config, bundle.path, keys, out, len(nodes), reference)
    result_file = fed_config.federation.result_file
    federation = timer.run("federation", f"federation (Flower simulation, {len(nodes)} nodes train their heads)", run_federation,
                           fed_config, nodes, mode="simulation")
    if federation.status != "completed":
        raise RuntimeError(f"federation {federation.status}: {federation.error} (see {result_file})")
    if not federation.registered:
        raise RuntimeError(f"no node registered a head in the federation (see {result_file})")
    return federation, result_file, ports


def _query_and_report(network: Any, data: DataConfig, bundle: Any, primary: Any, federation: Any, result_file: str,
                      head_dirs: dict[str, Path], out: Path, timer: StepTimer, began: float) -> dict[str, Any]:
    """Sends the held-out test split through the gateway and writes the report from its answers only."""
    from attribnet.demo.offline import generator_sources
    from shared_backbone.data.datasets import load_split

    index, splits = load_split(data)
    test = splits["test"]
    sources = generator_sources(data)
    answers, latencies = timer.run("queries", f"query {len(test)} test images through the gateway", query_network,
                                   network.gateway, [s.path for s in test])
    truths = [index.class_of(s.source) for s in test]
    ids = [str(Path(s.path).relative_to(data.root)) for s in test]
    attribution = attribution_report(answers, truths, ids, sources, out / "network-report")
    report = {
        "dataset": {"root": data.root, "image_size": data.image_size, "test_counts": _counts(truths)},
        "bundle": {"path": str(bundle.path), "version": bundle.version, "digest": bundle.digest,
                   "primary_best_epoch": primary.metrics.get("best_epoch")},
        "federation": federation_summary(federation, result_file),
        "network": {"gateway": network.gateway, "nodes": len(head_dirs), "workdir": str(network.workdir)},
        "attribution": attribution,
        "offline_agreement": offline_agreement(bundle, head_dirs, [s.path for s in test], answers),
        "missing_nodes": missing_nodes(answers, sources, {n.source for n in federation.registered}),
        "latency": latency_summary(latencies, len(answers)),
        "timings_seconds": timer.seconds,
        "seconds": round(time.monotonic() - began, 1),
    }
    reports.write_json(out / "network-report.json", report)
    (out / "network-report.md").write_text(render_markdown(report))
    return report


def _audit_settings(config: DemoConfig, data: DataConfig, out: Path) -> dict[str, Any]:
    """The gateway's canary audit: the demo's settings, with the test split's reals (which no node receives:
    the reference set leaves them out) as the coordinator's private reals unless the config names some."""
    from shared_backbone.config import to_dict
    from shared_backbone.data.datasets import load_split

    settings = to_dict(config.audit)
    if config.audit.enabled and not config.audit.private_reals:
        folder = out / "audit-reals"
        folder.mkdir(exist_ok=True)
        index, splits = load_split(data)
        for sample in splits["test"]:
            link = folder / f"{sample.source}-{sample.path.name}"
            if index.is_real(sample.source) and not link.exists():
                link.symlink_to(sample.path.resolve())
        settings["private_reals"] = str(folder)
    return settings


def _run(config: DemoConfig, out: Path, *, serve: bool, port: int, progress: bool, step: Callable[[str], None] | None) -> dict[str, Any]:
    from attribnet.demo.offline import check_config, make_reference, train_and_publish
    from attribnet.launch.local_network import start_local_network

    check_config(config)
    out = Path(out).resolve()
    if (out / "primary").is_dir() and any((out / "primary").iterdir()):
        raise ValueError(f"{out} already holds a demo run ({out / 'primary'}); choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    step = step or (lambda label: log.info("network demo: %s", label))
    began = time.monotonic()
    timer = StepTimer(step)
    data, keys, network_dir = _prepare(config, out, timer)
    reference = make_reference(data, out / "reference")
    primary, bundle = timer.run(
        "primary + bundle", f"train primary module ({config.mode}) + publish signed bundle", train_and_publish,
        dataclasses.replace(data, mode=config.mode), dataclasses.replace(config.primary, seed=config.seeds[0]), config.perturb,
        keys[0], keys[1], out, reference=reference, version=f"network-demo-seed{config.seeds[0]}", progress=progress,
    )
    federation, result_file, ports = _federate(config, data, bundle, keys, reference, out, network_dir, timer)
    head_dirs = {s: network_dir / f"node-{s}" / "head" for s in sorted(n.source for n in federation.registered)}
    with _sigterm_interrupts():  # again: Flower's simulation replaces the process's signal handlers
        network = timer.run("network start", f"start gateway + {len(head_dirs)} node services", start_local_network,
                            network_dir, bundle.path, keys[1], head_dirs, port=port, node_ports={s: ports[s] for s in head_dirs},
                            reference=reference, gateway_settings={"audit": _audit_settings(config, data, out)})
        with network:
            report = _query_and_report(network, data, bundle, primary, federation, result_file, head_dirs, out, timer, began)
            step(f"report {out / 'network-report.md'}: accuracy {report['attribution']['accuracy']:.3f} "
                 f"on {report['attribution']['n']} test images")
            if serve:
                _serve_until_interrupted(network.gateway, step)
    return report


def federation_summary(federation: Any, result_file: str) -> dict[str, Any]:
    """Which nodes registered a head, which did not and why, and each head's validation accuracy."""
    registered = {n.source: n for n in federation.registered}
    return {
        "engine": federation.flower.get("engine", "simulation"), "result_file": result_file,
        "registered": sorted(registered),
        "problems": {n.source or str(n.flower_node_id): f"{n.status}: {n.error}" for n in federation.problems},
        "head_test_accuracy": {s: n.registration.metrics.get("test", {}).get("calibrated", {}).get("accuracy") for s, n in sorted(registered.items())},
    }


def missing_nodes(answers: list[Any], sources: list[str], registered: set[str]) -> dict[str, int]:
    """Source -> number of answers it was missing from (a source without a registered head misses all)."""
    missing: dict[str, int] = {}
    for answer in answers:
        for name in answer.missing_nodes:
            missing[name] = missing.get(name, 0) + 1
    for source in sources:
        if source not in registered:
            missing[source] = len(answers)
    return dict(sorted(missing.items()))


def latency_summary(latencies: list[float], images: int, batch: int = QUERY_BATCH) -> dict[str, Any]:
    """Median seconds per Attribute request (and per image), in ms; the first request includes warm-up."""
    sizes = [min(batch, images - start) for start in range(0, images, batch)]
    return {
        "requests": len(latencies), "batch": batch,
        "median_ms": statistics.median(latencies) * 1000,
        "median_ms_per_image": statistics.median(lat / n for lat, n in zip(latencies, sizes)) * 1000,
        "first_ms": latencies[0] * 1000,
    }


def _counts(names: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))
