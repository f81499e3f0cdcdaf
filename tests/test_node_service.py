"""A node's HeadService on a real gRPC server: gateway credential, scores, shape/dtype checks,
head reload, start-up refusals."""

from __future__ import annotations

import dataclasses
import shutil

import grpc
import numpy as np
import pytest

from tests.network_support import IMAGE_SIZE, free_port, make_bundle, make_head, wait_until


@pytest.fixture(scope="module")
def node(tmp_path_factory, keypair):
    """A node serving an untrained head; its coordinator address has nobody listening."""
    from node.config import NodeConfig, NodeServeConfig
    from node.server import start_node

    root = tmp_path_factory.mktemp("node")
    bundle = make_bundle(root / "bundle", *keypair)
    head = make_head(root / "state", bundle, "progan", seed=7, a=1.5, b=0.1)
    config = NodeConfig(
        source="progan", backbone=str(bundle.path), public_key=str(keypair[1]), state_dir=str(root / "state"),
        serve=NodeServeConfig(host="127.0.0.1", port=0, coordinator=f"127.0.0.1:{free_port()}",
                              rpc_timeout=0.5, max_backoff=0.5, max_batch=16),
    )
    server = start_node(config)
    server.registrar.gateway_credential = CREDENTIAL  # as if the coordinator had answered its registration
    yield server, bundle, head, config
    server.stop(0.2)


CREDENTIAL = "the-gateway-credential"


class _Authorised:
    """A HeadService stub that presents the gateway credential on every call."""

    def __init__(self, stub, token: str = CREDENTIAL) -> None:
        from shared_backbone.runtime import rpc

        self.stub, self.metadata = stub, rpc.bearer(token)

    def Score(self, request, timeout):
        return self.stub.Score(request, timeout=timeout, metadata=self.metadata)

    def Describe(self, request, timeout):
        return self.stub.Describe(request, timeout=timeout, metadata=self.metadata)


@pytest.fixture
def stub(node):
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

    channel = rpc.open_channel(f"127.0.0.1:{node[0].port}")
    yield _Authorised(pb_grpc.HeadServiceStub(channel))
    channel.close()


def test_only_the_gateway_credential_is_served(node, stub):
    from shared_backbone.protocol import wire

    for token in ("", "wrong"):
        with pytest.raises(grpc.RpcError) as info:
            _Authorised(stub.stub, token).Score(wire.features_to_request(features(1)), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    node[0].registrar.gateway_credential = ""  # not registered yet: nobody is served
    try:
        with pytest.raises(grpc.RpcError) as info:
            stub.Score(wire.features_to_request(features(1)), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "no token known yet" in info.value.details()
    finally:
        node[0].registrar.gateway_credential = CREDENTIAL
    assert len(stub.Score(wire.features_to_request(features(1)), timeout=10).raw_scores) == 1


def features(n: int, seed: int = 0) -> np.ndarray:
    side = IMAGE_SIZE // 4
    return np.random.default_rng(seed).uniform(0, 2, (n, side, side, 16)).astype(np.float16)


def test_score_equals_the_heads_own_output(node, stub):
    from shared_backbone.protocol import wire

    _, bundle, head, _ = node
    batch = features(5)
    response = stub.Score(wire.features_to_request(batch, bundle.digest), timeout=10)
    assert response.source == "progan" and response.head_digest == head.digest
    np.testing.assert_array_equal(np.asarray(response.raw_scores), head.raw_scores(batch.astype(np.float32)))


def _invalid(stub, request) -> str:
    with pytest.raises(grpc.RpcError) as info:
        stub.Score(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value
    return info.value.details()


def test_wrong_shape_dtype_or_size_is_invalid_argument(node, stub):
    from shared_backbone.protocol import wire

    good = wire.features_to_request(features(2))
    assert "shape must be [batch, 8, 8, 16]" in _invalid(stub, wire.features_to_request(np.zeros((2, 4, 4, 16))))
    wrong_dtype = wire.features_to_request(features(2))
    wrong_dtype.dtype = "float32"
    assert "dtype must be 'float16'" in _invalid(stub, wrong_dtype)
    short = wire.features_to_request(features(2))
    short.features = short.features[:-2]
    assert "needs" in _invalid(stub, short)
    assert "between 1 and 16" in _invalid(stub, wire.features_to_request(features(17)))
    nan = features(1)
    nan[0, 0, 0, 0] = np.nan
    assert "NaN" in _invalid(stub, wire.features_to_request(nan))
    assert len(stub.Score(good, timeout=10).raw_scores) == 2  # still serving


def test_features_of_another_backbone_are_refused(stub):
    from shared_backbone.protocol import wire

    with pytest.raises(grpc.RpcError) as info:
        stub.Score(wire.features_to_request(features(1), "f" * 64), timeout=10)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_describe_health_and_reflection(node, stub):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    server, bundle, head, _ = node
    description = stub.Describe(pb.DescribeRequest(), timeout=10)
    assert description.source == "progan" and description.backbone.digest == bundle.digest
    assert list(description.feature_shape) == [8, 8, 16] and description.calibration.a == pytest.approx(1.5)
    channel = rpc.open_channel(f"127.0.0.1:{server.port}")
    try:
        assert rpc.check_health(channel) == "SERVING"
        assert rpc.check_health(channel, "attribution.v1.HeadService") == "SERVING"
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    finally:
        channel.close()
    assert {"attribution.v1.HeadService", "grpc.health.v1.Health"} <= services


def test_registrar_keeps_retrying_while_coordinator_is_away(node):
    server = node[0]
    wait_until(lambda: not server.registrar.registered.is_set() and server.registrar.is_alive(), 5, "registrar retrying")
    assert server.registrar.fatal_error is None and server.registrar.registrations == 0


def test_retrained_head_is_served_without_a_restart(node, stub):
    """Training renames a new head into STATE_DIR/head; the reloader serves it and re-registers it."""
    from shared_backbone.protocol import wire

    server, bundle, old, config = node
    batch = features(3, seed=1)
    before = list(stub.Score(wire.features_to_request(batch, bundle.digest), timeout=10).raw_scores)
    from pathlib import Path

    new = make_head(Path(config.state_dir), bundle, "progan", seed=8, a=1.2)
    try:
        assert new.digest != old.digest
        assert server.reloader.check()
        response = stub.Score(wire.features_to_request(batch, bundle.digest), timeout=10)
        assert response.head_digest == new.digest and list(response.raw_scores) != before
        assert server.registrar.request.head_digest == new.digest and not server.registrar.registered.is_set()
        np.testing.assert_array_equal(np.asarray(response.raw_scores), new.raw_scores(batch.astype(np.float32)))
    finally:
        make_head(Path(config.state_dir), bundle, "progan", seed=7, a=1.5, b=0.1)
        server.reloader.check()


def test_start_refuses_tampered_bundle_foreign_head_and_missing_token(node, tmp_path, keypair):
    from node.server import NodeStartError, start_node

    _, bundle, _, config = node
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle.path, tampered)
    with open(tampered / "primary.weights.h5", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(NodeStartError, match="tampered"):
        start_node(dataclasses.replace(config, backbone=str(tampered)))

    (tampered / "manifest.sig").unlink()
    with pytest.raises(NodeStartError, match="unsigned"):
        start_node(dataclasses.replace(config, backbone=str(tampered)))

    other = make_bundle(tmp_path / "other", *keypair, version="other")
    with pytest.raises(NodeStartError, match="trained on backbone"):
        start_node(dataclasses.replace(config, backbone=str(other.path)))

    with pytest.raises(NodeStartError, match="enrolment_token_file .*not found"):
        start_node(dataclasses.replace(config, serve=dataclasses.replace(config.serve, enrolment_token_file=str(tmp_path / "no"))))
    with pytest.raises(NodeStartError, match="plaintext gRPC off loopback is refused"):
        start_node(dataclasses.replace(config, serve=dataclasses.replace(config.serve, coordinator="192.0.2.1:50051")))
    with pytest.raises(NodeStartError, match="plaintext gRPC off loopback is refused"):
        start_node(dataclasses.replace(config, serve=dataclasses.replace(config.serve, host="0.0.0.0", advertise="node.example:1")))
    with pytest.raises(NodeStartError, match="public_key"):
        start_node(dataclasses.replace(config, public_key=""))
