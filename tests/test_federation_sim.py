"""Flower's Simulation Engine: 10 virtual nodes get the signed bundle; 8 train and register a head,
one crashes (its data folder is missing) and one refuses a reference set that differs from the
coordinator's announced digest. Both are reported, the run completes."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from coordinator.config import CoordinatorConfig, FederationConfig
from shared_backbone.config import TrainConfig
from attribnet.lab.datasets.zoo import ZooSettings, write_zoo
from shared_backbone.model.bundle import load_bundle, sha256_file
from shared_backbone.model.heads import HEAD_WEIGHTS, load_head

# Eight generators, several per architecture (instances), as eight organisations.
SOURCES = ("tconv_a", "tconv_b", "tconv_c", "nnconv_a", "nnconv_b", "bilinear_a", "pixshuffle_a", "pixshuffle_b")
BROKEN = "bilinear_b"  # its node's data folder does not exist: training crashes there
STALE = "pixshuffle_c"  # its node's own copy of the reference set differs from the coordinator's
NODE_TRAIN = TrainConfig(epochs=1, batch_size=32, learning_rate=3e-3, patience=3, min_epochs=1, seed=3)


def make_node_folders(zoo: Path, root: Path, sources, keypair, broken: str | None = None) -> list[dict]:
    """One node-config dict per source; each node's data folder holds only its own source.

    Every node reads one node YAML with fewer self-made negatives than the default: ten nodes
    render theirs at once in the simulation, and a round has to finish on a busy 2-core machine.
    """
    node_yaml = root / "node.yaml"
    node_yaml.parent.mkdir(parents=True, exist_ok=True)
    node_yaml.write_text("negatives: {count: 200}\n")
    nodes = []
    for index, source in enumerate(sources):
        data = root / source / "data"
        data.mkdir(parents=True)
        (data / source).symlink_to(zoo / source, target_is_directory=True)
        nodes.append({
            "source": source, "data-dir": str(data), "state-dir": str(root / source / "state"),
            "public-key": str(keypair[1]), "endpoint": f"127.0.0.1:{61000 + index}", "config": str(node_yaml),
        })
    if broken:
        nodes.append({
            "source": broken, "data-dir": str(root / broken / "missing-data"), "state-dir": str(root / broken / "state"),
            "public-key": str(keypair[1]), "endpoint": "127.0.0.1:61999", "config": str(node_yaml),
        })
    return nodes


@pytest.fixture(scope="module")
def federation_zoo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fedzoo") / "zoo"
    write_zoo(root, ZooSettings(image_size=32, per_source=40, seed=7, sources=(*SOURCES, BROKEN)), workers=1)
    return root


def coordinator_config(bundle, keypair, tmp: Path, reference: Path, min_nodes: int) -> CoordinatorConfig:
    return CoordinatorConfig(
        bundle=str(bundle.path), public_key=str(keypair[1]), private_key=str(keypair[0]),
        registry=str(tmp / "coordinator" / "registry.sqlite"), reference=str(reference),
        federation=FederationConfig(
            min_nodes=min_nodes, wait_for_nodes=60.0, round_timeout=200.0, poll_interval=0.5, head_train=NODE_TRAIN,
            result_file=str(tmp / "coordinator" / "result.json"),
        ),
    )


def check_registered(result, config: CoordinatorConfig, nodes: list[dict], bundle) -> None:
    """Registry entries, head files and replies agree, and no reply carried weights."""
    from coordinator.registry import Registry

    by_source = {n.source: n for n in result.registered}
    assert sorted(by_source) == sorted(n["source"] for n in nodes)
    registry = Registry(config.registry)
    entries = {e.source: e for e in registry.list()}
    registry.close()
    assert sorted(entries) == sorted(by_source)
    for node in nodes:
        source, state = node["source"], Path(node["state-dir"])
        head = load_head(state / "head", bundle)  # refuses a head of another backbone
        assert head.source == source
        entry = entries[source]
        assert entry.head_digest == sha256_file(state / "head" / HEAD_WEIGHTS) == by_source[source].registration.head_digest
        assert entry.backbone_digest == bundle.digest and entry.endpoint == node["endpoint"]
        assert entry.calibration.to_dict() == head.calibration.to_dict()
        assert 0.0 <= entry.metrics["calib"]["calibrated"]["accuracy"] <= 1.0
        assert load_bundle(state / "bundle", None).digest == bundle.digest  # the node's verified copy
        reply = by_source[source]
        assert reply.reply_records == ["fit_head.metrics", "fit_head.result"]
        head_bytes = (state / "head" / HEAD_WEIGHTS).stat().st_size
        assert reply.reply_bytes < head_bytes / 2, "a reply must not carry head weights"


def test_simulation_registers_every_node_and_reports_the_crashed_one(zoo_reference, federation_zoo, zoo_bundle, keypair, tmp_path):
    from attribnet.launch.flower_runs import run_federation

    nodes = make_node_folders(federation_zoo, tmp_path / "nodes", SOURCES, keypair, broken=BROKEN)
    reference = zoo_reference
    stale = tmp_path / "stale-reference" / "real"
    stale.mkdir(parents=True)
    for image in sorted((federation_zoo / "real").iterdir())[:5]:
        (stale / image.name).symlink_to(image)
    nodes.append({
        "source": STALE, "data-dir": str(tmp_path / "nodes" / BROKEN), "state-dir": str(tmp_path / "nodes" / STALE / "state"),
        "public-key": str(keypair[1]), "reference": str(stale.parent),
    })
    config = coordinator_config(zoo_bundle, keypair, tmp_path, reference, min_nodes=len(nodes))
    started = time.monotonic()
    result = run_federation(config, nodes, mode="simulation")
    print(f"simulation: {len(nodes)} nodes in {time.monotonic() - started:.1f} s")
    assert result.status == "completed", result.error
    assert result.backbone["digest"] == zoo_bundle.digest
    assert len(result.nodes) == len(nodes)
    check_registered(result, config, nodes[:-2], zoo_bundle)
    problems = {n.error.split(":")[0]: n for n in result.problems}
    assert sorted(problems) == [f"node {BROKEN}", f"node {STALE}"]
    crashed, stale_node = problems[f"node {BROKEN}"], problems[f"node {STALE}"]
    assert crashed.status == "failed" and "missing-data" in crashed.error and "not found" in crashed.error
    assert stale_node.status == "failed" and "differs from the coordinator's" in stale_node.error
    for node in nodes[-2:]:
        assert not (Path(node["state-dir"]) / "head").exists()
    from coordinator.flower.results import read_result

    assert read_result(config.federation.result_file).to_dict() == result.to_dict()


def test_fedavg_weights_by_example_count():
    import numpy as np

    from coordinator.flower.fedavg import fedavg
    from coordinator.flower.results import FederationError

    a = [np.array([0.0, 4.0], dtype=np.float32), np.array([[1.0]], dtype=np.float32)]
    b = [np.array([3.0, 0.0], dtype=np.float32), np.array([[5.0]], dtype=np.float32)]
    averaged = fedavg([a, b], [1, 3])
    assert np.allclose(averaged[0], [2.25, 1.0]) and np.allclose(averaged[1], [[4.0]])
    assert averaged[0].dtype == np.float32
    with pytest.raises(FederationError, match="architecture"):
        fedavg([a, [b[0]]], [1, 1])


def test_updates_must_match_the_global_model_and_one_outlier_cannot_steer_the_aggregate():
    import numpy as np

    from coordinator.flower.fedavg import aggregate, check_update, clip_count

    reference = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    assert check_update([np.ones((2, 2), np.float32), np.ones(3, np.float32)], reference) is None
    assert "float32[2, 2]" in check_update([np.ones((2, 3), np.float32), np.ones(3, np.float32)], reference)
    assert "float64" in check_update([np.ones((2, 2)), np.ones(3, np.float32)], reference)
    assert "NaN" in check_update([np.full((2, 2), np.nan, np.float32), np.ones(3, np.float32)], reference)
    assert "1 weight arrays" in check_update([np.ones((2, 2), np.float32)], reference)
    assert [clip_count(v, 1000) for v in (10**12, -5, "many", None, 7)] == [1000, 1, 1, 1, 7]
    honest = [[np.full((2, 2), 1.0 + i / 100, np.float32), np.full(3, 2.0, np.float32)] for i in range(4)]
    attacker = [np.full((2, 2), 1e6, np.float32), np.full(3, -1e6, np.float32)]
    for method in ("trimmed_mean", "median"):
        robust = aggregate([*honest, attacker], [100, 100, 100, 100, 10**5], method, trim_fraction=0.2)
        assert np.all(np.abs(robust[0] - 1.0) < 0.05) and np.allclose(robust[1], 2.0), method
    plain = aggregate([*honest, attacker], [100, 100, 100, 100, 1000], "mean")
    assert plain[0].max() > 1e5  # what one node did to plain FedAvg


def test_evaluation_gate_refuses_a_backbone_that_no_longer_detects(tiny_zoo, zoo_bundle, keypair, tmp_path):
    import numpy as np

    from coordinator.flower.gate import evaluation_gate
    from attribnet.lab.datasets.zoo import zoo_data_config

    config = dataclasses.replace(coordinator_config(zoo_bundle, keypair, tmp_path, tmp_path, 1), data=zoo_data_config(tiny_zoo))
    weights = [np.asarray(w) for w in zoo_bundle.load_primary().get_weights()]
    kept = evaluation_gate(config, zoo_bundle, weights)
    assert kept["passed"] and kept["accuracy_after"] == kept["accuracy_before"] > 0.6
    poisoned = evaluation_gate(config, zoo_bundle, [np.zeros_like(w) if w.ndim > 1 else w for w in weights])
    assert not poisoned["passed"] and poisoned["accuracy_after"] < kept["accuracy_before"] - 0.02
    from coordinator.flower.results import FederationError

    with pytest.raises(FederationError, match="held-out data"):
        evaluation_gate(dataclasses.replace(config, data=dataclasses.replace(config.data, root="")), zoo_bundle, weights)


def test_finetuning_publishes_a_child_bundle_and_retrains_heads_on_it(zoo_reference, federation_zoo, zoo_bundle, keypair, tmp_path):
    """One node opts in, one declines; the averaged primary passes the gate and becomes version `<old>-ft1`.

    The round asks for the `attribution` objective (the bench covers `detection` in-process): the node
    trains the trunk on its head task and the coordinator refits the detector's tail over it."""
    import numpy as np

    from attribnet.launch.flower_runs import run_federation
    from attribnet.lab.datasets.zoo import zoo_data_config
    from shared_backbone.model import networks
    from shared_backbone.model.signing import load_public_key

    nodes = make_node_folders(federation_zoo, tmp_path / "nodes", SOURCES[:2], keypair)
    nodes[0]["finetune"] = True
    reference = zoo_reference
    config = coordinator_config(zoo_bundle, keypair, tmp_path, reference, min_nodes=2)
    config = dataclasses.replace(config, data=zoo_data_config(federation_zoo), federation=dataclasses.replace(
        config.federation, finetune_rounds=1, finetune_epochs=1, finetune_objective="attribution",
        bundles_dir=str(tmp_path / "bundles"), gate_tolerance=1.0), train=dataclasses.replace(config.train, epochs=1, min_epochs=1),
        run_dir=str(tmp_path / "coordinator-run"))
    result = run_federation(config, nodes, mode="simulation")
    assert result.status == "completed", result.error
    assert result.finetune["published"] and result.finetune["gate"]["passed"]
    (round_1,) = result.finetune["rounds"]
    assert sorted(round_1["nodes"].values())[0] == "declined" and sorted(round_1["nodes"].values())[1].startswith("updated")
    child = load_bundle(result.finetune["bundle"], load_public_key(keypair[1]))
    assert child.manifest["parent"] == zoo_bundle.digest == result.finetune["parent"]
    assert child.manifest["reference"] == zoo_bundle.manifest["reference"]  # nodes keep verifying the same set
    assert child.training_sources["detector"][-1] == "fine-tuned by the nodes' updates"
    assert child.version == f"{zoo_bundle.version}-ft1" and result.backbone["digest"] == child.digest != zoo_bundle.digest
    old, new = zoo_bundle.load_primary(), child.load_primary()
    assert any(not np.allclose(a, b) for a, b in zip(networks.build_trunk(old).get_weights(), networks.build_trunk(new).get_weights()))
    assert any(not np.allclose(a, b) for a, b in zip(*(m.get_layer(networks.PRIMARY_DECISION).get_weights() for m in (old, new))))
    assert (tmp_path / "coordinator-run" / "tail-refit").is_dir()  # the tail was refit on the coordinator's own data
    check_registered(result, config, nodes, child)


def test_a_node_that_misses_the_round_deadline_is_reported_as_timed_out(zoo_reference, federation_zoo, zoo_bundle, keypair, tmp_path):
    """The round waits `round_timeout`, not for the slowest node; the run completes without it."""
    from attribnet.launch.flower_runs import run_federation

    nodes = make_node_folders(federation_zoo, tmp_path / "nodes", SOURCES[:1], keypair)
    config = coordinator_config(zoo_bundle, keypair, tmp_path, zoo_reference, min_nodes=1)
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, round_timeout=1.0))
    result = run_federation(config, nodes, mode="simulation")
    assert result.status == "completed", result.error
    (node,) = result.nodes
    assert node.status == "timed_out" and "deadline" in node.error and node.seconds < 10.0
    from coordinator.registry import Registry

    registry = Registry(config.registry)
    assert registry.list() == []
    registry.close()


def test_cli_names_the_bad_input_in_one_line(tmp_path, capsys):
    from attribnet.cli import main

    coordinator = tmp_path / "coordinator.yaml"
    coordinator.write_text("federation:\n  min_nodes: 1\n")
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text("nodes: tconv_a\n")
    assert main(["federation", "run", "--config", str(coordinator), "--simulation"]) == 2
    assert "--simulation needs --nodes" in capsys.readouterr().err
    assert main(["federation", "run", "--config", str(coordinator), "--simulation", "--nodes", str(nodes)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attribnet federation: error:") and str(nodes) in err and "\n" not in err
    coordinator.write_text("federation:\n  min_node: 1\n")
    assert main(["federation", "run", "--config", str(coordinator), "--local", "--nodes", str(nodes)]) == 2
    err = capsys.readouterr().err
    assert "coordinator.yaml.federation: unknown key 'min_node'" in err


def test_too_few_nodes_fails_the_run_after_a_bounded_wait_and_says_so(zoo_reference, federation_zoo, zoo_bundle, keypair, tmp_path):
    from attribnet.launch.flower_runs import run_federation

    nodes = make_node_folders(federation_zoo, tmp_path / "nodes", SOURCES[:1], keypair)
    config = coordinator_config(zoo_bundle, keypair, tmp_path, zoo_reference, min_nodes=2)
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, wait_for_nodes=2.0))
    started = time.monotonic()
    result = run_federation(config, nodes, mode="simulation")
    assert time.monotonic() - started < 60.0
    assert result.status == "failed" and "only 1 of the required 2 node(s) connected within 2 s" in result.error
    assert result.nodes == [] and not (Path(nodes[0]["state-dir"]) / "head").exists()
