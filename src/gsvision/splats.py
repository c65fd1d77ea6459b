"""`Splats`: a batch of images, each as a set of coloured anisotropic 2D Gaussians.

Conventions (see docs/format.md once the codec lands; README "What a splat is"):

- ``means`` are ``(x, y)`` in normalised image coordinates: ``0`` is the left/top image edge and ``1``
  the right/bottom edge, so pixel ``(row i, col j)`` has its centre at ``((j + .5) / W, (i + .5) / H)``.
- ``chol`` holds the lower-triangular Cholesky factor ``L = [[l11, 0], [l21, l22]]`` of the covariance
  ``Σ = L Lᵀ``, also in normalised units. At an ``H × W`` raster the pixel-space factor is
  ``diag(W, H) · L``, which is again lower triangular with positive diagonal, so the same splats
  render at any resolution.
- ``colors`` are RGB, nominally in ``[0, 1]`` (unbounded while fitting). Rendering sums
  ``c_i · exp(-½ dᵀ Σ_i⁻¹ d)`` over Gaussians; there is no depth and no alpha blending.
- ``opacities`` are optional (``None`` by default, the 8-number form). When present they multiply the
  colour; :meth:`Splats.fold_opacity` folds them into the colours.
- Every image holds the same capacity ``N``; ``counts[b]`` says how many leading slots of image
  ``b`` are real. Padded slots are ignored by every renderer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Splats", "FIELDS", "chol_from_axes"]

#: The per-Gaussian tensor fields and their last dimension.
FIELDS: dict[str, int] = {"means": 2, "chol": 3, "colors": 3, "opacities": 1}


def chol_from_axes(sigma_major: Tensor, sigma_minor: Tensor, theta: Tensor) -> Tensor:
    """``[..., 3]`` Cholesky factors ``(l11, l21, l22)`` of ``Σ = R(θ) diag(σ₁², σ₂²) R(θ)ᵀ``.

    A Gaussian described by its axes (standard deviations along and across ``θ``, radians from
    the x axis), in whatever unit the sigmas are in (pixels, say: divide by ``(W, H, H)`` for the
    normalised factors :class:`Splats` stores).
    """
    c, s = torch.cos(theta), torch.sin(theta)
    v1, v2 = sigma_major * sigma_major, sigma_minor * sigma_minor
    sxx = c * c * v1 + s * s * v2
    sxy = c * s * (v1 - v2)
    l11 = torch.sqrt(sxx)
    # l22 = sqrt(det Σ) / l11 = σ₁σ₂ / l11 keeps thin Gaussians accurate
    return torch.stack([l11, sxy / l11, sigma_major * sigma_minor / l11], -1)


@dataclass
class Splats:
    """A batch of ``B`` images with capacity ``N`` Gaussians each.

    Attributes:
        means: ``[B, N, 2]`` centres ``(x, y)`` in normalised image coordinates.
        chol: ``[B, N, 3]`` Cholesky factors ``(l11, l21, l22)`` in normalised units; ``l11, l22 > 0``.
        colors: ``[B, N, 3]`` RGB weights.
        counts: ``[B]`` int64, the number of valid leading Gaussians per image.
        image_sizes: ``[B, 2]`` int64 ``(H, W)`` each image was fitted at.
        opacities: ``[B, N, 1]`` or ``None`` (the default 8-number form).
    """

    means: Tensor
    chol: Tensor
    colors: Tensor
    counts: Tensor
    image_sizes: Tensor
    opacities: Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        means: Tensor,  # [B, N, 2] or [N, 2]
        chol: Tensor,  # [B, N, 3] or [N, 3]
        colors: Tensor,  # [B, N, 3] or [N, 3]
        image_size: tuple[int, int] | Tensor,  # (H, W) for all, or [B, 2]
        counts: Tensor | Sequence[int] | None = None,  # [B]; default: all N valid
        opacities: Tensor | None = None,  # [B, N, 1] or [N, 1]
        validate: bool = True,
    ) -> Splats:
        """Build a batch, adding the batch dimension to unbatched inputs and filling defaults.

        Raises:
            ValueError: if a field has the wrong shape or holds invalid values (see :meth:`validate`).
        """
        if means.dim() == 2:
            means, chol, colors = means[None], chol[None], colors[None]
            opacities = (
                opacities[None] if opacities is not None and opacities.dim() == 2 else opacities
            )
        if means.dim() != 3:
            raise ValueError(f"means: expected shape [B, N, 2], got {list(means.shape)}")
        b, n = means.shape[:2]
        device = means.device
        if counts is None:
            counts = torch.full((b,), n, dtype=torch.int64, device=device)
        counts = torch.as_tensor(counts, dtype=torch.int64, device=device)
        sizes = torch.as_tensor(image_size, dtype=torch.int64, device=device)
        if sizes.dim() == 1:
            sizes = sizes.expand(b, 2).clone() if sizes.numel() == 2 else sizes
        out = cls(means, chol, colors, counts, sizes, opacities)
        if validate:
            out.validate()
        return out

    # ------------------------------------------------------------------ basic properties
    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def capacity(self) -> int:
        """``N``: Gaussian slots per image (valid or padded)."""
        return self.means.shape[1]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    @property
    def mask(self) -> Tensor:
        """``[B, N]`` bool, True for valid Gaussians."""
        idx = torch.arange(self.capacity, device=self.device)
        return idx[None, :] < self.counts[:, None]

    @property
    def numbers_per_gaussian(self) -> int:
        """8 without opacity (the paper's form), 9 with it."""
        return 8 if self.opacities is None else 9

    def __len__(self) -> int:
        return self.batch_size

    def fields(self) -> dict[str, Tensor]:
        """The per-Gaussian tensors present, by name."""
        out = {"means": self.means, "chol": self.chol, "colors": self.colors}
        if self.opacities is not None:
            out["opacities"] = self.opacities
        return out

    def _replace(self, fn) -> Splats:
        return Splats(
            means=fn(self.means),
            chol=fn(self.chol),
            colors=fn(self.colors),
            counts=self.counts,
            image_sizes=self.image_sizes,
            opacities=None if self.opacities is None else fn(self.opacities),
        )

    # ------------------------------------------------------------------ validation
    def validate(self) -> Splats:
        """Check shapes, dtypes and values; return ``self`` so calls can chain.

        Only valid slots (``i < counts[b]``) are checked for values; padded slots may hold anything.

        Raises:
            ValueError: naming the field and, for value errors, the image index and Gaussian index.
        """
        if self.means.dim() != 3:
            raise ValueError(f"means: expected shape [B, N, 2], got {list(self.means.shape)}")
        b, n = self.means.shape[:2]
        for name, t in self.fields().items():
            want = [b, n, FIELDS[name]]
            if not isinstance(t, Tensor):
                raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if list(t.shape) != want:
                raise ValueError(f"{name}: expected shape {want}, got {list(t.shape)}")
            if not t.is_floating_point():
                raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
            if t.device != self.means.device:
                raise ValueError(f"{name}: on {t.device}, but means are on {self.means.device}")
        if list(self.counts.shape) != [b] or self.counts.dtype != torch.int64:
            raise ValueError(
                f"counts: expected int64 shape [{b}], got {self.counts.dtype} {list(self.counts.shape)}"
            )
        bad = (self.counts < 0) | (self.counts > n)
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"counts: image {i} has count {int(self.counts[i])}, outside [0, {n}]")
        if list(self.image_sizes.shape) != [b, 2]:
            raise ValueError(
                f"image_sizes: expected shape [{b}, 2], got {list(self.image_sizes.shape)}"
            )
        if (self.image_sizes <= 0).any():
            i = int((self.image_sizes <= 0).any(1).nonzero()[0])
            raise ValueError(
                f"image_sizes: image {i} has non-positive size {self.image_sizes[i].tolist()}"
            )
        mask = self.mask
        with torch.no_grad():
            for name, t in self.fields().items():
                bad = ~torch.isfinite(t).all(-1) & mask
                if bad.any():
                    i, j = bad.nonzero()[0].tolist()
                    raise ValueError(
                        f"{name}: image {i}, Gaussian {j} is not finite: {t[i, j].tolist()}"
                    )
            bad = ((self.chol[..., 0] <= 0) | (self.chol[..., 2] <= 0)) & mask
            if bad.any():
                i, j = bad.nonzero()[0].tolist()
                raise ValueError(
                    f"chol: image {i}, Gaussian {j} is not positive-definite "
                    f"(l11 and l22 must be > 0): {self.chol[i, j].tolist()}"
                )
            if self.opacities is not None:
                bad = ((self.opacities[..., 0] < 0) | (self.opacities[..., 0] > 1)) & mask
                if bad.any():
                    i, j = bad.nonzero()[0].tolist()
                    raise ValueError(
                        f"opacities: image {i}, Gaussian {j} is outside [0, 1]: "
                        f"{float(self.opacities[i, j])}"
                    )
        return self

    # ------------------------------------------------------------------ device / dtype
    def to(self, *args, **kwargs) -> Splats:
        """Like :meth:`torch.Tensor.to`; integer fields keep their dtype."""
        moved = self._replace(lambda t: t.to(*args, **kwargs))
        device = moved.means.device
        moved.counts = self.counts.to(device)
        moved.image_sizes = self.image_sizes.to(device)
        return moved

    def detach(self) -> Splats:
        return self._replace(Tensor.detach)

    def clone(self) -> Splats:
        out = self._replace(Tensor.clone)
        out.counts, out.image_sizes = self.counts.clone(), self.image_sizes.clone()
        return out

    # ------------------------------------------------------------------ indexing
    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> Splats:
        """Select images: an int keeps the batch dimension (``s[0]`` is a batch of one)."""
        if isinstance(index, int):
            if not -self.batch_size <= index < self.batch_size:
                raise IndexError(
                    f"image index {index} out of range for a batch of {self.batch_size}"
                )
            index = slice(index, index + 1 if index != -1 else None)
        elif not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        out = self._replace(lambda t: t[index])
        out.counts, out.image_sizes = self.counts[index], self.image_sizes[index]
        return out

    def image(self, b: int) -> dict[str, Tensor]:
        """The valid Gaussians of image ``b`` as unpadded ``[n_b, k]`` tensors."""
        n = int(self.counts[b])
        return {name: t[b, :n] for name, t in self.fields().items()}

    def fold_opacity(self) -> Splats:
        """Return the 8-number form: colours multiplied by opacities, opacities dropped."""
        if self.opacities is None:
            return self
        out = Splats(
            self.means, self.chol, self.colors * self.opacities, self.counts, self.image_sizes
        )
        return out

    def compact(self, capacity: int | None = None) -> Splats:
        """Pad or trim every image to ``capacity`` (default: the largest count), zeroing padding.

        Valid Gaussians must already be the leading slots; trimming below a count raises.
        """
        cap = int(self.counts.max()) if capacity is None else capacity
        if self.batch_size and cap < int(self.counts.max()):
            raise ValueError(f"capacity {cap} is below the largest count {int(self.counts.max())}")
        n = self.capacity

        def fit_to(t: Tensor, fill: float) -> Tensor:
            if cap <= n:
                t = t[:, :cap]
            else:
                pad = t.new_full((t.shape[0], cap - n, t.shape[2]), fill)
                t = torch.cat([t, pad], 1)
            keep = (torch.arange(cap, device=t.device)[None, :] < self.counts[:, None])[..., None]
            return torch.where(keep, t, torch.full_like(t, fill))

        return Splats(
            means=fit_to(self.means, 0.5),
            chol=fit_to(self.chol, 1.0),
            colors=fit_to(self.colors, 0.0),
            counts=self.counts,
            image_sizes=self.image_sizes,
            opacities=None if self.opacities is None else fit_to(self.opacities, 0.0),
        )

    @staticmethod
    def cat(items: Sequence[Splats]) -> Splats:
        """Concatenate batches along the image axis, padding to the largest capacity.

        Opacities are kept if every item has them; if only some do, they are folded into colours.
        """
        if not items:
            raise ValueError("Splats.cat: need at least one batch")
        cap = max(s.capacity for s in items)
        with_op = all(s.opacities is not None for s in items)
        parts = [(s if with_op else s.fold_opacity()).compact(cap) for s in items]
        devices = {p.device for p in parts}
        if len(devices) > 1:
            raise ValueError(
                f"Splats.cat: batches are on different devices {sorted(map(str, devices))}"
            )
        return Splats(
            means=torch.cat([p.means for p in parts]),
            chol=torch.cat([p.chol for p in parts]),
            colors=torch.cat([p.colors for p in parts]),
            counts=torch.cat([p.counts for p in parts]),
            image_sizes=torch.cat([p.image_sizes for p in parts]),
            opacities=torch.cat([p.opacities for p in parts]) if with_op else None,
        )

    # ------------------------------------------------------------------ geometry helpers
    def pixel_chol(self, height: int, width: int) -> Tensor:
        """``[B, N, 3]`` Cholesky factors in pixel units for an ``height × width`` raster."""
        # scalars per channel rather than a tensor made from a list: on a GPU that would be a
        # host-to-device copy waiting for the queue at every render
        return torch.cat([self.chol[..., :1] * width, self.chol[..., 1:] * height], -1)

    def pixel_means(self, height: int, width: int) -> Tensor:
        """``[B, N, 2]`` centres in pixel units (pixel ``j`` spans ``[j, j + 1)``)."""
        return torch.cat([self.means[..., :1] * width, self.means[..., 1:] * height], -1)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Tensor]:
        """Flat dict of tensors (safetensors-ready); :meth:`from_dict` restores it exactly."""
        out = {name: t.detach().contiguous() for name, t in self.fields().items()}
        out["counts"] = self.counts.contiguous()
        out["image_sizes"] = self.image_sizes.contiguous()
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Tensor], validate: bool = True) -> Splats:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: if a required key is missing or the contents are invalid.
        """
        missing = [k for k in ("means", "chol", "colors", "counts", "image_sizes") if k not in d]
        if missing:
            raise ValueError(f"Splats.from_dict: missing field(s) {missing}")
        unknown = sorted(set(d) - set(FIELDS) - {"counts", "image_sizes"})
        if unknown:
            raise ValueError(f"Splats.from_dict: unknown field(s) {unknown}")
        out = cls(
            means=d["means"],
            chol=d["chol"],
            colors=d["colors"],
            counts=d["counts"],
            image_sizes=d["image_sizes"],
            opacities=d.get("opacities"),
        )
        if validate:
            out.validate()
        return out

    def __repr__(self) -> str:
        counts = self.counts.tolist()
        shown = counts if len(counts) <= 8 else counts[:8] + ["..."]
        return (
            f"Splats(batch={self.batch_size}, capacity={self.capacity}, counts={shown}, "
            f"numbers_per_gaussian={self.numbers_per_gaussian}, dtype={self.dtype}, "
            f"device={self.device})"
        )
