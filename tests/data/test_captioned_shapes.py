"""The built-in captioned shapes: deterministic, balanced, readable as image–text and zero-shot data."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from gsvision.data import iter_samples, make_shapes_shards
from gsvision.data.captioned_shapes import COLOURS, SHAPES, TEMPLATES
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
