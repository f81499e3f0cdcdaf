"""Load generators for the gateway: closed loop (C clients, each sending its next request when the
last returns) and open loop (requests at a fixed rate, whatever the answers do).

Clients are asyncio tasks on one event loop (grpc.aio), each with its own channel and connection,
so 32 clients cost one Python thread, not 32 competing for the GIL with the measured servers.
Every request has a deadline; the run ends after `warmup + seconds` whatever the servers do.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field

import grpc
import numpy as np

from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2_grpc as pb_grpc

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 64 << 20),
                   ("grpc.max_receive_message_length", 64 << 20)]


@dataclass
class LoadResult:
    """What one measured window saw: completed images and the latency of every completed request."""

    clients: int
    batch: int
    seconds: float
    images: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")

    def summary(self) -> dict:
        return {
            "images_per_s": self.images_per_s, "requests": len(self.latencies), "p50_ms": self.percentile_ms(50),
            "p95_ms": self.percentile_ms(95), "p99_ms": self.percentile_ms(99), "errors": sum(self.errors.values()),
            "error_codes": dict(self.errors),
        }


async def _client(target: str, requests: list[pb.AttributeRequest], measure_from: float, until: float,
                  timeout: float, result: LoadResult) -> None:
    """One client: the next request as soon as the last one returned; what completes in the window counts."""
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.AttributionServiceStub(channel)
        for request in itertools.cycle(requests):
            sent = time.perf_counter()
            if sent >= until:
                return
            try:
                await stub.Attribute(request, timeout=timeout)
                code = None
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
            done = time.perf_counter()
            if not measure_from <= done <= until:
                continue  # completed during the warm-up, or after the window closed
            if code is None:
                result.images += len(request.images)
                result.latencies.append(done - sent)
            else:
                result.errors[code] = result.errors.get(code, 0) + 1


async def _run(target: str, images: list[bytes], clients: int, batch: int, warmup: float, seconds: float,
               timeout: float) -> LoadResult:
    result = LoadResult(clients, batch, seconds)
    start = time.perf_counter()
    tasks = []
    for client in range(clients):
        offset = client * batch
        requests = [pb.AttributeRequest(images=[images[(offset + i * batch + j) % len(images)] for j in range(batch)])
                    for i in range(8)]
        tasks.append(_client(target, requests, start + warmup, start + warmup + seconds, timeout, result))
    await asyncio.gather(*tasks)
    return result


def closed_loop(target: str, images: list[bytes], *, clients: int, batch: int, warmup: float, seconds: float,
                timeout: float = 30.0) -> LoadResult:
    """Runs C clients sending batches of B images for `warmup` (not counted) then `seconds` (measured)."""
    return asyncio.run(_run(target, images, clients, batch, warmup, seconds, timeout))


async def _open(target: str, images: list[bytes], rate: float, batch: int, warmup: float, seconds: float,
                timeout: float, max_inflight: int) -> LoadResult:
    result = LoadResult(0, batch, seconds)
    requests = [pb.AttributeRequest(images=[images[(i * batch + j) % len(images)] for j in range(batch)]) for i in range(64)]
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(8)]
    stubs = [pb_grpc.AttributionServiceStub(channel) for channel in channels]
    start = time.perf_counter()
    measure_from, until = start + warmup, start + warmup + seconds
    pending: set[asyncio.Task] = set()

    async def one(index: int, scheduled: float) -> None:
        try:
            await stubs[index % len(stubs)].Attribute(requests[index % len(requests)], timeout=timeout)
            code = None
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        done = time.perf_counter()
        if measure_from <= scheduled and done <= until:
            if code is None:
                result.images += batch
                result.latencies.append(done - scheduled)  # from the scheduled send: no coordinated omission
            else:
                result.errors[code] = result.errors.get(code, 0) + 1

    for index in itertools.count():
        scheduled = start + index / rate
        if scheduled >= until:
            break
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
        if len(pending) >= max_inflight:
            result.errors["CLIENT_BACKLOG"] = result.errors.get("CLIENT_BACKLOG", 0) + 1
            continue
        task = asyncio.create_task(one(index, scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    for channel in channels:
        await channel.close()
    return result


def open_loop(target: str, images: list[bytes], *, rate: float, batch: int, warmup: float, seconds: float,
              timeout: float = 30.0, max_inflight: int = 256) -> LoadResult:
    """Sends `rate` requests of B images per second for `warmup` then `seconds` (measured), answers or not."""
    return asyncio.run(_open(target, images, rate, batch, warmup, seconds, timeout, max_inflight))
