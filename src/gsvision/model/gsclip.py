"""GS-CLIP: an open_clip CLIP whose image tower reads splats.

The splat tower is ``stem → resampler → [class token; K latents] + positional embedding →
ln_pre → the ViT's transformer blocks → ln_post → pooled class token → proj``: the RGB tower with its
patch embedding replaced. The RGB tower itself stays intact and frozen beside it, as the teacher of
the distillation stage and the baseline of every comparison.

What trains is a :class:`TrainableCfg`. The splat tower never changes the RGB tower: a transformer
block, ``ln_post`` or ``proj`` that trains is *copied* into the splat tower, and frozen ones are
shared with the RGB tower (run, not stored, so a checkpoint holds each tensor once). Text-tower parts
that train are trained in place (the splat and RGB towers then share the new text tower).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gsvision.model.resampler import PerceiverResampler, ResamplerCfg
from gsvision.model.stem import SplatStem, SplatStemCfg
from gsvision.splats import Splats

__all__ = [
    "TRAINABLE_PRESETS",
    "GSCLIP",
    "GSCLIPCfg",
    "SplatVisionTower",
    "TrainableCfg",
    "trainable_cfg",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainableCfg:
    """Which parameters train; everything else is frozen (``requires_grad=False``)."""

    splat_stem: bool = True  # stem, resampler, the splat tower's class token and positions
    splat_blocks: tuple[int, ...] = ()  # ViT blocks trained (as splat-tower copies); -1 = last
    ln_post: bool = False  # the splat tower's final norm (a copy)
    proj: bool = False  # the splat tower's projection (a copy)
    text_blocks: tuple[int, ...] = ()  # text transformer blocks trained in place; -1 = last
    text_head: bool = False  # text ln_final and text_projection, in place
    logit_scale: bool = False  # the contrastive temperature


#: ``stem``: the distillation stage and the issue's default; ``paper``: stem, first two blocks,
#: final norm and projection (the paper's ~9.7%); ``paper-text``: also the last text block, text
#: norm and text projection (~13.8%).
TRAINABLE_PRESETS: dict[str, TrainableCfg] = {
    "stem": TrainableCfg(),
    "paper": TrainableCfg(splat_blocks=(0, 1), ln_post=True, proj=True, logit_scale=True),
    "paper-text": TrainableCfg(
        splat_blocks=(0, 1),
        ln_post=True,
        proj=True,
        text_blocks=(-1,),
        text_head=True,
        logit_scale=True,
    ),
}


def trainable_cfg(spec: str | TrainableCfg) -> TrainableCfg:
    """A preset name (see :data:`TRAINABLE_PRESETS`) or a :class:`TrainableCfg` as is."""
    if isinstance(spec, TrainableCfg):
        return spec
    if spec not in TRAINABLE_PRESETS:
        raise ValueError(
            f"unknown trainable preset {spec!r}; choose from {sorted(TRAINABLE_PRESETS)}"
        )
    return TRAINABLE_PRESETS[spec]


def _indices(spec: tuple[int, ...], n: int, what: str) -> set[int]:
    out = set()
    for i in spec:
        if not -n <= i < n:
            raise ValueError(f"{what} index {i} out of range for {n} blocks")
        out.add(i % n)
    return out


class SplatVisionTower(nn.Module):
    """Splats → image embedding through (part of) an open_clip ``VisionTransformer``.

    Args:
        visual: the RGB tower whose blocks, norms and projection are reused (not registered here).
        stem_cfg, resampler_cfg: the splat front end; their widths must equal the ViT's.
        copy_blocks: block indices to copy (the trainable ones); the rest are run from ``visual``.
        copy_ln_post, copy_proj: copy the final norm / projection too.
    """

    def __init__(
        self,
        visual: nn.Module,
        stem_cfg: SplatStemCfg,
        resampler_cfg: ResamplerCfg,
        copy_blocks: set[int] = frozenset(),
        copy_ln_post: bool = False,
        copy_proj: bool = False,
    ):
        super().__init__()
        width = visual.class_embedding.shape[-1]
        if stem_cfg.width != width or resampler_cfg.width != width:
            raise ValueError(
                f"stem width {stem_cfg.width} and resampler width {resampler_cfg.width} must equal "
                f"the ViT width {width}"
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError("ViTs with attentional pooling are not supported by the splat tower")
        self.visual_ref = (visual,)  # a tuple: run, not registered (its tensors live in the CLIP)
        # the stem's projection fused into the resampler's key/value projection (same result, 6x
        # less arithmetic per Gaussian at ViT-B/16); False runs them one after the other
        self.fuse_stem_kv = True
        self.stem = SplatStem(stem_cfg)
        self.resampler = PerceiverResampler(resampler_cfg)
        k = resampler_cfg.num_latents
        self.class_embedding = nn.Parameter(visual.class_embedding.detach().clone())
        pos = torch.zeros(k + 1, width, dtype=visual.positional_embedding.dtype)
        pos[0] = visual.positional_embedding.detach()[0]  # the class token keeps its position
        self.positional_embedding = nn.Parameter(pos)  # [K + 1, D]; latents: learned from zero
        self.blocks = nn.ModuleDict(
            {str(i): copy.deepcopy(visual.transformer.resblocks[i]) for i in sorted(copy_blocks)}
        )
        self.ln_post = copy.deepcopy(visual.ln_post) if copy_ln_post else None
        proj = visual.proj
        self.proj = nn.Parameter(proj.detach().clone()) if copy_proj and proj is not None else None

    @property
    def visual(self) -> nn.Module:
        return self.visual_ref[0]

    @property
    def num_latents(self) -> int:
        return self.resampler.cfg.num_latents

    def block_list(self) -> list[nn.Module]:
        """The transformer blocks in the order they run: copies where trained, else shared."""
        shared = self.visual.transformer.resblocks
        return [self.blocks[str(i)] if str(i) in self.blocks else b for i, b in enumerate(shared)]

    def parameters_in_path(self) -> list[nn.Parameter]:
        """Every parameter the splat tower runs, each once (shared frozen ones included)."""
        visual = self.visual
        mods = [self.stem, self.resampler, visual.ln_pre, *self.block_list()]
        mods.append(self.ln_post if self.ln_post is not None else visual.ln_post)
        params = [self.class_embedding, self.positional_embedding]
        params += [p for m in mods for p in m.parameters()]
        proj = self.proj if self.proj is not None else visual.proj
        if proj is not None:
            params.append(proj)
        return params

    def tokens(self, splats: Splats) -> Tensor:  # [B, K + 1, D] after ln_pre
        """The sequence the transformer reads: class token then K latents."""
        if self.fuse_stem_kv and self.stem.fusable and self.resampler.kv_tokens is not None:
            feats, key_padding_mask = self.stem(splats, project=False)  # [B, N, F], [B, N]
            x = self.resampler(feats, key_padding_mask, stem_proj=self.stem.proj)  # [B, K, D]
        else:
            x, key_padding_mask = self.stem(splats)  # [B, N, D], [B, N]
            x = self.resampler(x, key_padding_mask)  # [B, K, D]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self.positional_embedding.to(x.dtype)
        return self.visual.ln_pre(x)

    def forward(self, splats: Splats) -> Tensor:  # [B, embed_dim]
        visual = self.visual
        x = self.tokens(splats)
        for block in self.block_list():
            x = block(x)  # [B, K + 1, D]
        ln_post = self.ln_post if self.ln_post is not None else visual.ln_post
        if getattr(visual, "final_ln_after_pool", False):
            x = ln_post(_pool(x, visual.pool_type))
        else:
            x = _pool(ln_post(x), visual.pool_type)
        proj = self.proj if self.proj is not None else visual.proj
        return x @ proj.to(x.dtype) if proj is not None else x


def _text_tower_parts(clip: nn.Module) -> tuple[list[nn.Module], list[nn.Module | nn.Parameter]]:
    """``(transformer blocks, head)`` of a CLIP's text tower, the head being what follows the
    blocks (final norm and projection).

    Three layouts: open_clip's ``CLIP`` (text parts on the CLIP itself), a ``CustomTextCLIP`` with
    open_clip's ``TextTransformer`` under ``clip.text``, and one with a Hugging Face encoder
    (``HFTextEncoder``: the blocks are the encoder's layers, the head its projection; e.g.
    MiniLM, a BERT whose layers end in their own norms).

    Raises:
        ValueError: a text tower of another kind.
    """
    text = getattr(clip, "text", clip)
    if hasattr(getattr(text, "transformer", None), "resblocks"):  # open_clip's own text tower
        head = [m for m in (text.ln_final, text.text_projection) if m is not None]
        return list(text.transformer.resblocks), head
    config = getattr(text, "config", None)
    if config is not None and hasattr(text, "proj"):  # open_clip's HFTextEncoder
        from open_clip.hf_configs import arch_dict

        names = arch_dict.get(config.model_type, {}).get("config_names", {})
        encoder = getattr(text.transformer, "encoder", text.transformer)
        layers = getattr(encoder, names.get("layer_attr", "layer"), None)  # BERT's: encoder.layer
        if isinstance(layers, nn.ModuleList):
            return list(layers), [text.proj]
    raise ValueError(
        f"cannot find the blocks and head of the text tower {type(text).__name__}: the text_blocks "
        "and text_head settings (the paper-text preset) support open_clip's text transformer and "
        "Hugging Face encoders open_clip knows (open_clip.hf_configs.arch_dict)"
    )


def _pool(x: Tensor, pool_type: str) -> Tensor:  # [B, L, D] → [B, D]
    if pool_type == "tok":
        return x[:, 0]
    if pool_type == "avg":
        return x[:, 1:].mean(1)
    raise ValueError(f"splat tower: unsupported pool_type {pool_type!r}")


@dataclass
class GSCLIPCfg:
    """What :func:`gsvision.model.create_model` records to rebuild a model from a checkpoint."""

    model_name: str
    stem: SplatStemCfg = field(default_factory=SplatStemCfg)
    resampler: ResamplerCfg = field(default_factory=ResamplerCfg)
    trainable: TrainableCfg = field(default_factory=TrainableCfg)
    clip_kwargs: dict = field(default_factory=dict)  # extra open_clip.create_model arguments
    copied: TrainableCfg = field(default_factory=TrainableCfg)  # parts the splat tower holds
    # copies of (a superset of what trains: a stage that trained them may have been followed by
    # one that freezes them again)


class GSCLIP(nn.Module):
    """An open_clip CLIP (``self.clip``: text tower and frozen RGB tower) plus a splat tower.

    ``encode_splats`` / ``encode_image`` / ``encode_text`` mirror open_clip's ``encode_*``;
    ``forward`` returns open_clip's output dict, with ``rgb_features`` when images are given.
    """

    def __init__(self, clip: nn.Module, cfg: GSCLIPCfg):
        super().__init__()
        visual = clip.visual
        if not hasattr(visual, "transformer") or not hasattr(visual, "class_embedding"):
            raise ValueError("GS-CLIP needs an open_clip VisionTransformer image tower (a ViT)")
        width = visual.class_embedding.shape[-1]
        cfg = replace(
            cfg,
            stem=replace(cfg.stem, width=width),
            resampler=replace(cfg.resampler, width=width),
        )
        self.cfg = cfg
        self.clip = clip
        t, c = cfg.trainable, cfg.copied
        n_vis = len(visual.transformer.resblocks)
        self.splat = SplatVisionTower(
            visual,
            cfg.stem,
            cfg.resampler,
            copy_blocks=_indices(t.splat_blocks + c.splat_blocks, n_vis, "splat_blocks"),
            copy_ln_post=t.ln_post or c.ln_post,
            copy_proj=t.proj or c.proj,
        )
        self.apply_trainable(t)

    # --- what trains --------------------------------------------------------------------------
    def apply_trainable(self, t: TrainableCfg) -> None:
        """Freeze everything, then unfreeze what ``t`` names.

        A ViT part that is to train and has no splat-tower copy yet is copied now from the RGB
        tower (what the splat tower ran until then, so its output does not change); copies that
        no longer train are kept, frozen.
        """
        s = self.splat
        visual = s.visual
        blocks = _indices(t.splat_blocks, len(visual.transformer.resblocks), "splat_blocks")
        for i in sorted(blocks - {int(k) for k in s.blocks.keys()}):
            s.blocks[str(i)] = copy.deepcopy(visual.transformer.resblocks[i])
        if t.ln_post and s.ln_post is None:
            s.ln_post = copy.deepcopy(visual.ln_post)
        if t.proj and s.proj is None and visual.proj is not None:
            s.proj = nn.Parameter(visual.proj.detach().clone())
        for p in self.parameters():
            p.requires_grad_(False)
        if t.splat_stem:
            for m in (s.stem, s.resampler):
                m.requires_grad_(True)
            s.class_embedding.requires_grad_(True)
            s.positional_embedding.requires_grad_(True)
        for i in blocks:
            s.blocks[str(i)].requires_grad_(True)
        if s.ln_post is not None:
            s.ln_post.requires_grad_(t.ln_post)
        if s.proj is not None:
            s.proj.requires_grad_(t.proj)
        if t.text_blocks or t.text_head:
            text_blocks, text_head = _text_tower_parts(self.clip)
            for i in _indices(t.text_blocks, len(text_blocks), "text_blocks"):
                text_blocks[i].requires_grad_(True)
            if t.text_head:
                for part in text_head:
                    part.requires_grad_(True)
        self.clip.logit_scale.requires_grad_(t.logit_scale)
        copied = TrainableCfg(
            splat_stem=False,
            splat_blocks=tuple(sorted(int(k) for k in s.blocks.keys())),
            ln_post=s.ln_post is not None,
            proj=s.proj is not None,
        )
        self.cfg = replace(self.cfg, trainable=t, copied=copied)

    def _text_parameters(self) -> list[nn.Parameter]:
        clip = self.clip
        return [p for n, p in clip.named_parameters() if not n.startswith("visual.")]

    def trainable_summary(self) -> dict[str, float]:
        """Trainable vs total parameters of the splat path (splat tower + text tower + scale).

        The RGB-only parts (patch embedding, the RGB class token and positions) are left out of
        the total: they never run on splats. Shared tensors count once.
        """
        seen: dict[int, nn.Parameter] = {}
        for p in [*self.splat.parameters_in_path(), *self._text_parameters()]:
            seen[id(p)] = p
        total = sum(p.numel() for p in seen.values())
        trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
        splat = sum(
            p.numel() for m in (self.splat.stem, self.splat.resampler) for p in m.parameters()
        )
        return {
            "trainable": trainable,
            "total": total,
            "fraction": trainable / max(total, 1),
            "stem_and_resampler": splat,
        }

    def extra_repr(self) -> str:
        s = self.trainable_summary()
        return f"trainable={s['trainable']:,} of {s['total']:,} ({100 * s['fraction']:.1f}%)"

    # --- encoders -----------------------------------------------------------------------------
    def encode_splats(self, splats: Splats, normalize: bool = False) -> Tensor:  # [B, E]
        x = self.splat(splats)
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor:  # [B, E] RGB tower
        return self.clip.encode_image(image, normalize=normalize)

    def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor:  # [B, E]
        return self.clip.encode_text(text, normalize=normalize)

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def forward(
        self,
        splats: Splats | None = None,
        text: Tensor | None = None,
        image: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Normalised features of whatever is given, as open_clip's ``output_dict``."""
        out: dict[str, Tensor] = {"logit_scale": self.clip.logit_scale.exp()}
        if splats is not None:
            out["image_features"] = self.encode_splats(splats, normalize=True)
        if text is not None:
            out["text_features"] = self.encode_text(text, normalize=True)
        if image is not None:
            out["rgb_features"] = self.encode_image(image, normalize=True)
        return out
