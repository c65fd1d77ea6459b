"""Training loaders: splat shards into padded ``Splats`` batches, and the open_clip RGB baseline.

Both pipelines follow open_clip's ``get_wds_dataset``: a shard list (or resampled shards), split
by node and by DataLoader worker, ``tarfile_to_samples`` with an error handler, an optional sample
shuffle, a per-sample map and ``batched`` with a collate function. Use them as open_clip does::

    pipeline = splat_pipeline("shards/{00000..00127}.tar", n=1024, batch_size=256)
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=8)
    for splats, texts in loader:  # Splats [B, 1024], list[str] (or tokens with a tokenizer)
        ...

Splat shards hold ``key.gsv`` (a one-image codec payload), ``key.txt`` and ``key.json``. Samples
lacking a payload or a caption are dropped silently, as open_clip drops image–text samples without
one; a payload that does not decode raises :class:`~gsvision.codec.CodecError`, which the
pipeline's ``handler`` (default :func:`webdataset.warn_and_continue`) turns into a warning.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import webdataset as wds
from torch import Tensor

from gsvision.codec import decode
from gsvision.data.shards import expand_urls
from gsvision.fit.prune import luminance_score
from gsvision.splats import Splats

__all__ = [
    "SPLAT_EXT",
    "SplatDataset",
    "SplatSample",
    "collate_rgb",
    "collate_splats",
    "decode_rgb_sample",
    "decode_splat_sample",
    "pad_splats",
    "rgb_pipeline",
    "splat_pipeline",
]

#: The member extension of a splat payload in a shard.
SPLAT_EXT = "gsv"

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_SHARD_SHUFFLE = 2000  # shard-list shuffle buffer (open_clip's _SHARD_SHUFFLE_SIZE)

Tokenizer = Callable[[list[str]], Tensor]
Handler = Callable[[Exception], bool]


class SplatSample(NamedTuple):
    """One decoded training sample."""

    splats: Splats  # one image
    text: str
    key: str


# ------------------------------------------------------------------------------------ samples
def decode_splat_sample(sample: dict[str, Any]) -> SplatSample:
    """A webdataset map stage: raw ``{"__key__", "gsv", "txt", ...}`` → :class:`SplatSample`.

    Raises:
        CodecError: if the payload is malformed (a pipeline's ``handler``, e.g.
            ``wds.warn_and_continue``, skips the sample with a warning).
        ValueError: if the payload holds other than one image, or a member is missing or the
            caption is not UTF-8.
    """
    key = str(sample.get("__key__", ""))
    if SPLAT_EXT not in sample or "txt" not in sample:
        raise ValueError(f"sample {key!r}: needs .{SPLAT_EXT} and .txt members")
    splats = decode(sample[SPLAT_EXT])
    if splats.batch_size != 1:
        raise ValueError(f"sample {key!r}: payload holds {splats.batch_size} images, expected 1")
    text = sample["txt"]
    text = text.decode("utf-8") if isinstance(text, (bytes, bytearray)) else str(text)
    return SplatSample(splats, text, key)


def _has_splat_and_text(sample: dict[str, Any]) -> bool:
    return SPLAT_EXT in sample and "txt" in sample


def pad_splats(items: Sequence[Splats], n: int) -> Splats:
    """One batch with exactly ``n`` Gaussian slots per image.

    Images with fewer Gaussians are padded (padding as :meth:`Splats.compact` fills it). An image
    with more keeps its ``n`` most important Gaussians by the ``"footprint"`` score of
    :func:`~gsvision.fit.prune.luminance_score` (luminance × relative area), in their stored order.
    Opacities are kept if every image has them, else folded into the colours (as
    :meth:`Splats.cat`). Each item may hold one or more images.
    """
    if n < 1:
        raise ValueError(f"pad_splats: n must be >= 1, got {n}")
    if not items:
        raise ValueError("pad_splats: need at least one item")
    with_op = all(s.opacities is not None for s in items)
    parts = [s if with_op else s.fold_opacity() for s in items]
    total = sum(s.batch_size for s in parts)
    dtype = parts[0].dtype
    means = torch.full((total, n, 2), 0.5, dtype=dtype)
    chol = torch.full((total, n, 3), 1.0, dtype=dtype)
    colors = torch.zeros((total, n, 3), dtype=dtype)
    opacities = torch.zeros((total, n, 1), dtype=dtype) if with_op else None
    counts = torch.empty(total, dtype=torch.int64)
    sizes = torch.empty((total, 2), dtype=torch.int64)
    i = 0
    for s in parts:
        s = s.to("cpu")
        for b in range(s.batch_size):
            c = int(s.counts[b])
            if c > n:
                score = luminance_score(s[b], "footprint")[0, :c]
                idx = torch.topk(score, n).indices.sort().values
            else:
                idx = slice(0, c)
            k = min(c, n)
            means[i, :k] = s.means[b, idx]
            chol[i, :k] = s.chol[b, idx]
            colors[i, :k] = s.colors[b, idx]
            if opacities is not None:
                opacities[i, :k] = s.opacities[b, idx]  # type: ignore[index]
            counts[i] = k
            sizes[i] = s.image_sizes[b]
            i += 1
    return Splats(means, chol, colors, counts, sizes, opacities)


def collate_splats(
    batch: Sequence[SplatSample | tuple],
    n: int,
    tokenizer: Tokenizer | None = None,
    with_keys: bool = False,
) -> tuple:
    """``[(splats, text, key), ...]`` → ``(Splats [B, n], texts)`` (``+ (keys,)`` if asked).

    ``texts`` is the caption list, or ``tokenizer(captions)`` when a tokenizer is given (any
    callable; open_clip's returns a ``[B, context_length]`` LongTensor).
    """
    splats = pad_splats([item[0] for item in batch], n)
    captions = [item[1] for item in batch]
    text = tokenizer(captions) if tokenizer is not None else captions
    if with_keys:
        return splats, text, [item[2] for item in batch]
    return splats, text


# ------------------------------------------------------------------------------------ pipelines
def _source(
    urls: str | Sequence[str],
    resampled: bool,
    shuffle: int,
    seed: int,
    split_by_node: bool,
    split_by_worker: bool,
    handler: Handler,
) -> list:
    """The stages from shard URLs to raw samples (open_clip's layout)."""
    shards = expand_urls(urls)
    if resampled:
        # Each worker draws its own shards with replacement (seeded per worker), as open_clip.
        stages: list = [wds.ResampledShards(shards, seed=seed, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(shards)]
        if shuffle > 0:
            # Same order on every node and worker (seed + epoch), before the splits.
            stages.append(wds.detshuffle(_SHARD_SHUFFLE, min(500, _SHARD_SHUFFLE), seed=seed))
        if split_by_node:
            stages.append(wds.split_by_node)
        if split_by_worker:
            stages.append(wds.split_by_worker)
    stages.append(wds.tarfile_to_samples(handler=handler))
    if shuffle > 0:
        stages.append(wds.shuffle(shuffle, initial=min(shuffle, 1000)))
    return stages


class SplatDataset(wds.DataPipeline):
    """Splat shards → batches of ``(Splats [B, n], texts)``; an iterable for a ``DataLoader``.

    Args:
        urls: shard URLs (brace pattern, ``::`` list, or a list of them).
        n: Gaussian slots per image; more Gaussians are trimmed by importance (see
            :func:`pad_splats`).
        batch_size: samples per batch.
        shuffle: sample shuffle buffer (0: none, the shard order is kept); also shuffles the shard
            list per epoch (deterministic from ``seed``).
        seed: shard-shuffle and resampling seed.
        tokenizer: callable on the caption list (e.g. ``open_clip.get_tokenizer(...)``); ``None``
            yields the captions.
        handler: webdataset error handler for unreadable shards and undecodable samples
            (``wds.warn_and_continue`` skips them with a warning; ``wds.reraise_exception``
            stops).
        resampled: draw shards with replacement forever (use ``.with_epoch(k)`` to set an epoch).
        split_by_node: give each distributed rank its share of the shards.
        split_by_worker: give each DataLoader worker its share of the shards.
        partial: yield the last, smaller batch.
        with_keys: batches are ``(splats, texts, keys)``.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        n: int = 1024,
        batch_size: int = 64,
        *,
        shuffle: int = 0,
        seed: int = 0,
        tokenizer: Tokenizer | None = None,
        handler: Handler = wds.warn_and_continue,
        resampled: bool = False,
        split_by_node: bool = True,
        split_by_worker: bool = True,
        partial: bool = True,
        with_keys: bool = False,
    ) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
        stages = _source(urls, resampled, shuffle, seed, split_by_node, split_by_worker, handler)
        stages += [
            wds.select(_has_splat_and_text),
            wds.map(decode_splat_sample, handler=handler),
            wds.batched(
                batch_size,
                collation_fn=functools.partial(
                    collate_splats, n=n, tokenizer=tokenizer, with_keys=with_keys
                ),
                partial=partial,
            ),
        ]
        super().__init__(*stages)
        self.n = n
        self.batch_size = batch_size


def splat_pipeline(urls: str | Sequence[str], n: int = 1024, batch_size: int = 64, **kw):
    """A :class:`SplatDataset` (same arguments), open_clip's ``get_wds_dataset`` for splats."""
    return SplatDataset(urls, n, batch_size, **kw)


# ------------------------------------------------------------------------------------ RGB baseline
def decode_rgb_sample(sample: dict[str, Any], preprocess: Callable) -> tuple[Tensor, str, str]:
    """``{"__key__", "jpg", "txt"}`` → ``(preprocess(PIL RGB image), caption, key)``."""
    from PIL import Image

    key = str(sample.get("__key__", ""))
    ext = next((e for e in _IMAGE_EXTS if e in sample), None)
    if ext is None or "txt" not in sample:
        raise ValueError(f"sample {key!r}: needs an image and a .txt member")
    with Image.open(io.BytesIO(sample[ext])) as im:
        image = preprocess(im.convert("RGB"))
    return image, sample["txt"].decode("utf-8"), key


def _has_image_and_text(sample: dict[str, Any]) -> bool:
    return "txt" in sample and any(e in sample for e in _IMAGE_EXTS)


def collate_rgb(
    batch: Sequence[tuple], tokenizer: Tokenizer | None = None, with_keys: bool = False
) -> tuple:
    """``[(image, text, key), ...]`` → ``(images [B, 3, H, W], texts)`` (``+ (keys,)``)."""
    images = torch.stack([item[0] for item in batch])
    captions = [item[1] for item in batch]
    text = tokenizer(captions) if tokenizer is not None else captions
    if with_keys:
        return images, text, [item[2] for item in batch]
    return images, text


def rgb_pipeline(
    urls: str | Sequence[str],
    batch_size: int = 64,
    image_size: int = 224,
    *,
    preprocess: Callable | None = None,
    shuffle: int = 0,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    handler: Handler = wds.warn_and_continue,
    resampled: bool = False,
    split_by_node: bool = True,
    split_by_worker: bool = True,
    partial: bool = True,
    with_keys: bool = False,
) -> wds.DataPipeline:
    """The baseline: image–text shards → ``(images [B, 3, S, S] float, texts)``, as open_clip.

    Each image is decoded with PIL and put through ``preprocess``, by default open_clip's eval
    transform ``image_transform(image_size, is_train=False)`` (bicubic resize of the shorter side,
    centre crop, to tensor, CLIP normalisation). Other arguments as :class:`SplatDataset`.
    """
    if preprocess is None:
        import open_clip

        preprocess = open_clip.image_transform(image_size, is_train=False)
    stages = _source(urls, resampled, shuffle, seed, split_by_node, split_by_worker, handler)
    stages += [
        wds.select(_has_image_and_text),
        wds.map(functools.partial(decode_rgb_sample, preprocess=preprocess), handler=handler),
        wds.batched(
            batch_size,
            collation_fn=functools.partial(collate_rgb, tokenizer=tokenizer, with_keys=with_keys),
            partial=partial,
        ),
    ]
    return wds.DataPipeline(*stages)
