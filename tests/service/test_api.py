"""``fapm serve``'s HTTP API through Starlette's test client: every route, each refusal with its
status and one-line message (and the next good request still answered), raw and multipart
bodies, 16-bit and gray images, the token, the limits, decompression bombs."""
from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from fapm_lib.decisions.results import predict_images
from fapm_lib.service.http_app import ServiceSettings, create_app
from fapm_lib.service.model_slot import ModelSlot, load_model
from tests.parts_support import part_image
from tests.service_support import encode, sample_images, sixteen_bit_png

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def slot(service_models: tuple[Path, Path, Path]) -> ModelSlot:
    return ModelSlot(load_model(service_models[1]))


@pytest.fixture(scope="module")
def client(slot: ModelSlot) -> Iterator[TestClient]:
    with TestClient(create_app(slot, ServiceSettings(max_bytes=200_000, max_pixels=1_000_000))) as test_client:
        yield test_client


def png_of(path: Path) -> bytes:
    return path.read_bytes()


def check_error(answer, status: int, starts: str) -> None:
    assert answer.status_code == status, answer.text
    message = answer.json()["error"]
    assert message.startswith(starts) and "\n" not in message and "Traceback" not in message, message


def good_request_still_works(client: TestClient, path: Path) -> None:
    answer = client.post("/predict", content=png_of(path), headers={"Content-Type": "image/png"})
    assert answer.status_code == 200 and answer.json()["decision"] in ("OK", "NG")


def test_raw_body_and_multipart_give_the_library_s_answer(client: TestClient, slot: ModelSlot,
                                                          service_models) -> None:
    images = sample_images(service_models[0])
    expected = [predict_images(slot.current.detector, [str(p)])[0] for p in images]  # one by one, as served
    for path, result in zip(images, expected):
        raw = client.post("/predict", content=png_of(path), headers={"Content-Type": "image/png"}).json()
        form = client.post("/predict", files={"file": (path.name, png_of(path), "image/png")}).json()
        for body in (raw, form):
            assert body["decision"] == result.decision
            assert body["raw_score"] == pytest.approx(result.raw_score, rel=1e-6)
            assert body["score"] == pytest.approx(result.score, rel=1e-5)
            assert body["ng_pixel_share"] == pytest.approx(float(result.mask.mean()), abs=1e-3)
            assert body["model"] == {"id": slot.current.id, "name": "model.safetensors"}
            assert body["image_threshold"] == slot.current.detector.calibration.image_threshold
            assert body["ms"] > 0 and body["batch_size"] >= 1 and (body["width"], body["height"]) == (64, 64)
    assert {raw["decision"] for raw in [client.post("/predict", content=png_of(p), headers={
        "Content-Type": "image/png"}).json() for p in images]} == {"OK", "NG"}


@pytest.mark.parametrize("fmt", ["gray PNG", "16-bit PNG", "JPEG", "BMP", "TIFF", "RGBA PNG", "non-square"])
def test_formats_bit_depths_and_sizes(client: TestClient, slot: ModelSlot, fmt: str) -> None:
    part = part_image(900, defect=True)
    data = {"gray PNG": lambda: encode(part, "PNG", "L"), "16-bit PNG": lambda: sixteen_bit_png(part),
            "JPEG": lambda: encode(part, "JPEG"), "BMP": lambda: encode(part, "BMP"),
            "TIFF": lambda: encode(part, "TIFF"), "RGBA PNG": lambda: encode(part, "PNG", "RGBA"),
            "non-square": lambda: encode(np.concatenate([part, part], axis=1))}[fmt]()
    answer = client.post("/predict", content=data, headers={"Content-Type": "image/whatever"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    expected = predict_images(slot.current.detector, [Image.open(io.BytesIO(data))])[0]
    assert body["raw_score"] == pytest.approx(expected.raw_score, rel=1e-5) and body["decision"] == expected.decision
    assert (body["width"], body["height"]) == Image.open(io.BytesIO(data)).size


def test_sixteen_bit_gray_scores_as_its_eight_bit_gray(client: TestClient) -> None:
    part = part_image(901)
    eight = client.post("/predict", content=encode(part, "PNG", "L"), headers={"Content-Type": "image/png"}).json()
    sixteen = client.post("/predict", content=sixteen_bit_png(part), headers={"Content-Type": "image/png"}).json()
    assert sixteen["raw_score"] == pytest.approx(eight["raw_score"], rel=1e-6)


def test_heatmap_and_explanation(client: TestClient, service_models) -> None:
    path = sample_images(service_models[0])[0]
    body = client.post("/predict?heatmap=1&explain=1", content=png_of(path),
                       headers={"Content-Type": "image/png"}).json()
    assert body["heatmap"].startswith("data:image/png;base64,")
    import base64

    picture = Image.open(io.BytesIO(base64.b64decode(body["heatmap"].split(",", 1)[1])))
    assert picture.width > 64 and picture.height > 64  # the image, the colour bar and the caption
    why = body["explanation"]
    assert why["panel"].startswith("data:image/png;base64,") and len(why["layers"]) == 2
    assert why["layers"][0]["train_image"].endswith(".png")
    plain = client.post("/predict", content=png_of(path), headers={"Content-Type": "image/png"}).json()
    assert "heatmap" not in plain and "explanation" not in plain


def bomb_png(side: int) -> bytes:
    """A valid PNG header for a ``side x side`` gray image whose pixel data compresses to a few KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    rows = zlib.compress(b"\0" * (side + 1) * 64, 9)  # only the first rows: never decoded anyway
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


BAD = {
    "text as image/png": (b"hello, not an image", "image/png", 415, "not an image"),
    "truncated PNG": ("truncated", "image/png", 400, "truncated or corrupt PNG image"),
    "empty body": (b"", "image/png", 400, "empty body"),
    "GIF": ("gif", "image/gif", 415, "GIF images are not accepted"),
    "wrong content type": ("png", "text/plain", 415, "Content-Type text/plain is not accepted"),
    "no content type": ("png", "", 415, "Content-Type none is not accepted"),
    "too large": (b"\0" * 200_001, "image/png", 413, "upload too large: 200001 bytes"),
    "decompression bomb": ("bomb", "image/png", 413, "image of 10000x10000 pixels refused as a possible "
                                                     "decompression bomb: more than 1000000 pixels"),
    "huge decompression bomb": ("huge bomb", "image/png", 413, "image refused as a possible decompression bomb"),
    "multipart without file": ("form", "multipart/form-data; boundary=xyz", 400, "the multipart form has no file"),
    "broken multipart": (b"garbage", "multipart/form-data", 400, "malformed multipart form"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_its_status_and_one_line(client: TestClient, service_models, case: str) -> None:
    body, content_type, status, starts = BAD[case]
    good = sample_images(service_models[0])[0]
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    body = {"truncated": png_of(good)[:300], "gif": gif.getvalue(), "png": png_of(good), "bomb": bomb_png(10000),
            "huge bomb": bomb_png(40000),
            "form": b'--xyz\r\nContent-Disposition: form-data; name="other"\r\n\r\nvalue\r\n--xyz--\r\n'}.get(
        body, body) if isinstance(body, str) else body
    answer = client.post("/predict", content=body, headers={"Content-Type": content_type} if content_type else {})
    check_error(answer, status, starts)
    good_request_still_works(client, good)


def test_unknown_query_parameter_and_value_are_refused(client: TestClient, service_models) -> None:
    good = png_of(sample_images(service_models[0])[0])
    check_error(client.post("/predict?heatmapp=1", content=good, headers={"Content-Type": "image/png"}), 400,
                "unknown query parameter 'heatmapp'")
    check_error(client.post("/predict?heatmap=maybe", content=good, headers={"Content-Type": "image/png"}), 400,
                "heatmap='maybe': use 1 or 0")


def test_routes_health_model_metrics_page(client: TestClient, slot: ModelSlot) -> None:
    assert client.get("/health").json()["model"]["id"] == slot.current.id
    info = client.get("/model").json()
    assert info["id"] == info["sha256"][:12] and info["format_version"] == 3 and info["calibrated"]
    assert info["settings"]["grid"] == 2 and len(info["normal_scores"]) == 10
    assert info["thresholds"]["image_threshold"] == slot.current.detector.calibration.image_threshold
    text = client.get("/metrics").text
    assert "# TYPE fapm_requests_total counter" in text and 'fapm_predict_seconds{quantile="0.99"}' in text
    assert f'fapm_model_info{{id="{slot.current.id}",name="model.safetensors"}} 1' in text
    page = client.get("/")
    assert page.status_code == 200 and "static/page.js" in page.text
    assert client.get("/static/page.js").status_code == 200
    check_error(client.get("/nope"), 404, "GET /nope: Not Found")
    check_error(client.get("/predict"), 405, "GET /predict: Method Not Allowed")


def test_token_guards_every_route_but_health_and_the_page(slot: ModelSlot, service_models) -> None:
    good = png_of(sample_images(service_models[0])[0])
    with TestClient(create_app(slot, ServiceSettings(token=TOKEN))) as client:
        for method, path in (("post", "/predict"), ("get", "/model"), ("get", "/metrics"), ("post", "/model")):
            answer = client.request(method.upper(), path, content=good, headers={
                "Content-Type": "image/png", "Authorization": "Bearer wrong"})
            check_error(answer, 401, "missing or wrong token")
            assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
        answer = client.post("/predict", content=good, headers={"Content-Type": "image/png",
                                                                "Authorization": f"Bearer {TOKEN}"})
        assert answer.status_code == 200


def test_a_bad_swap_is_refused_and_the_live_model_stays(client: TestClient, slot: ModelSlot, tmp_path: Path,
                                                        service_models) -> None:
    live = slot.current.id
    damaged = tmp_path / "damaged.safetensors"
    data = bytearray(service_models[2].read_bytes())
    data[-10] ^= 0xFF
    damaged.write_bytes(bytes(data))
    check_error(client.post("/model", json={"path": str(damaged)}), 422,
                f"model not swapped, {live} stays live: {damaged}: checksum mismatch")
    check_error(client.post("/model", json={"path": str(tmp_path / "none.safetensors")}), 422,
                f"model not swapped, {live} stays live:")
    check_error(client.post("/model", content=b"{", headers={"Content-Type": "application/json"}), 400,
                'send JSON {"path"')
    assert slot.current.id == live
    good_request_still_works(client, sample_images(service_models[0])[0])
