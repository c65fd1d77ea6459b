"""The cloud side: an HTTP service that turns ``.gsv`` splat payloads (and texts) into embeddings.

``gsvision serve --model CKPT_OR_NAME`` runs :func:`create_app` under uvicorn. Endpoints:

- ``POST /v1/embed``: one packed ``.gsv`` payload as an ``application/octet-stream`` body, or
  several as ``multipart/form-data`` file parts → the images' embeddings, as JSON or, with
  ``?format=f16`` (or ``Accept: application/octet-stream``), a little-endian float16 array.
- ``POST /v1/embed_text``: ``{"texts": [...]}`` → text embeddings.
- ``POST /v1/classify``: a payload and class names → zero-shot probabilities per image.
- ``GET /healthz`` (no key needed), ``GET /metrics`` (Prometheus), ``GET /openapi.json``, ``/docs``.

Images of concurrent requests share model forwards (:class:`~gsvision.serve.batcher.MicroBatcher`).
Payloads come from untrusted devices: they are parsed by the hostile-input-safe codec, checked
against the limits of :class:`ServeConfig` before any tensor is built, and every refusal is a
4xx with a message naming the problem (``{"detail": ...}``); nothing a client sends stops the
service. With an API key set, every ``/v1`` call and ``/metrics`` needs ``Authorization: Bearer
KEY``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from gsvision import __version__
from gsvision.codec import CodecError, decode_images
from gsvision.codec.format import unpack
from gsvision.serve.batcher import MicroBatcher, QueueFull
from gsvision.serve.limits import RateLimiter, key_matches
from gsvision.serve.metrics import CONTENT_TYPE_LATEST, ServeMetrics
from gsvision.splats import Splats

__all__ = [
    "API_KEY_ENV",
    "EmbeddingModel",
    "ServeConfig",
    "create_app",
    "load_embedding_model",
    "serve",
]

log = logging.getLogger(__name__)

#: Environment variable read for the API key when none is given.
API_KEY_ENV = "GSVISION_API_KEY"

_ENDPOINTS = ("/v1/embed", "/v1/embed_text", "/v1/classify", "/healthz", "/metrics")
_GSV_TYPES = ("application/octet-stream", "application/x-gsv")
_DEFAULT_TEMPLATES = ("a photo of a {c}.",)


@dataclass
class ServeConfig:
    """Limits and batching of the service (``gsvision serve`` flags)."""

    api_key: str | None = None  # None: no authentication (bind to loopback only)
    max_body_bytes: int = 8 << 20
    max_gaussians: int = 4096  # per image
    max_images: int = 256  # per request
    max_texts: int = 256  # per request, also prompts per classify call
    max_text_chars: int = 1000
    max_classes: int = 1000
    max_prompts: int = 20_000  # classes x templates per classify call (text forwards)
    max_batch: int = 64  # images per model forward
    batch_wait_ms: float = 5.0
    max_queue: int = 2048  # images waiting; beyond, 503
    rate_limit: float | None = None  # requests/s per key (or per client address without a key)
    burst: float | None = None  # default 2x the rate
    classifier_cache: int = 32  # class lists whose text classifiers are kept

    def check(self) -> ServeConfig:
        for name in ("max_body_bytes", "max_gaussians", "max_images", "max_texts", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve: {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ValueError(f"serve: batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("serve: the API key is empty")
        return self


# =================================================================================== the model
class EmbeddingModel:
    """A GS-CLIP in eval mode with its tokenizer; every call runs on the model's one thread."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, name: str, device: str = "cpu"):
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.name = name
        self.device = torch.device(device)
        self.max_batch = 64
        self._classifiers: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.classifier_cache = 32
        with torch.inference_mode():
            probe = self.model.encode_text(self.tokenizer(["a"]).to(self.device))
        self.dim = int(probe.shape[-1])
        self.logit_scale = float(self.model.logit_scale.detach().exp().clamp(max=100))

    @property
    def num_latents(self) -> int | None:
        return getattr(getattr(self.model, "splat", None), "num_latents", None)

    @torch.inference_mode()
    def embed_splats(self, items: Sequence[Splats]) -> list[np.ndarray]:
        """Un-normalised embeddings of single-image splats, ``max_batch`` images per forward.

        Images with and without separate opacities are run apart, so each image's embedding is
        what ``encode_splats`` gives it alone (padding slots do not change the output).
        """
        out: list[np.ndarray | None] = [None] * len(items)
        groups: dict[bool, list[int]] = {}
        for i, s in enumerate(items):
            groups.setdefault(s.opacities is not None, []).append(i)
        for idx in groups.values():
            for lo in range(0, len(idx), self.max_batch):
                part = idx[lo : lo + self.max_batch]
                batch = Splats.cat([items[i] for i in part]).to(self.device)
                emb = self.model.encode_splats(batch).float().cpu().numpy()
                for j, i in enumerate(part):
                    out[i] = emb[j]
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:  # [T, E] un-normalised
        chunks = []
        for lo in range(0, len(texts), 256):
            tokens = self.tokenizer(list(texts[lo : lo + 256])).to(self.device)
            chunks.append(self.model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(chunks)

    def classifier(self, classes: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """``[E, C]`` zero-shot weights (open_clip's recipe), kept for recent class lists."""
        from gsvision.train.zeroshot import zero_shot_classifier

        key = (tuple(classes), tuple(templates))
        if key in self._classifiers:
            self._classifiers.move_to_end(key)
            return self._classifiers[key]
        w = zero_shot_classifier(self.model, self.tokenizer, classes, templates, self.device)
        self._classifiers[key] = w.float().cpu().numpy()
        while len(self._classifiers) > self.classifier_cache:
            self._classifiers.popitem(last=False)
        return self._classifiers[key]


def load_embedding_model(
    model: str,
    pretrained: str | None = None,
    num_latents: int | None = None,
    device: str | None = None,
) -> EmbeddingModel:
    """A checkpoint from ``gsvision train`` (``.safetensors``), or a backbone name (random
    weights unless ``pretrained``: for testing the service, its embeddings mean nothing)."""
    from gsvision.model import create_model, get_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    is_checkpoint = model.endswith(".safetensors")
    if is_checkpoint and not os.path.isfile(model):
        raise FileNotFoundError(f"no such checkpoint: {model}")
    m = create_model(
        model,
        pretrained=None if is_checkpoint else pretrained,
        num_latents=None if is_checkpoint else num_latents,
    )
    if not is_checkpoint and pretrained is None:
        log.warning("serving %s with RANDOM weights (no checkpoint, no --pretrained)", model)
    return EmbeddingModel(m, get_tokenizer(m.cfg.model_name), os.path.basename(model), device)


# ================================================================================ request bodies
class TextRequest(BaseModel):
    texts: list[str] = Field(description="texts to embed", min_length=1)
    normalize: bool = Field(True, description="L2-normalise the embeddings")


class ClassifyRequest(BaseModel):
    payload: str = Field(description="a .gsv payload, base64")
    classes: list[str] = Field(description="class names", min_length=1)
    templates: list[str] | None = Field(
        None, description="prompt templates, {c} = class name (default 'a photo of a {c}.')"
    )
    top_k: int = Field(5, ge=1, description="classes listed per image")


def _refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> HTTPException:
    return HTTPException(status_code=status, detail=detail, headers=headers)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


# ============================================================================== body size guard
class _HttpGuard:
    """ASGI middleware: the body-size limit (before and while reading) and per-request metrics."""

    def __init__(self, app, cfg: ServeConfig, metrics: ServeMetrics):
        self.app, self.cfg, self.metrics = app, cfg, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in _ENDPOINTS else "other"
        start = time.perf_counter()
        received = 0
        status = 500
        limit = self.cfg.max_body_bytes

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _refuse(413, f"request body over the limit of {limit} bytes")
            return message

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                detail = (
                    f"request body of {int(length)} bytes is over the limit of {limit} bytes"
                    if length.isdigit()
                    else "bad Content-Length header"
                )
                self.metrics.rejected.labels("body_size").inc()
                response = JSONResponse({"detail": detail}, 413 if length.isdigit() else 400)
                await response(scope, receive, send_status)
                return
            await self.app(scope, limited_receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
            self.metrics.received.labels(endpoint).inc(received)


# ==================================================================================== the app
def create_app(service: EmbeddingModel, cfg: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``service`` under the limits of ``cfg``."""
    cfg = (cfg or ServeConfig()).check()
    service.max_batch = cfg.max_batch
    service.classifier_cache = cfg.classifier_cache
    metrics = ServeMetrics()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gsvision-model")
    limiter = RateLimiter(cfg.rate_limit, cfg.burst) if cfg.rate_limit else None

    def on_batch(images: int, seconds: float) -> None:
        metrics.batch_size.observe(images)
        metrics.batch_seconds.observe(seconds)

    batcher = MicroBatcher(
        service.embed_splats,
        executor,
        max_batch=cfg.max_batch,
        max_wait=cfg.batch_wait_ms / 1000,
        max_queue=cfg.max_queue,
        on_batch=on_batch,
    )
    metrics.queue.set_function(lambda: batcher.waiting)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="gsvision embedding service",
        version=__version__,
        description="Image embeddings from .gsv splat payloads, text embeddings, zero-shot "
        "classification (GS-CLIP).",
        lifespan=lifespan,
    )
    app.add_middleware(_HttpGuard, cfg=cfg, metrics=metrics)
    app.state.service, app.state.config, app.state.metrics = service, cfg, metrics

    async def guard(request: Request) -> None:
        """API key (constant-time comparison), then the rate limit of that key."""
        client = request.client.host if request.client else "unknown"
        if cfg.api_key is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if not scheme:
                metrics.rejected.labels("auth").inc()
                raise _refuse(
                    401,
                    "missing API key: send 'Authorization: Bearer KEY'",
                    {"WWW-Authenticate": "Bearer"},
                )
            if scheme.lower() != "bearer" or not key_matches(token.strip(), cfg.api_key):
                metrics.rejected.labels("auth").inc()
                raise _refuse(401, "wrong API key", {"WWW-Authenticate": "Bearer"})
            client = "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:16]
        if limiter is not None:
            wait = limiter.acquire(client)
            if wait > 0:
                metrics.rejected.labels("rate_limit").inc()
                raise _refuse(
                    429,
                    f"rate limit of {cfg.rate_limit:g} requests/s exceeded; retry in {wait:.2f} s",
                    {"Retry-After": str(max(1, math.ceil(wait)))},
                )

    async def embed_images(splats: list[Splats]) -> np.ndarray:  # [B, E] un-normalised
        try:
            vectors = await batcher.submit(splats)
        except QueueFull as exc:
            metrics.rejected.labels("busy").inc()
            raise _refuse(503, f"server busy: {exc}; retry shortly", {"Retry-After": "1"}) from None
        metrics.images.inc(len(splats))
        metrics.gaussians.inc(sum(int(s.counts[0]) for s in splats))
        return np.stack(vectors)

    async def run_model(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def decode_checked(payloads: list[bytes]) -> list[Splats]:
        """Every image of every payload, or a 400 / 422 naming the payload and the problem."""
        headers = []
        for i, p in enumerate(payloads):
            where = f"payload {i}: " if len(payloads) > 1 else ""
            if not p:
                raise _refuse(400, f"{where}empty payload")
            try:
                images, _ = unpack(p)
            except CodecError as exc:
                raise _refuse(400, f"{where}{exc}") from None
            headers.append(images)
        total = sum(len(h) for h in headers)
        if total > cfg.max_images:
            raise _refuse(422, f"{total} images in one request; the limit is {cfg.max_images}")
        for i, images in enumerate(headers):
            where = f"payload {i} " if len(payloads) > 1 else ""
            for j, im in enumerate(images):
                if im.n > cfg.max_gaussians:
                    raise _refuse(
                        422,
                        f"{where}image {j}: {im.n} Gaussians; the limit is {cfg.max_gaussians}",
                    )
        out: list[Splats] = []
        for i, p in enumerate(payloads):
            where = f"payload {i}: " if len(payloads) > 1 else ""
            try:
                out.extend(decode_images(p))
            except CodecError as exc:
                raise _refuse(400, f"{where}{exc}") from None
        return out

    async def read_payloads(request: Request) -> list[bytes]:
        media = _media_type(request)
        if media in _GSV_TYPES:
            return [await request.body()]
        if media == "multipart/form-data":
            form = await request.form(
                max_files=cfg.max_images,
                max_fields=cfg.max_images,
                max_part_size=cfg.max_body_bytes,
            )
            parts = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            if not parts:
                raise _refuse(400, "multipart body without a file part (one per .gsv payload)")
            return [await part.read() for part in parts]
        raise _refuse(
            415,
            f"Content-Type {media or '(none)'} not accepted: send a .gsv payload as "
            "application/octet-stream, or several as multipart/form-data",
        )

    def embeddings_response(
        vectors: np.ndarray, normalize: bool, fmt: str | None, request: Request
    ) -> Response:
        if normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        if fmt is None:
            accept = request.headers.get("accept", "")
            fmt = "f16" if "application/octet-stream" in accept else "json"
        if fmt in ("f16", "f32"):
            dtype = "<f2" if fmt == "f16" else "<f4"
            return Response(
                np.ascontiguousarray(vectors, dtype=dtype).tobytes(),
                media_type="application/octet-stream",
                headers={
                    "X-Embedding-Shape": f"{vectors.shape[0]},{vectors.shape[1]}",
                    "X-Embedding-Dtype": "float16" if fmt == "f16" else "float32",
                    "X-Model": service.name,
                },
            )
        return JSONResponse(
            {
                "model": service.name,
                "dim": int(vectors.shape[1]),
                "normalized": normalize,
                "count": int(vectors.shape[0]),
                "embeddings": vectors.astype(np.float32).tolist(),
            }
        )

    _gsv_body = {
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "payload": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                    }
                },
            },
        }
    }
    _embedding_responses = {
        200: {
            "description": "embeddings: JSON, or a float16/float32 array (X-Embedding-Shape B,E)",
            "content": {"application/octet-stream": {}},
        }
    }

    @app.post(
        "/v1/embed",
        dependencies=[Depends(guard)],
        openapi_extra=_gsv_body,
        responses=_embedding_responses,
        summary="Embed the images of .gsv payloads",
    )
    async def embed(
        request: Request,
        normalize: bool = Query(True, description="L2-normalise the embeddings"),
        format: Literal["json", "f16", "f32"] | None = Query(
            None, description="json (default), or a little-endian f16/f32 array"
        ),
    ) -> Response:
        payloads = await read_payloads(request)
        splats = await run_in_threadpool(decode_checked, payloads)
        return embeddings_response(await embed_images(splats), normalize, format, request)

    @app.post(
        "/v1/embed_text",
        dependencies=[Depends(guard)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": TextRequest.model_json_schema()}},
            }
        },
        responses=_embedding_responses,
        summary="Embed texts",
    )
    async def embed_text(
        request: Request,
        format: Literal["json", "f16", "f32"] | None = Query(None),
    ) -> Response:
        body = await _json_body(request, TextRequest)
        _check_texts(body.texts, cfg)
        vectors = await run_model(service.embed_texts, body.texts)
        metrics.texts.inc(len(body.texts))
        return embeddings_response(vectors, body.normalize, format, request)

    @app.post(
        "/v1/classify",
        dependencies=[Depends(guard)],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": ClassifyRequest.model_json_schema()},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "payload": {"type": "string", "format": "binary"},
                                "classes": {"type": "array", "items": {"type": "string"}},
                                "templates": {"type": "array", "items": {"type": "string"}},
                                "top_k": {"type": "integer"},
                            },
                        }
                    },
                },
            }
        },
        summary="Zero-shot classification of the images of a .gsv payload",
    )
    async def classify(request: Request) -> JSONResponse:
        body = await _classify_body(request, cfg)
        classes = body.classes
        templates = body.templates or list(_DEFAULT_TEMPLATES)
        if len(classes) > cfg.max_classes:
            raise _refuse(422, f"{len(classes)} classes; the limit is {cfg.max_classes}")
        if len(set(classes)) != len(classes):
            raise _refuse(422, "class names repeat")
        _check_texts(classes, cfg, what="class names", limit=cfg.max_classes)
        if len(templates) * len(classes) > cfg.max_prompts:
            raise _refuse(
                422,
                f"{len(templates)} templates x {len(classes)} classes = "
                f"{len(templates) * len(classes)} prompts; the limit is {cfg.max_prompts}",
            )
        for t in templates:
            if "{c}" not in t and "{}" not in t:
                raise _refuse(422, f"template {t!r} has no {{c}} for the class name")
        _check_texts(templates, cfg, what="templates")
        payload = body.payload
        splats = await run_in_threadpool(decode_checked, [payload])
        vectors = await embed_images(splats)
        weights = await run_model(service.classifier, classes, templates)
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        logits = service.logit_scale * vectors @ weights  # [B, C]
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        k = min(body.top_k, len(classes))
        results = []
        for p in probs:
            top = np.argsort(-p, kind="stable")[:k]
            results.append(
                {
                    "top": [{"class": classes[c], "score": float(p[c])} for c in top],
                    "scores": [float(v) for v in p],
                }
            )
        return JSONResponse({"model": service.name, "classes": classes, "results": results})

    @app.get("/healthz", summary="Liveness and what is served (no key needed)")
    async def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": service.name,
            "dim": service.dim,
            "num_latents": service.num_latents,
            "device": str(service.device),
            "version": __version__,
            "max_gaussians": cfg.max_gaussians,
            "max_images": cfg.max_images,
            "max_body_bytes": cfg.max_body_bytes,
        }

    @app.get("/metrics", dependencies=[Depends(guard)], summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


# ================================================================================ body parsing
async def _json_body(request: Request, model: type[BaseModel]) -> Any:
    media = _media_type(request)
    if media != "application/json":
        raise _refuse(415, f"Content-Type {media or '(none)'} not accepted: send application/json")
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _refuse(400, f"body is not valid JSON: {exc}") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(
            422, detail=exc.errors(include_url=False, include_context=False)
        ) from None


@dataclass
class _Classify:
    payload: bytes
    classes: list[str]
    templates: list[str] | None
    top_k: int


async def _classify_body(request: Request, cfg: ServeConfig) -> _Classify:
    media = _media_type(request)
    if media == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=cfg.max_classes + cfg.max_texts + 2)
        files = [v for k, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise _refuse(
                400, f"multipart classify needs one file part (payload), got {len(files)}"
            )
        fields = {k: [v for v in form.getlist(k) if isinstance(v, str)] for k in form.keys()}
        try:
            top_k = int((fields.get("top_k") or ["5"])[0])
        except ValueError:
            raise _refuse(422, "top_k must be an integer") from None
        body = _Classify(
            await files[0].read(), fields.get("classes", []), fields.get("templates") or None, top_k
        )
    else:
        parsed = await _json_body(request, ClassifyRequest)
        try:
            payload = base64.b64decode(parsed.payload, validate=True)
        except (binascii.Error, ValueError):
            raise _refuse(400, "payload is not valid base64") from None
        body = _Classify(payload, parsed.classes, parsed.templates, parsed.top_k)
    if not body.classes:
        raise _refuse(422, "no class names given")
    if body.top_k < 1:
        raise _refuse(422, "top_k must be >= 1")
    return body


def _check_texts(
    texts: Sequence[str], cfg: ServeConfig, what: str = "texts", limit: int | None = None
) -> None:
    limit = cfg.max_texts if limit is None else limit
    if len(texts) > limit:
        raise _refuse(422, f"{len(texts)} {what}; the limit is {limit}")
    for i, t in enumerate(texts):
        if len(t) > cfg.max_text_chars:
            raise _refuse(
                422, f"{what} {i}: {len(t)} characters; the limit is {cfg.max_text_chars}"
            )


# ==================================================================================== running
def serve(
    service: EmbeddingModel,
    cfg: ServeConfig | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
) -> None:
    """Run the service under uvicorn until interrupted (``gsvision serve``)."""
    import uvicorn

    cfg = (cfg or ServeConfig()).check()
    if cfg.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without an API key: anyone who can reach it can use it", host)
    app = create_app(service, cfg)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    uvicorn.Server(config).run()
