"""Hostile uploads: every input is a valid answer or INVALID_ARGUMENT with a reason, never a crash.

Property tests (hypothesis) over the decoding path, first in process (`load_image`, many
examples), then through a real gateway (fewer examples, each one a real gRPC call): random bytes,
truncated PNG/JPEG/WebP/GIF/BMP, decompression bombs, 16-bit, palette, CMYK, animated images and
formats outside the allow-list. Peak memory of a request of 64 bombs is measured in a child process.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from shared_backbone.model.preprocessing import ImageDecodeError, PixelBudget, load_image
from tests.network_support import REPO

SIZE = 16
ACCEPTED = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
REFUSED = ("TIFF", "PPM", "ICO", "TGA", "PCX")


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def odd_images() -> dict[str, bytes]:
    """Valid images in modes a decoder must convert: 16-bit, palette, CMYK, 1-bit, alpha, animated."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))
    frames = [rgb, rgb.rotate(90), rgb.rotate(180)]
    return {
        "png-16bit": encode(Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)), "PNG"),
        "png-palette": encode(rgb.convert("P"), "PNG"),
        "png-1bit": encode(rgb.convert("1"), "PNG"),
        "png-rgba": encode(rgb.convert("RGBA"), "PNG"),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-grey": encode(rgb.convert("L"), "JPEG"),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp-animated": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "bmp": encode(rgb, "BMP"),
    }


def bomb(side: int = 4000) -> bytes:
    """A ~2 KB PNG of a side x side 1-bit image (16 megapixels at 4000: 48 MB once RGB)."""
    return encode(Image.new("1", (side, side)), "PNG", optimize=True)


def valid_or_refused(data: bytes, **limits) -> np.ndarray | None:
    """The decoded image, or None when it was refused with ImageDecodeError (anything else fails the test)."""
    try:
        rgb = load_image(data, SIZE, **limits)
    except ImageDecodeError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None
    assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8
    return rgb


@st.composite
def truncated(draw) -> bytes:
    fmt = draw(st.sampled_from(ACCEPTED))
    side = draw(st.integers(1, 48))
    pixels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (side, side, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), fmt)
    return data[: draw(st.integers(0, len(data)))]


@st.composite
def flipped(draw) -> bytes:
    """A valid PNG or JPEG with a few bytes overwritten (corrupt chunks, bad lengths, odd markers)."""
    data = bytearray(encode(Image.fromarray(np.full((32, 32, 3), 90, np.uint8)), draw(st.sampled_from(("PNG", "JPEG")))))
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


hostile = st.one_of(st.binary(max_size=2048), truncated(), flipped())


@settings(max_examples=300, deadline=None)
@given(hostile)
def test_any_bytes_decode_or_are_refused_with_a_reason(data):
    valid_or_refused(data)


def test_odd_modes_and_animations_decode():
    for name, data in odd_images().items():
        assert valid_or_refused(data) is not None, name


@pytest.mark.parametrize("fmt", REFUSED)
def test_formats_outside_the_allow_list_are_refused(fmt):
    data = encode(Image.new("RGB", (8, 8), (9, 9, 9)), fmt)
    with pytest.raises(ImageDecodeError, match="not a recognised image format .accepted: PNG, JPEG"):
        load_image(data, SIZE)


def test_bombs_are_refused_before_they_are_decoded():
    data = bomb()
    assert len(data) < 4096
    with pytest.raises(ImageDecodeError, match="4000x4000 pixels, above the limit of 1000000"):
        load_image(data, SIZE, max_pixels=1_000_000)
    budget = PixelBudget(20_000_000)
    assert valid_or_refused(data, max_pixels=16_000_000, budget=budget) is not None
    with pytest.raises(ImageDecodeError, match="per-request budget"):
        load_image(data, SIZE, max_pixels=16_000_000, budget=budget)


def test_huge_jpeg_is_decoded_reduced():
    from shared_backbone.model.preprocessing import decode_image

    data = encode(Image.new("RGB", (3000, 2000), (10, 200, 30)), "JPEG")
    assert decode_image(data, target_size=64).size == (375, 250)  # 1/8 scale: short side still >= 2 x 64
    assert decode_image(data, target_size=64, max_pixels=100_000).size == (375, 250)  # the limit applies reduced
    assert decode_image(data).size == (3000, 2000)


PEAK_SCRIPT = """
import json, resource, sys
from shared_backbone.model.preprocessing import ImageDecodeError, PixelBudget, load_image
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
budget, refused = PixelBudget(40_000_000), 0
for _ in range(64):
    try:
        load_image(data, 64, max_pixels=16_000_000, budget=budget)
    except ImageDecodeError:
        refused += 1
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"refused": refused, "peak_mb": (after - before) / 1024}))
"""


def test_a_request_of_64_bombs_stays_within_its_budget(tmp_path):
    """64 x 16 megapixels would be 3 GB as RGB; the budget decodes two of them and refuses the rest."""
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb())
    done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=REPO, check=True)
    report = json.loads(done.stdout)
    assert report["refused"] == 62
    assert report["peak_mb"] < 150, report


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, keypair):
    """A real gateway without nodes: every answer is the detector's alone, which is all decoding needs."""
    from shared_backbone.runtime.gateway_client import AttributionClient
    from tests.network_support import make_bundle, start_gateway

    root = tmp_path_factory.mktemp("hostile")
    bundle = make_bundle(root / "bundle", *keypair)
    server = start_gateway(bundle, keypair[1], root / "registry.sqlite", max_pixels=1_000_000, max_request_pixels=2_000_000)
    client = AttributionClient(f"127.0.0.1:{server.port}", timeout=30)
    yield client
    client.close()
    server.stop(0.2)


def attribute_or_invalid(client, images: list[bytes]) -> list | None:
    from shared_backbone.runtime.gateway_client import GatewayError

    try:
        results = client.attribute(images)
    except GatewayError as exc:
        assert exc.code == grpc.StatusCode.INVALID_ARGUMENT, exc
        assert exc.details.startswith("image ") and "\n" not in exc.details, exc.details
        return None
    assert len(results) == len(images) and all(0.0 <= r.fake_score <= 1.0 for r in results)
    return results


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hostile, min_size=1, max_size=4))
def test_gateway_answers_or_refuses_hostile_uploads(gateway, images):
    attribute_or_invalid(gateway, images)


def test_gateway_decodes_odd_images_refuses_bombs_and_keeps_serving(gateway):
    odd = list(odd_images().values())
    assert attribute_or_invalid(gateway, odd[:8]) is not None
    assert attribute_or_invalid(gateway, [bomb()]) is None  # 16 MP > max_pixels
    assert attribute_or_invalid(gateway, [bomb(900)] * 3) is None  # 3 x 0.81 MP > the request's 2 MP budget
    assert attribute_or_invalid(gateway, [encode(Image.new("RGB", (8, 8)), "TIFF")]) is None
    assert gateway.health() == "SERVING"
