"""Splat-aware stem: each Gaussian's parameters → one token of the backbone's width.

The paper's stem is "log scaling + normalisation → Fourier encoding → linear projection". Per
Gaussian we build

- position ``(x, y) - 0.5``: the image centre at 0, edges at ±0.5;
- shape from the covariance ``Σ = L Lᵀ``: ``(log σ_major, log σ_minor)`` and the orientation
  ``e · (cos 2θ, sin 2θ)``. θ is only defined mod π, hence 2θ; ``e = (λ₁ - λ₂) / (λ₁ + λ₂)`` is the
  anisotropy, so a round Gaussian (whose θ is arbitrary) has no orientation and the feature is
  continuous, with finite gradients, everywhere;
- colour (opacity folded in by default, or kept as its own feature).

Everything is measured in the splats' normalised coordinates (the image as the unit square, as a ViT
sees a squash-resized picture), so the features do not depend on the resolution the splats were
fitted at, and ``image_sizes`` is not used. The normalisation is a fixed affine map per field
(constants in :class:`SplatStemCfg`), not a LayerNorm: it is the same for every image and batch,
and the resampler normalises the tokens itself. Each field then goes through a Fourier encoding
(``x, sin 2πfx, cos 2πfx`` at log-spaced ``f``) and all of them through one linear projection.

Padded slots are replaced by a harmless dummy Gaussian *before* any arithmetic (so NaN or huge
garbage there cannot reach outputs or gradients) and their tokens are zeroed and masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gsvision.splats import Splats

__all__ = ["SplatStemCfg", "SplatStem", "gaussian_shape", "fourier_features"]

# normalised Cholesky entries are clamped to these before use: 1e-6 of the image is far below a
# pixel, 1e3 far above the image; valid splats never leave them, degenerate ones stay finite
_CHOL_MIN, _CHOL_MAX = 1e-6, 1e3
_DUMMY_CHOL = (0.05, 0.0, 0.05)  # what padded slots hold while features are computed


@dataclass
class SplatStemCfg:
    """Configuration of :class:`SplatStem` (all sizes and frequencies are per field)."""

    width: int = 768  # token width: the backbone's (ViT-B/16: 768, ViT-L/14: 1024)
    pos_freqs: int = 16  # Fourier frequencies per position coordinate (0: the raw value only)
    pos_min_freq: float = 0.5  # lowest, cycles per image side: half a period spans the image
    pos_max_freq: float = 64.0  # highest, cycles per image side (~2x the grid of 1k Gaussians)
    attr_freqs: int = 4  # Fourier frequencies for log-scales, orientation, colour, opacity
    attr_min_freq: float = 0.25  # lowest, cycles per unit of the normalised field (range ~[-2, 2])
    attr_max_freq: float = 2.0  # highest, cycles per unit of the normalised field
    log_scale_center: float = -4.0  # log σ (normalised units) mapped to 0: σ ≈ 1.8% of the side
    log_scale_spread: float = 2.0  # ... and divided by this: σ from 0.03% to 100% → [-2, 2]
    include_color: bool = True  # colour features (off: geometry only, for ablations)
    include_opacity: bool = (
        False  # opacity as its own feature (1 when absent); off: folded into colour
    )
    orient_by_anisotropy: bool = (
        True  # orientation scaled by anisotropy e (off: unit (cos, sin) 2θ)
    )
    proj_hidden: int = (
        0  # 0: one linear projection (the paper's); > 0: Linear-GELU-Linear, this wide
    )

    @property
    def num_attrs(self) -> int:
        """Non-position scalars per Gaussian: 2 log-scales, 2 orientation, colour, opacity."""
        return 4 + 3 * self.include_color + self.include_opacity

    @property
    def in_features(self) -> int:
        """Width of the Fourier-encoded feature vector the projection reads."""
        return 2 * (1 + 2 * self.pos_freqs) + self.num_attrs * (1 + 2 * self.attr_freqs)


def gaussian_shape(
    chol: Tensor,  # [..., 3] (l11, l21, l22), any unit
    orient_by_anisotropy: bool = True,
) -> tuple[Tensor, Tensor]:
    """Log standard deviations and orientation of ``Σ = L Lᵀ``, finite for any input.

    Returns:
        ``log_sigma`` ``[..., 2]`` (major, minor), in the unit of ``chol``, and ``orient``
        ``[..., 2]``: ``e · (cos 2θ, sin 2θ)`` with θ the major axis' angle from x (as
        :func:`gsvision.codec.quant.to_shape`) and ``e`` the anisotropy in ``[0, 1)``; or the unit
        vector ``(cos 2θ, sin 2θ)`` when ``orient_by_anisotropy`` is False (``(0, 0)`` when round).
    """
    l11 = chol[..., 0].clamp(_CHOL_MIN, _CHOL_MAX)
    l21 = chol[..., 1].clamp(-_CHOL_MAX, _CHOL_MAX)
    l22 = chol[..., 2].clamp(_CHOL_MIN, _CHOL_MAX)
    a, b, c = l11 * l11, l11 * l21, l21 * l21 + l22 * l22  # Σ = [[a, b], [b, c]]
    mid, half_diff = (a + c) / 2, (a - c) / 2
    # the clamp keeps sqrt's gradient finite at round Gaussians (radius 0); it moves λ by 1e-6
    radius = torch.sqrt((half_diff * half_diff + b * b).clamp_min((1e-6 * mid) ** 2))
    log_major = 0.5 * torch.log(mid + radius)
    # log σ_minor = log √(det Σ / λ_max), det Σ = (l11 l22)²: no cancellation for thin Gaussians
    log_minor = torch.log(l11) + torch.log(l22) - log_major
    denom = mid if orient_by_anisotropy else radius
    orient = torch.stack([half_diff, b], -1) / denom[..., None]
    return torch.stack([log_major, log_minor], -1), orient


def fourier_features(
    x: Tensor,  # [..., k]
    freqs: Tensor,  # [F] cycles per unit of x
) -> Tensor:  # [..., k * (1 + 2F)]
    """``x`` followed by ``sin(2π f x)`` and ``cos(2π f x)`` for every ``f`` in ``freqs``."""
    angles = (2 * math.pi) * x[..., None] * freqs  # [..., k, F]
    return torch.cat([x, torch.sin(angles).flatten(-2), torch.cos(angles).flatten(-2)], -1)


def _log_freqs(n: int, lo: float, hi: float) -> Tensor:
    """``n`` log-spaced frequencies from ``lo`` to ``hi`` (``[lo]`` for one, none for zero)."""
    if n == 1:
        return torch.tensor([lo], dtype=torch.float64)
    return torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)


class SplatStem(nn.Module):
    """Gaussians → tokens ``[B, N, width]`` plus the key padding mask the resampler expects.

    Permutation-equivariant and per-Gaussian: a token depends only on its own Gaussian.
    """

    def __init__(self, cfg: SplatStemCfg | None = None):
        super().__init__()
        self.cfg = cfg = cfg or SplatStemCfg()
        if cfg.proj_hidden > 0:
            self.proj = nn.Sequential(
                nn.Linear(cfg.in_features, cfg.proj_hidden),
                nn.GELU(),
                nn.Linear(cfg.proj_hidden, cfg.width),
            )
        else:
            self.proj = nn.Linear(cfg.in_features, cfg.width)
        # constants as (non-saved) buffers: they follow .to(device), and a forward pass copies
        # nothing from the host (so it can be captured in a CUDA graph)
        pos_f = _log_freqs(cfg.pos_freqs, cfg.pos_min_freq, cfg.pos_max_freq)
        attr_f = _log_freqs(cfg.attr_freqs, cfg.attr_min_freq, cfg.attr_max_freq)
        self.register_buffer("pos_freqs", pos_f, persistent=False)
        self.register_buffer("attr_freqs", attr_f, persistent=False)
        self.register_buffer("dummy_chol", torch.tensor(_DUMMY_CHOL), persistent=False)

    @property
    def fusable(self) -> bool:
        """True when the projection is one linear map, which a following (normalised) linear map
        can absorb: :meth:`forward` with ``project=False`` then hands over the features."""
        return isinstance(self.proj, nn.Linear)

    def forward(self, splats: Splats, project: bool = True) -> tuple[Tensor, Tensor]:
        """Tokens for a :class:`Splats` batch.

        Returns:
            ``tokens`` ``[B, N, width]`` (zero at padded slots) and ``key_padding_mask`` ``[B, N]``
            bool, True at padded slots (as ``nn.MultiheadAttention`` expects). With
            ``project=False``, the features :meth:`features` makes instead of the tokens
            (``[B, N, cfg.in_features]``, dummies at padded slots), for a caller that fuses the
            projection into its own (the splat tower: :meth:`TokenKV.from_features`).
        """
        opacities = None
        if self.cfg.include_opacity:
            opacities = splats.opacities
            if opacities is None:
                opacities = torch.ones_like(splats.colors[..., :1])
        else:
            splats = splats.fold_opacity()
        fields = (splats.means, splats.chol, splats.colors, splats.mask, opacities)
        if not project:
            valid = splats.mask
            return self.features(*fields[:3], valid, opacities), ~valid
        return self.forward_fields(*fields)

    def features(
        self,
        means: Tensor,  # [B, N, 2] normalised (x, y)
        chol: Tensor,  # [B, N, 3] normalised (l11, l21, l22)
        colors: Tensor,  # [B, N, 3]
        valid: Tensor,  # [B, N] bool, True = a real Gaussian
        opacities: Tensor | None = None,  # [B, N, 1]; used only with cfg.include_opacity
    ) -> Tensor:  # [B, N, cfg.in_features], float32 (float64 for float64 input)
        """The normalised, Fourier-encoded features the projection reads; padded slots are dummies."""
        cfg = self.cfg
        dtype = torch.promote_types(means.dtype, torch.float32)  # never square σ in half precision
        keep = valid[..., None]
        means = torch.where(keep, means.to(dtype), 0.5)
        chol = torch.where(keep, chol.to(dtype), self.dummy_chol.to(dtype))
        pos = means.clamp(-1.0, 2.0) - 0.5  # [B, N, 2], image centre at 0
        log_sigma, orient = gaussian_shape(chol, cfg.orient_by_anisotropy)
        attrs = [(log_sigma - cfg.log_scale_center) / cfg.log_scale_spread, orient]
        if cfg.include_color:
            colors = torch.where(keep, colors.to(dtype), 0.5)
            attrs.append(2 * (colors.clamp(-1.0, 2.0) - 0.5))  # [0, 1] → [-1, 1]
        if cfg.include_opacity:
            if opacities is None:
                raise ValueError(
                    "SplatStem: cfg.include_opacity is set but no opacities were given"
                )
            opacities = torch.where(keep, opacities.to(dtype), 1.0)
            attrs.append(2 * (opacities.clamp(0.0, 1.0) - 0.5))
        attrs = torch.cat(attrs, -1)  # [B, N, num_attrs]
        pos_f, attr_f = self.pos_freqs.to(dtype), self.attr_freqs.to(dtype)
        return torch.cat([fourier_features(pos, pos_f), fourier_features(attrs, attr_f)], -1)

    def forward_fields(
        self,
        means: Tensor,  # [B, N, 2] normalised (x, y)
        chol: Tensor,  # [B, N, 3] normalised (l11, l21, l22)
        colors: Tensor,  # [B, N, 3] (opacity already folded in, unless cfg.include_opacity)
        valid: Tensor,  # [B, N] bool, True = a real Gaussian (any slots, not only leading ones)
        opacities: Tensor | None = None,  # [B, N, 1]; used only with cfg.include_opacity
    ) -> tuple[Tensor, Tensor]:
        """Tokens from raw tensors; see :meth:`forward`. Padded slots may hold anything."""
        valid = valid.bool()
        feats = self.features(means, chol, colors, valid, opacities)
        tokens = self.proj(feats.to(next(self.proj.parameters()).dtype))  # [B, N, width]
        tokens = tokens.masked_fill(~valid[..., None], 0.0)
        return tokens, ~valid
