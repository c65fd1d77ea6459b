"""Training loaders: splat shards into padded ``Splats`` batches, and the open_clip RGB baseline.

Both pipelines follow open_clip's ``get_wds_dataset``: a shard list (or resampled shards), split
by node and by DataLoader worker, a tar reader with an error handler, an optional sample shuffle,
a per-sample map and ``batched`` with a collate function. The RGB baseline reads shards with
webdataset's ``tarfile_to_samples`` as open_clip does; the splat pipeline with
:func:`~gsvision.data.tarstream.tar_samples`, which yields the same samples from intact shards at
a fraction of the cost, and hands a damaged shard to the handler as a
:class:`~gsvision.data.shards.ShardReadError` after the samples before the damage (see
:mod:`gsvision.data.tarstream`). Use them as open_clip does::

    pipeline = splat_pipeline("shards/{00000..00127}.tar", n=1024, batch_size=256)
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=8)
    for splats, texts in loader:  # Splats [B, 1024], list[str] (or tokens with a tokenizer)
        ...

Splat shards hold ``key.gsv`` (a one-image codec payload), ``key.txt`` and ``key.json``. Samples
lacking a payload or a caption are dropped silently, as open_clip drops image–text samples without
one. The per-sample stage only takes out the payload bytes and the caption; payloads are decoded a
batch at a time in the collate step (:func:`~gsvision.codec.decode_batch`: one vectorised pass
over the batch, each payload checked as :func:`~gsvision.codec.decode` checks it). A payload that
does not decode becomes a :class:`~gsvision.codec.CodecError` naming the sample, handed to the
pipeline's ``handler`` (default :func:`webdataset.warn_and_continue`: a warning); its sample is
left out and the batch goes on without it, one sample short. A handler that raises stops the
pipeline there; one that returns ``False`` (``warn_and_stop``) stops it after that batch.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import webdataset as wds
from torch import Tensor

from gsvision.codec import CodecError, decode, decode_batch
from gsvision.data.shards import expand_urls
from gsvision.data.tarstream import tar_samples
from gsvision.fit.prune import luminance_score
from gsvision.splats import Splats

__all__ = [
    "SPLAT_EXT",
    "SplatDataset",
    "SplatLoader",
    "SplatSample",
    "collate_rgb",
    "collate_splats",
    "decode_rgb_sample",
    "decode_splat_sample",
    "extract_splat_sample",
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
    """One training sample: its splats, or its ``.gsv`` payload before :func:`collate_splats`
    decodes it with the rest of its batch."""

    splats: Splats | bytes  # one image
    text: str
    key: str


# ------------------------------------------------------------------------------------ samples
def decode_splat_sample(sample: dict[str, Any]) -> SplatSample:
    """Raw ``{"__key__", "gsv", "txt", ...}`` → :class:`SplatSample`, decoded at once (a map
    stage for pipelines of your own; the ones here use :func:`extract_splat_sample` and decode a
    batch at a time, several times faster).

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


def extract_splat_sample(sample: dict[str, Any]) -> SplatSample:
    """The pipeline's map stage: raw ``{"__key__", "gsv", "txt", ...}`` → :class:`SplatSample`
    holding the payload bytes, undecoded (cheap; :func:`collate_splats` decodes the batch).

    Raises:
        ValueError: if a member is missing or the caption is not UTF-8.
    """
    key = str(sample.get("__key__", ""))
    if SPLAT_EXT not in sample or "txt" not in sample:
        raise ValueError(f"sample {key!r}: needs .{SPLAT_EXT} and .txt members")
    text = sample["txt"]
    text = text.decode("utf-8") if isinstance(text, (bytes, bytearray)) else str(text)
    return SplatSample(bytes(sample[SPLAT_EXT]), text, key)


def _has_splat_and_text(sample: dict[str, Any]) -> bool:
    return SPLAT_EXT in sample and "txt" in sample


def _has_splat_text_and_image(sample: dict[str, Any]) -> bool:
    return _has_splat_and_text(sample) and any(e in sample for e in _IMAGE_EXTS)


def _extract_with_image(sample: dict[str, Any], preprocess: Callable) -> tuple:
    """``(payload, caption, key, preprocess(image))`` for distillation batches."""
    item = extract_splat_sample(sample)
    image, _, _ = decode_rgb_sample(sample, preprocess)
    return (*item, image)


def pad_splats(items: Sequence[Splats], n: int) -> Splats:
    """One batch with exactly ``n`` Gaussian slots per image.

    Images with fewer Gaussians are padded (padding as :meth:`Splats.compact` fills it). An image
    with more keeps its ``n`` most important Gaussians by the ``"footprint"`` score of
    :func:`~gsvision.fit.prune.luminance_score` (luminance × relative area), in their stored order.
    Opacities are kept if every image has them, else folded into the colours (as
    :meth:`Splats.cat`). Each item may hold one or more images; each is copied a whole item at a
    time, and only the images above ``n`` are scored and trimmed.
    """
    if n < 1:
        raise ValueError(f"pad_splats: n must be >= 1, got {n}")
    if not items:
        raise ValueError("pad_splats: need at least one item")
    with_op = all(s.opacities is not None for s in items)
    parts = [(s if with_op else s.fold_opacity()).to("cpu") for s in items]
    total = sum(s.batch_size for s in parts)
    dtype = parts[0].dtype
    fills = {"means": 0.5, "chol": 1.0, "colors": 0.0, "opacities": 0.0}  # as Splats.compact
    width = {"means": 2, "chol": 3, "colors": 3, "opacities": 1}
    out = {
        name: torch.empty((total, n, width[name]), dtype=dtype)
        for name in (fills if with_op else list(fills)[:3])
    }  # fields [total, n, k]
    counts = torch.empty(total, dtype=torch.int64)
    sizes = torch.empty((total, 2), dtype=torch.int64)
    i = 0
    for s in parts:
        b, k = s.batch_size, min(s.capacity, n)
        fields = s.fields()
        for name, t in out.items():
            t[i : i + b, :k] = fields[name][:, :k]
        counts[i : i + b] = s.counts.clamp(max=n)
        sizes[i : i + b] = s.image_sizes
        big = torch.nonzero(s.counts > n).flatten()
        if big.numel():  # keep the n most important Gaussians, in stored order
            score = luminance_score(s[big], "footprint")  # padded slots score -inf
            idx = torch.topk(score, n, dim=1).indices.sort(dim=1).values  # [R, n]
            for name, t in out.items():
                v = fields[name][big]
                t[i + big] = torch.gather(v, 1, idx[..., None].expand(-1, -1, v.shape[2]))
        i += b
    pad = torch.arange(n)[None, :] >= counts[:, None]  # [total, n]: slots past each count
    if pad.any():
        for name, t in out.items():
            t.masked_fill_(pad[..., None], fills[name])
    return Splats(out["means"], out["chol"], out["colors"], counts, sizes, out.get("opacities"))


def collate_splats(
    batch: Sequence[SplatSample | tuple],
    n: int,
    tokenizer: Tokenizer | None = None,
    with_keys: bool = False,
    on_error: Callable[[CodecError], Any] | None = None,
) -> tuple:
    """``[(splats or payload, text, key), ...]`` → ``(Splats [B, n], texts)`` (``+ (keys,)``).

    Items hold decoded :class:`Splats` (padded and trimmed by :func:`pad_splats`) or, as the
    pipeline's do, ``.gsv`` payloads: those are decoded together by
    :func:`~gsvision.codec.decode_batch`, then brought to ``n`` slots the same way. ``texts`` is
    the caption list, or ``tokenizer(captions)`` when a tokenizer is given (any callable;
    open_clip's returns a ``[B, context_length]`` LongTensor).

    Args:
        on_error: called with a :class:`~gsvision.codec.CodecError` naming the sample for each
            payload that does not decode (or holds other than one image); that sample is left
            out of the batch. ``None``: the first such payload raises it.
    """
    splats, kept = _decoded(batch, n, on_error)
    return _collate(splats, kept, tokenizer, with_keys)


def _decoded(
    batch: Sequence[SplatSample | tuple], n: int, on_error: Callable[[CodecError], Any] | None
) -> tuple[Splats, list]:
    """``(Splats [B', n], the B' items kept)``: payload items decoded as one batch."""
    if all(isinstance(item[0], Splats) for item in batch):
        return pad_splats([item[0] for item in batch], n), list(batch)
    if any(isinstance(item[0], Splats) for item in batch):
        raise TypeError("collate_splats: a batch holds both decoded splats and payloads")
    payloads = [item[0] for item in batch]
    try:
        splats, skipped = decode_batch(payloads, errors="skip", images_per_payload=1)
    except CodecError:  # padding every image to the largest count is too big: an image far above
        # n. Decode them one by one instead, trimming each (no padded batch of the largest size).
        splats, skipped = _decoded_one_by_one(payloads, n)
    for i, exc in skipped.items():
        error = CodecError(f"sample {batch[i][2]!r}: {exc}")
        if on_error is None:
            raise error from exc
        on_error(error)
    kept = [item for i, item in enumerate(batch) if i not in skipped]
    return (splats if splats.capacity == n else pad_splats([splats], n)), kept


def _decoded_one_by_one(payloads: list, n: int) -> tuple[Splats, dict[int, CodecError]]:
    items, skipped = [], {}
    for i, payload in enumerate(payloads):
        one, bad = decode_batch([payload], errors="skip", images_per_payload=1)
        if bad:
            skipped[i] = bad[0]
        else:
            items.append(pad_splats([one], n))
    if not items:
        items = [decode_batch([])]  # an empty batch
    return pad_splats(items, n), skipped


def _collate(splats: Splats, kept: list, tokenizer: Tokenizer | None, with_keys: bool) -> tuple:
    captions = [item[1] for item in kept]
    text = tokenizer(captions) if tokenizer is not None else captions
    out: tuple = (splats, text)
    if kept and len(kept[0]) > 3:  # items carrying a preprocessed image
        out += (torch.stack([item[3] for item in kept]),)
    if with_keys:
        out += ([item[2] for item in kept],)
    return out


def _collated(
    batches: Iterable[list],
    n: int,
    tokenizer: Tokenizer | None,
    with_keys: bool,
    handler: Handler,
) -> Iterator[tuple]:
    """Pipeline stage: lists of samples → collated batches, decoding each list's payloads at once.

    Each payload that does not decode goes to ``handler`` (webdataset's contract: raise, or
    return True to go on, False to stop); its sample is left out, and a batch left empty is not
    yielded. After a handler returned False the pipeline ends with the current batch.
    """
    for batch in batches:
        go_on = True

        def report(exc: CodecError) -> None:
            nonlocal go_on
            go_on = bool(handler(exc)) and go_on

        splats, kept = _decoded(batch, n, report)
        if kept:
            yield _collate(splats, kept, tokenizer, with_keys)
        if not go_on:
            return


# ------------------------------------------------------------------------------------ pipelines
def _source(
    urls: str | Sequence[str],
    resampled: bool,
    shuffle: int,
    seed: int,
    split_by_node: bool,
    split_by_worker: bool,
    handler: Handler,
    epoch: int = 0,
    fast_reader: bool = False,
) -> list:
    """The stages from shard URLs to raw samples (open_clip's layout).

    Shuffles are deterministic from ``seed + epoch`` (a pipeline built for epoch ``e`` yields the
    same order every time: exact resume rebuilds it and skips what was consumed). Shards are read
    by webdataset's ``tarfile_to_samples``, or with ``fast_reader`` by
    :func:`~gsvision.data.tarstream.tar_samples` (same samples, several times cheaper per member,
    stricter about damaged tars).
    """
    shards = expand_urls(urls)
    if resampled:
        # Each worker draws its own shards with replacement (seeded per worker), as open_clip.
        stages: list = [wds.ResampledShards(shards, seed=seed, deterministic=True)]
    else:
        stages = [wds.SimpleShardList(shards)]
        if shuffle > 0:
            # Same order on every node and worker (seed + epoch), before the splits.
            stages.append(
                wds.detshuffle(_SHARD_SHUFFLE, min(500, _SHARD_SHUFFLE), seed=seed, epoch=epoch - 1)
            )
        if split_by_node:
            stages.append(wds.split_by_node)
        if split_by_worker:
            stages.append(wds.split_by_worker)
    if fast_reader:
        stages.append(functools.partial(tar_samples, handler=handler))
    else:
        stages.append(wds.tarfile_to_samples(handler=handler))
    if shuffle > 0:
        stages.append(
            wds.detshuffle(shuffle, min(shuffle, 1000), seed=seed + 7919, epoch=epoch - 1)
        )
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
            (``wds.warn_and_continue`` skips them with a warning, the batch goes on a sample
            short; ``wds.reraise_exception`` stops). A missing, truncated or corrupt shard reaches
            it as a :class:`~gsvision.data.shards.ShardReadError`, after the samples before the
            damage.
        resampled: draw shards with replacement forever (use ``.with_epoch(k)`` to set an epoch).
        split_by_node: give each distributed rank its share of the shards.
        split_by_worker: give each DataLoader worker its share of the shards.
        partial: yield the last, smaller batch.
        with_keys: batches are ``(splats, texts, keys)``.
        image_preprocess: also read each sample's image (shards converted with ``--keep-image``)
            through this transform: batches are ``(splats, texts, images[, keys])``, and samples
            without an image are dropped (for distillation from an RGB tower).
        epoch: the epoch whose (deterministic) shuffle order to yield.
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
        image_preprocess: Callable | None = None,
        epoch: int = 0,
    ) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
        stages = _source(
            urls, resampled, shuffle, seed, split_by_node, split_by_worker, handler, epoch, True
        )  # (the last: read shards with gsvision.data.tarstream)
        if image_preprocess is None:
            extract, has = extract_splat_sample, _has_splat_and_text
        else:
            extract = functools.partial(_extract_with_image, preprocess=image_preprocess)
            has = _has_splat_text_and_image
        stages += [
            wds.select(has),
            wds.map(extract, handler=handler),
            wds.batched(batch_size, collation_fn=None, partial=partial),
            functools.partial(
                _collated, n=n, tokenizer=tokenizer, with_keys=with_keys, handler=handler
            ),
        ]
        super().__init__(*stages)
        self.n = n
        self.batch_size = batch_size


class SplatLoader:
    """A ``DataLoader`` over a :class:`SplatDataset` whose workers hand each ``Splats`` batch to
    the training process through a ring of shared-memory buffers made once, instead of new
    shared memory for every batch (what a plain ``DataLoader`` does for every tensor it returns:
    ~4 ms per ``Splats [64, 1024]`` batch on 2 cores, as much as decoding half the batch).

    Each worker owns ``prefetch_factor + 2`` slots; it writes a batch into its next slot and sends
    only the slot's number (and the batch's other parts: texts or tokens, images, keys, which
    travel as usual). The loader copies the batch out of the slot before it asks for the next
    one, and a ``DataLoader`` worker is never more than ``prefetch_factor`` batches ahead of what
    was received, so a slot is only rewritten after it was copied: every batch this yields is the
    caller's own. Without workers, batches come straight from the dataset. Iterate it like the
    ``DataLoader`` (or ``wds.WebLoader``) it replaces::

        loader = SplatLoader(splat_pipeline(urls, n=1024, batch_size=256), num_workers=8)
        for splats, texts in loader:
            ...

    Args:
        dataset: a :class:`SplatDataset` (its ``n`` and ``batch_size`` size the slots) or any
            iterable dataset yielding ``(Splats [≤ batch_size, n], ...)`` tuples with those
            attributes.
        num_workers, prefetch_factor, persistent_workers: as ``torch.utils.data.DataLoader``'s.
    """

    def __init__(
        self,
        dataset,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        persistent_workers: bool = False,
    ) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.loader = None
        if num_workers > 0:
            slots = prefetch_factor + 2
            shape = (num_workers, slots, dataset.batch_size, dataset.n)
            ring = {
                "fields": torch.zeros(*shape, 9).share_memory_(),  # means, chol, colours, opacity
                "counts": torch.zeros(shape[:3], dtype=torch.int64).share_memory_(),
                "sizes": torch.zeros(*shape[:3], 2, dtype=torch.int64).share_memory_(),
            }
            self.ring = ring
            self.loader = torch.utils.data.DataLoader(
                _RingWriter(dataset, ring),
                batch_size=None,
                num_workers=num_workers,
                prefetch_factor=prefetch_factor,
                persistent_workers=persistent_workers,
            )

    def __iter__(self) -> Iterator[tuple]:
        if self.loader is None:
            yield from self.dataset
            return
        for (worker, slot, b, opacity), *rest in self.loader:
            f = self.ring["fields"][worker, slot, :b]  # copied out before the next batch is asked
            splats = Splats(
                f[..., 0:2].clone(),
                f[..., 2:5].clone(),
                f[..., 5:8].clone(),
                self.ring["counts"][worker, slot, :b].clone(),
                self.ring["sizes"][worker, slot, :b].clone(),
                f[..., 8:9].clone() if opacity else None,
            )
            yield (splats, *rest)


class _RingWriter(torch.utils.data.IterableDataset):
    """The worker side of :class:`SplatLoader`: batches into slots, slot numbers out."""

    def __init__(self, dataset, ring: dict[str, Tensor]) -> None:
        self.dataset, self.ring = dataset, ring

    def __iter__(self) -> Iterator[tuple]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        fields = self.ring["fields"][worker]
        slots, capacity, n = fields.shape[:3]
        for j, (splats, *rest) in enumerate(self.dataset):
            b = splats.batch_size
            if b > capacity or splats.capacity != n or splats.dtype != fields.dtype:
                raise ValueError(
                    f"SplatLoader: a batch of {b} images with {splats.capacity} slots "
                    f"({splats.dtype}) does not fit the loader's buffers ({capacity} images, {n} "
                    f"slots, {fields.dtype}: the dataset's batch_size and n)"
                )
            slot = j % slots
            out = fields[slot, :b]
            out[..., 0:2] = splats.means
            out[..., 2:5] = splats.chol
            out[..., 5:8] = splats.colors
            opacity = splats.opacities is not None
            if opacity:
                out[..., 8:9] = splats.opacities
            self.ring["counts"][worker, slot, :b] = splats.counts
            self.ring["sizes"][worker, slot, :b] = splats.image_sizes
            yield ((worker, slot, b, opacity), *rest)


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
    epoch: int = 0,
) -> wds.DataPipeline:
    """The baseline: image–text shards → ``(images [B, 3, S, S] float, texts)``, as open_clip.

    Each image is decoded with PIL and put through ``preprocess``, by default open_clip's eval
    transform ``image_transform(image_size, is_train=False)`` (bicubic resize of the shorter side,
    centre crop, to tensor, CLIP normalisation). Other arguments as :class:`SplatDataset`.
    """
    if preprocess is None:
        import open_clip

        preprocess = open_clip.image_transform(image_size, is_train=False)
    stages = _source(urls, resampled, shuffle, seed, split_by_node, split_by_worker, handler, epoch)
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
