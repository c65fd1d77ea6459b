"""The demo's report: one self-contained ``report.html`` (figures inlined as PNG) from its results.

Figures: sample images beside their splat renderings and ellipse overlays, the training curves of
every stage, zero-shot accuracy of the splat and RGB towers, bytes per image (raw pixels, the source
JPEG, the ``.gsv`` payload) and tokens per image.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["samples_figure", "write_report"]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def samples_figure(images: Sequence[np.ndarray], splats, captions: Sequence[str], scale: int = 4):
    """Rows: original, splat rendering, 1σ ellipses; one column per sample."""
    import torch

    from gsvision.raster import render
    from gsvision.viz import draw_ellipses

    plt = _plt()
    k = len(images)
    fig, axes = plt.subplots(3, k, figsize=(1.9 * k, 6.2), squeeze=False)
    for j, image in enumerate(images):
        h, w = image.shape[:2]
        one = splats[j : j + 1]
        with torch.no_grad():
            pixels = render(one, h, w)[0].clamp(0, 1).numpy()
        overlay = draw_ellipses(None, one, h, w, scale=scale)
        n = int(one.counts[0])
        for row, (pic, title) in enumerate(
            [(image, captions[j]), (pixels, f"{n} Gaussians"), (np.asarray(overlay), "1σ ellipses")]
        ):
            ax = axes[row, j]
            ax.imshow(pic, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(_wrap(title), fontsize=7)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 26) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def _curves_figure(logs: dict[str, Path]):
    plt = _plt()
    stages = [(name, path) for name, path in logs.items() if path.is_file()]
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(4.2 * max(1, len(stages)), 3.2))
    axes = np.atleast_1d(axes)
    for ax, (name, path) in zip(axes, stages, strict=False):
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        steps = [r["step"] for r in recs]
        ax.plot(steps, [r["loss"] for r in recs], color="tab:blue", label="loss")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        extra = "cosine" if recs and "cosine" in recs[0] else "acc_i2t"
        if recs and extra in recs[0]:
            ax2 = ax.twinx()
            ax2.plot(steps, [r[extra] for r in recs], color="tab:orange", label=extra)
            ax2.set_ylabel("cosine to RGB" if extra == "cosine" else "in-batch acc (img→txt)")
            ax2.set_ylim(0, 1.02)
    fig.tight_layout()
    return fig


def _bars_figure(groups: dict[str, dict[str, float]], ylabel: str, log: bool = False, fmt="{:.1f}"):
    plt = _plt()
    names = list(groups)
    series = sorted(
        {k for g in groups.values() for k in g}, key=list(next(iter(groups.values()))).index
    )
    x = np.arange(len(names))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(names), 3.2))
    for i, s in enumerate(series):
        vals = [groups[n].get(s, 0.0) for n in names]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=s)
        ax.bar_label(bars, [fmt.format(v) for v in vals], fontsize=7)
    ax.set_xticks(x, names)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(out: Path, results: dict[str, Any], samples_fig=None) -> Path:
    """Write ``out/report.html`` from the demo's ``results`` (see :func:`gsvision.train.demo.run_demo`)."""
    out = Path(out)
    acc = results["zeroshot"]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>gsvision demo report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}th{background:#f3f3f3}img{max-width:100%}</style>",
        "<h1>gsvision demo: GS-CLIP on synthetic captioned shapes</h1>",
        f"<p>{html.escape(results['summary'])}</p>",
        "<h2>Zero-shot classification on held-out images</h2>",
        _table(
            [
                [t, f"{100 * a['top1']:.1f}%", f"{100 * a['top5']:.1f}%", a["images"]]
                for t, a in acc.items()
            ],
            ["tower", "top-1", "top-5", "images"],
        ),
        f"<img src='data:image/png;base64,{_png(_bars_figure({t: {'top-1': 100 * a['top1'], 'top-5': 100 * a['top5']} for t, a in acc.items()}, 'zero-shot accuracy (%)'))}'>",
    ]
    if samples_fig is not None:
        parts += [
            "<h2>Images and their splats</h2>",
            f"<img src='data:image/png;base64,{_png(samples_fig)}'>",
        ]
    sizes = results["bytes_per_image"]
    tokens = results["tokens_per_image"]
    parts += [
        "<h2>Bytes and tokens per image</h2>",
        _table([[k, f"{v:,.0f}"] for k, v in sizes.items()], ["representation", "bytes / image"]),
        f"<img src='data:image/png;base64,{_png(_bars_figure({k: {'bytes': v} for k, v in sizes.items()}, 'bytes per image', log=True, fmt='{:,.0f}'))}'>",
        f"<img src='data:image/png;base64,{_png(_bars_figure({k: {'tokens': v} for k, v in tokens.items()}, 'tokens into the transformer', fmt='{:.0f}'))}'>",
        "<h2>Training</h2>",
        f"<img src='data:image/png;base64,{_png(_curves_figure({k: Path(v) for k, v in results['logs'].items()}))}'>",
        _table([[k, f"{v:.0f} s"] for k, v in results["timings"].items()], ["step", "wall"]),
        "<h2>Settings</h2><pre>"
        + html.escape(json.dumps(results["settings"], indent=2))
        + "</pre>",
    ]
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path
