"""GS-CLIP: presets and freezing, shared vs copied blocks, RGB tower untouched, checkpoints."""

from __future__ import annotations

import pytest
import torch
from test_stem_resampler import random_splats

from gsvision.model import (
    TRAINABLE_PRESETS,
    TrainableCfg,
    create_model,
    load_model,
    read_model_cfg,
    save_model,
)

TINY = "GS-ViT-Tiny-8-64"
SMALL = dict(num_latents=8, resampler={"layers": 1, "head_width": 32})


def tiny(trainable="paper", **kw):
    torch.manual_seed(0)
    return create_model(TINY, trainable=trainable, **{**SMALL, **kw})


def trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_presets_train_what_they_name():
    stem = trainable_names(tiny("stem"))
    assert stem and all(
        n.startswith(("splat.stem", "splat.resampler", "splat.class", "splat.pos")) for n in stem
    )
    paper = trainable_names(tiny("paper"))
    assert {n.split(".")[2] for n in paper if n.startswith("splat.blocks.")} == {"0", "1"}
    assert "splat.proj" in paper and "clip.logit_scale" in paper
    assert any(n.startswith("splat.ln_post") for n in paper)
    assert not any(n.startswith("clip.") and n != "clip.logit_scale" for n in paper)
    text = trainable_names(tiny("paper-text")) - paper
    assert any(n.startswith("clip.transformer.resblocks.3.") for n in text)  # the last text block
    assert "clip.text_projection" in text and any(n.startswith("clip.ln_final") for n in text)
    assert not any(n.startswith("clip.visual.") for n in trainable_names(tiny("paper-text")))


def test_trainable_fraction_counts_the_splat_path_once():
    m = tiny("paper")
    s = m.trainable_summary()
    path = {id(p): p for p in m.splat.parameters_in_path()}
    text = {id(p): p for n, p in m.clip.named_parameters() if not n.startswith("visual.")}
    assert s["total"] == sum(p.numel() for p in {**path, **text}.values())
    assert s["trainable"] == sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert 0 < s["fraction"] < 1 and f"{100 * s['fraction']:.1f}%" in repr(m)
    # the RGB patch embedding never runs on splats and is left out of the total
    assert id(m.clip.visual.conv1.weight) not in path


def test_frozen_parameters_get_no_update_and_rgb_tower_is_unchanged():
    m = tiny("paper")
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    rgb_image = torch.rand(2, 3, 64, 64)
    rgb_before = m.encode_image(rgb_image).detach()
    opt = torch.optim.AdamW(
        [p for p in m.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    text = torch.randint(1, 1000, (3, 32))
    for _ in range(3):
        out = m(random_splats([20, 7, 0], 20), text)
        loss = -(out["image_features"] * out["text_features"]).sum() * out["logit_scale"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in m.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == p.requires_grad, n
        if not p.requires_grad:
            assert p.grad is None, n
    torch.testing.assert_close(m.encode_image(rgb_image), rgb_before, rtol=0, atol=0)


def test_splat_tower_runs_shared_frozen_blocks_and_its_own_copies():
    m = tiny("paper")
    blocks = m.splat.block_list()
    shared = m.clip.visual.transformer.resblocks
    assert blocks[0] is not shared[0] and blocks[1] is not shared[1]
    assert all(blocks[i] is shared[i] for i in range(2, len(shared)))
    # copies start equal, so at initialisation the path is the RGB tower's with splat tokens
    assert torch.equal(blocks[0].attn.in_proj_weight, shared[0].attn.in_proj_weight)  # ViT blocks
    assert not any(k.startswith("splat.blocks.2") for k in m.state_dict())  # shared: stored once


def test_splat_embedding_is_permutation_invariant_and_ignores_padding():
    m = tiny("stem").eval()
    s = random_splats([30, 12], 30, dtype=torch.float64)
    m = m.double()
    e = m.encode_splats(s)
    perm = torch.randperm(12)
    s2 = random_splats([30, 12], 30, dtype=torch.float64)  # shape only; fields replaced below
    means, chol, colors = s.means.clone(), s.chol.clone(), s.colors.clone()
    means[1, :12], chol[1, :12], colors[1, :12] = means[1, perm], chol[1, perm], colors[1, perm]
    means[1, 12:] = float("nan")  # padded slots may hold anything
    s2 = type(s)(means, chol, colors, s.counts, s.image_sizes)
    torch.testing.assert_close(m.encode_splats(s2), e, rtol=1e-9, atol=1e-9)


def test_splat_tower_fuses_the_stem_projection_without_changing_the_embedding():
    m = tiny("stem").double().eval()
    s = random_splats([30, 12], 30, dtype=torch.float64)
    assert m.splat.fuse_stem_kv and m.splat.stem.fusable
    fused = m.encode_splats(s)
    m.splat.fuse_stem_kv = False
    torch.testing.assert_close(fused, m.encode_splats(s), rtol=1e-10, atol=1e-12)


def test_checkpoint_round_trip(tmp_path):
    m = tiny("paper")
    with torch.no_grad():
        for p in m.splat.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / "m.safetensors"
    save_model(m, path)
    cfg = read_model_cfg(path)
    assert cfg.trainable == TRAINABLE_PRESETS["paper"] and cfg.resampler.num_latents == 8
    m2 = load_model(path)
    s = random_splats([10, 3], 10)
    torch.testing.assert_close(m2.encode_splats(s), m.encode_splats(s), rtol=0, atol=0)
    assert trainable_names(m2) == trainable_names(m)
    m3 = create_model(str(path))  # a checkpoint is also a model name
    torch.testing.assert_close(m3.encode_splats(s), m.encode_splats(s), rtol=0, atol=0)


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown trainable preset"):
        tiny("everything")
    with pytest.raises(ValueError, match="out of range"):
        tiny(TrainableCfg(splat_blocks=(7,)))
    with pytest.raises(ValueError, match="unknown fields"):
        tiny(resampler={"layerz": 2})


def test_changing_presets_copies_parts_without_changing_the_output(tmp_path):
    m = tiny("stem")
    s = random_splats([10, 3], 10)
    before = m.encode_splats(s).detach()
    m.apply_trainable(TRAINABLE_PRESETS["paper"])  # distill → contrastive
    assert set(m.splat.blocks.keys()) == {"0", "1"} and m.splat.proj.requires_grad
    torch.testing.assert_close(m.encode_splats(s), before)  # same weights (matmul order may differ)
    with torch.no_grad():
        m.splat.blocks["0"].ln_1.weight.add_(0.5)  # trained
    trained = m.encode_splats(s).detach()
    m.apply_trainable(TRAINABLE_PRESETS["stem"])  # the trained copy stays, frozen
    assert "0" in m.splat.blocks and not m.splat.blocks["0"].ln_1.weight.requires_grad
    save_model(m, tmp_path / "m.safetensors")
    m2 = create_model(str(tmp_path / "m.safetensors"))
    torch.testing.assert_close(m2.encode_splats(s), trained)
    assert trainable_names(m2) == trainable_names(m)


def test_package_references_in_configs_resolve_or_make_the_model_unavailable(monkeypatch):
    """``pkg:PACKAGE/FOLDER`` in a config (how GS-ViT-Tiny-8-64-MiniLM names its text tower)."""
    from gsvision.model import factory

    monkeypatch.setattr(factory, "_unavailable", {})
    registry = {
        "here": {"text_cfg": {"hf_model_name": "pkg:gsvision/model/configs"}},
        "absent": {"text_cfg": {"hf_tokenizer_name": "pkg:no_such_package_xyz/model"}},
        "plain": {"text_cfg": {"width": 128}},
    }
    factory._resolve_package_refs(registry)
    assert set(registry) == {"here", "plain"}
    assert registry["here"]["text_cfg"]["hf_model_name"] == str(factory.CONFIG_DIR)
    with pytest.raises(RuntimeError, match="no_such_package_xyz.*pip install no-such-package-xyz"):
        factory._check_available("absent")


def test_checkpoints_from_before_attn_ratio_keep_full_width_attention(tmp_path):
    """Older checkpoints stored no ``attn_ratio``: they had full-width attention, and load so."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    m = tiny("stem", resampler={"layers": 1, "head_width": 16, "attn_ratio": 1.0})
    assert m.splat.resampler.cfg.inner == 128  # the default ratio would give 32 here
    path = tmp_path / "new.safetensors"
    save_model(m, path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["gsvision_model"])
    del cfg["resampler"]["attn_ratio"]
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(path)), str(old), metadata={**meta, "gsvision_model": json.dumps(cfg)})
    assert read_model_cfg(old).resampler.inner == 128
    s = random_splats([10, 3], 10)
    torch.testing.assert_close(load_model(old).encode_splats(s), m.encode_splats(s), rtol=0, atol=0)
