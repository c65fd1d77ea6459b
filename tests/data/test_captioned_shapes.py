"""The built-in captioned shapes: deterministic, balanced, readable as image–text and zero-shot data."""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from gsvision.data import iter_samples, make_shapes_shards, synthetic
from gsvision.data.captioned_shapes import BACKGROUNDS, COLOURS, SHAPES, TEMPLATES
from gsvision.data.labelled import wds_dataset


def samples(paths):
    return [s for p in paths for s in iter_samples(str(p))]


def test_deterministic_balanced_and_captioned(tmp_path):
    a = make_shapes_shards(tmp_path / "a", n_train=96, n_test=48, size=32, per_shard=40, seed=3)
    b = make_shapes_shards(tmp_path / "b", n_train=96, n_test=48, size=32, per_shard=40, seed=3)
    assert len(a["classnames"]) == len(COLOURS) * len(SHAPES) == 24
    assert [p.name for p in a["train"]] == ["00000.tar", "00001.tar", "00002.tar"]
    train, test = samples(a["train"]), samples(a["test"])
    assert [s.files for s in train] == [s.files for s in samples(b["train"])]
    assert len(train) == 96 and len(test) == 48
    for split in (train, test):
        counts = Counter(int(s.files["cls"]) for s in split)
        assert set(counts) == set(range(24)) and max(counts.values()) - min(counts.values()) <= 1
    for s in train + test:
        label = int(s.files["cls"])
        colour, shape = a["classnames"][label].split()
        caption = s.files["txt"].decode()
        assert colour in caption and shape in caption
        meta = json.loads(s.files["json"])
        assert meta["label"] == label and meta["caption"] == caption
        image = Image.open(io.BytesIO(s.files["jpg"]))
        assert image.size == (32, 32) and image.mode == "RGB"
    assert len({s.key for s in train}) == 96
    test_dir = tmp_path / "a" / "test"
    assert (test_dir / "classnames.txt").read_text().splitlines() == a["classnames"]
    zs = wds_dataset(test_dir)
    assert zs.classnames == a["classnames"] and list(zs.templates) == list(TEMPLATES)


def test_the_class_colour_is_in_the_image(tmp_path):
    made = make_shapes_shards(tmp_path, n_train=24, n_test=1, size=48, per_shard=24)
    for s in samples(made["train"]):
        colour = made["classnames"][int(s.files["cls"])].split()[0]
        pixels = np.asarray(Image.open(io.BytesIO(s.files["jpg"]))).reshape(-1, 3).astype(float)
        dist = np.linalg.norm(pixels - np.array(COLOURS[colour]), axis=1)
        assert (dist < 60).sum() >= 20, (s.key, colour)  # the shape covers at least ~20 pixels


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown colour"):
        make_shapes_shards("/nonexistent", colours=("teal",))
    with pytest.raises(ValueError, match="unknown shape"):
        make_shapes_shards("/nonexistent", shapes=("hexagon",))


def test_seed_changes_the_data_and_the_splits_differ(tmp_path):
    assert synthetic.make_shapes_shards is make_shapes_shards  # one function, two import paths
    a = make_shapes_shards(tmp_path / "a", n_train=24, n_test=24, size=16, per_shard=24, seed=0)
    b = make_shapes_shards(tmp_path / "b", n_train=24, n_test=24, size=16, per_shard=24, seed=1)
    train_a, test_a, train_b = samples(a["train"]), samples(a["test"]), samples(b["train"])
    assert sum(x.files["jpg"] == y.files["jpg"] for x, y in zip(train_a, train_b, strict=True)) == 0
    assert not {s.files["jpg"] for s in train_a} & {s.files["jpg"] for s in test_a}
    assert [s.key for s in train_a] == [s.key for s in test_a]  # keys restart in each split


def test_metadata_names_the_class_and_every_nuisance_and_captions_vary(tmp_path):
    made = make_shapes_shards(tmp_path, n_train=144, n_test=1, size=16, per_shard=50, seed=2)
    train = samples(made["train"])
    metas = [json.loads(s.files["json"]) for s in train]
    for s, m in zip(train, metas, strict=True):
        assert m["key"] == s.key and m["label"] == int(s.files["cls"])
        assert m["classname"] == made["classnames"][m["label"]] == f"{m['colour']} {m['shape']}"
        assert m["size"] in ("small", "medium", "big") and m["background"] in BACKGROUNDS
        assert 0 < m["centre"][0] < 1 and 0 < m["centre"][1] < 1 and 0 < m["radius"] < 0.5
        assert (m["width"], m["height"]) == (16, 16)
    assert {m["background"] for m in metas} == set(BACKGROUNDS)
    assert {m["size"] for m in metas} == {"small", "medium", "big"}
    assert len({m["position"] for m in metas}) >= 6
    # with the class words taken out, the captions still come in several forms
    forms = Counter(re.sub(rf"{m['colour']} {m['shape']}", "C", m["caption"]) for m in metas)
    assert len(forms) >= 20 and max(forms.values()) < len(metas) / 3


def test_class_subset_and_the_zero_shot_files(tmp_path):
    made = make_shapes_shards(
        tmp_path, n_train=8, n_test=8, size=16, colours=("blue", "red"), shapes=("star", "circle")
    )
    assert made["classnames"] == ["blue star", "blue circle", "red star", "red circle"]
    test = tmp_path / "test"
    assert (test / "classnames.txt").read_text().splitlines() == made["classnames"]
    templates = (test / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert templates == list(TEMPLATES) and all("{c}" in t for t in templates)
    for split in ("train", "test"):
        counts = Counter(int(s.files["cls"]) for s in samples(made[split]))
        assert counts == dict.fromkeys(range(4), 2)
    assert len(COLOURS) * len(SHAPES) == 24  # the default class set
    assert sorted(p.name for p in test.iterdir()) == [
        "00000.tar",
        "00000_stats.json",
        "classnames.txt",
        "zeroshot_classification_templates.txt",
    ]
