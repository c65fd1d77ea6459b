"""Small image–text shards in the img2dataset layout, made from the shipped photos.

For tests, benchmarks and the demo (no downloads at run time): random crops, flips and sizes of the
six sample photos, with captions, ``key.json`` metadata and ``<shard>_stats.json`` as img2dataset
writes them. ``faults`` plants the bad inputs a real crawl contains, so the converter's handling of
each can be tested.

The class-labelled coloured shapes (the GS-CLIP demo's dataset) live in
:mod:`gsvision.data.captioned_shapes`; :func:`make_shapes_shards` is re-exported here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from gsvision.data.captioned_shapes import make_shapes_shards
from gsvision.data.shards import ShardWriter

__all__ = ["FAULTS", "make_image_text_shards", "make_shapes_shards"]

#: Bad inputs that can be planted: a truncated JPEG, a sample without caption, a sample with no
#: image (only a PDF and a caption), a truncated last shard, and an extra empty shard.
FAULTS = ("corrupt_jpeg", "missing_caption", "non_image", "truncated_tar", "empty_tar")

_CAPTIONS = {
    "astronaut": "a portrait of an astronaut in a white suit with a flag",
    "chelsea": "a tabby cat looking to the side",
    "coffee": "a cup of coffee on a saucer",
    "ihc": "a microscope image of stained tissue",
    "retina": "a photograph of the retina of an eye",
    "rocket": "a rocket on a launch pad against the sky",
}


def _photos() -> list[tuple[str, np.ndarray]]:
    from gsvision.io import load_image, sample_images

    return [(p.stem, load_image(p)) for p in sample_images()]


def _variant(photo: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = photo.shape[:2]
    ch, cw = (int(rng.integers(s // 2, s + 1)) for s in (h, w))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    crop = photo[y : y + ch, x : x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    out = Image.fromarray(np.ascontiguousarray(crop))
    side = int(rng.integers(96, 321))
    scale = side / min(out.size)
    return out.resize((max(1, round(out.width * scale)), max(1, round(out.height * scale))))


def make_image_text_shards(
    out_dir: str | Path,
    shards: int = 2,
    per_shard: int = 8,
    seed: int = 0,
    faults: Sequence[str] = (),
    quality: int = 90,
) -> list[Path]:
    """Write ``shards`` tar shards of ``per_shard`` image–text samples each into ``out_dir``.

    Returns:
        The shard paths (``00000.tar``, ...), including an empty extra shard if asked.
    """
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; choose from {FAULTS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = _photos()
    paths = []
    for s in range(shards):
        path = out / f"{s:05d}.tar"
        with ShardWriter(path) as writer:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                name, photo = photos[int(rng.integers(len(photos)))]
                image = _variant(photo, rng)
                buf = io.BytesIO()
                image.save(buf, format="JPEG", quality=quality)
                files: dict[str, bytes | str] = {
                    "jpg": buf.getvalue(),
                    "txt": _CAPTIONS[name],
                    "json": json.dumps(
                        {
                            "key": key,
                            "caption": _CAPTIONS[name],
                            "source": name,
                            "width": image.width,
                            "height": image.height,
                        }  # fmt: skip
                    ),
                }
                if s == 0 and i == 1 and "corrupt_jpeg" in faults:
                    files["jpg"] = files["jpg"][: len(files["jpg"]) // 3]
                if s == 0 and i == 2 and "missing_caption" in faults:
                    del files["txt"]
                if s == 0 and i == 3 and "non_image" in faults:
                    files = {"pdf": b"%PDF-1.4 not an image", "txt": "a document"}
                writer.write(key, files)
            writer.commit()
        stats = {"count": per_shard, "successes": per_shard, "failed_to_download": 0}
        path.with_name(f"{s:05d}_stats.json").write_text(json.dumps(stats))
        paths.append(path)
    if "truncated_tar" in faults:
        last = paths[-1]
        data = last.read_bytes()
        last.write_bytes(data[: int(len(data) * 0.6)])
    if "empty_tar" in faults:
        empty = out / f"{shards:05d}.tar"
        empty.write_bytes(b"")
        paths.append(empty)
    return paths
