"""The edge side: fit images locally, encode them at a byte budget, send the splats, get embeddings.

``EdgeClient(url, api_key).embed_images(paths_or_arrays, ratio=20)`` fits with the CPU kernel,
encodes each image (rate control of :mod:`gsvision.codec.rate`), posts the payloads to
``/v1/embed`` and returns the embeddings with a per-image account of the bytes sent against the
same image as a JPEG and as raw pixels. Connection errors, 5xx and 429 answers are retried with
exponential backoff (honouring ``Retry-After``); other refusals raise :class:`ServiceError` with
the service's message. ``gsvision send`` is the command-line form.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

__all__ = ["EdgeClient", "SendResult", "ServiceError"]

log = logging.getLogger(__name__)

_RETRY_STATUS = (429, 500, 502, 503, 504)


class ServiceError(RuntimeError):
    """The service refused a request (or could not be reached after the retries)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class SendResult:
    """What ``embed_images`` sent and got back; ``images`` has one dict per input, in order."""

    embeddings: np.ndarray  # [B_ok, E], rows in the order of the images that were sent
    payloads: list[bytes] = field(default_factory=list)  # what was sent, same order
    images: list[dict[str, Any]] = field(default_factory=list)  # name, bytes, jpeg/raw, psnr, error
    seconds: dict[str, float] = field(default_factory=dict)  # fit+encode, send

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [im for im in self.images if "error" not in im]

    def totals(self) -> dict[str, float]:
        """Bytes sent and what JPEG / raw pixels of the same images would take."""
        sent = self.sent
        gsv = sum(im["gsv_bytes"] for im in sent)
        jpeg = sum(im["jpeg_bytes"] for im in sent)
        raw = sum(im["raw_bytes"] for im in sent)
        return {
            "images": len(sent),
            "failed": len(self.images) - len(sent),
            "gsv_bytes": gsv,
            "jpeg_bytes": jpeg,
            "raw_bytes": raw,
            "x_smaller_than_jpeg": jpeg / gsv if gsv else float("nan"),
            "x_smaller_than_raw": raw / gsv if gsv else float("nan"),
        }


def _jpeg_bytes(image: np.ndarray, quality: int) -> int:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.tell()


class EdgeClient:
    """A client of the embedding service.

    Args:
        url: the service root, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer KEY`` (default: env ``GSVISION_API_KEY``).
        timeout: seconds per attempt.
        retries: further attempts after a connection error, 5xx or 429.
        backoff: first wait in seconds; doubled each retry, with jitter, at most 30 s.
        dtype: embeddings come back as ``"float32"`` (exact) or ``"float16"`` (half the bytes).
        transport: an ``httpx`` transport (tests, custom TLS); default a plain connection pool.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 0.5,
        dtype: str = "float32",
        transport: httpx.BaseTransport | None = None,
    ):
        import os

        from gsvision.serve.app import API_KEY_ENV

        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must be >= 0")
        if dtype not in ("float32", "float16"):
            raise ValueError(f'dtype must be "float32" or "float16", got {dtype!r}')
        self.format = "f32" if dtype == "float32" else "f16"
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self.attempts = 0  # HTTP attempts made (retries included), for reports
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- HTTP with retries --------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for attempt in range(self.retries + 1):
            self.attempts += 1
            last = attempt == self.retries
            try:
                r = self._http.request(method, path, **kw)
            except httpx.TransportError as exc:
                if last:
                    raise ServiceError(f"{self.url}{path}: {exc!r}") from exc
                self._sleep(attempt, None, f"{type(exc).__name__}")
                continue
            if r.status_code in _RETRY_STATUS and not last:
                self._sleep(attempt, r.headers.get("retry-after"), f"HTTP {r.status_code}")
                continue
            if r.is_success:
                return r
            raise ServiceError(f"{path}: HTTP {r.status_code}: {_detail(r)}", r.status_code)
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None, why: str) -> None:
        wait = min(30.0, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
        if retry_after is not None:
            try:
                wait = max(wait, min(30.0, float(retry_after)))
            except ValueError:
                pass
        log.info("%s from %s; retrying in %.2f s", why, self.url, wait)
        time.sleep(wait)

    # --- endpoints ----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz").json()

    def embed(self, payloads: bytes | Sequence[bytes], normalize: bool = True) -> np.ndarray:
        """Embeddings ``[B, E]`` (float32) of every image in the payload(s), in order."""
        params = {"format": self.format, "normalize": str(normalize).lower()}
        if isinstance(payloads, (bytes, bytearray, memoryview)):
            payloads = [bytes(payloads)]
        if len(payloads) == 1:
            r = self._request(
                "POST",
                "/v1/embed",
                content=payloads[0],
                params=params,
                headers={"Content-Type": "application/octet-stream"},
            )
        else:
            files = [
                ("payload", (f"{i}.gsv", p, "application/octet-stream"))
                for i, p in enumerate(payloads)
            ]
            r = self._request("POST", "/v1/embed", files=files, params=params)
        return _array(r)

    def embed_text(self, texts: Sequence[str], normalize: bool = True) -> np.ndarray:
        r = self._request(
            "POST",
            "/v1/embed_text",
            json={"texts": list(texts), "normalize": normalize},
            params={"format": self.format},
        )
        return _array(r)

    def classify(
        self,
        payload: bytes,
        classes: Sequence[str],
        templates: Sequence[str] | None = None,
        top_k: int = 5,
    ) -> list[dict[str, Any]]:
        """Per image: ``{"top": [{"class", "score"}, ...], "scores": [...]}``."""
        import base64

        body: dict[str, Any] = {
            "payload": base64.b64encode(payload).decode("ascii"),
            "classes": list(classes),
            "top_k": top_k,
        }
        if templates is not None:
            body["templates"] = list(templates)
        return self._request("POST", "/v1/classify", json=body).json()["results"]

    def metrics(self) -> str:
        return self._request("GET", "/metrics").text

    # --- the edge job -------------------------------------------------------------------------
    def embed_images(
        self,
        images: Sequence[str | Path | np.ndarray],
        n_gaussians: int = 1024,
        bytes: int | None = None,
        ratio: float | None = None,
        psnr: float | None = None,
        level: str = "auto",
        jpeg_quality: int = 90,
        batch: int = 16,
        coder: str = "range",
        effort: int = 1,
        **fit_kwargs: Any,
    ) -> SendResult:
        """Fit, encode (one target of ``bytes`` / ``ratio`` / ``psnr``, else ``n_gaussians``),
        send in requests of ``batch`` images, and return the embeddings.

        ``coder``: the codec's lossless stage; the range coder's payloads are 12-20% smaller
        (what the link carries) and cost the service ~1 ms per image to decode. ``effort``: the
        encoder's (0-3, :data:`gsvision.codec.rate.EFFORT_ROUNDS`; 0 encodes in a third of the
        time, 0.2-0.6 dB lower).

        Unreadable images are reported in ``result.images`` (``"error"``) and the rest sent.
        ``fit_kwargs`` go to :func:`gsvision.fit` (``iters``, ``size``, ``backend``; the CPU
        kernel by default).
        """
        import torch

        from gsvision.codec import using_coder
        from gsvision.codec.rate import RateTarget, check_effort, fit_and_encode
        from gsvision.io import ImageError, load_image

        target = RateTarget(bytes=bytes, ratio=ratio, psnr=psnr).check()
        check_effort(effort)
        fit_kwargs.setdefault("backend", "cpu")
        fit_kwargs.setdefault("progress", False)
        records: list[dict[str, Any]] = []
        arrays, where = [], []
        for i, im in enumerate(images):
            name = str(im) if isinstance(im, (str, Path)) else f"array {i}"
            rec: dict[str, Any] = {"name": name}
            records.append(rec)
            try:
                arrays.append(load_image(im) if isinstance(im, (str, Path)) else np.asarray(im))
                where.append(i)
                if isinstance(im, (str, Path)):
                    rec["file_bytes"] = Path(im).stat().st_size
            except (ImageError, OSError) as exc:
                rec["error"] = str(exc)
        start = time.perf_counter()
        with using_coder(coder):
            coded = (
                fit_and_encode(arrays, target, level, n_gaussians, effort, **fit_kwargs)
                if arrays
                else []
            )
        fitted = time.perf_counter() - start
        for i, c in zip(where, coded, strict=True):
            pixels = (c.target.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
            h, w = pixels.shape[:2]
            records[i].update(
                width=w,
                height=h,
                gaussians=int(c.splats.counts[0]),
                gsv_bytes=len(c.payload),
                jpeg_bytes=_jpeg_bytes(pixels, jpeg_quality),
                raw_bytes=3 * h * w,
                psnr=c.metrics.get("psnr"),
            )
        start = time.perf_counter()
        vectors = []
        payloads = [c.payload for c in coded]
        for lo in range(0, len(payloads), batch):
            vectors.append(self.embed(payloads[lo : lo + batch]))
        sent = time.perf_counter() - start
        dim = vectors[0].shape[1] if vectors else 0
        emb = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
        return SendResult(emb, payloads, records, {"fit_encode": fitted, "send": sent})


def _detail(r: httpx.Response) -> str:
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        return r.text[:500]
    return detail if isinstance(detail, str) else str(detail)


def _array(r: httpx.Response) -> np.ndarray:
    """The binary embedding answer (``X-Embedding-Shape``, little-endian float16/32)."""
    shape = r.headers.get("x-embedding-shape")
    dtype = {"float16": "<f2", "float32": "<f4"}.get(r.headers.get("x-embedding-dtype", ""))
    if shape is None or dtype is None:
        raise ServiceError(
            f"{r.request.url}: not an embedding answer ({r.headers.get('content-type')})"
        )
    b, e = (int(v) for v in shape.split(","))
    data = np.frombuffer(r.content, dtype=dtype)
    if data.size != b * e:
        raise ServiceError(f"{r.request.url}: {data.size} values for shape {b}x{e}")
    return data.reshape(b, e).astype(np.float32)
