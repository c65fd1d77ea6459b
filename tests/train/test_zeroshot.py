"""Zero-shot evaluation: accuracy, the text classifier, both dataset layouts, the CLI, bad samples.

Every expected number is computed here from the real tiny model's own embeddings (no mocks).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gsvision
from gsvision.cli import main
from gsvision.codec import decode_batch, encode
from gsvision.data.loader import pad_splats
from gsvision.data.shards import ShardWriter
from gsvision.io import decode_image
from gsvision.model import create_model, get_tokenizer
from gsvision.model.factory import rgb_transform
from gsvision.splats import Splats, chol_from_axes
from gsvision.train.zeroshot import (
    accuracy,
    evaluate,
    folder_dataset,
    imagenet1k_dataset,
    open_dataset,
    wds_dataset,
    zero_shot_classifier,
)

TINY = "GS-ViT-Tiny-8-64"
CLASSES = ["red square", "green disc", "blue bar"]
TEMPLATES = ["a photo of a {c}.", "a drawing of the {c}."]
N = 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model(TINY, num_latents=8, resampler={"layers": 1})
    return m.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer(TINY)


def _jpeg(color: int, seed: int, size: tuple[int, int] = (48, 56)) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (*size, 3), dtype=np.uint8)
    img[8:30, 10:40, color] = 220
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG")
    return buf.getvalue()


def _payload(color: int, seed: int, n: int = 12) -> bytes:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(1, n, 2, generator=g)
    major = torch.exp(torch.empty(1, n).uniform_(-3, -1.5, generator=g))
    chol = chol_from_axes(major, major * 0.5, torch.rand(1, n, generator=g) * 3.14)
    colors = torch.full((1, n, 3), 0.1)
    colors[..., color] = 0.9
    return encode(Splats.create(means, chol, colors, (64, 64)))


def _write_meta(root: Path, classes=CLASSES, templates=TEMPLATES) -> None:
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")


def _wds(root: Path, labels: list[int], shards: int = 2) -> list[dict]:
    """clip_benchmark's layout: root/test/{nshards.txt, 0.tar, 1.tar}; samples: cls, jpg, gsv."""
    (root / "test").mkdir(parents=True)
    _write_meta(root)
    samples = [
        {"cls": str(c), "jpg": _jpeg(c, i), "gsv": _payload(c, i)} for i, c in enumerate(labels)
    ]
    per = -(-len(samples) // shards)
    for s in range(shards):
        w = ShardWriter(root / "test" / f"{s}.tar")
        for i in range(s * per, min(len(samples), (s + 1) * per)):
            w.write(f"s{i:04d}", samples[i])
        w.commit()
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return samples


def _folder(root: Path, dirs: list[str], per_class: int = 2) -> list[tuple[str, bytes, int]]:
    items = []
    for c, d in enumerate(dirs):
        (root / d).mkdir(parents=True)
        for i in range(per_class):
            data = _jpeg(c % 3, 100 * c + i)
            (root / d / f"img{i}.jpg").write_bytes(data)
            items.append((d, data, c))
    return items


def _direct_splat(model, payloads: list[bytes], classifier, n: int = N) -> torch.Tensor:
    splats, failed = decode_batch(payloads, errors="skip", images_per_payload=1)
    assert not failed
    with torch.no_grad():
        return model.encode_splats(pad_splats([splats], n), normalize=True) @ classifier


def _direct_rgb(model, images: list[bytes], classifier) -> torch.Tensor:
    pre = rgb_transform(model.clip, is_train=False)
    x = torch.stack([pre(Image.fromarray(decode_image(b))) for b in images])
    with torch.no_grad():
        return model.encode_image(x, normalize=True) @ classifier


# ------------------------------------------------------------------------- functions
def test_accuracy_on_hand_made_logits():
    logits = torch.tensor(
        [[0.9, 0.1, 0.0], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]
    )  # top-1 predictions: 0, 1, 2, 0
    target = torch.tensor([0, 2, 2, 1])
    assert accuracy(logits, target, topk=(1, 2, 5)) == [0.5, 1.0, 1.0]  # k ≥ C counts all
    seven = torch.arange(7.0).repeat(2, 1)  # ranking 6, 5, 4, 3, 2, 1, 0
    assert accuracy(seven, torch.tensor([2, 1]), topk=(1, 5)) == [0.0, 0.5]
    with pytest.raises(ValueError):
        accuracy(seven, torch.tensor([1]))


def test_classifier_equals_hand_computation(model, tokenizer):
    with torch.no_grad():
        cols = []
        for c in CLASSES:
            tok = tokenizer([t.replace("{c}", c) for t in TEMPLATES])
            e = model.encode_text(tok, normalize=True).mean(0)
            cols.append(e / e.norm())
    expected = torch.stack(cols, 1)  # [E, C]
    for batch in (1, 3, 100):  # one class per step, and all at once
        got = zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES, "cpu", batch)
        assert got.shape == (model.clip.text_projection.shape[1], len(CLASSES))
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    callables = [lambda c: f"a photo of a {c}.", lambda c: f"a drawing of the {c}."]
    got = zero_shot_classifier(model, tokenizer, CLASSES, callables)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------- end to end
def test_evaluate_wds_layout_matches_direct_computation(model, tokenizer, tmp_path):
    labels = [0, 1, 2, 0, 1, 2, 2]
    samples = _wds(tmp_path / "ds", labels)
    data = open_dataset("wds", tmp_path / "ds")
    assert data.classnames == CLASSES and data.templates == TEMPLATES
    assert "2 shard(s)" in data.source
    clf = zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES)
    result = evaluate(model, data, n=N, batch=64, device="cpu", predictions=True)
    target = torch.tensor(labels)
    splat_logits = _direct_splat(model, [s["gsv"] for s in samples], clf)
    rgb_logits = _direct_rgb(model, [s["jpg"] for s in samples], clf)
    for tower, logits in (("splat", splat_logits), ("rgb", rgb_logits)):
        r = result["towers"][tower]
        top1, top5 = accuracy(logits, target)
        assert r["top1"] == pytest.approx(top1) and r["images"] == len(labels)
        assert r["top5"] == top5 == 1.0  # 3 classes ≤ 5
        hits = {k: v["images"] for k, v in r["per_class"].items()}
        assert hits == {"red square": 2, "green disc": 2, "blue bar": 3}
        pred = logits.argmax(1)
        assert [p["top5"][0] for p in r["predictions"]] == pred.tolist()  # sample by sample
        assert [p["label"] for p in r["predictions"]] == labels
        assert [p["key"] for p in r["predictions"]] == [f"s{i:04d}" for i in range(len(labels))]
        for c, name in enumerate(CLASSES):
            want = float((pred[target == c] == c).float().mean())
            assert r["per_class"][name]["top1"] == pytest.approx(want)
    sp = result["splat_payloads"]
    assert sp["read"] == len(labels) and sp["fitted"] == 0
    assert sp["bytes_mean"] == pytest.approx(np.mean([len(s["gsv"]) for s in samples]))
    assert result["read"] == result["images"] == len(labels) and result["skipped"] == 0
    # --limit and batching across shards: the first 5 samples, in batches of 2
    limited = evaluate(model, data, n=N, batch=2, limit=5, towers=("splat",), device="cpu")
    assert limited["read"] == 5 and limited["towers"]["splat"]["images"] == 5
    assert "rgb" not in limited["towers"]
    top1, _ = accuracy(splat_logits[:5], target[:5])
    assert limited["towers"]["splat"]["top1"] == pytest.approx(top1)


def test_evaluate_folder_fits_images_on_the_fly(model, tokenizer, tmp_path):
    items = _folder(tmp_path / "f", ["blue_bar", "green_disc", "red_square"])  # sorted
    data = folder_dataset(tmp_path / "f")
    assert data.classnames == ["blue bar", "green disc", "red square"]  # underscores as spaces
    assert data.size == 6 and data.templates == ["a photo of a {c}."]
    clf = zero_shot_classifier(model, tokenizer, data.classnames, data.templates)
    result = evaluate(model, data, n=N, iters=5, level="medium", device="cpu", predictions=True)
    images = [decode_image(b) for _, b, _ in items]
    fitted = gsvision.fit(images, N, iters=5, size=64, seed=0)  # the model's image size
    payloads = [encode(fitted.splats[i].detach(), "medium") for i in range(len(items))]
    target = torch.tensor([c for _, _, c in items])
    for tower, logits in (
        ("splat", _direct_splat(model, payloads, clf)),
        ("rgb", _direct_rgb(model, [b for _, b, _ in items], clf)),
    ):
        r = result["towers"][tower]
        assert [p["top5"] for p in r["predictions"]] == logits.topk(3, dim=1).indices.tolist()
        assert r["top1"] == pytest.approx(accuracy(logits, target)[0]) and r["images"] == 6
    sp = result["splat_payloads"]
    assert sp["fitted"] == 6 and sp["read"] == 0 and sp["fit_size"] == 64
    assert sp["bytes_mean"] == pytest.approx(np.mean([len(p) for p in payloads]))
    assert sp["ratio"] == pytest.approx(3 * 64 * 64 / sp["bytes_mean"])
    assert sp["fit_psnr_mean"] > 10


def test_imagenet1k_names_templates_and_synset_folders(tmp_path):
    import open_clip

    _folder(tmp_path / "val", ["n01443537", "n01530575"], per_class=1)
    data = imagenet1k_dataset(tmp_path / "val")
    assert data.classnames == list(open_clip.IMAGENET_CLASSNAMES) and len(data.templates) == 80
    assert [s.label for s in data] == [1, 10]  # goldfish, brambling: ImageNet's own indices
    wrong = tmp_path / "wrong"
    _folder(wrong, ["cats", "dogs"], per_class=1)
    with pytest.raises(ValueError, match="synset"):
        imagenet1k_dataset(wrong)
    _wds(tmp_path / "shards", [0, 1])  # shards in the same layout read with ImageNet's names
    assert imagenet1k_dataset(tmp_path / "shards").source.startswith("2 shard(s)")


def test_folder_pairs_images_with_payloads(tmp_path):
    root = tmp_path / "f"
    (root / "cat").mkdir(parents=True)
    (root / "dog" / "sub").mkdir(parents=True)
    (root / "cat" / "a.jpg").write_bytes(_jpeg(0, 1))
    (root / "cat" / "a.gsv").write_bytes(_payload(0, 1))  # same stem: one sample with both
    (root / "cat" / "notes.txt").write_text("ignored")
    (root / "dog" / "sub" / "b.gsv").write_bytes(_payload(1, 2))  # nested, payload only
    (root / "classnames.txt").write_text("a cat\na dog\n")
    got = [
        (s.key, s.image is not None, s.payload is not None, s.label) for s in folder_dataset(root)
    ]
    assert got == [("cat/a", True, True, 0), ("dog/sub/b", False, True, 1)]
    assert folder_dataset(root).classnames == ["a cat", "a dog"]


# ------------------------------------------------------------------------- CLI
def test_cli_imagenet1k_folder(tmp_path, capsys):
    root = tmp_path / "val"
    _folder(root, ["n01440764", "n01443537", "n02099601"], per_class=2)
    (tmp_path / "t.txt").write_text("a photo of a {c}.\n")  # 1,000 prompts instead of 80,000
    out = tmp_path / "results.json"
    argv = ["eval", "--model", TINY, "--num-latents", "8", "--dataset", "imagenet1k"]
    argv += ["--data-dir", str(root), "--templates", str(tmp_path / "t.txt"), "--limit", "5"]
    argv += ["-n", "16", "--iters", "5", "--batch", "4", "--out", str(out), "-q"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "splat" in printed and "rgb" in printed
    assert "5 fitted" in printed
    doc = json.loads(out.read_text())
    assert doc["classes"] == 1000 and doc["templates"] == 1 and doc["read"] == 5
    for tower in ("splat", "rgb"):
        r = doc["towers"][tower]
        assert r["images"] == 5 and 0 <= r["top1"] <= r["top5"] <= 1
        assert set(r["per_class"]) == {"tench", "goldfish", "Golden Retriever"}
    assert doc["settings"]["dataset"] == "imagenet1k"


# ------------------------------------------------------------------------- bad samples
def test_bad_samples_are_skipped_and_reported(model, tmp_path, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    _write_meta(root)
    good = [
        {"cls": str(c), "jpg": _jpeg(c, i), "gsv": _payload(c, i)} for i, c in enumerate([0, 1])
    ]
    w = ShardWriter(root / "000.tar")
    for i, s in enumerate(good):
        w.write(f"good{i}", s)
    w.write("payload_only", {"cls": "2", "gsv": _payload(2, 7)})  # fine: RGB has no input
    w.write("corrupt_jpg", {"cls": "0", "jpg": b"\xff\xd8 not a jpeg"})
    w.write("bad_gsv", {"cls": "1", "jpg": _jpeg(1, 9), "gsv": b"GSV garbage"})
    w.write("no_cls", {"jpg": _jpeg(0, 10)})
    w.write("bad_cls", {"cls": "seven", "jpg": _jpeg(0, 11)})
    w.write("cls_range", {"cls": "9", "jpg": _jpeg(0, 12)})
    w.write("caption_only", {"cls": "0", "txt": "no image here"})
    w.commit()
    w = ShardWriter(root / "001.tar")  # truncated: its sample is cut off
    w.write("cut", {"cls": "0", "jpg": _jpeg(0, 13) * 4})
    w.commit()
    raw = (root / "001.tar").read_bytes()
    (root / "001.tar").write_bytes(raw[: len(raw) // 2])

    result = evaluate(model, wds_dataset(root), n=N, device="cpu")
    assert result["read"] == 10
    assert result["skipped"] == 7
    assert result["skipped_by_stage"] == {"source": 5, "image": 1, "payload": 1}
    reasons = {s["key"]: s["reason"] for s in result["skipped_samples"]}
    assert "no .cls" in reasons["no_cls"] and "outside the 3 classes" in reasons["cls_range"]
    assert "no image or .gsv" in reasons["caption_only"] and "bad .cls" in reasons["bad_cls"]
    assert "truncated" in reasons["cut"] and "corrupt" in reasons["corrupt_jpg"]
    assert "bad_gsv" in reasons
    assert result["towers"]["splat"]["images"] == 3  # good0, good1, payload_only
    assert result["towers"]["rgb"]["images"] == 2 and result["no_input"]["rgb"] == 1

    # a folder with a corrupt image: the CLI goes on, reports it and exits 1
    folder = tmp_path / "f"
    _folder(folder, ["a", "b"], per_class=1)
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code = main(["eval", "--model", TINY, "--num-latents", "8", "--dataset", "folder"]
                + ["--data-dir", str(folder), "-n", "8", "--iters", "3", "-q"])  # fmt: skip
    assert code == 1
    printed = capsys.readouterr().out
    assert "skipped: 1 bad sample(s) (image: 1)" in printed
