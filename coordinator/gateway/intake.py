"""What an Attribute request passes before the trunk: limits, the client's rate, decoding.

Every refusal is one line with a gRPC status: INVALID_ARGUMENT for a request that can never
succeed (no images, too many, too many heatmaps, an image that is not an accepted format, corrupt,
too large, or over the request's pixel budget, naming the image's index), RESOURCE_EXHAUSTED for
a client over its rate (retry later). An image too small to judge (shorter side below the
backbone's input size) is no refusal: it is set aside with its reason and answered out of scope,
never upscaled, while the request's other images go on. Decoding runs in a small thread pool for large requests:
Pillow's decoders and the resize release the GIL, so big images decode on both cores.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np

from coordinator.config import GatewayConfig
from shared_backbone.model import preprocessing
from shared_backbone.model.preprocessing import ImageDecodeError, ImageTooSmall, InputSpec, PixelBudget
from shared_backbone.runtime import rpc
from shared_backbone.runtime.prometheus import REJECT_RATE, ServerMetrics
from shared_backbone.protocol.proto.attribution.v1 import attribution_pb2 as pb
from shared_backbone.runtime.batching import RateLimiter, client_key

# Below this many encoded bytes a request decodes in its own thread: handing small images to the
# pool costs more than the decode (a 64 px PNG decodes in ~0.1 ms, mostly Python).
PARALLEL_DECODE_BYTES = 256 * 1024


class Intake:
    """Admission and decoding for the gateway's Attribute calls."""

    def __init__(self, config: GatewayConfig, spec: InputSpec, metrics: ServerMetrics) -> None:
        self.config = config
        self.spec = spec
        self.metrics = metrics
        self.limiter = RateLimiter(config.rate_limit, config.rate_burst)
        self.pool = ThreadPoolExecutor(config.decode_workers, thread_name_prefix="decode")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def admit(self, request: pb.AttributeRequest, context: grpc.ServicerContext) -> None:
        """Aborts the call unless its image count, heatmap count and the client's rate allow it."""
        count, config = len(request.images), self.config
        if not count:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request holds no images")
        if count > config.max_images:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{count} images in one request; the limit is {config.max_images}")
        if request.heatmap and count > config.max_heatmap_images:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{count} heatmaps in one request; the limit is {config.max_heatmap_images} (send fewer images with heatmap)",
            )
        if self.limiter.enabled:
            wait = self.limiter.take(client_key(context.peer(), rpc.metadata_value(context, rpc.AUTHORIZATION)), count)
            if wait > 0:
                self.metrics.rejected.labels(reason=REJECT_RATE).inc()
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"over this client's rate limit of {config.rate_limit:g} images/s; retry in {wait:.2f}s",
                )

    def decode(self, images: list[bytes], context: grpc.ServicerContext) -> tuple[np.ndarray | None, list[np.ndarray], dict[int, str]]:
        """(model inputs, uint8 RGB images) of the images to judge, in request order (None: no such image),
        and {index: reason} of those too small to judge; INVALID_ARGUMENT naming the first bad image."""
        budget = PixelBudget(self.config.max_request_pixels)
        jobs = list(enumerate(images))
        try:
            if len(images) > 1 and sum(len(data) for data in images) >= PARALLEL_DECODE_BYTES:
                decoded = list(self.pool.map(lambda job: self._decode_one(*job, budget), jobs))
            else:
                decoded = [self._decode_one(index, data, budget) for index, data in jobs]
        except _BadImage as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        rgbs = [rgb for rgb in decoded if not isinstance(rgb, str)]
        out_of_scope = {index: reason for index, reason in enumerate(decoded) if isinstance(reason, str)}
        return (preprocessing.to_model_inputs(rgbs, self.spec) if rgbs else None), rgbs, out_of_scope

    def _decode_one(self, index: int, data: bytes, budget: PixelBudget) -> np.ndarray | str:
        """The image's uint8 RGB array, or the reason it is too small to judge."""
        try:
            return preprocessing.load_image(data, self.spec.image_size, max_pixels=self.config.max_pixels, budget=budget,
                                            refuse_upscaling=True)
        except ImageTooSmall as exc:
            return str(exc)
        except ImageDecodeError as exc:
            raise _BadImage(f"image {index}: {exc}") from None
        except (ValueError, OSError, MemoryError) as exc:
            raise _BadImage(f"image {index}: cannot be processed ({exc})") from None


class _BadImage(Exception):
    """An image of the request that cannot be used; the message names its index."""
