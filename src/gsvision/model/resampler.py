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

Cost. Projecting the N Gaussian tokens to keys and values dominates (N ≫ K): per layer
``2·N·D·A`` multiply-adds at attention width A. ``token_kv="shared"`` (the default) projects them
once for all layers (each layer still cross-attends, with its own queries, latent keys and output);
``"per_layer"`` is the classic Perceiver/Flamingo resampler, 4x the cost at 4 layers. ``attn_width``
(A < D) narrows queries, keys and values further. Parameters per layer: ``2·D·A`` (query, output)
``+ 2·mlp_ratio·D²`` (MLP), plus ``2·D·A`` for the key/value projection once (shared) or per layer;
the latents' keys and values go through the same projection as the tokens'.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResamplerCfg", "ResamplerBlock", "PerceiverResampler", "KeySlots"]


@dataclass
class ResamplerCfg:
    """Configuration of :class:`PerceiverResampler`.

    The defaults are sized by `gsvision bench model` (docs/benchmarks.md, "Image towers"): at
    ViT-B/16, N = 1,024, K = 98, attention at a third of the width (A = 256, 4 heads) and an MLP of
    half the width make the whole splat tower 1.8x faster than the RGB tower (full width, MLP
    ratio 1: 1.4–1.5x), at no measurable accuracy cost on the demo (3 seeds, within noise).
    """

    width: int = 768  # latent and token width: the backbone's (ViT-B/16: 768, ViT-L/14: 1024)
    num_latents: int = 98  # K; the paper used 196 (ViT-B/16's length) and 98 (< 2% accuracy lost)
    layers: int = 4  # as in the paper
    head_width: int = 64  # per-head width, as open_clip's CLIPVisionCfg
    attn_width: int | None = None  # A: query/key/value width (heads = A // head_width)
    # A when attn_width is None: width * attn_ratio rounded down to whole heads, at least 2 heads
    # (and at most the width): ViT-B/16 768 → 256, ViT-L/14 1024 → 320, the demo's 128 → 128
    attn_ratio: float = 1 / 3
    token_kv: str = "shared"  # "shared": token keys/values projected once; "per_layer": each layer
    mlp_ratio: float = 0.5  # MLP hidden = width * mlp_ratio; 0: no MLP
    attend_latents: bool = True  # keys/values also hold the latents (latent self-attention)
    null_kv: bool = True  # a learned key/value per layer, never masked (empty images stay finite)
    final_norm: bool = True  # LayerNorm on the output latents

    @property
    def inner(self) -> int:
        if self.attn_width:
            return self.attn_width
        heads = max(2, int(self.width * self.attn_ratio) // self.head_width)
        return min(self.width, heads * self.head_width)

    @property
    def heads(self) -> int:
        return max(1, self.inner // self.head_width)


def _mlp(width: int, hidden: int) -> nn.Module:
    return nn.Sequential(
        OrderedDict(
            [
                ("c_fc", nn.Linear(width, hidden)),
                ("gelu", nn.GELU()),
                ("c_proj", nn.Linear(hidden, width)),
            ]
        )
    )


class TokenKV(nn.Module):
    """Gaussian tokens ``[B, N, D]`` → keys and values ``[B, N, 2A]`` (pre-norm projection)."""

    def __init__(self, width: int, inner: int):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.proj = nn.Linear(width, 2 * inner)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.proj(self.ln(tokens))

    def from_features(self, feats: Tensor, stem_proj: nn.Linear) -> Tensor:
        """``self(stem_proj(feats))`` without making the width-D tokens.

        The tokens are affine in the features, ``t = W f + b``, so LayerNorm's centring is too
        (``t - mean t = W_c f + b_c``, rows of ``W`` and ``b`` centred), its variance a quadratic
        form (``|W_c f + b_c|² / D``), and scaling then projecting one matrix: keys/values
        ``= (P W_c f + P b_c) / σ + c`` with ``P = W_kv diag(γ)``. Per Gaussian that is F·(2A + F)
        multiply-adds instead of F·D + D·2A (ViT-B/16: 6x fewer), and no ``[B, N, D]`` tensor.
        Computed in float32 (float64 for float64 input), whatever autocast says; the result is
        cast to autocast's dtype when it is on, as the linear layers' output would be.
        """
        w, b = stem_proj.weight, stem_proj.bias  # [D, F], [D]
        if b is None:
            b = w.new_zeros(w.shape[0])
        dtype = torch.promote_types(feats.dtype, torch.float32)
        device = feats.device.type
        with torch.autocast(device, enabled=False):
            w, b, f = w.to(dtype), b.to(dtype), feats.to(dtype)
            w_c, b_c = w - w.mean(0), b - b.mean()  # centred rows: t - mean(t)
            p = self.proj.weight.to(dtype)  # [2A, D]
            shift = self.proj.bias.to(dtype) if self.proj.bias is not None else p.new_zeros(len(p))
            if self.ln.bias is not None:
                shift = shift + p @ self.ln.bias.to(dtype)
            if self.ln.weight is not None:
                p = p * self.ln.weight.to(dtype)
            gram, wb = w_c.T @ w_c, w_c.T @ b_c  # [F, F], [F]
            var = ((f @ gram) * f).sum(-1) + 2 * (f @ wb) + b_c @ b_c  # [B, N], times D
            inv_sigma = torch.rsqrt((var / w.shape[0]).clamp_min(0) + self.ln.eps)[..., None]
            # (P W_c f + P b_c) / σ + shift as one product, so the [B, N, 2A] result is written
            # once: [f / σ, 1 / σ, 1] · [P W_c, P b_c, shift]ᵀ
            f_aug = torch.cat([f * inv_sigma, inv_sigma, torch.ones_like(inv_sigma)], -1)
            m_aug = torch.cat([p @ w_c, (p @ b_c)[:, None], shift[:, None]], 1)  # [2A, F + 2]
            kv = f_aug @ m_aug.T  # [B, N, 2A]
        if torch.is_autocast_enabled(device):
            kv = kv.to(torch.get_autocast_dtype(device))
        return kv


class ResamplerBlock(nn.Module):
    """One pre-norm layer: latents ← latents + attn(latents → [null; tokens; latents]); + MLP."""

    def __init__(self, cfg: ResamplerCfg):
        super().__init__()
        d, a = cfg.width, cfg.inner
        self.heads = cfg.heads
        if a % self.heads:
            raise ValueError(
                f"attention width {a} is not a multiple of head_width {cfg.head_width}"
            )
        self.attend_latents = cfg.attend_latents
        self.ln_q = nn.LayerNorm(d)
        self.q = nn.Linear(d, a)
        self.kv_tokens = TokenKV(d, a) if cfg.token_kv == "per_layer" else None
        self.null_kv = nn.Parameter(0.02 * torch.randn(2, a)) if cfg.null_kv else None
        self.out = nn.Linear(a, d)
        hidden = int(d * cfg.mlp_ratio)
        self.ln_2 = nn.LayerNorm(d) if hidden > 0 else None
        self.mlp = _mlp(d, hidden) if hidden > 0 else None

    def forward(
        self,
        latents: Tensor,  # [B, K, D]
        tokens: Tensor,  # [B, N, D] tokens, or [B, N, 2A] their shared keys/values
        key_padding_mask: Tensor,  # [B, N] bool, True = padded
        shared_kv: TokenKV | None = None,  # the projection that made shared keys/values
        slots: KeySlots | None = None,  # shared keys/values already laid out (inference)
    ) -> Tensor:  # [B, K, D]
        """``shared_kv`` is required without per-layer projections (the latents' own keys/values
        go through the same projection as the tokens'). With ``slots`` (:class:`KeySlots` of the
        same tokens), ``tokens`` is not read. ``latents`` may have a batch of 1 (the same for
        every image, as entering the first layer): its projections are then computed once."""
        b, k = tokens.shape[0], latents.shape[1]
        q_in = self.ln_q(latents)
        kv_proj = self.kv_tokens if self.kv_tokens is not None else shared_kv
        h = self.heads
        q = self.q(q_in).unflatten(-1, (h, -1)).transpose(1, 2)  # [B or 1, h, K, A/h]
        q = q.expand(b, -1, -1, -1)
        if slots is not None:
            key, value, mask = slots.fill(
                self.null_kv, kv_proj(latents) if self.attend_latents else None
            )
        else:
            kv = self.kv_tokens(tokens) if self.kv_tokens is not None else tokens  # [B, N, 2A]
            keep = ~key_padding_mask  # [B, N]
            parts, keeps = [kv], [keep]
            if self.null_kv is not None:
                parts.insert(0, self.null_kv.to(kv.dtype).reshape(1, 1, -1).expand(b, 1, -1))
                keeps.insert(0, keep.new_ones(b, 1))
            if self.attend_latents:
                parts.append(kv_proj(latents).expand(b, -1, -1))  # [B, K, 2A]
                keeps.append(keep.new_ones(b, k))
            kv = torch.cat(parts, 1)  # [B, L, 2A]
            keep = torch.cat(keeps, 1)  # [B, L]
            key, value = kv.unflatten(-1, (2, h, -1)).permute(2, 0, 3, 1, 4)  # 2 × [B, h, L, A/h]
            mask = keep[:, None, None, :]  # [B, 1, 1, L], True = attend
        x = F.scaled_dot_product_attention(q, key, value, attn_mask=mask)  # [B, h, K, A/h]
        latents = latents + self.out(x.transpose(1, 2).flatten(2))
        if self.mlp is not None:
            latents = latents + self.mlp(self.ln_2(latents))
        return latents


class KeySlots:
    """The keys and values of ``[null; tokens; latents]`` for every layer of a resampler with
    shared token keys/values, laid out once as attention reads them (``[2, B, h, L, A/h]``,
    contiguous): each layer writes only its null and latent slots, in place.

    Without it each layer concatenates the three (copying all ``N`` token rows, ~0.15 GB per
    layer at batch 64, N = 1,024) and attention re-lays them out per head. In-place writes are
    invisible to autograd's saved tensors, so the resampler uses this only where gradients are
    off (inference, evaluation).
    """

    def __init__(
        self, token_kv: Tensor, key_padding_mask: Tensor, heads: int, num_latents: int,
        null: bool, latents: bool,
    ) -> None:  # fmt: skip
        b, n, two_a = token_kv.shape
        self.n, self.lead = n, int(null)
        length = self.lead + n + (num_latents if latents else 0)
        self.kv = token_kv.new_empty(2, b, heads, length, two_a // (2 * heads))
        self.kv[:, :, :, self.lead : self.lead + n] = token_kv.unflatten(
            -1, (2, heads, -1)
        ).permute(2, 0, 3, 1, 4)
        keep = torch.ones(b, length, dtype=torch.bool, device=token_kv.device)
        keep[:, self.lead : self.lead + n] = ~key_padding_mask
        self.mask = keep[:, None, None, :]  # [B, 1, 1, L], True = attend

    def fill(
        self, null_kv: Tensor | None, latent_kv: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One layer's ``(keys, values, mask)``: its null key/value ``[2, A]`` and its latents'
        keys/values ``[B, K, 2A]`` written into their slots."""
        two, b, h, _, d = self.kv.shape
        if null_kv is not None:
            self.kv[:, :, :, 0] = null_kv.to(self.kv.dtype).reshape(2, 1, h, d)
        if latent_kv is not None:
            self.kv[:, :, :, self.lead + self.n :] = latent_kv.unflatten(-1, (2, h, -1)).permute(
                2, 0, 3, 1, 4
            )
        return self.kv[0], self.kv[1], self.mask


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
        if cfg.token_kv not in ("shared", "per_layer"):
            raise ValueError(
                f"ResamplerCfg.token_kv must be 'shared' or 'per_layer', got {cfg.token_kv!r}"
            )
        scale = cfg.width**-0.5  # as open_clip initialises class_embedding
        self.latents = nn.Parameter(scale * torch.randn(cfg.num_latents, cfg.width))
        self.kv_tokens = TokenKV(cfg.width, cfg.inner) if cfg.token_kv == "shared" else None
        self.blocks = nn.ModuleList(ResamplerBlock(cfg) for _ in range(cfg.layers))
        self.ln_post = nn.LayerNorm(cfg.width) if cfg.final_norm else nn.Identity()

    def forward(
        self,
        tokens: Tensor,  # [B, N, D], or [B, N, F] stem features with stem_proj
        key_padding_mask: Tensor | None = None,  # [B, N] bool, True = padded; None: all valid
        stem_proj: nn.Linear | None = None,  # the stem's projection, fused into the keys/values
    ) -> Tensor:  # [B, K, D]
        """Resample; padded tokens may hold anything finite (they are zeroed or masked).

        With ``stem_proj`` (shared keys/values only), ``tokens`` are the stem's features and
        the tokens ``stem_proj(features)`` are never made: the same result up to rounding, with
        less arithmetic and memory (:meth:`TokenKV.from_features`).
        """
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        key_padding_mask = key_padding_mask.bool()
        if stem_proj is not None:
            if self.kv_tokens is None:
                raise ValueError("PerceiverResampler: stem_proj needs token_kv='shared'")
            tokens = self.kv_tokens.from_features(tokens, stem_proj)  # [B, N, 2A]
        else:  # masked keys get zero weight, but 0 · NaN is NaN: zero what is padded
            tokens = tokens.masked_fill(key_padding_mask[..., None], 0.0)
            if self.kv_tokens is not None:
                tokens = self.kv_tokens(tokens)  # [B, N, 2A], once for every layer
        x = self.latents.to(tokens.dtype)[None]  # [1, K, D]: the first layer broadcasts them
        slots = None
        if self.kv_tokens is not None and not torch.is_grad_enabled():
            cfg = self.cfg
            slots = KeySlots(
                tokens, key_padding_mask, cfg.heads, cfg.num_latents, cfg.null_kv,
                cfg.attend_latents,
            )  # fmt: skip
        for block in self.blocks:
            x = block(x, tokens, key_padding_mask, self.kv_tokens, slots)
        return self.ln_post(x)
