"""The embedding service over real HTTP: every endpoint, every refusal, batching under load."""

from __future__ import annotations

import base64
import re
import threading

import httpx
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_cases import API_KEY, MAX_BODY, MAX_GAUSSIANS, MAX_IMAGES

import gsvision

AUTH = {"Authorization": f"Bearer {API_KEY}"}
GSV = {**AUTH, "Content-Type": "application/octet-stream"}


def reference(service, payload: bytes) -> np.ndarray:
    """In-process: decode, encode_splats, normalise (what the service must return)."""
    with torch.inference_mode():
        emb = service.model.encode_splats(gsvision.decode(payload), normalize=True)
    return emb.numpy()


def text_reference(service, texts: list[str]) -> np.ndarray:
    with torch.inference_mode():
        emb = service.model.encode_text(service.tokenizer(texts), normalize=True)
    return emb.numpy()


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


# ===================================================================================== success
def test_healthz_needs_no_key(http, service):
    r = http.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["dim"] == service.dim == 128
    assert body["num_latents"] == 8 and body["max_gaussians"] == MAX_GAUSSIANS


def test_embed_packed_payload_equals_in_process(http, service, packed):
    r = http.post("/v1/embed", content=packed, headers=GSV)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 4 and body["dim"] == 128 and body["normalized"] is True
    got = np.array(body["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, reference(service, packed), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_embed_multipart_keeps_order_and_binary_formats(http, service, payloads):
    files = [
        ("payload", (f"{i}.gsv", p, "application/octet-stream")) for i, p in enumerate(payloads)
    ]
    expected = np.concatenate([reference(service, p) for p in payloads[::-1]])
    r = http.post("/v1/embed", files=files[::-1], headers=AUTH, params={"format": "f32"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-embedding-shape"] == "4,128" and r.headers["x-embedding-dtype"] == "float32"
    got = np.frombuffer(r.content, "<f4").reshape(4, 128)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # float16 through the Accept header; un-normalised on request
    r = http.post(
        "/v1/embed",
        content=payloads[0],
        headers={**GSV, "Accept": "application/octet-stream"},
        params={"normalize": "false"},
    )
    assert r.headers["x-embedding-dtype"] == "float16"
    raw = service.model.encode_splats(gsvision.decode(payloads[0])).detach().numpy()
    got = np.frombuffer(r.content, "<f2").reshape(1, 128).astype(np.float32)
    np.testing.assert_allclose(got, raw, rtol=2e-3, atol=2e-3)


def test_embed_text_equals_in_process(http, service):
    texts = ["a red circle", "a small blue star on a grey background"]
    r = http.post("/v1/embed_text", json={"texts": texts}, headers=AUTH)
    assert r.status_code == 200, r.text
    got = np.array(r.json()["embeddings"], dtype=np.float32)
    np.testing.assert_allclose(got, text_reference(service, texts), atol=1e-5)


def test_classify_json_and_multipart(http, service, packed, payloads):
    classes = ["red circle", "blue star", "green square"]
    r = http.post(
        "/v1/classify",
        json={"payload": base64.b64encode(packed).decode(), "classes": classes, "top_k": 2},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4
    img = reference(service, packed)
    txt = text_reference(service, [f"a photo of a {c}." for c in classes])
    logits = service.logit_scale * img @ txt.T
    probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    for res, p in zip(results, probs, strict=True):
        np.testing.assert_allclose(res["scores"], p, atol=1e-4)
        assert [t["class"] for t in res["top"]] == [classes[i] for i in np.argsort(-p)[:2]]
    r = http.post(
        "/v1/classify",
        files={"payload": ("a.gsv", payloads[1])},
        data={"classes": classes, "templates": ["{c}", "a picture of a {c}"], "top_k": "1"},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert len(res["top"]) == 1 and abs(sum(res["scores"]) - 1) < 1e-5


def test_openapi_lists_the_endpoints(http):
    spec = http.get("/openapi.json").json()
    for path in ("/v1/embed", "/v1/embed_text", "/v1/classify", "/healthz", "/metrics"):
        assert path in spec["paths"]
    body = spec["paths"]["/v1/embed"]["post"]["requestBody"]["content"]
    assert "application/octet-stream" in body and "multipart/form-data" in body


def test_concurrent_clients_get_their_own_embeddings(live, service, payloads):
    """16 clients at once: every answer is the right one, whatever batch it shared."""
    expected = [reference(service, p) for p in payloads]
    answers: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(16)

    def client(i: int) -> None:
        with httpx.Client(base_url=live.url, timeout=60) as c:
            barrier.wait()
            r = c.post("/v1/embed", content=payloads[i % 4], headers=GSV, params={"format": "f32"})
            r.raise_for_status()
            answers[i] = np.frombuffer(r.content, "<f4").reshape(1, -1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == list(range(16))
    for i, got in answers.items():
        np.testing.assert_allclose(got, expected[i % 4], atol=1e-5)


# ==================================================================================== refusals
@pytest.mark.parametrize(
    "headers, message",
    [
        ({}, "missing API key"),
        ({"Authorization": "Bearer not-the-key"}, "wrong API key"),
        ({"Authorization": f"Basic {API_KEY}"}, "wrong API key"),
        ({"Authorization": f"Bearer {API_KEY}x"}, "wrong API key"),
    ],
)
def test_key_required(http, packed, headers, message):
    for path in ("/v1/embed", "/v1/embed_text", "/v1/classify", "/metrics"):
        r = http.request(
            "GET" if path == "/metrics" else "POST",
            path,
            content=None if path == "/metrics" else packed,
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        assert r.status_code == 401, (path, r.text)
        assert message in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_body_over_the_limit(http):
    big = b"\0" * (MAX_BODY + 1)
    r = http.post("/v1/embed", content=big, headers=GSV)
    assert r.status_code == 413 and "limit" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while reading
        for _ in range(MAX_BODY // 4096 + 2):
            yield b"\0" * 4096

    r = http.post("/v1/embed", content=chunks(), headers=GSV)
    assert r.status_code == 413 and "limit" in r.json()["detail"]


def test_too_many_gaussians_and_images(http, too_many_gaussians, payloads):
    r = http.post("/v1/embed", content=too_many_gaussians, headers=GSV)
    assert r.status_code == 422
    assert r.json()["detail"] == f"image 0: 100 Gaussians; the limit is {MAX_GAUSSIANS}"
    files = [("payload", (f"{i}.gsv", payloads[i % 4])) for i in range(MAX_IMAGES + 1)]
    r = http.post("/v1/embed", files=files, headers=AUTH)
    assert r.status_code in (400, 422)  # the form parser may stop first at max_files
    assert str(MAX_IMAGES) in r.text or "Too many files" in r.text


def test_malformed_payloads_get_the_codec_message(http, packed, payloads):
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0xFF
    cases = {
        "truncated": (packed[: len(packed) // 2], "truncated"),
        "bad checksum": (bytes(flipped), "checksum"),
        "trailing garbage": (packed + b"junk", "checksum"),
        "not a payload": (b"GIF89a" + b"\0" * 200, "magic"),
        "empty": (b"", "empty payload"),
    }
    for name, (body, word) in cases.items():
        r = http.post("/v1/embed", content=body, headers=GSV)
        assert r.status_code == 400, (name, r.text)
        assert word in r.json()["detail"].lower(), (name, r.json())
    files = [("payload", ("a.gsv", payloads[0])), ("payload", ("b.gsv", packed[:-1]))]
    r = http.post("/v1/embed", files=files, headers=AUTH)
    assert r.status_code == 400 and r.json()["detail"].startswith("payload 1: ")
    assert http.get("/healthz").status_code == 200  # still serving


def test_wrong_content_types(http, packed):
    r = http.post("/v1/embed", content=packed, headers={**AUTH, "Content-Type": "image/jpeg"})
    assert r.status_code == 415 and "application/octet-stream" in r.json()["detail"]
    r = http.post("/v1/embed", content=packed, headers=AUTH)  # none at all
    assert r.status_code == 415
    r = http.post("/v1/embed", data={"x": "1"}, files={"f": ("x.txt", b"")}, headers=AUTH)
    assert r.status_code == 400
    r = http.post(
        "/v1/embed_text", content=b"texts", headers={**AUTH, "Content-Type": "text/plain"}
    )
    assert r.status_code == 415


def test_bad_text_and_classify_requests(http, packed):
    def post(path, headers=None, **kw):
        return http.post(path, headers={**AUTH, **(headers or {})}, **kw)

    assert post("/v1/embed_text", json={"texts": []}).status_code == 422
    assert post("/v1/embed_text", json={"text": ["a"]}).status_code == 422
    assert post("/v1/embed_text", json={"texts": ["a"] * 257}).status_code == 422
    assert post("/v1/embed_text", json={"texts": ["a" * 1001]}).status_code == 422
    r = post("/v1/embed_text", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["detail"]
    b64 = base64.b64encode(packed).decode()
    r = post("/v1/classify", json={"payload": "@@@", "classes": ["a"]})
    assert r.status_code == 400 and "base64" in r.json()["detail"]
    assert post("/v1/classify", json={"payload": b64, "classes": ["a", "a"]}).status_code == 422
    r = post("/v1/classify", json={"payload": b64, "classes": ["a"], "templates": ["no slot"]})
    assert r.status_code == 422 and "{c}" in r.json()["detail"]
    r = post(
        "/v1/classify", json={"payload": base64.b64encode(packed[:-2]).decode(), "classes": ["a"]}
    )
    assert r.status_code == 400 and "checksum" in r.json()["detail"]


def test_metrics_count_requests_bytes_and_batches(http, packed):
    http.post("/v1/embed", content=packed, headers=GSV)
    text = http.get("/metrics", headers=AUTH).text
    assert 'gsvision_requests_total{endpoint="/v1/embed",status="200"}' in text
    assert 'gsvision_requests_total{endpoint="/v1/embed",status="401"}' in text
    received = re.search(
        r'^gsvision_received_bytes_total\{endpoint="/v1/embed"\} (\S+)$', text, re.M
    )
    assert received and float(received.group(1)) >= len(packed)
    images = float(re.search(r"^gsvision_images_embedded_total (\S+)$", text, re.M).group(1))
    batched = float(re.search(r"^gsvision_batch_images_sum (\S+)$", text, re.M).group(1))
    assert images == batched >= 4
    assert "gsvision_request_duration_seconds_bucket" in text


def test_rate_limit_per_key(start_server, packed):
    server = start_server(rate_limit=0.5, burst=2)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        codes = [c.post("/v1/embed", content=packed, headers=GSV).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.post("/v1/embed", content=packed, headers=GSV)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "rate limit" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200  # not limited


def test_without_a_key_the_service_is_open(start_server, packed):
    server = start_server(api_key=None)
    r = httpx.post(
        f"{server.url}/v1/embed",
        content=packed,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_payloads_never_break_the_service(http, packed, data):
    """Random edits of a valid payload (and random bytes): a 4xx naming the problem, never a 5xx."""
    body = bytearray(packed)
    edit = data.draw(st.sampled_from(["flip", "cut", "insert", "random", "header"]))
    if edit == "random":
        body = bytearray(data.draw(st.binary(min_size=0, max_size=400)))
    elif edit == "cut":
        body = body[: data.draw(st.integers(0, len(body) - 1))]
    elif edit == "insert":
        at = data.draw(st.integers(0, len(body)))
        body[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    else:  # flip bytes anywhere, or in the headers
        hi = 96 if edit == "header" else len(body)
        for _ in range(data.draw(st.integers(1, 4))):
            body[data.draw(st.integers(0, hi - 1))] ^= data.draw(st.integers(1, 255))
    r = http.post("/v1/embed", content=bytes(body), headers=GSV)
    if bytes(body) == packed:
        assert r.status_code == 200
    else:
        assert r.status_code in (400, 422), r.text
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]
