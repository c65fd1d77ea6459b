"""Splat stem + perceiver resampler: padding, permutation invariance, empty images, gradients."""

import math

import pytest
import torch

from gsvision.codec.quant import to_shape
from gsvision.model import (
    PerceiverResampler,
    ResamplerBlock,
    ResamplerCfg,
    SplatStem,
    SplatStemCfg,
    gaussian_shape,
)
from gsvision.splats import Splats, chol_from_axes

WIDTH, K = 32, 8


def random_splats(counts, n, dtype=torch.float32, round_every=3) -> Splats:
    """Random valid Gaussians (every ``round_every``-th one exactly round, as grid init makes)."""
    b = len(counts)
    means = torch.rand(b, n, 2, dtype=dtype)
    major = torch.exp(torch.empty(b, n, dtype=dtype).uniform_(-5, -2))
    minor = major * torch.empty(b, n, dtype=dtype).uniform_(0.1, 1.0)
    minor[:, ::round_every] = major[:, ::round_every]
    theta = torch.rand(b, n, dtype=dtype) * math.pi
    chol = chol_from_axes(major, minor, theta)
    colors = torch.rand(b, n, 3, dtype=dtype)
    return Splats.create(means, chol, colors, (224, 224), counts=list(counts)).compact(n)


def make(dtype=torch.float32, stem_kw=None, **res_kw):
    stem = SplatStem(SplatStemCfg(width=WIDTH, pos_freqs=6, attr_freqs=3, **(stem_kw or {})))
    res = PerceiverResampler(ResamplerCfg(width=WIDTH, num_latents=K, head_width=8, **res_kw))
    return stem.to(dtype), res.to(dtype)


def encode(stem, res, splats, fused=False):
    """Stem then resampler; ``fused``: the stem's projection folded into the keys/values (as the
    splat tower runs them)."""
    if fused:
        feats, key_padding_mask = stem(splats, project=False)
        return res(feats, key_padding_mask, stem_proj=stem.proj)
    tokens, key_padding_mask = stem(splats)
    return res(tokens, key_padding_mask)


def with_garbage(s: Splats, extra: int) -> Splats:
    """``s`` with NaN / inf / huge / invalid values in every padded slot, and ``extra`` more slots."""
    bad = [float("nan"), float("inf"), -1e30, 0.0, -1.0]

    def fill(t):
        t = torch.cat([t, t.new_zeros(t.shape[0], extra, t.shape[2])], 1).clone()
        for j in range(t.shape[1]):
            pad = j >= s.counts
            t[pad, j] = bad[j % len(bad)]
        return t

    return Splats(fill(s.means), fill(s.chol), fill(s.colors), s.counts, s.image_sizes)


@pytest.mark.parametrize(
    "stem_kw,res_kw",
    [
        ({}, {}),
        ({"proj_hidden": 16, "orient_by_anisotropy": False}, {"mlp_ratio": 0, "final_norm": False}),
        ({"include_color": False, "include_opacity": True}, {"attend_latents": False}),
    ],
)
def test_shapes(stem_kw, res_kw):
    stem, res = make(stem_kw=stem_kw, **res_kw)
    s = random_splats([7, 3], 7)
    tokens, kpm = stem(s)
    assert tokens.shape == (2, 7, WIDTH) and kpm.shape == (2, 7) and kpm.dtype == torch.bool
    assert torch.equal(kpm, ~s.mask)
    assert (tokens[1, 3:] == 0).all()
    out = res(tokens, kpm)
    assert out.shape == (2, K, WIDTH) and out.isfinite().all()
    assert ResamplerCfg().num_latents == 98 and ResamplerCfg().layers == 4


def test_gaussian_shape_matches_codec():
    s = random_splats([64], 64, dtype=torch.float64)
    log_sigma, orient = gaussian_shape(s.chol[0])
    ref = to_shape(s.chol[0])  # (log σ_major, log σ_minor, θ)
    torch.testing.assert_close(log_sigma, ref[:, :2], atol=1e-6, rtol=0)  # round: λ moved 1e-6
    _, unit = gaussian_shape(s.chol[0], orient_by_anisotropy=False)
    round_ = torch.zeros(64, dtype=torch.bool)
    round_[::3] = True
    two_theta = 2 * ref[~round_, 2]
    torch.testing.assert_close(unit[~round_], torch.stack([two_theta.cos(), two_theta.sin()], -1))
    assert orient[round_].abs().max() < 1e-6  # round: no orientation
    assert (orient.norm(dim=-1) < 1).all()  # anisotropy-weighted: inside the unit disk
    # finite gradients at round Gaussians, where θ itself is undefined
    chol = s.chol[0].clone().requires_grad_()
    sum(t.sum() for t in gaussian_shape(chol)).backward()
    assert chol.grad.isfinite().all()


@pytest.mark.parametrize(
    "res_kw,fused",
    [({}, False), ({}, True), ({"token_kv": "per_layer"}, False), ({"attn_width": 16}, True)],
    ids=["shared", "fused", "layer", "narrow-fused"],
)
def test_padding_never_changes_the_output(res_kw, fused):
    stem, res = make(**res_kw)
    clean = random_splats([6, 2, 0], 6)
    dirty = with_garbage(clean, extra=5)
    assert dirty.capacity == 11 and dirty.means[1, 2:].isnan().any()
    out_clean = encode(stem, res, clean, fused)
    dirty.means.requires_grad_()
    out_dirty = encode(stem, res, dirty, fused)
    torch.testing.assert_close(out_dirty, out_clean, atol=1e-6, rtol=1e-5)
    # nothing of the garbage reaches the gradients either
    (out_dirty * torch.randn_like(out_dirty)).sum().backward()
    for name, p in [*stem.named_parameters(), *res.named_parameters()]:
        assert p.grad.isfinite().all(), name
    grad = dirty.means.grad
    assert grad.isfinite().all() and (grad[~dirty.mask] == 0).all()


@pytest.mark.parametrize("token_kv", ["shared", "per_layer", "fused"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_permutation_invariance(dtype, tol, token_kv):
    fused = token_kv == "fused"
    stem, res = make(dtype, token_kv="shared" if fused else token_kv)
    s = random_splats([9, 5, 1], 9, dtype=dtype)
    out = encode(stem, res, s, fused)
    # shuffle the valid Gaussians of each image
    perm = torch.arange(9).repeat(3, 1)
    for b, n in enumerate(s.counts.tolist()):
        perm[b, :n] = torch.randperm(n)

    def take(t):  # [B, N, ...] → slots reordered by perm
        return torch.gather(t, 1, perm.view(*perm.shape, *[1] * (t.dim() - 2)).expand_as(t))

    shuffled = Splats(take(s.means), take(s.chol), take(s.colors), s.counts, s.image_sizes)
    torch.testing.assert_close(encode(stem, res, shuffled, fused), out, atol=tol, rtol=tol)
    # valid slots need not lead: scatter them among padded ones through forward_fields
    perm = torch.stack([torch.randperm(9) for _ in range(3)])
    assert not torch.equal(take(s.mask), s.mask)
    tokens, kpm = stem.forward_fields(take(s.means), take(s.chol), take(s.colors), take(s.mask))
    torch.testing.assert_close(res(tokens, kpm), out, atol=tol, rtol=tol)


@pytest.mark.parametrize(
    "res_kw", [{}, {"attend_latents": False}, {"null_kv": False}], ids=["both", "null", "latents"]
)
def test_empty_images_stay_finite(res_kw):
    stem, res = make(**res_kw)
    s = random_splats([0, 4], 4)
    out = encode(stem, res, with_garbage(s, extra=2))
    assert out.isfinite().all()
    torch.testing.assert_close(out[:1], encode(stem, res, s[0]))  # independent of its batch
    if not res_kw.get("attend_latents", True):
        # only the null key is left: every latent gets the same attention output (its value)
        cfg = ResamplerCfg(width=WIDTH, head_width=8, attend_latents=False, mlp_ratio=0)
        latents, kv = torch.randn(1, K, WIDTH), torch.randn(1, 3, 2 * cfg.inner)
        block = ResamplerBlock(cfg)
        d = block(latents, kv, torch.ones(1, 3, dtype=torch.bool)) - latents
        torch.testing.assert_close(d, d[:, :1].expand_as(d))
    # capacity 0: no Gaussian slots at all
    empty = Splats.create(torch.zeros(2, 0, 2), torch.ones(2, 0, 3), torch.zeros(2, 0, 3), (8, 8))
    assert encode(stem, res, empty).isfinite().all()


def test_resampler_needs_a_key_for_empty_images():
    with pytest.raises(ValueError, match="null_kv or attend_latents"):
        PerceiverResampler(ResamplerCfg(width=WIDTH, null_kv=False, attend_latents=False))


def test_degenerate_valid_gaussians_stay_finite():
    stem, res = make()
    s = random_splats([4], 4)
    s.chol[0, 0] = torch.tensor([1e-12, 0.0, 1e-12])  # far below a pixel
    s.chol[0, 1] = torch.tensor([1e6, -1e6, 1e6])  # far beyond the image
    s.means[0, 2] = torch.tensor([-50.0, 80.0])  # far off the image
    s.colors[0, 3] = torch.tensor([-20.0, 1e4, 0.5])
    assert encode(stem, res, s).isfinite().all()
    assert encode(stem, res, s, fused=True).isfinite().all()


@pytest.mark.parametrize(
    "res_kw", [{}, {"attn_width": 16, "mlp_ratio": 0}], ids=["default", "narrow"]
)
def test_fused_stem_projection_equals_stem_then_resampler(res_kw):
    """Folding the stem's projection into the LayerNorm + key/value projection is exact algebra:
    float64 outputs and every parameter's gradient agree to rounding, for weights far from their
    initial values (LayerNorm's γ and β included) and tokens with a large mean."""
    torch.manual_seed(0)
    stem, res = make(torch.float64, **res_kw)
    with torch.no_grad():
        for p in [*stem.parameters(), *res.parameters()]:
            p.add_(0.3 * torch.randn_like(p))
        stem.proj.bias.add_(2.0)  # tokens far from zero mean: LayerNorm's centring matters
    s = with_garbage(random_splats([7, 3, 0], 7, dtype=torch.float64), extra=2)
    weights = torch.randn(3, K, WIDTH, dtype=torch.float64)
    grads = {}
    for fused in (False, True):
        for p in [*stem.parameters(), *res.parameters()]:
            p.grad = None
        out = encode(stem, res, s, fused)
        (out * weights).sum().backward()
        grads[fused] = [p.grad.clone() for p in [*stem.parameters(), *res.parameters()]]
        if not fused:
            ref = out.detach()
    torch.testing.assert_close(out.detach(), ref, atol=1e-12, rtol=1e-10)
    for g_fused, g_ref in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(g_fused, g_ref, atol=1e-11, rtol=1e-9)
    # under bf16 autocast the keys/values come out in bf16, as the linear layers' would
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats, kpm = stem.float()(random_splats([4], 4), project=False)
        kv = res.float().kv_tokens.from_features(feats, stem.proj)
    assert kv.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="token_kv='shared'"):
        _, per_layer = make(token_kv="per_layer")
        per_layer(feats, kpm, stem_proj=stem.proj)


@pytest.mark.parametrize(
    "res_kw",
    [{}, {"attend_latents": False}, {"null_kv": False}, {"attn_width": 16}],
    ids=["default", "no-latent-keys", "no-null", "narrow"],
)
@pytest.mark.parametrize("fused", [False, True])
def test_inference_key_slots_equal_the_training_path(res_kw, fused):
    """Without gradients the shared keys/values are laid out once (KeySlots, written in place
    per layer); with gradients each layer concatenates them. Same result, padding and empty
    images included."""
    stem, res = make(torch.float64, **res_kw)
    s = with_garbage(random_splats([7, 3, 0], 7, dtype=torch.float64), extra=2)
    train = encode(stem, res, s, fused)
    with torch.no_grad():
        infer = encode(stem, res, s, fused)
    with torch.inference_mode():
        infer_mode = encode(stem, res, s, fused)
    torch.testing.assert_close(infer, train.detach(), atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(infer_mode, train.detach(), atol=1e-12, rtol=1e-10)


def test_gradients_reach_every_parameter():
    stem, res = make()
    out = encode(stem, res, random_splats([5, 0, 2], 5))
    # a random-weighted sum: a plain sum through the final LayerNorm (γ = 1) has zero gradient
    (out * torch.randn_like(out)).sum().backward()
    for name, p in [*stem.named_parameters(), *res.named_parameters()]:
        assert p.grad is not None and p.grad.isfinite().all(), name
        assert p.grad.abs().max() > 0, name


def test_features_ignore_resolution_and_fold_opacity():
    stem, _ = make()
    s = random_splats([3, 2], 3)
    other = Splats(s.means, s.chol, s.colors, s.counts, torch.tensor([[480, 640], [17, 9]]))
    torch.testing.assert_close(stem(other), stem(s))  # normalised splats: size plays no part
    op = torch.rand(2, 3, 1)
    with_op = Splats(s.means, s.chol, s.colors, s.counts, s.image_sizes, op)
    folded = Splats(s.means, s.chol, s.colors * op, s.counts, s.image_sizes)
    torch.testing.assert_close(stem(with_op), stem(folded))
    stem_op, _ = make(stem_kw={"include_opacity": True})
    ones = Splats(s.means, s.chol, s.colors, s.counts, s.image_sizes, torch.ones(2, 3, 1))
    torch.testing.assert_close(stem_op(ones), stem_op(s))  # no opacities: all ones


# parameters of open_clip's towers, counted from its configs on the meta device
_CLIP = {  # name: (width, CLIP total, patch embedding, one block, projection + ln_post)
    "ViT-B-16": (768, 149.620737e6, 0.589824e6, 7.087872e6, 0.393216e6 + 1536),
    "ViT-L-14": (1024, 427.616513e6, 0.602112e6, 12.596224e6, 0.786432e6 + 2048),
}


@pytest.mark.parametrize("name", sorted(_CLIP))
def test_parameter_budget(name):
    width, total, patch, block, head = _CLIP[name]
    print(f"\n{name}: stem + resampler (K=98, 4 layers) parameters and trainable fraction")
    for ratio in (0.0, 1.0, 4.0):
        with torch.device("meta"):
            stem = SplatStem(SplatStemCfg(width=width))
            res = PerceiverResampler(ResamplerCfg(width=width, mlp_ratio=ratio))
        n_stem = sum(p.numel() for p in stem.parameters())
        n_res = sum(p.numel() for p in res.parameters())
        model = total - patch + n_stem + n_res  # the stem replaces the patch embedding
        frac0 = (n_stem + n_res + head) / model  # frozen blocks
        frac2 = (n_stem + n_res + 2 * block + head) / model  # first two blocks trained
        print(
            f"  mlp_ratio {ratio:g}: stem {n_stem / 1e6:.2f}M, resampler {n_res / 1e6:.2f}M; "
            f"trainable {frac0:.1%} (blocks frozen), {frac2:.1%} (+ first two blocks)"
        )
        assert n_stem < 0.2e6 and n_stem + n_res < 40e6 * (width / 768) ** 2
    with torch.device("meta"):
        default = PerceiverResampler(ResamplerCfg(width=width))
    assert sum(p.numel() for p in default.parameters()) < 0.1 * total  # the default stays light


def test_shared_token_keys_cost_one_projection():
    per_layer = PerceiverResampler(ResamplerCfg(width=64, num_latents=4, token_kv="per_layer"))
    shared = PerceiverResampler(ResamplerCfg(width=64, num_latents=4))
    kv = 64 * 128 + 128 + 2 * 64  # one token key/value projection and its LayerNorm
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(per_layer) - count(shared) == 3 * kv  # 4 layers: 4 projections vs 1
    narrow = PerceiverResampler(ResamplerCfg(width=64, num_latents=4, attn_width=32, head_width=16))
    assert narrow.blocks[0].heads == 2 and count(narrow) < count(shared)
    with pytest.raises(ValueError, match="token_kv"):
        PerceiverResampler(ResamplerCfg(width=64, token_kv="sometimes"))
