"""`gsvision bench load`: training-loader throughput, splat shards vs the source JPEG shards.

Side by side in one run, on the same samples: open_clip's way (PIL-decode each JPEG, bicubic
resize + centre crop to 224, to tensor, normalise; batches of ``[B, 3, 224, 224]``) against
:class:`~gsvision.data.loader.SplatDataset` (decode each batch's ``.gsv`` payloads in one pass with
:func:`~gsvision.codec.decode_batch`, bring them to ``N`` slots; batches of ``Splats [B, N]``), both through ``torch.utils.data.DataLoader(pipeline, batch_size=None,
num_workers=k)`` for k = 1 and 2, persistent workers, the warm-up epoch excluded; the headline
level also through :class:`~gsvision.data.loader.SplatLoader` (``splat_<level>_ring``: the same
pipeline, batches handed over through shared buffers made once; the training loader, and the
headline speed-up). Rounds are interleaved and the median is reported.

The splat shards are fitted cheaply (a few iterations after the structured init): what a loader
costs depends on ``N`` and the payload size, not on how well the Gaussians fit, and a full fit of
every image would take far longer than the measurement. Writes ``benchmarks/results/load.json``.

Source image sizes (``--sources``, both by default): ``crawl``, the synthetic img2dataset-style
crawl (96–320 px on the shorter side, JPEG quality 90), and ``datacomp``, the same samples (keys,
captions, source photos) as DataComp's download writes them: ``download_upstream.py`` calls
img2dataset with ``image_size=512, resize_mode="keep_ratio_largest", resize_only_if_bigger=True``
and the default re-encoding (JPEG quality 95), so every image larger than 512 px is resized to
512 px on its longer side, keeping its aspect ratio. Here every image is taken as larger (most web
images are): a fresh random crop of its photo, resized (Lanczos) to 512 px on the longer side. The
splat shards are the same for both: a payload's cost depends on ``N``, not on the source size.
"""

from __future__ import annotations

import argparse
import functools
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from gsvision.bench._common import write_result

__all__ = ["main"]

TARGET_SPEEDUP = 31.0  # what the system this project implements reports, loading DataComp
TARGET_SOURCE = "datacomp"  # the source size that target is judged against (when it runs)


def _make_shards(root: Path, args) -> tuple[list[str], dict[str, list[str]], dict]:
    """Source JPEG shards, and the matching splat shards at each level; returns urls and fit info."""
    from PIL import Image

    from gsvision.codec import encode
    from gsvision.data.shards import ShardWriter, iter_samples
    from gsvision.data.synthetic import make_image_text_shards
    from gsvision.fit import fit

    jpg = make_image_text_shards(root / "jpg", args.shards, args.per_shard, seed=args.seed)
    splat_urls: dict[str, list[str]] = {level: [] for level in args.levels}
    fit_seconds, psnrs = 0.0, []
    for path in jpg:
        samples = list(iter_samples(str(path)))
        images = [np.asarray(Image.open(io.BytesIO(s.image()[1])).convert("RGB")) for s in samples]
        t0 = time.perf_counter()
        r = fit(images, args.n, iters=args.fit_iters, size=args.size, seed=args.seed)
        fit_seconds += time.perf_counter() - t0
        psnrs += [m["psnr"] for m in r.metrics]
        for level in args.levels:
            out = root / f"gsv-{level}" / path.name
            with ShardWriter(out) as w:
                for b, s in enumerate(samples):
                    payload = encode(r.splats[b], level)
                    w.write(s.key, {"gsv": payload, "txt": s.files["txt"], "json": s.files["json"]})
                splat_urls[level].append(str(w.commit()))
    info = {
        "n_gaussians": args.n,
        "fit_iters": args.fit_iters,
        "fit_size": args.size,
        "fit_seconds": fit_seconds,
        "mean_psnr": float(np.mean(psnrs)),
        "note": "fitted cheaply (structured init + a few iterations): loader cost depends on N "
        "and the payload size, not on fit quality",
    }
    return [str(p) for p in jpg], splat_urls, info


#: DataComp's img2dataset settings (download_upstream.py; quality: img2dataset's default).
DATACOMP_LONGER_SIDE = 512
DATACOMP_JPEG_QUALITY = 95


def _datacomp_shards(root: Path, crawl_urls: list[str], seed: int) -> list[str]:
    """The crawl shards' samples as DataComp stores them: each sample's source photo, freshly
    cropped (half to all of each side, as the crawl's), resized to 512 px on its longer side
    (aspect ratio kept), JPEG quality 95; same keys, captions and metadata fields."""
    import json

    from PIL import Image

    from gsvision.data.shards import ShardWriter, iter_samples
    from gsvision.data.synthetic import _photos

    photos = dict(_photos())
    rng = np.random.default_rng(seed + 1)
    out = []
    for url in crawl_urls:
        with ShardWriter(root / "jpg-datacomp" / Path(url).name) as w:
            for s in iter_samples(url):
                meta = s.meta()
                photo = photos[meta["source"]]
                h, w_ = photo.shape[:2]
                ch, cw = (int(rng.integers(d // 2, d + 1)) for d in (h, w_))
                y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w_ - cw + 1))
                image = Image.fromarray(np.ascontiguousarray(photo[y : y + ch, x : x + cw]))
                scale = DATACOMP_LONGER_SIDE / max(image.size)
                size = (
                    max(1, round(image.width * scale)),
                    max(1, round(image.height * scale)),
                )
                image = image.resize(size, Image.LANCZOS)
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=DATACOMP_JPEG_QUALITY)
                meta.update(width=image.width, height=image.height)
                w.write(
                    s.key, {"jpg": buf.getvalue(), "txt": s.files["txt"], "json": json.dumps(meta)}
                )
            out.append(str(w.commit()))
    return out


def _shard_bytes(urls: list[str], ext: str) -> dict:
    from gsvision.data.shards import iter_samples

    members, samples = 0, 0
    for url in urls:
        for s in iter_samples(url):
            members += len(s.files.get(ext, b""))
            samples += 1
    total = sum(Path(u).stat().st_size for u in urls)
    return {
        "samples": samples,
        "shard_bytes_per_sample": total / samples,
        f"{ext}_bytes_per_sample": members / samples,
    }


def _throughput(pipeline, workers: int, epochs: int, ring: bool = False) -> float:
    """Samples per second over ``epochs`` after one warm-up epoch (persistent workers); ``ring``:
    through :class:`~gsvision.data.loader.SplatLoader` instead of a plain ``DataLoader``."""
    if ring:
        from gsvision.data.loader import SplatLoader

        loader = SplatLoader(pipeline, num_workers=workers, persistent_workers=True)
    else:
        loader = DataLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=True)

    _epoch(loader)  # warm-up: starts the workers, imports, page cache
    t0 = time.perf_counter()
    count = sum(_epoch(loader) for _ in range(epochs))
    seconds = time.perf_counter() - t0
    return count / seconds  # the workers stop when the loader is collected


def _epoch(loader) -> int:
    return sum(len(text) for _, text in loader)


def _breakdown(
    jpg_urls: dict[str, list[str]], splat_urls: list[str], n: int, batch_size: int, repeat: int
) -> dict:
    """In-process, one thread: microseconds per sample of each step of the two loaders (and of
    the splat loader's former per-payload decode and webdataset tar reader, for comparison).
    ``jpg_urls``: the JPEG shards of each source size; the first is the headline."""
    import open_clip
    import webdataset as wds
    from PIL import Image

    from gsvision.codec import decode, decode_batch
    from gsvision.codec.entropy import decompress
    from gsvision.codec.format import unpack
    from gsvision.data.loader import collate_splats, extract_splat_sample, pad_splats
    from gsvision.data.shards import iter_samples
    from gsvision.data.tarstream import tar_samples

    jpgs = {src: [s.image()[1] for s in iter_samples(urls[0])] for src, urls in jpg_urls.items()}
    raw = list(iter_samples(splat_urls[0]))
    gsvs = [s.files["gsv"] for s in raw]
    samples = [extract_splat_sample({"__key__": s.key, **s.files}) for s in raw]

    def batches(fn):  # fn on each batch of batch_size items, as the loader's collate step sees them
        return lambda xs: [fn(xs[k : k + batch_size]) for k in range(0, len(xs), batch_size)]

    preprocess = open_clip.image_transform(224, is_train=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def per_sample(fn, items) -> float:
        fn(items[:2])
        t0 = time.perf_counter()
        for _ in range(repeat):
            fn(items)
        return (time.perf_counter() - t0) / (repeat * len(items)) * 1e6

    def tar_read(urls: list[str], fast: bool = False) -> float:
        if fast:  # the splat pipeline's reader
            stage = functools.partial(tar_samples, handler=wds.reraise_exception)
        else:  # webdataset's, as open_clip reads shards
            stage = wds.tarfile_to_samples()
        best = float("inf")
        for _ in range(max(1, repeat)):
            pipeline = wds.DataPipeline(wds.SimpleShardList(urls), stage)
            t0 = time.perf_counter()
            count = sum(1 for _ in pipeline)
            best = min(best, (time.perf_counter() - t0) / count * 1e6)
        return best

    bodies = [(im.body, im.raw_len) for b in gsvs for im in unpack(b)[0]]
    try:
        decoded = [decode(b) for b in gsvs]
        out = {}
        for src, urls in jpg_urls.items():
            sfx = "" if src == next(iter(jpg_urls)) else f"_{src}"
            pils = [Image.open(io.BytesIO(b)).convert("RGB") for b in jpgs[src]]
            out |= {
                f"jpeg_tar_read_us{sfx}": tar_read(urls),
                f"jpeg_decode_us{sfx}": per_sample(
                    lambda xs: [Image.open(io.BytesIO(b)).convert("RGB") for b in xs], jpgs[src]
                ),
                f"resize_crop_normalise_us{sfx}": per_sample(
                    lambda xs: [preprocess(p) for p in xs], pils
                ),
            }
        out |= {
            "splat_tar_read_us": tar_read(splat_urls, fast=True),
            "splat_tar_read_webdataset_us": tar_read(splat_urls),
            "zstd_decompress_us": per_sample(lambda xs: [decompress(b, k) for b, k in xs], bodies),
            "codec_decode_us": per_sample(lambda xs: [decode(b) for b in xs], gsvs),
            "pad_to_n_us": per_sample(lambda xs: pad_splats(xs, n), decoded),
            "codec_decode_batch_us": per_sample(batches(decode_batch), gsvs),
            "collate_us": per_sample(batches(lambda xs: collate_splats(xs, n)), samples),
        }
    finally:
        torch.set_num_threads(threads)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the loader benchmark; returns what it writes to ``load.json``."""
    ap = argparse.ArgumentParser(prog="gsvision bench load", description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--per-shard", type=int, default=64)
    ap.add_argument("--n", type=int, default=1024, help="Gaussians per image (and pad size)")
    ap.add_argument("--size", type=int, default=224, help="fit size (shorter side, centre crop)")
    ap.add_argument("--fit-iters", type=int, default=3)
    ap.add_argument("--levels", nargs="+", default=["medium", "f16"], help="first one is headline")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (median kept)")
    ap.add_argument(
        "--sources",
        nargs="+",
        choices=["crawl", "datacomp"],
        default=["crawl", "datacomp"],
        help="source JPEG sizes: crawl (96-320 px shorter side) and/or datacomp (512 px longer "
        "side); the first is the headline",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where shards go (default: a temp folder)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the harness")
    args = ap.parse_args(argv)
    if args.quick:
        args.shards, args.per_shard, args.n, args.size, args.fit_iters = 2, 6, 64, 32, 1
        args.batch_size, args.epochs, args.repeats, args.levels = 4, 1, 1, args.levels[:1]

    from gsvision.data.loader import rgb_pipeline, splat_pipeline

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        print(f"gsvision bench load: {args.shards} x {args.per_shard} samples", flush=True)
        crawl_urls, splat_urls, fit_info = _make_shards(root, args)
        jpg_urls = {}  # by source size, the headline first
        for src in args.sources:
            jpg_urls[src] = (
                crawl_urls if src == "crawl" else _datacomp_shards(root, crawl_urls, args.seed)
            )
        print(f"  shards written ({fit_info['fit_seconds']:.1f} s fitting)", flush=True)
        rgb = {src: "rgb" if i == 0 else f"rgb_{src}" for i, src in enumerate(args.sources)}
        sizes = {}
        for src, urls in jpg_urls.items():
            sizes[rgb[src].replace("rgb", "jpeg")] = _shard_bytes(urls, "jpg")
        for level, urls in splat_urls.items():
            sizes[f"splat_{level}"] = _shard_bytes(urls, "gsv")

        loaders = {
            rgb[src]: (lambda urls=urls: rgb_pipeline(urls, args.batch_size, 224))
            for src, urls in jpg_urls.items()
        }
        for level, urls in splat_urls.items():
            loaders[f"splat_{level}"] = lambda urls=urls: splat_pipeline(
                urls, n=args.n, batch_size=args.batch_size
            )
        # the headline level also through SplatLoader (shared-memory ring; what training uses)
        loaders[f"splat_{args.levels[0]}_ring"] = loaders[f"splat_{args.levels[0]}"]
        splat_names = [n.removeprefix("splat_") for n in loaders if n.startswith("splat_")]
        runs: dict[str, dict[str, list[float]]] = {
            str(w): {name: [] for name in loaders} for w in args.workers
        }
        t0 = time.perf_counter()
        for r in range(args.repeats):
            for w in args.workers:
                for name, make in loaders.items():  # interleaved, so drift hits all alike
                    rate = _throughput(make(), w, args.epochs, ring=name.endswith("_ring"))
                    runs[str(w)][name].append(rate)
                    print(f"  round {r} workers={w} {name}: {rate:.0f} samples/s", flush=True)
        breakdown = _breakdown(
            jpg_urls, splat_urls[args.levels[0]], args.n, args.batch_size, repeat=2
        )

    headline = f"splat_{args.levels[0]}_ring"
    throughput = {}
    for w, by_name in runs.items():
        row = {f"{name}_samples_per_s": statistics.median(v) for name, v in by_name.items()}
        for src in args.sources:  # speedup_<splat> against the headline source, then the others
            prefix = "" if rgb[src] == "rgb" else f"{src}_"
            base = row[f"{rgb[src]}_samples_per_s"]
            for name in splat_names:
                row[f"speedup_{prefix}splat_{name}"] = row[f"splat_{name}_samples_per_s"] / base
        throughput[w] = row
    spread = {w: {name: [min(v), max(v)] for name, v in by_n.items()} for w, by_n in runs.items()}
    by_source = {}
    for src in args.sources:
        prefix = "" if rgb[src] == "rgb" else f"{src}_"
        best_src = max(row[f"speedup_{prefix}{headline}"] for row in throughput.values())
        by_source[src] = {
            "rgb_loader": rgb[src],
            "best_speedup": best_src,
            "meets_target": best_src >= TARGET_SPEEDUP,
        }
    # The target is the paper's figure for DataComp: judged against the DataComp-size source
    # when it ran (the crawl's smaller images are cheaper to decode than DataComp's).
    target_source = TARGET_SOURCE if TARGET_SOURCE in by_source else args.sources[0]
    best = by_source[target_source]["best_speedup"]
    result = {
        "settings": {**vars(args), "rgb_image_size": 224},
        "splat_shards": fit_info,
        "sources": {
            "crawl": "synthetic img2dataset-style crawl: 96-320 px on the shorter side, JPEG q90",
            "datacomp": "the same samples as DataComp's img2dataset download stores them: 512 px "
            "on the longer side (keep_ratio_largest, every image taken as larger than 512), "
            "JPEG q95",
        },
        "bytes": sizes,
        "throughput": throughput,
        "runs_samples_per_s": runs,
        "runs_min_max_samples_per_s": spread,
        "breakdown_us_per_sample_one_thread": breakdown,
        "target_speedup": TARGET_SPEEDUP,
        "by_source": by_source,
        "target_source": target_source,
        "best_speedup": best,
        "meets_target": best >= TARGET_SPEEDUP,
        "wall_seconds_timing": time.perf_counter() - t0,
    }
    path = write_result("load", result, args.out)
    for src, row in by_source.items():
        print(f"  {src}: best speed-up {row['best_speedup']:.2f}x (target {TARGET_SPEEDUP:g}x)")
    print(f"  wrote {path}")
    return result


if __name__ == "__main__":
    main()
