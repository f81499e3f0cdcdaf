"""Fuzz targets over `HeadService.Score` and both registration paths, against real servers.

Each target turns arbitrary bytes into a request (via atheris' FuzzedDataProvider when atheris is
installed, else the same-shaped `Provider` below over a bounded random corpus), sends it, and
raises `FuzzFailure` only when the server answers in a way it must not: any status other than a
proper refusal (e.g. UNKNOWN, which is what an exception inside a handler becomes), a wrong-sized
answer, a Flower reply parser that raises, or a server that stops serving.

    python -m tests.fuzz_targets --runs 20000        # atheris, coverage-guided; prints the counts
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from tests.network_support import RPC_TIMEOUT

PROPER = {
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.ABORTED,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
}
RAW_BYTES_CODES = PROPER | {grpc.StatusCode.INTERNAL}  # grpc's own answer to bytes that are no protobuf message


class FuzzFailure(AssertionError):
    """The server did what it must never do; the message says what and with which input."""


class Provider:
    """The subset of atheris.FuzzedDataProvider the targets use, over plain bytes."""

    def __init__(self, data: bytes) -> None:
        self.rng = random.Random(data)
        self.data = data

    def ConsumeIntInRange(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def ConsumeBytes(self, count: int) -> bytes:
        return bytes(self.rng.getrandbits(8) for _ in range(self.rng.randint(0, count)))

    def ConsumeUnicodeNoSurrogates(self, count: int) -> str:
        alphabet = "abcxyz019_-.:/[]@ \x00é" + "".join(chr(self.rng.randint(32, 0x2FF)) for _ in range(4))
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, count)))

    def ConsumeRegularFloat(self) -> float:
        return self.rng.choice([0.0, -0.0, 0.5, 1.0, 1e308, -1e308, 5e-324, self.rng.uniform(-100, 100)])

    def ConsumeFloat(self) -> float:
        return self.rng.choice([math.nan, math.inf, -math.inf, self.ConsumeRegularFloat()])

    def ConsumeBool(self) -> bool:
        return self.rng.random() < 0.5


def provider(data: bytes):
    try:
        import atheris

        return atheris.FuzzedDataProvider(data)
    except ImportError:
        return Provider(data)


@dataclass
class Servers:
    """A real coordinator (gateway + registry) and a real node, in this process, on loopback."""

    root: Path
    coordinator: object
    node: object
    bundle: object
    counts: dict[str, int] = field(default_factory=lambda: {"score": 0, "register": 0, "flower": 0, "raw": 0})

    def stop(self) -> None:
        self.node.stop(0)
        self.coordinator.stop(0)


def start_servers(root: Path | None = None) -> Servers:
    from coordinator.config import AuditConfig, CoordinatorConfig, GatewayConfig
    from coordinator.gateway.server import start_coordinator
    from node.config import NodeConfig, NodeServeConfig
    from node.server import start_node
    from shared_backbone.model.signing import generate_keypair
    from tests.network_support import make_bundle, make_head

    root = Path(root or tempfile.mkdtemp(prefix="attribnet-fuzz-"))
    keys = generate_keypair(root / "keys")
    bundle = make_bundle(root / "bundle", *keys)
    make_head(root / "node", bundle, "fuzzed", seed=1)
    coordinator = start_coordinator(CoordinatorConfig(
        bundle=str(bundle.path), public_key=str(keys[1]), registry=str(root / "registry.sqlite"),
        gateway=GatewayConfig(host="127.0.0.1", port=0, max_message_mb=4, audit=AuditConfig(enabled=False)),  # random heads
    ))
    node = start_node(NodeConfig(source="fuzzed", backbone=str(bundle.path), public_key=str(keys[1]), state_dir=str(root / "node"),
                                 serve=NodeServeConfig(host="127.0.0.1", port=0, coordinator="127.0.0.1:9", max_batch=64,
                                                       max_message_mb=4, rpc_timeout=0.5, max_backoff=5.0)))
    node.registrar.gateway_credential = "fuzz-credential"
    return Servers(root, coordinator, node, bundle)


def _call(call, allowed: set, what: str):
    try:
        return call()
    except grpc.RpcError as exc:
        if exc.code() not in allowed:
            raise FuzzFailure(f"{what}: {exc.code().name}: {exc.details()}") from None
        return None


def score_target(servers: Servers, data: bytes) -> None:
    """HeadService.Score with random shapes, dtypes, byte lengths, NaN features and digests."""
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

    fdp = provider(data)
    rank = fdp.ConsumeIntInRange(0, 5)
    shape = [fdp.ConsumeIntInRange(0, 1 << 32 - 1) if fdp.ConsumeIntInRange(0, 9) == 0 else fdp.ConsumeIntInRange(0, 20)
             for _ in range(rank)]
    if fdp.ConsumeBool() and rank == 4:
        shape[1:] = [8, 8, 16]
    dtype = ["float16", "float32", "int8", "", fdp.ConsumeUnicodeNoSurrogates(12)][fdp.ConsumeIntInRange(0, 4)]
    features = fdp.ConsumeBytes(40000)
    if fdp.ConsumeBool() and len(shape) == 4 and 0 < shape[0] <= 64 and shape[1:] == [8, 8, 16]:
        features = (features * (1 + shape[0] * 2048 // max(len(features), 1)))[: shape[0] * 2048]
    digest = [servers.bundle.digest, "", fdp.ConsumeUnicodeNoSurrogates(70)][fdp.ConsumeIntInRange(0, 2)]
    request = pb.ScoreRequest(features=features, shape=shape, dtype=dtype, backbone_digest=digest)
    channel = rpc.open_channel(f"127.0.0.1:{servers.node.port}", max_message_mb=8)
    try:
        stub = pb_grpc.HeadServiceStub(channel)
        token = "fuzz-credential" if fdp.ConsumeIntInRange(0, 7) else _printable(fdp.ConsumeUnicodeNoSurrogates(20))
        response = _call(lambda: stub.Score(request, metadata=rpc.bearer(token), timeout=RPC_TIMEOUT), PROPER, f"Score shape={shape}")
        if response is not None and (len(response.raw_scores) != shape[0] or not all(0 <= s <= 1 for s in response.raw_scores)):
            raise FuzzFailure(f"Score answered {len(response.raw_scores)} scores for shape {shape}")
    finally:
        channel.close()
    servers.counts["score"] += 1


def _printable(text: str) -> str:
    """Keeps what gRPC metadata may carry: the client refuses anything else before it is sent."""
    return "".join(c for c in text if " " <= c <= "~").strip()


def _hostile_text(fdp, limit: int) -> str:
    choices = ["real", "unknown", "ambiguous", "unix:/tmp/s", "169.254.169.254:80", "[fe80::1]:1", "0.0.0.0:1",
               "127.0.0.1:0", "127.0.0.1:70000", "a" * 300, "../../etc", "", "fuzzed", "127.0.0.1:5", "localhost:9"]
    return choices[fdp.ConsumeIntInRange(0, len(choices) - 1)] if fdp.ConsumeBool() else fdp.ConsumeUnicodeNoSurrogates(limit)


def register_target(servers: Servers, data: bytes) -> None:
    """RegistryService.Register, signed, with hostile names, endpoints, calibrations, thresholds, metrics."""
    from shared_backbone.protocol import wire
    from shared_backbone.runtime import rpc
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
    from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc
    from tests.network_support import register_signed

    fdp = provider(data)
    metrics = {_hostile_text(fdp, 8): fdp.ConsumeFloat() for _ in range(fdp.ConsumeIntInRange(0, 6))}
    if fdp.ConsumeIntInRange(0, 5) == 0:
        metrics["big"] = {f"k{i}": "x" * 200 for i in range(fdp.ConsumeIntInRange(0, 200))}
    request = pb.RegisterRequest(
        node_id=_hostile_text(fdp, 20), source=_hostile_text(fdp, 20), endpoint=_hostile_text(fdp, 40),
        backbone_digest=[servers.bundle.digest, fdp.ConsumeUnicodeNoSurrogates(64)][fdp.ConsumeIntInRange(0, 1)],
        head_digest=["a" * 64, fdp.ConsumeUnicodeNoSurrogates(64)][fdp.ConsumeIntInRange(0, 1)],
        backbone_version=fdp.ConsumeUnicodeNoSurrogates(10), threshold=fdp.ConsumeFloat(),
        calibration=pb.Calibration(method=["platt", "temperature", "identity", _hostile_text(fdp, 8)][fdp.ConsumeIntInRange(0, 3)],
                                   a=fdp.ConsumeFloat(), b=fdp.ConsumeFloat(),
                                   positive_scores=[fdp.ConsumeFloat() for _ in range(fdp.ConsumeIntInRange(0, 5))]),
        metrics=wire.metrics_to_struct(metrics),
    )
    registry = servers.coordinator.registry
    token = ""
    if fdp.ConsumeBool():
        try:
            token = registry.enrol(request.node_id, request.source)
        except ValueError:
            token = ""
    channel = rpc.open_channel(f"127.0.0.1:{servers.coordinator.port}", max_message_mb=8)
    try:
        stub = pb_grpc.RegistryServiceStub(channel)
        _call(lambda: register_signed(stub, request, "fuzz-secret", token), PROPER, f"Register {request.node_id!r}")
        raw = fdp.ConsumeBytes(2000)
        method = channel.unary_unary("/attribution.v1.RegistryService/Register")
        _call(lambda: method(raw, timeout=RPC_TIMEOUT), RAW_BYTES_CODES | {grpc.StatusCode.UNAUTHENTICATED}, "Register(random bytes)")
        servers.counts["raw"] += 1
    finally:
        channel.close()
        registry.remove(request.node_id)
    servers.counts["register"] += 1


def flower_target(servers: Servers, data: bytes) -> None:
    """A fit_head reply with random record values through the Flower path's parser and admission."""
    from coordinator.admission import Admission
    from coordinator.flower.head_round import flower_identity, parse_fit_head_reply, register_results, reply_proof
    from tests.network_support import fit_head_reply

    fdp = provider(data)
    keys = ["node_id", "source", "endpoint", "head_digest", "backbone_digest", "backbone_version", "calibration",
            "threshold", "metrics", "public_key", "signature", "enrolment_proof", _hostile_text(fdp, 6)]
    values = {}
    for key in keys:
        kind = fdp.ConsumeIntInRange(0, 6)
        values[key] = [lambda: _hostile_text(fdp, 30), fdp.ConsumeFloat, lambda: fdp.ConsumeIntInRange(-5, 5),
                       lambda: fdp.ConsumeBytes(20), fdp.ConsumeBool,
                       lambda: json.dumps({"method": "platt", "a": fdp.ConsumeFloat(), "b": 0.0}),
                       lambda: servers.bundle.digest][kind]()
    admission = Admission(servers.coordinator.registry)
    challenge = admission.challenges.issue(flower_identity(7))
    reply = fit_head_reply(7, values)
    result = parse_fit_head_reply(7, reply, servers.bundle, 0.0)
    proofs = {7: reply_proof(reply, challenge)} if result.status == "trained" else {}
    register_results(admission, [result], proofs)
    if result.status not in ("rejected", "registered"):
        raise FuzzFailure(f"Flower reply ended as {result.status}")
    servers.counts["flower"] += 1


TARGETS = (score_target, register_target, flower_target)


def run_one(servers: Servers, data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](servers, data[1:])


def main(argv: list[str] | None = None) -> int:
    """Coverage-guided fuzzing with atheris (bounded by --runs); prints the counts as JSON."""
    import atheris

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10000)
    args, rest = parser.parse_known_args(argv)
    with atheris.instrument_imports(include=["coordinator", "node", "shared_backbone.protocol"]):
        servers = start_servers()
        import coordinator.flower.head_round  # noqa: F401 - instrumented for coverage guidance
    tried = {"inputs": 0}

    def one(data: bytes) -> None:
        tried["inputs"] += 1
        run_one(servers, data)
        if tried["inputs"] % 500 == 0 or tried["inputs"] == args.runs:  # libFuzzer exits without atexit
            print(json.dumps({"inputs_tried": tried["inputs"], "crashes": 0, **servers.counts}), file=sys.stderr, flush=True)

    atheris.Setup([sys.argv[0], f"-runs={args.runs}", "-max_len=4096", *rest], one)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
