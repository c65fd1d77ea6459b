"""The conversion job: image–text shards in, splat shards (``key.gsv``, ``key.txt``, ``key.json``) out.

- Background threads read the tars and decode the images while the main thread fits batches with
  the fastest backend (:func:`gsvision.codec.rate.fit_and_encode`, so byte, ratio and PSNR targets
  work as in ``gsvision fit``), encodes and writes.
- Each output shard is written under a temporary name and renamed when complete; then its
  ``<shard>_stats.json`` (converted and skipped samples, with reasons) is written the same way and
  marks the shard done. A rerun skips done shards and redoes the rest, so a job killed at any moment
  ends, after a rerun, with every input sample converted exactly once or listed as skipped.
- A ``cls`` member (the class label, clip_benchmark's layout) is copied unchanged and its value
  recorded in ``key.json``; with ``keep_image`` the source image bytes are copied too, under their
  own extension, so one shard holds an image and its splats (for distillation and evaluation).
- Under ``torchrun`` each rank converts shards ``rank, rank + world, ...`` (one GPU per rank where
  there are GPUs); rank 0 writes ``_summary.json`` once every rank is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gsvision.codec import using_coder
from gsvision.data.shards import (
    Sample,
    ShardReadError,
    ShardWriter,
    expand_urls,
    iter_samples,
    read_shard_stats,
    shard_name,
)
from gsvision.io import jsonable, write_atomic

__all__ = ["ConvertConfig", "JobConflictError", "convert"]

JOB_FILE = "_job.json"
SUMMARY_FILE = "_summary.json"


class JobConflictError(RuntimeError):
    """The output folder holds another job's files (rerun with ``resume=True`` to continue)."""


@dataclass
class ConvertConfig:
    """Settings of a conversion job (the fit and codec ones mean what they mean in ``gsvision fit``)."""

    n_gaussians: int = 1024
    iters: int = 500
    size: int | tuple[int, int] | None = 224
    level: str = "medium"
    # the codec's lossless stage: zstd keeps the training loader fast (decode ~4x faster than the
    # range coder, whose payloads are 12-20% smaller)
    coder: str = "zstd"
    # encoder effort 0-3 (gsvision.codec.rate.EFFORT_ROUNDS): time the range coder's closed loop
    # spends refining the geometry; zstd shards keep their fitted geometry, rounded
    effort: int = 1
    bytes: int | None = None
    ratio: float | None = None
    psnr: float | None = None
    batch: int = 64  # images per fitting batch (within a shard)
    workers: int = 2  # image-decoding threads
    seed: int = 0
    backend: str | None = None
    resume: bool = False  # continue in a folder that holds another job's files
    progress: bool = True
    keep_image: bool = False  # also write the source image bytes (for distillation, evaluation)
    # encode and write each batch on a second thread while the next one fits (for GPU fitting;
    # on CPU the fitter already has every core). Off by default: its one GPU measurement (H200,
    # docs/benchmarks.md) was no faster, confounded by first-use compilation on that thread
    overlap: bool = False

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same job (everything that changes the output)."""
        skip = {"workers", "resume", "progress", "backend", "batch", "overlap"}
        if self.coder == "zstd":  # the default, as jobs written before the setting existed
            skip.add("coder")
        if self.effort == 1:  # likewise
            skip.add("effort")
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class _Item:
    """One input sample after reading: an image to fit, or a reason to skip it."""

    key: str
    image: np.ndarray | None = None
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source_bytes: int = 0
    skip: str | None = None
    decode_seconds: float = 0.0
    extra: dict[str, bytes] = field(default_factory=dict)  # members copied as they are


@dataclass
class _ShardWork:
    """What the reader thread hands over for one shard: batches, then the end (and any error)."""

    index: int
    url: str
    batches: queue.Queue = field(default_factory=lambda: queue.Queue(maxsize=2))


_END = object()


def _rank_world() -> tuple[int, int, int]:
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
        int(os.environ.get("LOCAL_RANK", 0)),
    )


def _dist_setup(world: int):
    """Initialise torch.distributed under torchrun (gloo on CPU, nccl with GPUs)."""
    if world <= 1:
        return None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist


def convert(
    inputs: str | Sequence[str], out_dir: str | os.PathLike, config: ConvertConfig | None = None
) -> dict[str, Any]:
    """Convert image–text shards to splat shards in ``out_dir``; returns the job summary.

    Args:
        inputs: shard URLs: a brace pattern (``data/{00000..00127}.tar``), a ``::`` list, a list,
            ``pipe:`` commands, anything webdataset opens.
        out_dir: created if missing; output shards keep the input shard names.
        config: fit, codec and job settings.

    Raises:
        JobConflictError: ``out_dir`` holds another job's files and ``config.resume`` is false.
        ValueError: for bad settings or duplicate shard names.
    """
    cfg = config or ConvertConfig()
    _check_config(cfg)
    urls = expand_urls(inputs)
    names = [shard_name(u) for u in urls]
    dupes = sorted(n for n, c in Counter(names).items() if c > 1)
    if dupes:
        raise ValueError(f"several input shards are named {dupes}; output names would collide")
    out = Path(out_dir)
    rank, world, local_rank = _rank_world()
    dist = _dist_setup(world)
    job = {"inputs": urls, "settings": jsonable(cfg.identity())}
    error = _check_job(out, job, cfg.resume)
    if dist is not None:
        dist.barrier()  # everyone has checked before rank 0 writes the job file
    if error is not None:
        raise JobConflictError(error)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / JOB_FILE, job)
    if dist is not None:
        dist.barrier()

    start = time.perf_counter()
    mine = [i for i in range(len(urls)) if i % world == rank]
    pending = [i for i in mine if not _done(out, names[i])]
    _clean_stale(out, [names[i] for i in mine])
    if len(pending) < len(mine):
        print(
            f"gsvision convert: rank {rank}: {len(mine) - len(pending)} of {len(mine)} shards "
            "already complete, skipping them",
            file=sys.stderr,
        )
    device = _device(local_rank)
    timings = Counter()
    _run(urls, names, pending, out, cfg, device, timings, rank)
    timings["wall"] = time.perf_counter() - start
    _write_json(out / f"_timings_rank{rank}.json", dict(timings))
    if dist is not None:
        dist.barrier()
    summary = _summarise(out, names, world) if rank == 0 else {}
    if rank == 0:
        _write_json(out / SUMMARY_FILE, summary)
        _print_summary(summary)
    if dist is not None:
        dist.barrier()
    return summary


def _check_config(cfg: ConvertConfig) -> None:
    from gsvision.codec.rate import RateTarget, check_effort, check_level

    check_level(cfg.level)
    check_effort(cfg.effort)
    RateTarget(cfg.bytes, cfg.ratio, cfg.psnr).check()
    if cfg.coder not in ("range", "zstd"):
        raise ValueError(f'coder must be "range" or "zstd", got {cfg.coder!r}')
    if cfg.batch < 1 or cfg.workers < 1:
        raise ValueError(f"batch and workers must be >= 1, got {cfg.batch} and {cfg.workers}")


def _check_job(out: Path, job: dict, resume: bool) -> str | None:
    """Why ``out`` cannot take this job (``None`` if it can)."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} exists and is not a directory"
    previous = out / JOB_FILE
    if previous.exists():
        try:
            same = json.loads(previous.read_text()) == job
        except (OSError, ValueError):
            same = False
        if same or resume:
            return None
        return (
            f"{out} holds another conversion job (different inputs or settings, see {JOB_FILE}); "
            "use --resume to continue in it anyway, or choose another output directory"
        )
    others = [p.name for p in out.iterdir() if not p.name.startswith(".")]
    if others and not resume:
        return (
            f"{out} is not empty and holds no gsvision conversion job ({others[:3]}...); "
            "use --resume to write into it anyway, or choose another output directory"
        )
    return None


def _done(out: Path, name: str) -> bool:
    return (out / f"{name}_stats.json").exists() and (out / f"{name}.tar").exists()


def _clean_stale(out: Path, names: list[str]) -> None:
    """Remove temporary files a killed run left for this rank's shards."""
    for name in names:
        for pattern in (f".{name}.tar.*.tmp", f".{name}_stats.json.*.tmp"):
            for tmp in out.glob(pattern):
                tmp.unlink(missing_ok=True)


def _device(local_rank: int) -> str | None:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return None


# ------------------------------------------------------------------------------------ reading
#: Members copied unchanged into the splat shard: the class label (clip_benchmark's ``cls``).
_CARRIED = ("cls",)


def _read_item(sample: Sample, keep_image: bool = False) -> _Item:
    """Decode one sample's image and caption (runs in a worker thread)."""
    from gsvision.io import ImageError, decode_image

    start = time.perf_counter()
    item = _Item(sample.key, meta=sample.meta())
    found = sample.image()
    caption = sample.text()
    if found is None:
        exts = ", ".join(sorted(sample.files)) or "none"
        item.skip = f"no image member (members: {exts})"
    elif caption is None:
        item.skip = "missing caption (.txt)" if "txt" not in sample.files else "caption not UTF-8"
    else:
        ext, data = found
        item.source_bytes = len(data)
        item.extra = {e: sample.files[e] for e in _CARRIED if e in sample.files}
        if keep_image:
            item.extra[ext] = data
        try:
            item.image = decode_image(data, f"{sample.key}.{ext}")
            item.caption = caption
        except ImageError as exc:
            item.skip = str(exc)
    item.decode_seconds = time.perf_counter() - start
    return item


def _reader(works: list[_ShardWork], cfg: ConvertConfig, stop: threading.Event) -> None:
    """Fill each shard's queue with batches of decoded items, then ``(_END, error)``."""
    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="gsv-decode") as pool:
        for work in works:
            error = None
            batch: list = []
            try:
                for sample in iter_samples(work.url):
                    batch.append(pool.submit(_read_item, sample, cfg.keep_image))
                    if len(batch) == cfg.batch:
                        _put(work.batches, [f.result() for f in batch], stop)
                        batch = []
                    if stop.is_set():
                        return
            except ShardReadError as exc:
                error = (str(exc), exc.key)
            if batch:
                _put(work.batches, [f.result() for f in batch], stop)
            _put(work.batches, (_END, error), stop)


def _put(q: queue.Queue, value, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(value, timeout=0.2)
            return
        except queue.Full:
            continue


def _batches(work: _ShardWork, timings: Counter) -> Iterator[list[_Item] | tuple]:
    while True:
        t0 = time.perf_counter()
        value = work.batches.get()
        timings["wait_input"] += time.perf_counter() - t0  # the fitter starved for input
        yield value
        if isinstance(value, tuple) and value and value[0] is _END:
            return


# ------------------------------------------------------------------------------------ the job
def _run(urls, names, pending, out: Path, cfg: ConvertConfig, device, timings, rank) -> None:
    works = [_ShardWork(i, urls[i]) for i in pending]
    stop = threading.Event()
    reader = threading.Thread(target=_reader, args=(works, cfg, stop), daemon=True)
    reader.start()
    bar = _progress(urls, pending, cfg, rank)
    try:
        for work in works:
            _convert_shard(work, names[work.index], out, cfg, device, timings, bar, rank)
    finally:
        stop.set()
        if bar is not None:
            bar.close()


def _convert_shard(work, name, out: Path, cfg, device, timings, bar, rank) -> None:
    stats: dict[str, Any] = {
        "shard": name,
        "input": work.url,
        "converted": 0,
        "skipped": [],
        "bytes_in": 0,
        "bytes_out": 0,
        "psnr_sum": 0.0,
        "error": None,
    }
    with (
        ShardWriter(out / f"{name}.tar", tag=f"rank{rank}") as writer,
        _Encoder(cfg.overlap and cfg.psnr is None, timings) as encoder,
    ):
        for value in _batches(work, timings):
            if isinstance(value, tuple):  # the end of the shard
                encoder.drain()
                if value[1] is not None:
                    stats["error"], cut = value[1]
                    if cut is not None:  # the sample the damage cut off
                        stats["skipped"].append(
                            {"key": cut, "reason": "shard truncated or corrupt"}
                        )
                break
            _convert_batch(value, writer, stats, cfg, device, timings, bar, encoder)
        encoder.drain()
        t0 = time.perf_counter()
        writer.commit()
        timings["write"] += time.perf_counter() - t0
    if stats["error"]:
        print(f"gsvision convert: {stats['error']}", file=sys.stderr)
    _write_json(out / f"{name}_stats.json", stats)


class _Encoder:
    """Runs each batch's encode-and-write on one background thread, in order, one batch behind
    the fitter (``enabled=False``: inline). Errors surface in the main thread at the next
    :meth:`submit` or :meth:`drain`."""

    def __init__(self, enabled: bool, timings: Counter):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="gsv-encode") if enabled else None
        self.pending = None
        self.timings = timings

    def submit(self, fn) -> None:
        if self.pool is None:
            fn()
            return
        self.drain()  # at most one batch encoding while the next one fits: bounded memory
        self.pending = self.pool.submit(fn)

    def drain(self) -> None:
        if self.pending is not None:
            t0 = time.perf_counter()
            pending, self.pending = self.pending, None
            pending.result()
            self.timings["wait_encode"] += time.perf_counter() - t0  # the fitter waited

    def __enter__(self) -> _Encoder:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.drain()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)


def _convert_batch(
    items: list[_Item], writer, stats, cfg, device, timings, bar, encoder: _Encoder
) -> None:
    timings["decode"] += sum(i.decode_seconds for i in items)
    for item in items:
        if item.skip is not None:
            stats["skipped"].append({"key": item.key, "reason": item.skip})
            print(f"gsvision convert: skipping {item.key}: {item.skip}", file=sys.stderr)
    good = [i for i in items if i.skip is None]
    if encoder.pool is not None and good:
        finish = _fit_deferred(good, cfg, device, timings)
        if finish is not None:
            encoder.submit(
                lambda: _write_batch(
                    items, good, _encode(finish, timings, cfg.coder), writer, stats, timings, bar
                )
            )
            return
    coded = _fit(good, cfg, device, timings) if good else []
    encoder.submit(lambda: _write_batch(items, good, coded, writer, stats, timings, bar))


def _write_batch(items, good, coded, writer, stats, timings, bar) -> None:
    t0 = time.perf_counter()
    for item, result in zip(good, coded, strict=True):
        if isinstance(result, str):
            stats["skipped"].append({"key": item.key, "reason": result})
            print(f"gsvision convert: cannot fit {item.key}: {result}", file=sys.stderr)
            continue
        meta = {**item.meta, **_label(item), "gsvision": _sample_metrics(item, result)}
        files = {"gsv": result.payload, "txt": item.caption, "json": json.dumps(meta)}
        writer.write(item.key, {**item.extra, **files})
        stats["converted"] += 1
        stats["bytes_in"] += item.source_bytes
        stats["bytes_out"] += len(result.payload)
        stats["psnr_sum"] += result.metrics["psnr"]
    timings["write"] += time.perf_counter() - t0
    if bar is not None:
        bar.update(len(items))
        done = max(stats["converted"], 1)
        bar.set_postfix(psnr=f"{stats['psnr_sum'] / done:.2f}", skipped=len(stats["skipped"]))


def _fit_call(fn, items: list[_Item], cfg: ConvertConfig, device):
    """``fn`` (:func:`fit_and_encode` or :func:`fit_then_encoder`) on a batch, with the job's
    fit and codec settings."""
    from gsvision.codec.rate import RateTarget

    target = RateTarget(cfg.bytes, cfg.ratio, cfg.psnr)
    kwargs = {"iters": cfg.iters, "size": cfg.size, "seed": cfg.seed, "backend": cfg.backend}
    images = [i.image for i in items]
    with using_coder(cfg.coder):
        return fn(images, target, cfg.level, cfg.n_gaussians, cfg.effort, device=device, **kwargs)


def _fit(items: list[_Item], cfg: ConvertConfig, device, timings) -> list:
    """Fit and encode a batch; a batch the fitter rejects is retried image by image."""
    from gsvision.codec.rate import fit_and_encode

    t0 = time.perf_counter()
    try:
        coded = _fit_call(fit_and_encode, items, cfg, device)
    except ValueError as exc:
        if len(items) == 1:
            timings["fit"] += time.perf_counter() - t0
            return [str(exc)]
        timings["fit"] += time.perf_counter() - t0
        return [r for item in items for r in _fit([item], cfg, device, timings)]
    spent = time.perf_counter() - t0
    encode = sum(c.metrics["encode_seconds"] for c in coded)
    timings["fit"] += spent - encode
    timings["encode"] += encode
    timings["images"] += len(items)
    return coded


def _fit_deferred(items: list[_Item], cfg: ConvertConfig, device, timings):
    """Fit a batch now and return its encoding step, or None when the fitter rejects the batch
    (the caller then goes image by image through :func:`_fit`)."""
    from gsvision.codec.rate import fit_then_encoder

    t0 = time.perf_counter()
    try:
        finish = _fit_call(fit_then_encoder, items, cfg, device)
    except ValueError:
        finish = None
    timings["fit"] += time.perf_counter() - t0
    if finish is not None:
        timings["images"] += len(items)
    return finish


def _encode(finish, timings, coder: str) -> list:
    t0 = time.perf_counter()
    with using_coder(coder):  # (a context variable: set again on the encoder thread)
        coded = finish()
    timings["encode"] += time.perf_counter() - t0  # on the encoder thread, beside the fitting
    return coded


def _label(item: _Item) -> dict[str, Any]:
    """``{"cls": 3}`` for a sample whose ``cls`` member is an integer, else ``{}``."""
    raw = item.extra.get("cls")
    try:
        return {"cls": int(raw.decode("ascii").strip())} if raw is not None else {}
    except (UnicodeDecodeError, ValueError):
        return {}  # the member is still copied as it is


def _sample_metrics(item: _Item, coded) -> dict[str, Any]:
    m = coded.metrics
    keep = ("psnr", "ssim", "psnr_fit", "n_gaussians", "bytes", "bpp", "ratio", "iterations")
    out = {k: m[k] for k in keep if k in m}
    out["level"] = m.get("level")
    out["source_bytes"] = item.source_bytes
    out["source_size"] = [int(item.image.shape[0]), int(item.image.shape[1])]
    if "reached" in m:
        out["target"], out["reached"] = m["target"], m["reached"]
    return jsonable(out)


def _progress(urls, pending, cfg: ConvertConfig, rank: int):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    counts = [read_shard_stats(urls[i]) for i in pending]
    total = None
    if counts and all(c and isinstance(c.get("successes"), int) for c in counts):
        total = sum(c["successes"] for c in counts)  # type: ignore[index]
    return tqdm(total=total, unit="img", desc=f"converting (rank {rank})", dynamic_ncols=True)


# ------------------------------------------------------------------------------------ summary
def _summarise(out: Path, names: list[str], world: int) -> dict[str, Any]:
    converted = bytes_in = bytes_out = 0
    psnr_sum = 0.0
    skipped: list[dict] = []
    errors: list[dict] = []
    missing = []
    for name in names:
        path = out / f"{name}_stats.json"
        if not path.exists():
            missing.append(name)
            continue
        s = json.loads(path.read_text())
        converted += s["converted"]
        bytes_in += s["bytes_in"]
        bytes_out += s["bytes_out"]
        psnr_sum += s["psnr_sum"]
        skipped += [{"shard": name, **k} for k in s["skipped"]]
        if s["error"]:
            errors.append({"shard": name, "error": s["error"]})
    timings = Counter()
    for path in out.glob("_timings_rank*.json"):
        timings.update(json.loads(path.read_text()))
    wall = max(
        (json.loads(p.read_text())["wall"] for p in out.glob("_timings_rank*.json")), default=0.0
    )
    return {
        "shards": len(names),
        "shards_incomplete": missing,
        "images_converted": converted,
        "images_skipped": len(skipped),
        "skipped_reasons": dict(Counter(_reason_kind(s["reason"]) for s in skipped)),
        "skipped": skipped,
        "shard_errors": errors,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "ratio_in_out": bytes_in / bytes_out if bytes_out else None,
        "mean_psnr": psnr_sum / converted if converted else None,
        "wall_seconds": wall,
        "images_per_second_this_run": timings["images"] / wall if wall else None,
        "seconds_by_stage": {
            k: timings[k] for k in ("decode", "wait_input", "fit", "encode", "write", "wait_encode")
        },
        "world_size": world,
        "job": hashlib.sha256(json.dumps(names).encode()).hexdigest()[:12],
    }


def _reason_kind(reason: str) -> str:
    """A short class of a skip reason, for counting."""
    for kind in ("no image member", "missing caption", "caption not UTF-8", "corrupt or truncated"):
        if kind in reason:
            return kind
    return reason.split(": ", 1)[-1][:60]


def _print_summary(s: dict[str, Any]) -> None:
    ratio = f"{s['ratio_in_out']:.1f}x" if s["ratio_in_out"] else "n/a"
    psnr = f"{s['mean_psnr']:.2f} dB" if s["mean_psnr"] is not None else "n/a"
    lines = [
        f"converted {s['images_converted']} images, skipped {s['images_skipped']} "
        f"{s['skipped_reasons'] or ''}".rstrip(),
        f"bytes in {s['bytes_in']:,} (source images) -> out {s['bytes_out']:,} (.gsv): {ratio}",
        f"mean PSNR {psnr}; wall {s['wall_seconds']:.1f} s",
    ]
    if s["shard_errors"]:
        lines.append(f"{len(s['shard_errors'])} shard(s) could not be read to the end:")
        lines += [f"  {e['shard']}: {e['error']}" for e in s["shard_errors"]]
    if s["shards_incomplete"]:
        lines.append(f"incomplete shards (rerun to finish): {s['shards_incomplete']}")
    print("\n".join(lines))


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=1) + "\n")
