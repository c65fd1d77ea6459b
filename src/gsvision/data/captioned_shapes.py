"""A built-in captioned, class-labelled dataset: coloured shapes on varied backgrounds.

Classes are colour × shape ("red circle", ... 24 by default). Nuisances the class must survive:
size, position, rotation, colour jitter, and the background (plain, gradient, noise, stripes, all
low-saturation so the class colour stays the salient one). Captions vary in wording and mention
the nuisances ("a small red circle on a striped background", "a photo of a big blue star in the
top left"), so a text tower learns the colour and shape words apart from the rest.

Written in the img2dataset layout (``key.jpg``, ``key.txt``, ``key.json``) plus ``key.cls`` and, in
the test split, clip_benchmark's ``classnames.txt`` and ``zeroshot_classification_templates.txt``,
so ``gsvision eval --dataset wds`` reads it as it reads real benchmarks.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from gsvision.data.shards import ShardWriter

__all__ = ["COLOURS", "SHAPES", "TEMPLATES", "make_shapes_shards", "shape_image"]

#: Class colours (RGB) and shapes; a class is one of each.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (235, 215, 35),
    "purple": (140, 55, 180),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
BACKGROUNDS = ("plain", "gradient", "noise", "stripes")
_BG_WORDS = {"plain": "plain", "gradient": "gradient", "noise": "noisy", "stripes": "striped"}
_SIZES = (("small", 0.3, 0.4), ("medium", 0.42, 0.54), ("big", 0.56, 0.7))  # diameter / side

#: Zero-shot prompt templates (clip_benchmark's ``{c}`` convention).
TEMPLATES = (
    "a photo of a {c}.",
    "a {c}.",
    "a picture of a {c}.",
    "a small {c}.",
    "a big {c}.",
    "a {c} on a plain background.",
)

_CAPTIONS = (  # half name only the class, as many web captions do; half add the nuisances
    "a {colour} {shape}",
    "a photo of a {colour} {shape}",
    "a {colour} {shape}.",
    "a {size} {colour} {shape} on a {bg} background",
    "a photo of a {colour} {shape} in the {pos}",
    "{size} {colour} {shape}, {pos}",
)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [
            (cx + r * math.cos(angle + k * math.pi / 2 + math.pi / 4),
             cy + r * math.sin(angle + k * math.pi / 2 + math.pi / 4))
            for k in range(4)
        ]  # fmt: skip
    if shape == "triangle":
        return [
            (cx + r * math.cos(angle + k * 2 * math.pi / 3),
             cy + r * math.sin(angle + k * 2 * math.pi / 3))
            for k in range(3)
        ]  # fmt: skip
    # a five-pointed star: outer radius r, inner 0.45 r
    return [
        (cx + (r if k % 2 == 0 else 0.45 * r) * math.cos(angle + k * math.pi / 5),
         cy + (r if k % 2 == 0 else 0.45 * r) * math.sin(angle + k * math.pi / 5))
        for k in range(10)
    ]  # fmt: skip


def _background(kind: str, s: int, rng: np.random.Generator) -> np.ndarray:
    """A low-saturation background ``[s, s, 3]`` float in [0, 255]."""
    base = rng.uniform(60, 200)
    tint = rng.uniform(-18, 18, 3)
    c1 = np.clip(base + tint, 0, 255)
    if kind == "plain":
        return np.broadcast_to(c1, (s, s, 3)).copy()
    c2 = np.clip(c1 + rng.choice([-1, 1]) * rng.uniform(35, 70), 0, 255)
    yy, xx = np.mgrid[0:s, 0:s] / max(1, s - 1)
    theta = rng.uniform(0, math.pi)
    t = (xx * math.cos(theta) + yy * math.sin(theta)) / (
        abs(math.cos(theta)) + abs(math.sin(theta))
    )
    if kind == "gradient":
        w = t[..., None]
    elif kind == "stripes":
        period = rng.uniform(0.12, 0.3)
        w = ((t / period) % 1.0 < 0.5).astype(np.float64)[..., None]
    else:  # noise
        w = np.clip(0.5 + rng.normal(0, 0.35, (s, s, 1)), 0, 1)
    return c1 * (1 - w) + c2 * w


def shape_image(
    colour: str, shape: str, size: int, rng: np.random.Generator
) -> tuple[Image.Image, dict[str, Any]]:
    """One antialiased image (drawn at 2x, then downsampled) and what is in it."""
    s2 = 2 * size
    bg = str(rng.choice(BACKGROUNDS))
    canvas = Image.fromarray(_background(bg, s2, rng).astype(np.uint8))
    size_word, lo, hi = _SIZES[int(rng.integers(len(_SIZES)))]
    r = rng.uniform(lo, hi) * s2 / 2
    cx, cy = (rng.uniform(r, s2 - r) for _ in range(2))
    rgb = tuple(int(np.clip(v + rng.normal(0, 10), 0, 255)) for v in COLOURS[colour])
    draw = ImageDraw.Draw(canvas)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgb)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=rgb)
    image = canvas.resize((size, size), Image.Resampling.LANCZOS)
    col = ("left", "centre", "right")[min(2, int(3 * cx / s2))]
    row = ("top", "middle", "bottom")[min(2, int(3 * cy / s2))]
    pos = "centre" if (row, col) == ("middle", "centre") else f"{row} {col}".replace("middle ", "")
    info = {
        "colour": colour,
        "shape": shape,
        "size": size_word,
        "position": pos,
        "background": bg,
        "centre": [cx / s2, cy / s2],
        "radius": r / s2,
    }
    return image, info


def _caption(info: dict[str, Any], rng: np.random.Generator) -> str:
    template = _CAPTIONS[int(rng.integers(len(_CAPTIONS)))]
    return template.format(
        size=info["size"],
        colour=info["colour"],
        shape=info["shape"],
        bg=_BG_WORDS[info["background"]],
        pos=info["position"],
    )


def make_shapes_shards(
    out_dir: str | Path,
    n_train: int = 2400,
    n_test: int = 480,
    size: int = 64,
    per_shard: int = 500,
    seed: int = 0,
    colours: tuple[str, ...] = tuple(COLOURS),
    shapes: tuple[str, ...] = SHAPES,
    quality: int = 95,
) -> dict[str, Any]:
    """Write ``out_dir/train/*.tar`` and ``out_dir/test/*.tar`` (balanced classes, shuffled).

    Args:
        out_dir: created if missing.
        n_train, n_test: pairs per split; classes are balanced (round-robin, then shuffled).
        size: image side in pixels.
        per_shard: samples per shard (the training program needs one shard per rank at least).
        seed: everything is deterministic from it (train and test draw from separate streams).
        colours, shapes: the classes are their product, colour-major.
        quality: JPEG quality.

    Returns:
        ``{"classnames", "train", "test"}`` (the latter two: lists of shard paths).
    """
    for c in colours:
        if c not in COLOURS:
            raise ValueError(f"unknown colour {c!r}; choose from {sorted(COLOURS)}")
    for sh in shapes:
        if sh not in SHAPES:
            raise ValueError(f"unknown shape {sh!r}; choose from {SHAPES}")
    if size < 8 or per_shard < 1:
        raise ValueError("size must be >= 8 and per_shard >= 1")
    classes = [(c, sh) for c in colours for sh in shapes]
    classnames = [f"{c} {sh}" for c, sh in classes]
    out = Path(out_dir)
    result: dict[str, Any] = {"classnames": classnames}
    for split, count, stream in (("train", n_train, 0), ("test", n_test, 1)):
        rng = np.random.default_rng([seed, stream])
        labels = rng.permutation(np.arange(count) % len(classes))
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for first in range(0, count, per_shard):
            s = first // per_shard
            path = folder / f"{s:05d}.tar"
            with ShardWriter(path) as writer:
                for i in range(first, min(count, first + per_shard)):
                    label = int(labels[i])
                    image, info = shape_image(*classes[label], size, rng)
                    buf = io.BytesIO()
                    image.save(buf, format="JPEG", quality=quality)
                    key = f"{s:05d}{i - first:04d}"
                    caption = _caption(info, rng)
                    meta = {"key": key, "caption": caption, "label": label,
                            "classname": classnames[label], "width": size, "height": size,
                            **info}  # fmt: skip
                    writer.write(
                        key,
                        {
                            "jpg": buf.getvalue(),
                            "txt": caption,
                            "cls": str(label),
                            "json": json.dumps(meta),
                        },
                    )
                writer.commit()
            n = min(count, first + per_shard) - first
            stats = {"count": n, "successes": n, "failed_to_download": 0}
            path.with_name(f"{s:05d}_stats.json").write_text(json.dumps(stats))
            paths.append(path)
        result[split] = paths
    test = out / "test"
    (test / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (test / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    return result
