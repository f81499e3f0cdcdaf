"""Helpers for the network tests: free ports, bounded waits, signed bundles, heads, images, processes.

Everything here builds real components (Keras models, signed bundles, gRPC servers, processes);
untrained models give real, deterministic scores, which is all the plumbing tests need.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 32
# Deadline of a helper's call whose answer, not speed, is checked: a loaded 2-core machine's registry
# commit once took over 5 s.
RPC_TIMEOUT = 30.0


@dataclass
class Net:
    """A running test network: its folder, bundle, coordinator server, node servers and gateway target."""

    root: Path
    bundle: object
    coordinator: object
    nodes: dict
    target: str
    node_configs: dict = field(default_factory=dict)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.1):
    """Polls `predicate` until it returns something truthy; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def png_bytes(rng: np.random.Generator, size: int = IMAGE_SIZE, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def make_bundle(out: Path, private_key: Path, public_key: Path, version: str = "net-1"):
    """A signed bundle of an untrained 32 px primary module, loaded back with verification."""
    from shared_backbone.model import bundle, networks, signing
    from shared_backbone.model.preprocessing import InputSpec

    primary = networks.build_primary(IMAGE_SIZE, "pixel")
    bundle.write_bundle(out, primary, InputSpec(IMAGE_SIZE, "pixel"), signing.load_private_key(private_key), version=version)
    return bundle.load_bundle(out, signing.load_public_key(public_key))


def make_head(state_dir: Path, bundle, source: str, seed: int, a: float = 1.0, b: float = 0.0, threshold: float = 0.5,
              typicality: bool = False):
    """STATE_DIR/head: an untrained head (distinct seed) with a given Platt calibration; with `typicality`,
    also a typicality model of the trunk features of random images and its reference (other random images)."""
    from shared_backbone.model import heads, networks
    from shared_backbone.model.calibration import Calibration

    model = networks.build_head(IMAGE_SIZE, seed=seed)
    calibration, typical = Calibration("platt", a, b), None
    if typicality:
        typical, reference = random_image_typicality(bundle, seed)
        calibration = calibration.with_typicality(reference)
    return heads.save_head(
        state_dir / "head", model, source=source, bundle=bundle,
        calibration=calibration, threshold=threshold, metrics={"auroc": 0.5 + seed % 7 / 100}, typicality=typical,
    )


def random_image_typicality(bundle, seed: int, fit: int = 48, reference: int = 32):
    """A typicality model fitted on the bundle's trunk features of random-pixel PNGs, and the typicality
    of `reference` other such images (its conformal reference)."""
    from shared_backbone.model import networks
    from shared_backbone.model.features import as_head_features
    from shared_backbone.model.preprocessing import preprocess
    from shared_backbone.model.typicality import fit_typicality

    rng = np.random.default_rng(seed)
    inputs = np.stack([preprocess(png_bytes(rng), bundle.input_spec) for _ in range(fit + reference)])
    features = as_head_features(np.asarray(networks.build_trunk(bundle.load_primary())(inputs, training=False)))
    model = fit_typicality(features[:fit])
    return model, model.score(features[fit:])


def start_gateway(bundle, public_key: Path, registry: Path, **gateway):
    """A real coordinator server on a free loopback port serving `bundle`, with these gateway settings."""
    from coordinator.config import AuditConfig, CoordinatorConfig, GatewayConfig
    from coordinator.gateway.server import start_coordinator

    settings = {"host": "127.0.0.1", "port": 0, "audit": AuditConfig(enabled=False), **gateway}  # random heads: see test_trust
    return start_coordinator(CoordinatorConfig(
        bundle=str(bundle.path), public_key=str(public_key), registry=str(registry), gateway=GatewayConfig(**settings),
    ))


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def cli_process(args: list[str], log_path: Path) -> subprocess.Popen:
    """`python -m attribnet.cli ARGS` as a child process, output to a log file."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    handle = open(log_path, "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "attribnet.cli", *args], cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT
    )


def stop_process(process: subprocess.Popen, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    return process.returncode


def healthy(target: str, timeout: float = 0.5) -> bool:
    import grpc

    from shared_backbone.runtime import rpc

    channel = rpc.open_channel(target)
    try:
        return rpc.check_health(channel, timeout=timeout) == "SERVING"
    except grpc.RpcError:
        return False
    finally:
        channel.close()


def wait_healthy(target: str, process: subprocess.Popen | None, timeout: float, log_path: Path | None = None) -> None:
    def ready() -> bool:
        if process is not None and process.poll() is not None:
            text = log_path.read_text() if log_path else ""
            raise AssertionError(f"process for {target} exited with {process.returncode}:\n{text[-3000:]}")
        return healthy(target)

    wait_until(ready, timeout, f"{target} to be SERVING", interval=0.2)


def signed_metadata(stub, message, secret: str, purpose: str, *, node_id: str, source: str = "",
                    enrolment_token: str = "") -> tuple:
    """What a node sends with Register/Heartbeat: a fresh challenge, signed (plus an enrolment proof)."""
    from shared_backbone.protocol import identity
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    key = identity.node_key(secret)
    public = identity.public_key_hex(key)
    challenge = stub.Challenge(pb.ChallengeRequest(node_id=node_id), timeout=RPC_TIMEOUT).challenge
    metadata = [(rpc.PUBLIC_KEY_METADATA, public), (rpc.CHALLENGE_METADATA, challenge),
                (rpc.SIGNATURE_METADATA, identity.sign(key, purpose, challenge, node_id, identity.message_digest(message)))]
    if enrolment_token:
        metadata.append((rpc.ENROLMENT_PROOF_METADATA, identity.enrolment_proof(enrolment_token, challenge, node_id, source, public)))
    return tuple(metadata)


def register_signed(stub, request, secret: str, enrolment_token: str = ""):
    """RegistryService.Register as a node written from the .proto alone would call it."""
    from shared_backbone.protocol import identity

    metadata = signed_metadata(stub, request, secret, identity.REGISTER, node_id=request.node_id, source=request.source,
                               enrolment_token=enrolment_token)
    return stub.Register(request, metadata=metadata, timeout=RPC_TIMEOUT)


def write_enrolment(registry, state_dir: Path, node_id: str, source: str) -> str:
    """Enrols a node in `registry` and writes its token where the node reads it (STATE_DIR/enrolment.token)."""
    from shared_backbone.model.signing import write_private

    token = registry.enrol(node_id, source)
    write_private(Path(state_dir) / "enrolment.token", (token + "\n").encode(), overwrite=True)
    return token


def fit_head_reply(node: int, values: dict):
    """A ClientApp's reply to `train.fit_head` carrying `values`, as the ServerApp receives it."""
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from shared_backbone.protocol.flower_messages import FIT_HEAD, RESULT_RECORD

    for name, value in (("run_id", 1), ("node_id", 0), ("task_id", 1)):  # what a ServerApp process has
        try:
            getattr(TaskIdentity, name)
        except RuntimeError:
            setattr(TaskIdentity, name, value)
    request = Message(content=RecordDict(), dst_node_id=node, message_type=FIT_HEAD)
    return Message(RecordDict({RESULT_RECORD: ConfigRecord(values)}), reply_to=request)


def node_config(root: Path, bundle, source: str, coordinator_port: int, keypair, **serve):
    from node.config import NodeConfig, NodeServeConfig

    return NodeConfig(
        source=source,
        backbone=str(bundle.path),
        public_key=str(keypair[1]),
        state_dir=str(root / source),
        serve=NodeServeConfig(
            host="127.0.0.1", port=0, coordinator=f"127.0.0.1:{coordinator_port}",
            heartbeat_interval=0.3, rpc_timeout=2.0, max_backoff=1.0, **serve,
        ),
    )


def write_certificates(folder: Path) -> dict[str, str]:
    """A CA and one leaf certificate for 127.0.0.1 (server and client use), as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("attribnet test CA")).issuer_name(name("attribnet test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder().subject_name(name("attribnet-peer")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    files = {"ca": folder / "ca.pem", "cert": folder / "peer.pem", "key": folder / "peer.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return {k: str(v) for k, v in files.items()}


def registry_stub(target: str):
    """(channel, RegistryService stub) to a coordinator at `target`."""
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

    channel = rpc.open_channel(target)
    return channel, pb_grpc.RegistryServiceStub(channel)


def register_request(bundle, node_id: str, source: str, endpoint: str = "127.0.0.1:1"):
    """A well-formed RegisterRequest for `bundle` (identity calibration, a made-up head digest)."""
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    return pb.RegisterRequest(
        node_id=node_id, source=source, endpoint=endpoint, backbone_digest=bundle.digest,
        backbone_version=bundle.version, head_digest="0" * 64,
        calibration=pb.Calibration(method="identity", a=1.0, b=0.0), threshold=0.5,
    )


def status_code(call):
    """The gRPC status code `call()` fails with (it must fail)."""
    import grpc
    import pytest

    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def start_net(root: Path, keypair, sources: tuple[str, ...], seed: int, node_metrics: bool = False, **gateway) -> Net:
    """A gateway (`gateway` settings) and one real node per source with an untrained head, all healthy."""
    from node.server import start_node

    bundle = make_bundle(root / "bundle", *keypair)
    coordinator = start_gateway(bundle, keypair[1], root / "registry.sqlite", **gateway)
    nodes = {}
    for i, source in enumerate(sources):
        make_head(root / source, bundle, source, seed=seed + i)
        write_enrolment(coordinator.registry, root / source, source, source)
        config = node_config(root, bundle, source, coordinator.port, keypair)
        if node_metrics:
            config.serve.metrics_port = 0
        nodes[source] = start_node(config)
    wait_until(lambda: sum(e.status == "healthy" for e in coordinator.registry.list()) == len(sources), 30,
               f"{len(sources)} healthy nodes")
    return Net(root, bundle, coordinator, nodes, f"127.0.0.1:{coordinator.port}")


def stop_net(net: Net) -> None:
    for node in net.nodes.values():
        node.stop(0.2)
    net.coordinator.stop(0.2)


def client(net: Net, timeout: float = 10.0):
    from shared_backbone.runtime.gateway_client import AttributionClient

    return AttributionClient(net.target, timeout=timeout)


class TamperedHead:
    """A real HeadService on its own server, registered like any node (what admission does once its proofs
    check out), whose answers are changed by `tamper`, delayed by `delay` seconds, and held while `resume`
    is clear (a stall, e.g. a GC pause)."""

    def __init__(self, net: Net, source: str, tamper: Callable = lambda response: response, delay: float = 0.0,
                 typicality: bool = False, seed: int = 400, workers: int = 4, hold: float = 0.0) -> None:
        from node.head_service import HeadServicer
        from shared_backbone.protocol import identity
        from shared_backbone.protocol.registration import Registration
        from shared_backbone.runtime import rpc
        from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

        self.net, self.source, self.calls, self.release, self.resume = net, source, 0, threading.Event(), threading.Event()
        self.resume.set()
        head = make_head(net.root / source, net.bundle, source, seed=seed + len(source), typicality=typicality)
        outer = self

        class Servicer(HeadServicer):
            def Score(self, request, context):
                outer.calls += 1
                if delay:
                    outer.release.wait(delay)
                outer.resume.wait(hold)
                return tamper(super().Score(request, context))

        self.servicer = Servicer(head, net.bundle, source, 64)
        self.server = rpc.create_server(workers=workers, max_message_mb=4)
        pb_grpc.add_HeadServiceServicer_to_server(self.servicer, self.server)
        self.port = rpc.bind(self.server, "127.0.0.1", 0)
        self.server.start()
        registry = net.coordinator.registry
        if registry.bound_key(source) is None and registry.enrolment(source) is None:
            registry.enrol(source, source)
        registry.register(
            Registration.from_fields(dict(
                node_id=source, source=source, endpoint=f"127.0.0.1:{self.port}", backbone_digest=net.bundle.digest,
                head_digest=head.digest, calibration=head.calibration.to_dict(), threshold=0.5)),
            public_key=identity.public_key_hex(identity.node_key(f"{source}-secret")),
            enrolment_verified=registry.bound_key(source) is None,
        )

    def close(self) -> None:
        self.release.set()
        self.resume.set()
        self.net.coordinator.registry.remove(self.source)
        self.server.stop(0.2).wait(2)
        self.servicer.close()
