"""Perceiver resampler: a variable set of Gaussian tokens → K learned latents.

K latents are the queries; the Gaussian tokens (plus, by default, the latents themselves, as in
Flamingo's resampler) are the keys and values. Each layer is pre-norm cross-attention then an MLP,
both residual, as open_clip's ``ResidualAttentionBlock``. The tokens carry no slot position, so the
output is invariant to the order of the Gaussians, and padded slots are masked out of every key set.

An image whose slots are all padding would leave a latent with no key to attend to (softmax over
nothing: NaN on some backends). Every layer therefore holds a learned *null* key/value
(``nn.MultiheadAttention(add_bias_kv=True)``) that is never masked: a latent can always attend to
"nothing here", for an empty image and for a full one alike. Attending to the latents also keeps the
key set non-empty; at least one of the two must be on.

Parameters per layer at width D: 4·D² (attention) + 2·mlp_ratio·D² (MLP); latent self-attention
through ``attend_latents`` costs none.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResamplerCfg", "ResamplerBlock", "PerceiverResampler"]


@dataclass
class ResamplerCfg:
    """Configuration of :class:`PerceiverResampler`.

    ``mlp_ratio`` defaults to 1 because the trainable budget is tight: at width 768, K = 98 and 4
    layers the resampler holds 9.5M / 14.3M / 28.4M parameters at ratio 0 / 1 / 4 (width 1024:
    16.9M / 25.3M / 50.5M), against 150M in all of ViT-B/16 CLIP (428M for ViT-L/14).
    """

    width: int = 768  # latent and token width: the backbone's (ViT-B/16: 768, ViT-L/14: 1024)
    num_latents: int = 98  # K; the paper used 196 (ViT-B/16's length) and 98 (< 2% accuracy lost)
    layers: int = 4  # as in the paper
    head_width: int = 64  # heads = width // head_width, as open_clip's CLIPVisionCfg
    mlp_ratio: float = (
        1.0  # MLP hidden = width * mlp_ratio; 0: no MLP (1, not 4: see the docstring)
    )
    attend_latents: bool = True  # keys/values also hold the latents: self-attention, no parameters
    null_kv: bool = True  # a learned key/value per layer, never masked (empty images stay finite)
    final_norm: bool = True  # LayerNorm on the output latents

    @property
    def heads(self) -> int:
        return max(1, self.width // self.head_width)


class ResamplerBlock(nn.Module):
    """One pre-norm layer: latents ← latents + attn(latents → tokens [, latents]); + MLP."""

    def __init__(
        self,
        width: int,
        heads: int,
        mlp_ratio: float = 1.0,
        attend_latents: bool = True,
        null_kv: bool = True,
    ):
        super().__init__()
        self.attend_latents = attend_latents
        self.ln_q = nn.LayerNorm(width)
        self.ln_kv = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True, add_bias_kv=null_kv)
        hidden = int(width * mlp_ratio)
        self.ln_2 = nn.LayerNorm(width) if hidden > 0 else None
        self.mlp = (
            nn.Sequential(
                OrderedDict(
                    [
                        ("c_fc", nn.Linear(width, hidden)),
                        ("gelu", nn.GELU()),
                        ("c_proj", nn.Linear(hidden, width)),
                    ]
                )
            )
            if hidden > 0
            else None
        )

    def forward(
        self,
        latents: Tensor,  # [B, K, D]
        tokens: Tensor,  # [B, N, D]
        key_padding_mask: Tensor,  # [B, N] bool, True = padded
    ) -> Tensor:  # [B, K, D]
        q = self.ln_q(latents)
        kv, mask = self.ln_kv(tokens), key_padding_mask
        if self.attend_latents:
            kv = torch.cat([kv, q], 1)  # [B, N + K, D]
            mask = F.pad(mask, (0, q.shape[1]), value=False)
        latents = latents + self.attn(q, kv, kv, key_padding_mask=mask, need_weights=False)[0]
        if self.mlp is not None:
            latents = latents + self.mlp(self.ln_2(latents))
        return latents


class PerceiverResampler(nn.Module):
    """Gaussian tokens ``[B, N, D]`` → latents ``[B, K, D]``, invariant to the tokens' order."""

    def __init__(self, cfg: ResamplerCfg | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ResamplerCfg()
        if not (cfg.null_kv or cfg.attend_latents):
            raise ValueError(
                "ResamplerCfg: set null_kv or attend_latents, or a latent of an image with no "
                "Gaussians has no key to attend to"
            )
        scale = cfg.width**-0.5  # as open_clip initialises class_embedding
        self.latents = nn.Parameter(scale * torch.randn(cfg.num_latents, cfg.width))
        self.blocks = nn.ModuleList(
            ResamplerBlock(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.attend_latents, cfg.null_kv)
            for _ in range(cfg.layers)
        )
        self.ln_post = nn.LayerNorm(cfg.width) if cfg.final_norm else nn.Identity()

    def forward(
        self,
        tokens: Tensor,  # [B, N, D]
        key_padding_mask: Tensor | None = None,  # [B, N] bool, True = padded; None: all valid
    ) -> Tensor:  # [B, K, D]
        """Resample; padded tokens may hold anything (they are zeroed before use)."""
        b = tokens.shape[0]
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        key_padding_mask = key_padding_mask.bool()
        # masked keys get zero weight, but 0 · NaN is NaN: garbage must not reach the values at all
        tokens = tokens.masked_fill(key_padding_mask[..., None], 0.0)
        x = self.latents.to(tokens.dtype).expand(b, -1, -1)  # [B, K, D]
        for block in self.blocks:
            x = block(x, tokens, key_padding_mask)
        return self.ln_post(x)
