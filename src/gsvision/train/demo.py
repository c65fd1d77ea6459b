"""``gsvision demo``: the whole mission end to end, offline, on built-in synthetic data.

captioned shapes (image–text shards) → splat shards (``convert``, images kept) → a tiny RGB CLIP
trained from scratch (no weights can be downloaded here) → the splat tower on that frozen backbone:
stage 1 distillation, stage 2 contrastive (the ``paper`` preset) → zero-shot accuracy of both towers
on held-out images → ``report.html``. With ``--pretrained TAG`` (and network access or a cache) the
RGB stage is skipped and real open_clip weights are the frozen backbone.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """The demo's settings; the defaults fit ``make demo`` in about 15 minutes on 2 CPU cores."""

    out: str = "demo-out"
    n_train: int = 2400  # synthetic training pairs
    n_test: int = 480  # held-out pairs for zero-shot evaluation
    image_size: int = 64
    n_gaussians: int = 64  # per image: 64 Gaussians at 64² are ~20x smaller than the pixels
    fit_iters: int = 120  # ~34 dB at 64 Gaussians on 64² shapes; more buys nothing here
    level: str = "medium"  # codec level
    # backbone (open_clip config name); None: GS-ViT-Tiny-8-64-MiniLM (a frozen pretrained MiniLM
    # text tower; measured better than a text tower from scratch, see the README) when the
    # `minilm` extra is installed, else GS-ViT-Tiny-8-64
    model: str | None = None
    pretrained: str | None = None  # open_clip weights tag/file: skips the RGB stage
    # RGB stage: freeze a pretrained (Hugging Face) text tower, LiT-style; None: exactly when
    # the backbone has one (e.g. GS-ViT-Tiny-8-64-MiniLM)
    lock_text: bool | None = None
    num_latents: int = 16
    resampler_layers: int = 2
    batch_size: int = 32  # small batches: more steps per second of CPU
    rgb_epochs: int = 14
    distill_epochs: int = 3
    contrastive_epochs: int = 6
    lr: float = 1e-3
    workers: int = 1
    seed: int = 0
    quick: bool = False  # tiny sizes, for tests: a minute, accuracy meaningless


def _quick(cfg: DemoConfig) -> DemoConfig:
    return DemoConfig(
        **{
            **asdict(cfg),
            "n_train": 128,
            "n_test": 32,
            "fit_iters": 20,
            "rgb_epochs": 1,
            "distill_epochs": 1,
            "contrastive_epochs": 1,
            "batch_size": 32,
            "quick": True,
        }
    )


def _stage(
    cfg: DemoConfig, stage: str, data: str, out: Path, model: str, epochs: int, **kw
) -> dict[str, Any]:
    from gsvision.train.main import TrainConfig, train

    shutil.rmtree(out, ignore_errors=True)
    tc = TrainConfig(
        stage=stage,
        train_data=data,
        out=str(out),
        model=model,
        pretrained=kw.pop("pretrained", None),
        num_latents=cfg.num_latents,
        resampler_layers=cfg.resampler_layers,
        n=cfg.n_gaussians,
        epochs=epochs,
        batch_size=cfg.batch_size,
        lr=kw.pop("lr", cfg.lr),
        warmup=kw.pop("warmup", 100 if not cfg.quick else 2),
        workers=cfg.workers,
        seed=cfg.seed,
        log_every=10 if not cfg.quick else 1,
        **kw,
    )
    return train(tc)


MINILM_MODEL = "GS-ViT-Tiny-8-64-MiniLM"
SCRATCH_MODEL = "GS-ViT-Tiny-8-64"


def default_model() -> tuple[str, str]:
    """``(backbone, why)``: the MiniLM one when its package is installed (measured better)."""
    from gsvision.model.factory import _check_available, _open_clip

    _open_clip()
    try:
        _check_available(MINILM_MODEL)
    except RuntimeError as exc:
        return SCRATCH_MODEL, f"text tower trained from scratch ({exc})"
    return MINILM_MODEL, "frozen pretrained all-MiniLM-L6-v2 text tower (LiT)"


def _has_pretrained_text(model: str) -> bool:
    """Whether the backbone's text tower comes with weights (a Hugging Face model)."""
    from gsvision.model.factory import _open_clip

    cfg = _open_clip().get_model_config(model) or {}
    return bool((cfg.get("text_cfg") or {}).get("hf_model_name"))


def _pattern(folder: Path) -> str:
    tars = sorted(folder.glob("*.tar"))
    if not tars:
        raise FileNotFoundError(f"no shards in {folder}")
    return str(folder / f"{{{tars[0].stem}..{tars[-1].stem}}}.tar")


def _payload_sizes(folder: Path) -> tuple[float, float]:
    """Mean ``.gsv`` and source-image bytes per sample of the splat shards in ``folder``."""
    from gsvision.data.shards import iter_samples

    gsv, img = [], []
    for tar in sorted(folder.glob("*.tar")):
        for s in iter_samples(str(tar)):
            if "gsv" in s.files:
                gsv.append(len(s.files["gsv"]))
            im = s.image()
            if im is not None:
                img.append(len(im[1]))
    return float(np.mean(gsv)), float(np.mean(img))


def _samples_figure(folder: Path, k: int = 8):
    from gsvision.codec import decode
    from gsvision.data.shards import iter_samples
    from gsvision.io import decode_image
    from gsvision.train.report import samples_figure

    images, payloads, captions = [], [], []
    for s in iter_samples(str(sorted(folder.glob("*.tar"))[0])):
        im = s.image()
        if im is None or "gsv" not in s.files:
            continue
        images.append(decode_image(im[1], s.key))
        payloads.append(decode(s.files["gsv"]))
        captions.append(s.files.get("txt", b"").decode())
        if len(images) == k:
            break
    from gsvision.splats import Splats

    return samples_figure([np.asarray(i) for i in images], Splats.cat(payloads), captions)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run every step; returns the results (also ``OUT/results.json``) and writes the report."""
    from gsvision.data import make_shapes_shards
    from gsvision.data.convert import ConvertConfig, convert
    from gsvision.data.labelled import wds_dataset
    from gsvision.model import load_model
    from gsvision.train.report import write_report
    from gsvision.train.zeroshot import evaluate

    if cfg.quick:
        cfg = _quick(cfg)
    if cfg.model is None:
        model, why = default_model()
        print(f"backbone {model}: {why}")
        cfg = replace(cfg, model=model)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    images = out / "data" / "images"
    splats = out / "data" / "splats"
    runs = out / "runs"
    for p in (images, splats):
        shutil.rmtree(p, ignore_errors=True)
    print(f"[1/6] synthetic captioned shapes: {cfg.n_train} train + {cfg.n_test} test pairs")
    made = make_shapes_shards(
        images, n_train=cfg.n_train, n_test=cfg.n_test, size=cfg.image_size, seed=cfg.seed
    )
    timings["make data"] = time.perf_counter() - t

    print(f"[2/6] fitting {cfg.n_gaussians} Gaussians per image and encoding (.gsv shards)")
    t = time.perf_counter()
    conv = ConvertConfig(
        n_gaussians=cfg.n_gaussians,
        iters=cfg.fit_iters,
        size=cfg.image_size,
        level=cfg.level,
        batch=128,
        keep_image=True,
        seed=cfg.seed,
    )
    for split in ("train", "test"):
        convert(_pattern(images / split), splats / split, conv)
    timings["convert to splats"] = time.perf_counter() - t
    train_data = _pattern(splats / "train")

    backbone = cfg.pretrained
    if backbone is None:
        lock = _has_pretrained_text(cfg.model) if cfg.lock_text is None else cfg.lock_text
        towers = "image tower, text tower frozen" if lock else "image and text towers"
        print(f"[3/6] training a small RGB CLIP ({towers}; the frozen backbone to be)")
        t = time.perf_counter()
        _stage(
            cfg,
            "rgb",
            _pattern(images / "train"),
            runs / "rgb",
            cfg.model,
            cfg.rgb_epochs,
            lock_text=lock,
        )
        backbone = str(runs / "rgb" / "model.safetensors")
        timings["train RGB CLIP"] = time.perf_counter() - t
    else:
        print(f"[3/6] using pretrained open_clip weights {backbone!r}: no RGB stage")

    print("[4/6] splat tower, stage 1: distillation from the frozen RGB tower (stem only)")
    t = time.perf_counter()
    _stage(
        cfg,
        "distill",
        train_data,
        runs / "distill",
        cfg.model,
        cfg.distill_epochs,
        pretrained=backbone,
    )
    timings["distill splat stem"] = time.perf_counter() - t

    print("[5/6] splat tower, stage 2: contrastive (stem, first two blocks, ln_post, proj)")
    t = time.perf_counter()
    distilled = str(runs / "distill" / "model.safetensors")
    _stage(
        cfg,
        "contrastive",
        train_data,
        runs / "contrastive",
        distilled,
        cfg.contrastive_epochs,
        trainable="paper",
        lr=cfg.lr / 2,
    )
    timings["contrastive splat tower"] = time.perf_counter() - t

    print("[6/6] zero-shot evaluation on held-out images, splat and RGB towers")
    t = time.perf_counter()
    final = str(runs / "contrastive" / "model.safetensors")
    labels = wds_dataset(images / "test")  # class names and templates the shapes came with
    test = wds_dataset(splats / "test", labels.classnames, labels.templates)
    kw = dict(batch=cfg.batch_size, n=cfg.n_gaussians)
    zs = evaluate(load_model(final).eval(), test, towers=("splat", "rgb"), **kw)
    zs_distill = evaluate(load_model(distilled).eval(), test, towers=("splat",), **kw)
    timings["zero-shot evaluation"] = time.perf_counter() - t

    gsv, jpeg = _payload_sizes(splats / "test")
    raw = cfg.image_size * cfg.image_size * 3
    from gsvision.model import read_model_cfg

    mcfg = read_model_cfg(final)
    import open_clip

    vis = open_clip.get_model_config(mcfg.model_name)["vision_cfg"]
    patches = (vis["image_size"] // vis["patch_size"]) ** 2
    acc = {
        "splat tower": _acc(zs, "splat"),
        "RGB tower": _acc(zs, "rgb"),
        "splat tower, distilled only": _acc(zs_distill, "splat"),
    }
    ratio = acc["splat tower"]["top1"] / max(acc["RGB tower"]["top1"], 1e-9)
    results = {
        "zeroshot": acc,
        "splat_over_rgb_top1": ratio,
        "bytes_per_image": {
            "raw pixels": raw,
            "source JPEG (q95)": jpeg,
            f".gsv ({cfg.n_gaussians} Gaussians)": gsv,
        },
        "compression_vs_raw": raw / gsv,
        "tokens_per_image": {
            "RGB tower": patches + 1,
            "splat tower": mcfg.resampler.num_latents + 1,
        },
        "timings": timings,
        "logs": {s: str(runs / s / "log.jsonl") for s in ("rgb", "distill", "contrastive")},
        "classes": made.get("classnames", []) if isinstance(made, dict) else [],
        "settings": asdict(cfg),
    }
    total = sum(timings.values())
    results["summary"] = (
        f"Splat tower zero-shot top-1 {100 * acc['splat tower']['top1']:.1f}% vs RGB tower "
        f"{100 * acc['RGB tower']['top1']:.1f}% ({100 * ratio:.0f}% of RGB) on {acc['RGB tower']['images']} "
        f"held-out images, reading .gsv payloads of {gsv:,.0f} B, {raw / gsv:.1f}x smaller than the "
        f"raw pixels ({raw:,} B) and {jpeg / gsv:.1f}x smaller than the source JPEGs; "
        f"{mcfg.resampler.num_latents + 1} tokens instead of {patches + 1}. Total {total / 60:.1f} min."
    )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_report(out, results, _samples_figure(splats / "test"))
    print(results["summary"])
    print(f"report: {out / 'report.html'}")
    return results


def _acc(res: dict[str, Any], tower: str) -> dict[str, float]:
    r = res["towers"][tower]
    return {"top1": float(r["top1"]), "top5": float(r["top5"]), "images": int(r["images"])}
