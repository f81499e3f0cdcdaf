"""Hostile input cannot crash the node or the registry: property tests and a bounded fuzz corpus.

Real servers (a coordinator and a node) in this process; every input gets a proper status code
or a valid answer (`tests/fuzz_targets.py` says what counts), the servers keep serving, and the
process' memory stays bounded.
"""

from __future__ import annotations

import random
import resource

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import fuzz_targets

CORPUS = 300  # random inputs per target (bounded: the suite must stay minutes, not hours)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    servers = fuzz_targets.start_servers(tmp_path_factory.mktemp("fuzz"))
    yield servers
    servers.stop()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_bounded_random_corpus_over_every_target(servers):
    from tests.network_support import healthy

    rng = random.Random(20251210)
    start = _rss_mb()
    for index in range(CORPUS * len(fuzz_targets.TARGETS)):
        data = bytes([index % len(fuzz_targets.TARGETS)]) + rng.randbytes(rng.randint(0, 256))
        fuzz_targets.run_one(servers, data)
    grown = _rss_mb() - start
    print(f"fuzz corpus: {CORPUS * len(fuzz_targets.TARGETS)} inputs, crashes: 0, counts {servers.counts}, RSS +{grown:.0f} MB")
    assert all(count >= CORPUS for key, count in servers.counts.items() if key != "raw")
    assert grown < 300, f"memory grew by {grown:.0f} MB"
    assert healthy(f"127.0.0.1:{servers.node.port}") and healthy(f"127.0.0.1:{servers.coordinator.port}")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(0, 2**32 - 1), max_size=6), dtype=st.text(max_size=10), features=st.binary(max_size=5000),
       nan=st.booleans())
def test_score_property_any_request_is_answered_or_refused_properly(servers, shape, dtype, features, nan):
    import grpc
    import numpy as np

    from shared_backbone.protocol import wire
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

    if nan:
        array = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 16)).astype(np.float16)
        array[0, 0, 0, 0] = np.nan
        request = wire.features_to_request(array)
    else:
        request = pb.ScoreRequest(features=features, shape=shape, dtype=dtype)
    channel = rpc.open_channel(f"127.0.0.1:{servers.node.port}")
    try:
        stub = pb_grpc.HeadServiceStub(channel)
        try:
            response = stub.Score(request, metadata=rpc.bearer("fuzz-credential"), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION), exc.details()
            assert exc.details() and "\n" not in exc.details()
            return
        assert len(response.raw_scores) == shape[0] and all(0.0 <= s <= 1.0 for s in response.raw_scores)
    finally:
        channel.close()


@settings(max_examples=150, deadline=None)
@given(fields=st.fixed_dictionaries({
    "node_id": st.text(max_size=70), "source": st.one_of(st.sampled_from(["real", "unknown", "ambiguous", "ok"]), st.text(max_size=70)),
    "endpoint": st.one_of(st.sampled_from(["unix:/x", "169.254.1.1:80", "[fe80::1]:9", "127.0.0.1:1", "a:b:c"]), st.text(max_size=60)),
    "backbone_digest": st.one_of(st.just("b" * 64), st.text(max_size=70)), "head_digest": st.text(max_size=70),
    "threshold": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=5)),
    "calibration": st.one_of(st.dictionaries(st.sampled_from(["method", "a", "b", "positive_scores"]),
                                             st.one_of(st.floats(), st.text(max_size=5), st.lists(st.floats(), max_size=3))),
                             st.text(max_size=5)),
    "metrics": st.one_of(st.recursive(st.one_of(st.floats(), st.text(max_size=20), st.booleans()),
                                      lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30),
                         st.none()),
}))
def test_validator_property_accepts_only_what_it_can_serve(fields):
    import json

    from coordinator.validation import EndpointPolicy, InvalidRegistration, validate_registration
    from shared_backbone.model.calibration import Calibration
    from shared_backbone.model.rule import RESERVED
    from shared_backbone.protocol.registration import Registration

    try:
        clean = validate_registration(Registration.from_fields(fields), EndpointPolicy())
    except InvalidRegistration as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert clean.source not in RESERVED and 0.05 <= clean.threshold <= 0.999
    Calibration.from_dict(clean.calibration.to_dict())
    assert len(json.dumps(clean.metrics)) <= 16 * 1024
    assert not clean.endpoint.startswith("unix:") and "169.254." not in clean.endpoint
