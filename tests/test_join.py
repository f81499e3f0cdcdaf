"""`attribnet node join` against a real gateway on loopback: one command from token to answering node.

The gateway runs in this process (so the test can read how many files it served); the joining
node runs as a real `attribnet node join` subprocess. Refusals (wrong fingerprint, tampered
bundle, wrong or used token, oversized file) run the CLI's `main` in-process: each must end with
exit code 2, one line on stderr, and nothing fetched into use or trained.
"""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import signal
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.network_support import cli_process, free_port, stop_process, wait_until

SOURCE = "nnconv_a"
EPOCHS = "8"
NEGATIVES = "200"
JOIN_TIMEOUT = 240.0


def start(bundle_path: Path, public_key: Path, reference: Path, registry: Path, **distribution):
    from coordinator.config import CoordinatorConfig, DistributionConfig, GatewayConfig
    from coordinator.gateway.server import start_coordinator

    return start_coordinator(CoordinatorConfig(
        bundle=str(bundle_path), public_key=str(public_key), reference=str(reference), registry=str(registry),
        gateway=GatewayConfig(host="127.0.0.1", port=0, heartbeat_interval=0.5, stale_after=3.0,
                              distribution=DistributionConfig(**distribution)),
    ))


@pytest.fixture(scope="module")
def gateway(zoo_bundle, zoo_reference, keypair, tmp_path_factory):
    server = start(zoo_bundle.path, keypair[1], zoo_reference, tmp_path_factory.mktemp("join-gw") / "registry.sqlite")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fingerprint(keypair) -> str:
    from shared_backbone.model.signing import fingerprint, load_public_key

    return "sha256:" + fingerprint(load_public_key(keypair[1]))


@pytest.fixture(scope="module")
def own_images(tiny_zoo, tmp_path_factory) -> Path:
    """The organisation's own images: one flat folder (not a folder-per-source root)."""
    out = tmp_path_factory.mktemp("org") / "my-images"
    shutil.copytree(tiny_zoo / SOURCE, out)
    return out


def enrol(server, tmp: Path, node_id: str, source: str = SOURCE) -> Path:
    token_file = tmp / f"{node_id}.token"
    token_file.write_text(server.registry.enrol(node_id, source) + "\n")
    return token_file


def join_args(server, token_file: Path, fingerprint: str, images: Path, state: Path, node_id: str, *extra: str) -> list[str]:
    return ["node", "join", "--gateway", f"127.0.0.1:{server.port}", "--token-file", str(token_file),
            "--fingerprint", fingerprint, "--source", SOURCE, "--node-id", node_id, "--images", str(images),
            "--state-dir", str(state), "--epochs", EPOCHS, "--negatives", NEGATIVES, *extra]


def refused(args: list[str], capsys) -> str:
    """Runs the CLI in-process; asserts exit code 2 and one line on stderr; returns that line."""
    from attribnet.cli import main

    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("attribnet node: error: ") and "\n" not in err, err
    return err


def nothing_used(state: Path) -> None:
    """No head, no config, no key, no bundle or reference folder left behind."""
    for name in ("head", "node.yaml", "coordinator.pub"):
        assert not (state / name).exists(), name
    for folder in ("bundles", "reference"):
        assert not any(p.is_file() for p in (state / folder).rglob("*")) if (state / folder).exists() else True, folder


def own_and_real_scores(target: str, tiny_zoo: Path) -> tuple[list, list]:
    from shared_backbone.runtime.gateway_client import AttributionClient

    own = sorted((tiny_zoo / SOURCE).glob("*.png"))[-16:]
    real = sorted((tiny_zoo / "real").glob("*.png"))[-16:]
    with AttributionClient(target, timeout=30.0) as client:
        answers = client.attribute([p.read_bytes() for p in own + real])
    return answers[:16], answers[16:]


def test_node_joins_with_one_command_and_resumes(gateway, fingerprint, own_images, tiny_zoo, tmp_path, capsys):
    from attribnet.cli import main
    from shared_backbone.runtime.gateway_client import AttributionClient

    token_file = enrol(gateway, tmp_path, "org-nn")
    state = tmp_path / "state"
    port = free_port()
    log_path = tmp_path / "join.log"
    process = cli_process(join_args(gateway, token_file, fingerprint, own_images, state, "org-nn", "--port", str(port)), log_path)
    target = f"127.0.0.1:{gateway.port}"

    def answering() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"join exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        with AttributionClient(target, timeout=2.0) as client:
            return any(s["source"] == SOURCE and s["status"] == "healthy" for s in client.list_sources())

    try:
        wait_until(answering, JOIN_TIMEOUT, f"{SOURCE} to join and be healthy", interval=1.0)
        own, real = own_and_real_scores(target, tiny_zoo)
        assert all(SOURCE in a.scores and not a.missing_nodes for a in own + real)
        own_scores = np.array([a.scores[SOURCE] for a in own])
        real_scores = np.array([a.scores[SOURCE] for a in real])
        auc = np.mean(own_scores[:, None] > real_scores[None, :])  # the head learned its source: far above chance
        assert auc >= 0.75, (auc, own_scores, real_scores)
        claimed_own, claimed_real = sum(a.attribution == SOURCE for a in own), sum(a.attribution == SOURCE for a in real)
        assert claimed_own >= 4 and claimed_own > claimed_real, (claimed_own, claimed_real)
    finally:
        assert stop_process(process, sig=signal.SIGTERM, timeout=20) == 0, log_path.read_text()[-3000:]
    text = log_path.read_text()
    assert "join step 4/5: train and calibrate" in text and "coordinator key verified" in text
    assert "the coordinator's detector trained on " in text and f"({SOURCE} among them)" in text
    assert (state / "node.yaml").is_file() and (state / "head" / "head.json").is_file()
    served = gateway.distribution.files_served
    assert served == sum(p.is_file() for folder in ("bundles", "reference") for p in (state / folder).rglob("*"))

    head_before = (state / "head" / "head.json").read_bytes()
    capsys.readouterr()
    assert main(join_args(gateway, token_file, fingerprint, own_images, state, "org-nn", "--no-serve")) == 0
    assert gateway.distribution.files_served == served  # nothing fetched again (the token is used: the node key proved it)
    assert (state / "head" / "head.json").read_bytes() == head_before  # not retrained

    # the token is used up: another node with it is refused, and nothing is fetched into use
    other = tmp_path / "other"
    line = refused(join_args(gateway, token_file, fingerprint, own_images, other, "org-nn"), capsys)
    assert "UNAUTHENTICATED" in line
    nothing_used(other)


def test_wrong_fingerprint_is_refused(gateway, own_images, tmp_path, capsys):
    token_file = enrol(gateway, tmp_path, "org-fp", source="pixshuffle_a")
    state = tmp_path / "state"
    args = join_args(gateway, token_file, "sha256:" + "ab" * 32, own_images, state, "org-fp")
    args[args.index(SOURCE)] = "pixshuffle_a"
    line = refused(args, capsys)
    assert "fingerprint" in line and "refused" in line
    nothing_used(state)
    assert gateway.registry.enrolment("org-fp") is not None  # the token was not used


def test_wrong_token_is_refused(gateway, fingerprint, own_images, tmp_path, capsys):
    enrol(gateway, tmp_path, "org-tok", source="bilinear_a")
    wrong = tmp_path / "wrong.token"
    wrong.write_text(secrets.token_urlsafe(32) + "\n")
    state = tmp_path / "state"
    args = join_args(gateway, wrong, fingerprint, own_images, state, "org-tok")
    args[args.index(SOURCE)] = "bilinear_a"
    line = refused(args, capsys)
    assert "UNAUTHENTICATED" in line and "org-tok" in line
    nothing_used(state)


def test_tampered_bundle_and_oversized_files_are_refused(zoo_bundle, zoo_reference, keypair, fingerprint, own_images,
                                                         tmp_path, capsys):
    bundle_copy = tmp_path / "bundle"
    shutil.copytree(zoo_bundle.path, bundle_copy)
    server = start(bundle_copy, keypair[1], zoo_reference, tmp_path / "registry.sqlite")
    try:
        token_file = enrol(server, tmp_path, "org-big")
        state = tmp_path / "state-big"
        line = refused(join_args(server, token_file, fingerprint, own_images, state, "org-big", "--max-file-mb", "0.01"), capsys)
        assert "beyond this node's limit" in line and "primary.weights.h5" in line
        nothing_used(state)

        weights = bundle_copy / "primary.weights.h5"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))  # on the coordinator's side, after it started
        state = tmp_path / "state-tampered"
        line = refused(join_args(server, token_file, fingerprint, own_images, state, "org-big"), capsys)
        assert "does not verify" in line and "primary.weights.h5" in line
        nothing_used(state)
    finally:
        server.stop()

    small = start(zoo_bundle.path, keypair[1], zoo_reference, tmp_path / "registry2.sqlite", max_file_mb=0.01)
    try:
        token_file = enrol(small, tmp_path, "org-small")
        state = tmp_path / "state-small"
        line = refused(join_args(small, token_file, fingerprint, own_images, state, "org-small"), capsys)
        assert "RESOURCE_EXHAUSTED" in line and "distribution.max_file_mb" in line
        nothing_used(state)
    finally:
        small.stop()


def test_fetch_needs_a_ticket_and_stays_in_the_catalogue(gateway, zoo_bundle, tmp_path):
    from node.fetch import FetchError, open_distribution
    from shared_backbone.protocol import distribution
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
    from shared_backbone.runtime import rpc

    token = gateway.registry.enrol("org-paths", "tconv_b")
    channel = rpc.open_channel(f"127.0.0.1:{gateway.port}")
    stub = pb_grpc.DistributionServiceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as no_proof:
            stub.Open(pb.OpenRequest(node_id="org-paths", source="tconv_b"), timeout=5)
        assert no_proof.value.code() == grpc.StatusCode.ABORTED  # no challenge presented
        with pytest.raises(FetchError, match="UNAUTHENTICATED") as other_source:
            open_distribution(channel, "org-paths", "tconv_a", token, "secret")
        opened = open_distribution(channel, "org-paths", "tconv_b", token, "secret")
        assert {f.set for f in opened.files} == {"bundle", "reference"}
        with pytest.raises(grpc.RpcError) as no_ticket:
            list(stub.Fetch(pb.FetchRequest(set="bundle", path="manifest.json"), timeout=5))
        assert no_ticket.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ticket = ((distribution.FETCH_TICKET, opened.ticket),)
        for path, code in (("../registry.sqlite", grpc.StatusCode.INVALID_ARGUMENT), ("/etc/passwd", grpc.StatusCode.INVALID_ARGUMENT),
                           ("reference.json.bak", grpc.StatusCode.NOT_FOUND)):
            with pytest.raises(grpc.RpcError) as outside:
                list(stub.Fetch(pb.FetchRequest(set="bundle", path=path), metadata=ticket, timeout=5))
            assert outside.value.code() == code, path
        chunks = list(stub.Fetch(pb.FetchRequest(set="bundle", path="manifest.json"), metadata=ticket, timeout=5))
        assert b"".join(c.data for c in chunks) == (Path(zoo_bundle.path) / "manifest.json").read_bytes()
    finally:
        channel.close()
    assert "tconv_a" in str(other_source.value)


def test_catalogue_paths_must_stay_inside():
    from shared_backbone.protocol.distribution import UnsafePath, check_relative_path

    assert check_relative_path("real/0001.png") == ["real", "0001.png"]
    for bad in ("", "../x", "a/../../b", "/etc/passwd", "a//b", ".hidden", "a\\b", "c:x", "a/./b"):
        with pytest.raises(UnsafePath):
            check_relative_path(bad)
