"""Zero-shot classification: class names + prompt templates → text classifier → top-1 / top-5.

The splat tower and the RGB tower of the same GS-CLIP are scored side by side on the same images,
as open_clip's ``zero_shot_eval`` scores one tower::

    data = open_dataset("imagenet1k", "/data/imagenet/val")       # or "wds" / "folder"
    result = evaluate(model, data, towers=("splat", "rgb"), n=1024, iters=300)
    result["towers"]["splat"]["top1"], result["towers"]["rgb"]["top1"]

Datasets (:class:`~gsvision.data.labelled.ZeroShotData`: class names, templates and labelled
samples) come in clip_benchmark's layouts, so real benchmarks plug in: ``wds`` (its local webdataset
layout), ``folder`` (ImageFolder) and ``imagenet1k`` (open_clip's 1,000 names and 80 templates);
see :mod:`gsvision.data.labelled`, whose names are re-exported here.

A sample with an image but no payload is fitted on the fly (:func:`gsvision.fit`, a batch at a
time, at the model's image size) and sent through the codec (:func:`gsvision.encode` at ``level``,
then decoded with the rest of the batch), so the splat tower reads exactly what would be sent. A
sample with only a payload is not scored by the RGB tower. Bad samples (no label, corrupt image,
payload that does not decode, image the fitter rejects, unreadable shard) are skipped with their
reason, counted and reported; the run goes on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gsvision.data.labelled import (
    DATASETS,
    LabelledSample,
    Template,
    ZeroShotData,
    folder_dataset,
    format_template,
    imagenet1k_dataset,
    load_templates,
    open_dataset,
    wds_dataset,
)

__all__ = [
    "DATASETS",
    "TOWERS",
    "LabelledSample",
    "ZeroShotData",
    "accuracy",
    "evaluate",
    "folder_dataset",
    "imagenet1k_dataset",
    "load_templates",
    "open_dataset",
    "wds_dataset",
    "zero_shot_classifier",
]

log = logging.getLogger(__name__)

#: Towers :func:`evaluate` can score.
TOWERS = ("splat", "rgb")

_MAX_LISTED_SKIPS = 1000  # skipped samples listed by key in the result (all are counted)


# ==================================================================================== classifier
@torch.no_grad()
def zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device = "cpu",
    batch: int = 256,
    progress: bool = False,
) -> Tensor:  # [E, C]
    """Text classifier weights, as open_clip's ``build_zero_shot_classifier``: per class, the mean
    of its L2-normalised prompt embeddings, renormalised; column ``c`` is class ``c``.

    Args:
        model: anything with ``encode_text(tokens, normalize=True)`` (a GS-CLIP or a CLIP).
        tokenizer: prompts → ``[P, context]`` tokens.
        batch: prompts per text forward (rounded to whole classes).
    """
    if not classnames or not templates:
        raise ValueError("zero_shot_classifier: need at least one class name and one template")
    t = len(templates)
    per_step = max(1, batch // t)
    steps = range(0, len(classnames), per_step)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="classifier", unit="step", leave=False)
    weights = []
    for i in steps:
        names = classnames[i : i + per_step]
        prompts = [format_template(tpl, c) for c in names for tpl in templates]
        emb = model.encode_text(tokenizer(prompts).to(device), normalize=True)  # [c·T, E]
        emb = emb.float().reshape(len(names), t, -1).mean(1)  # [c, E]
        weights.append(F.normalize(emb, dim=-1))
    return torch.cat(weights).T.contiguous()  # [E, C]


def _hits(logits: Tensor, target: Tensor, topk: Sequence[int]) -> Tensor:  # [len(topk), B] bool
    """Whether the target is among the ``k`` highest logits (``k`` capped at the class count)."""
    kmax = min(max(topk), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices  # [B, kmax]
    match = pred == target[:, None]  # [B, kmax]
    return torch.stack([match[:, : min(k, kmax)].any(1) for k in topk])


def accuracy(
    logits: Tensor,  # [B, C]
    target: Tensor,  # [B] class indices
    topk: Sequence[int] = (1, 5),
) -> list[float]:
    """Top-k accuracies (fractions in [0, 1]) for each ``k``; ``k`` ≥ C counts every sample."""
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"accuracy: logits [B, C] and target [B], got {logits.shape}, {target.shape}"
        )
    if logits.shape[0] == 0:
        return [float("nan")] * len(topk)
    return [float(h.float().mean()) for h in _hits(logits, target.to(logits.device), topk)]


# ==================================================================================== evaluation
@dataclass
class _Tally:
    """Running counts for one tower."""

    num_classes: int
    images: int = 0
    top1: int = 0
    top5: int = 0
    predictions: list[dict] | None = None  # per sample: key, label, top-5 classes (if kept)
    per_class: Tensor = field(init=False)  # [C, 3]: images, top-1 hits, top-5 hits

    def __post_init__(self) -> None:
        self.per_class = torch.zeros(self.num_classes, 3, dtype=torch.int64)

    def add(self, logits: Tensor, target: Tensor, keys: Sequence[str]) -> None:
        hits = _hits(logits, target, (1, 5)).cpu()  # [2, B]
        target = target.cpu()
        if self.predictions is not None:
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices.tolist()
            for key, label, pred in zip(keys, target.tolist(), top, strict=True):
                self.predictions.append({"key": key, "label": label, "top5": pred})
        self.images += int(target.numel())
        self.top1 += int(hits[0].sum())
        self.top5 += int(hits[1].sum())
        ones = torch.ones_like(target)
        self.per_class[:, 0].index_add_(0, target, ones)
        self.per_class[:, 1].index_add_(0, target, hits[0].long())
        self.per_class[:, 2].index_add_(0, target, hits[1].long())

    def summary(self, classnames: Sequence[str]) -> dict[str, Any]:
        """Accuracies (fractions; ``None`` with no image), counts, per-class figures."""
        n = max(self.images, 1)
        seen = self.per_class[:, 0] > 0
        recall = self.per_class[seen, 1].float() / self.per_class[seen, 0].float()
        per_class = {
            classnames[c]: {
                "images": int(row[0]),
                "top1": float(row[1]) / float(row[0]),
                "top5": float(row[2]) / float(row[0]),
            }
            for c, row in enumerate(self.per_class.tolist())
            if row[0] > 0
        }
        return {
            "top1": self.top1 / n if self.images else None,
            "top5": self.top5 / n if self.images else None,
            "images": self.images,
            "mean_per_class_recall": float(recall.mean()) if self.images else None,
            "per_class": per_class,
        } | ({"predictions": self.predictions} if self.predictions is not None else {})


@dataclass
class _Run:
    """Everything one :func:`evaluate` call accumulates."""

    tallies: dict[str, _Tally]
    read: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    skipped_by_stage: Counter = field(default_factory=Counter)
    no_input: Counter = field(default_factory=Counter)  # tower → samples it had nothing to read
    payload_bytes: dict[str, list[int]] = field(default_factory=lambda: {"read": [], "fitted": []})
    raw_bytes: list[int] = field(default_factory=list)
    fit_psnr: list[float] = field(default_factory=list)

    def skip(self, key: str, stage: str, reason: str) -> None:
        self.skipped_by_stage[stage] += 1
        if len(self.skipped) < _MAX_LISTED_SKIPS:
            self.skipped.append({"key": key, "stage": stage, "reason": reason})
        log.warning("zero-shot: skipping %s (%s: %s)", key, stage, reason)


@dataclass
class _Item:
    """A sample on its way through one batch."""

    key: str
    label: int
    image_bytes: bytes | None
    payload: bytes | None
    image: Any = None  # uint8 [H, W, 3] numpy array once decoded
    fitted: bool = False  # the payload was made here from the image


def _fit_payloads(images: list, cfg: dict[str, Any]) -> list[tuple[bytes, float] | str]:
    """Fit a batch and encode each image: ``(payload, fit PSNR)`` or the reason it failed."""
    from gsvision.codec import encode
    from gsvision.fit import fit

    try:
        with torch.enable_grad():  # fitting optimises (evaluate runs under no_grad)
            result = fit(
                images,
                cfg["n"],
                iters=cfg["iters"],
                size=cfg["fit_size"],
                seed=cfg["seed"],
                backend=cfg["backend"],
                device=cfg["device"],
            )
    except ValueError as exc:
        if len(images) == 1:
            return [str(exc)]
        return [r for image in images for r in _fit_payloads([image], cfg)]  # find the bad one(s)
    out: list[tuple[bytes, float] | str] = []
    for i in range(len(images)):
        one = result.splats[i].detach().to("cpu")
        out.append((encode(one, cfg["level"]), float(result.metrics[i]["psnr"])))
    return out


def _prepare(items: list[_Item], run: _Run, towers: Sequence[str], cfg: dict) -> list[_Item]:
    """Decode images, fit those the splat tower needs, drop (and report) the bad samples."""
    from gsvision.io import ImageError, decode_image

    kept = []
    for it in items:
        needs_image = "rgb" in towers or ("splat" in towers and it.payload is None)
        if it.image_bytes is not None and needs_image:
            try:
                it.image = decode_image(it.image_bytes, it.key)
            except ImageError as exc:
                run.skip(it.key, "image", str(exc))
                continue
        kept.append(it)
    to_fit = [
        it for it in kept if "splat" in towers and it.payload is None and it.image is not None
    ]
    bad: set[int] = set()
    if to_fit:
        for it, res in zip(to_fit, _fit_payloads([it.image for it in to_fit], cfg), strict=True):
            if isinstance(res, str):
                run.skip(it.key, "fit", res)
                bad.add(id(it))
            else:
                it.payload, it.fitted = res[0], True
                run.fit_psnr.append(res[1])
    return [it for it in kept if id(it) not in bad]


def _decode_payloads(payloads: list[bytes], n: int) -> tuple[Any, dict[int, Exception]]:
    """``(Splats [B', n], {index: error})``: one vectorised decode, then padded or trimmed to
    ``n`` by importance (:func:`~gsvision.data.loader.pad_splats`, as the training loader)."""
    from gsvision.codec import CodecError, decode_batch
    from gsvision.data.loader import pad_splats

    try:
        splats, failed = decode_batch(payloads, errors="skip", images_per_payload=1)
    except CodecError:  # the padded batch would be too large: decode one at a time
        parts, failed = [], {}
        for i, payload in enumerate(payloads):
            one, bad = decode_batch([payload], errors="skip", images_per_payload=1)
            if bad:
                failed[i] = bad[0]
            else:
                parts.append(pad_splats([one], n))
        if not parts:
            return None, failed
        return pad_splats(parts, n), failed
    if len(failed) == len(payloads):
        return None, failed
    return (splats if splats.capacity == n else pad_splats([splats], n)), failed


def _splat_features(items: list[_Item], run: _Run, model, cfg: dict) -> tuple[list, Tensor | None]:
    """Decode the batch's payloads (bad ones skipped) → ``(items kept, features [B', E])``."""
    if not items:
        return [], None
    splats, failed = _decode_payloads([it.payload for it in items], cfg["n"])
    for i, exc in sorted(failed.items()):
        run.skip(items[i].key, "payload", str(exc))
    kept = [it for i, it in enumerate(items) if i not in failed]
    if splats is None:
        return kept, None
    for it, (h, w) in zip(kept, splats.image_sizes.tolist(), strict=True):
        run.payload_bytes["fitted" if it.fitted else "read"].append(len(it.payload))
        run.raw_bytes.append(3 * int(h) * int(w))
    return kept, model.encode_splats(splats.to(cfg["device"]), normalize=True)


def _rgb_features(items: list[_Item], model, preprocess, device) -> Tensor:  # [B, E]
    from PIL import Image

    images = torch.stack([preprocess(Image.fromarray(it.image)) for it in items]).to(device)
    return model.encode_image(images, normalize=True)


def _evaluate_batch(
    samples: list[LabelledSample],
    run: _Run,
    model,
    classifier: Tensor,
    preprocess,
    towers: Sequence[str],
    cfg: dict,
) -> None:
    items = []
    for s in samples:
        if s.error is not None:
            run.skip(s.key, "source", s.error)
        else:
            items.append(_Item(s.key, s.label, s.image, s.payload))
    items = _prepare(items, run, towers, cfg)
    if "splat" in towers and items:
        with_payload = [it for it in items if it.payload is not None]
        kept, feats = _splat_features(with_payload, run, model, cfg)
        dropped = {id(it) for it in with_payload} - {id(it) for it in kept}
        items = [it for it in items if id(it) not in dropped]  # a bad payload drops the sample
        if feats is not None:
            target = torch.tensor([it.label for it in kept], device=feats.device)
            run.tallies["splat"].add(feats.float() @ classifier, target, [it.key for it in kept])
    if "rgb" in towers and items:
        with_image = [it for it in items if it.image is not None]
        run.no_input["rgb"] += len(items) - len(with_image)
        if with_image:
            feats = _rgb_features(with_image, model, preprocess, cfg["device"])
            target = torch.tensor([it.label for it in with_image], device=feats.device)
            keys = [it.key for it in with_image]
            run.tallies["rgb"].add(feats.float() @ classifier, target, keys)


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _default_fit_size(model) -> int | tuple[int, int]:
    """The RGB tower's input size: ``S`` (square: shorter side + centre crop, as its transform)."""
    size = model.clip.visual.image_size
    h, w = (size, size) if isinstance(size, int) else (int(v) for v in size)
    return h if h == w else (h, w)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: ZeroShotData | Iterable[LabelledSample],
    *,
    classnames: Sequence[str] | None = None,
    templates: Sequence[Template] | None = None,
    towers: Sequence[str] = TOWERS,
    tokenizer: Callable | None = None,
    preprocess: Callable | None = None,
    classifier: Tensor | None = None,
    batch: int = 64,
    n: int = 1024,
    iters: int = 300,
    fit_size: int | tuple[int, int] | None = None,
    level: str = "medium",
    limit: int | None = None,
    device: str | torch.device | None = None,
    backend: str | None = None,
    seed: int = 0,
    text_batch: int = 512,
    predictions: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Zero-shot top-1 / top-5 of a GS-CLIP's splat and RGB towers on a labelled dataset.

    Args:
        model: a :class:`~gsvision.model.GSCLIP` (put in eval mode for the call).
        data: a :class:`ZeroShotData`, or any iterable of :class:`LabelledSample` with
            ``classnames`` and ``templates`` given.
        towers: any of ``"splat"``, ``"rgb"``.
        tokenizer, preprocess: default: the model's open_clip tokenizer and eval transform.
        classifier: ``[E, C]`` weights from :func:`zero_shot_classifier` (built here if None).
        batch: images per forward (and per fitting batch).
        n: Gaussian slots the splat tower reads (payloads with more are trimmed by importance, as
            the training loader does); also the Gaussians fitted per image.
        iters, fit_size, level, backend, seed: fitting of samples without a payload (fit size
            default: the model's image size) and the codec level their payloads are coded at.
        limit: read at most this many samples (bad ones included).
        device: default CUDA if present, else CPU.
        text_batch: prompts per text forward when building the classifier.
        predictions: also return, per tower, each sample's key, label and top-5 classes.

    Returns:
        ``{"towers": {tower: {"top1", "top5", "images", "mean_per_class_recall", "per_class"
        [, "predictions"]}},
        "images", "read", "skipped", "skipped_by_stage", "skipped_samples", "no_input",
        "splat_payloads": {"read", "fitted", "bytes_mean", "bytes_mean_read", ...}, ...}``;
        accuracies are fractions (``None`` for a tower that scored no image).
    """
    towers = tuple(dict.fromkeys(towers))
    if not towers or any(t not in TOWERS for t in towers):
        raise ValueError(f"towers must be a non-empty subset of {TOWERS}, got {towers}")
    if batch < 1 or n < 1 or iters < 1:
        raise ValueError("batch, n and iters must be >= 1")
    from gsvision.codec.quant import resolve_level

    resolve_level(level)  # a bad level fails now, not after the classifier is built
    classnames = list(classnames if classnames is not None else data.classnames)
    templates = list(templates if templates is not None else data.templates)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if tokenizer is None:
        from gsvision.model.factory import get_tokenizer

        tokenizer = get_tokenizer(model.cfg.model_name)
    if preprocess is None and "rgb" in towers:
        from gsvision.model.factory import rgb_transform

        preprocess = rgb_transform(model.clip, is_train=False)
    cfg = {
        "n": n,
        "iters": iters,
        "fit_size": fit_size if fit_size is not None else _default_fit_size(model),
        "level": level,
        "seed": seed,
        "backend": backend,
        "device": device,
    }
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        if classifier is None:
            classifier = zero_shot_classifier(
                model, tokenizer, classnames, templates, device, text_batch, progress
            )
        classifier = classifier.to(device).float()
        if classifier.shape[1] != len(classnames):
            raise ValueError(f"classifier has {classifier.shape[1]} classes, not {len(classnames)}")
        run = _Run(
            {t: _Tally(len(classnames), predictions=[] if predictions else None) for t in towers}
        )
        samples = islice(iter(data), limit) if limit is not None else iter(data)
        total = getattr(data, "size", None)
        if limit is not None:
            total = limit if total is None else min(total, limit)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc="zero-shot", unit="img")
        while chunk := list(islice(samples, batch)):
            run.read += len(chunk)
            _evaluate_batch(chunk, run, model, classifier, preprocess, towers, cfg)
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix(
                    {f"{t}@1": _pct(run.tallies[t]) for t in towers}
                    | {"skipped": sum(run.skipped_by_stage.values())}
                )
        if bar is not None:
            bar.close()
    finally:
        model.train(was_training)
    return _result(data, run, towers, classnames, templates, cfg, time.perf_counter() - start)


def _pct(t: _Tally) -> str:
    return f"{100 * t.top1 / t.images:.1f}%" if t.images else "-"


def _result(data, run: _Run, towers, classnames, templates, cfg, seconds) -> dict[str, Any]:
    read_b, fit_b = run.payload_bytes["read"], run.payload_bytes["fitted"]
    all_b = read_b + fit_b
    raw = _mean(run.raw_bytes)
    scored = max((run.tallies[t].images for t in towers), default=0)
    return {
        "dataset": getattr(data, "name", None),
        "source": getattr(data, "source", None),
        "classes": len(classnames),
        "templates": len(templates),
        "towers": {t: run.tallies[t].summary(classnames) for t in towers},
        "images": scored,
        "read": run.read,
        "skipped": sum(run.skipped_by_stage.values()),
        "skipped_by_stage": dict(run.skipped_by_stage),
        "skipped_samples": run.skipped,
        "no_input": {t: run.no_input.get(t, 0) for t in towers},
        "splat_payloads": {
            "read": len(read_b),
            "fitted": len(fit_b),
            "bytes_mean": _mean(all_b),
            "bytes_mean_read": _mean(read_b),
            "bytes_mean_fitted": _mean(fit_b),
            "raw_pixel_bytes_mean": raw,
            "ratio": raw / _mean(all_b) if all_b and raw else None,
            "fit_psnr_mean": _mean(run.fit_psnr),
            "n": cfg["n"],
            "iters": cfg["iters"],
            "fit_size": cfg["fit_size"],
            "level": cfg["level"],
        }
        if "splat" in towers
        else None,
        "seconds": seconds,
    }
