"""The `attribution.v1` protocol: generated code is current, and a client needs nothing but the server.

The reflection test plays "any standard gRPC client": it fetches the schema from a running gateway
through server reflection, builds the message classes from those descriptors alone (no generated
code) and calls `Attribute`.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.network_support import make_bundle


def test_generated_code_is_current(tmp_path):
    from shared_backbone.protocol.proto import generate

    written = generate.generate(tmp_path)
    assert len(written) == 3
    for path in written:
        committed = generate.PROTO_ROOT / path.relative_to(tmp_path)
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make proto`"


def test_services_and_package_are_versioned():
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb

    assert pb.DESCRIPTOR.package == "attribution.v1"
    services = {name: [m.name for m in service.methods] for name, service in pb.DESCRIPTOR.services_by_name.items()}
    assert services == {
        "AttributionService": ["Attribute", "ListSources"],
        "RegistryService": ["Challenge", "Register", "Heartbeat", "Deregister"],
        "HeadService": ["Score", "Describe"],
        "DistributionService": ["Open", "Fetch"],
    }


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, keypair):
    """A gateway with no nodes (attribution still answers, from the detector alone)."""
    from coordinator.config import AuditConfig, CoordinatorConfig, GatewayConfig
    from coordinator.gateway.server import start_coordinator

    root = tmp_path_factory.mktemp("proto")
    bundle = make_bundle(root / "bundle", *keypair)
    config = CoordinatorConfig(
        bundle=str(bundle.path), public_key=str(keypair[1]), registry=str(root / "registry.sqlite"),
        gateway=GatewayConfig(host="127.0.0.1", port=0, max_message_mb=1, audit=AuditConfig(enabled=False)),  # random heads
    )
    server = start_coordinator(config)
    yield server, bundle
    server.stop(0.2)


def test_reflection_only_client_can_call_attribute(gateway):
    import grpc
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    server, bundle = gateway
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"attribution.v1.AttributionService", "attribution.v1.RegistryService", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        method = pool.FindServiceByName("attribution.v1.AttributionService").FindMethodByName("Attribute")
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_unary(
            "/attribution.v1.AttributionService/Attribute",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        buffer = io.BytesIO()
        Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(buffer, format="PNG")
        response = call(request_class(images=[buffer.getvalue()]), timeout=10)
    finally:
        channel.close()
    (result,) = response.results
    assert result.backbone.digest == bundle.digest
    assert result.attribution in ("real", "unknown") and 0.0 <= result.fake_score <= 1.0
    assert len(result.scores) == 0 and len(result.missing_nodes) == 0


def test_message_size_limit_is_enforced_and_server_keeps_serving(gateway):
    import grpc

    from shared_backbone.runtime.gateway_client import AttributionClient, GatewayError

    server, _ = gateway
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, format="PNG")
    with AttributionClient(f"127.0.0.1:{server.port}", timeout=10) as client:
        with pytest.raises(GatewayError) as info:
            client.attribute([b"\0" * (3 << 19)])  # 1.5 MB against the gateway's 1 MB limit
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(client.attribute([buffer.getvalue()])) == 1


def test_the_enrolment_proof_is_computed_as_the_proto_says():
    """A client written from the `.proto` alone: the key and message spelled out there give the proof the gateway checks."""
    import hashlib
    import hmac

    from shared_backbone.protocol import identity

    from shared_backbone.protocol.proto import generate

    text = (generate.PROTO_ROOT / "attribution" / "v1" / "attribution.proto").read_text()
    assert 'sha256("attribnet.identity.v1|enrolment|<token>")' in text
    assert '"attribnet.identity.v1|enrol|<challenge>|<node_id>|' in text
    key = hashlib.sha256(b"attribnet.identity.v1|enrolment|tok").digest()
    message = b"attribnet.identity.v1|enrol|ch|node-1|tconv_a|" + b"ab" * 32
    from_the_proto = hmac.new(key, message, "sha256").hexdigest()
    assert from_the_proto == identity.enrolment_proof("tok", "ch", "node-1", "tconv_a", "ab" * 32)
    fetch = hmac.new(key, b"attribnet.identity.v1|fetch|ch|node-1|tconv_a", "sha256").hexdigest()
    assert fetch == identity.fetch_proof("tok", "ch", "node-1", "tconv_a")
