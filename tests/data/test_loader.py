"""Training loaders: splat shards → padded Splats batches + captions, and the RGB baseline."""

from __future__ import annotations

import math

import pytest
import torch
import webdataset as wds
from torch.utils.data import DataLoader

from gsvision.codec import CodecError, encode
from gsvision.data.loader import (
    SplatLoader,
    collate_splats,
    decode_splat_sample,
    extract_splat_sample,
    pad_splats,
    rgb_pipeline,
    splat_pipeline,
)
from gsvision.data.shards import ShardWriter
from gsvision.splats import Splats

SHARDS, PER_SHARD, CORRUPT = 2, 5, "000000002"


def _splats(n: int, seed: int, size=(24, 32)) -> Splats:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    chol = torch.stack(
        [
            torch.rand(n, generator=g) * 0.05 + 0.02,
            torch.randn(n, generator=g) * 0.01,
            torch.rand(n, generator=g) * 0.05 + 0.02,
        ],
        -1,
    )
    colors = torch.rand(n, 3, generator=g)
    return Splats.create(means, chol, colors, size)


def _key(s: int, i: int) -> str:
    return f"{s:05d}{i:04d}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two splat shards of five samples with 4..16 Gaussians; one payload is corrupt."""
    out = tmp_path_factory.mktemp("splat_shards")
    urls = []
    for s in range(SHARDS):
        with ShardWriter(out / f"{s:05d}.tar") as w:
            for i in range(PER_SHARD):
                key = _key(s, i)
                payload = encode(_splats(4 + 3 * i, seed=10 * s + i), "lossless")
                if key == CORRUPT:
                    payload = payload[:40] + bytes(len(payload) - 40)
                w.write(key, {"gsv": payload, "txt": f"caption {key}", "json": "{}"})
            urls.append(str(w.commit()))
    return urls


def _good_keys() -> list[str]:
    keys = [_key(s, i) for s in range(SHARDS) for i in range(PER_SHARD)]
    return [k for k in keys if k != CORRUPT]


def test_decode_splat_sample_gives_one_image_and_its_caption():
    s = _splats(7, 0)
    raw = {"__key__": "k1", "gsv": encode(s, "lossless"), "txt": b"a cat", "json": b"{}"}
    out = decode_splat_sample(raw)
    assert out.key == "k1" and out.text == "a cat"
    assert out.splats.batch_size == 1 and int(out.splats.counts[0]) == 7
    torch.testing.assert_close(out.splats.means, s.means)
    with pytest.raises(CodecError):
        decode_splat_sample({**raw, "gsv": b"GSV not really a payload"})


def test_pipeline_skips_a_corrupt_payload_with_a_warning_and_goes_on(shards):
    pipeline = splat_pipeline(shards, n=8, batch_size=4, with_keys=True)  # warn_and_continue
    with pytest.warns(UserWarning, match="CodecError"):
        batches = list(pipeline)
    keys = [k for _, _, ks in batches for k in ks]
    assert keys == _good_keys()  # shard order kept, nothing after the bad sample lost
    assert [len(ks) for _, _, ks in batches] == [3, 4, 2]  # its batch goes on a sample short
    for splats, texts, ks in batches:
        assert splats.capacity == 8 and splats.means.shape == (len(ks), 8, 2)
        assert texts == [f"caption {k}" for k in ks]  # captions follow the keys
        splats.validate()
    # Gaussians per sample: 4 + 3 i, capped at 8
    counts = torch.cat([s.counts for s, _, _ in batches]).tolist()
    assert counts == [min(8, 4 + 3 * int(k[-1])) for k in keys]


def test_pipeline_reraises_when_asked(shards):
    with pytest.raises(CodecError, match=f"sample '{CORRUPT}'"):
        list(splat_pipeline(shards, n=8, batch_size=4, handler=wds.reraise_exception))


def test_pipeline_stops_after_the_batch_when_the_handler_says_stop(shards):
    seen = []

    def stop(exn: Exception) -> bool:
        seen.append(exn)
        return False

    batches = list(splat_pipeline(shards, n=8, batch_size=4, handler=stop, with_keys=True))
    assert [ks for _, _, ks in batches] == [[_key(0, 0), _key(0, 1), _key(0, 3)]]
    assert len(seen) == 1 and isinstance(seen[0], CodecError)


def test_collate_decodes_payloads_as_decode_and_pad_splats_would():
    """Payload items (the pipeline's) give what decoding each and padding gives, bit for bit:
    padding, trimming by importance (only the images above n) and the captions."""
    items = [_splats(c, seed=c) for c in (3, 9, 6, 12)]
    payloads = [encode(s, "medium") for s in items]
    batch = [(p, f"t{i}", f"k{i}") for i, p in enumerate(payloads)]
    got, texts, keys = collate_splats(batch, 6, with_keys=True)
    want = pad_splats([decode_splat_sample({"gsv": p, "txt": b"x"}).splats for p in payloads], 6)
    for name in ("means", "chol", "colors", "counts", "image_sizes"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.counts.tolist() == [3, 6, 6, 6] and texts == ["t0", "t1", "t2", "t3"]
    assert keys == ["k0", "k1", "k2", "k3"]
    # the same from the pipeline's map stage
    raw = {"__key__": "k0", "gsv": payloads[0], "txt": b"t0", "json": b"{}"}
    sample = extract_splat_sample(raw)
    assert sample == (payloads[0], "t0", "k0")


def test_collate_names_bad_payloads_and_leaves_them_out():
    good = encode(_splats(5, 1), "lossless")
    two = encode(Splats.cat([_splats(4, 2), _splats(4, 3)]), "medium")
    batch = [(good, "a", "ka"), (good[:-1], "b", "kb"), (two, "c", "kc"), (good, "d", "kd")]
    with pytest.raises(CodecError, match="sample 'kb': checksum mismatch"):
        collate_splats(batch, 8)
    errors: list[CodecError] = []
    splats, texts, keys = collate_splats(batch, 8, with_keys=True, on_error=errors.append)
    assert keys == ["ka", "kd"] and texts == ["a", "d"] and splats.batch_size == 2
    assert [str(e)[:10] for e in errors] == ["sample 'kb", "sample 'kc"]
    assert "holds 2 images, expected 1" in str(errors[1])
    splats, texts = collate_splats(batch[1:3], 8, on_error=errors.append)  # nothing left
    assert splats.means.shape == (0, 8, 2) and texts == []
    with pytest.raises(TypeError, match="both"):
        collate_splats([(good, "a", "ka"), (_splats(3, 0), "b", "kb")], 8)


def test_collate_decodes_one_by_one_when_the_padded_batch_would_be_too_big(monkeypatch):
    """A payload far above n (here: over the padded-slot budget) does not sink its batch."""
    import gsvision.codec as codec

    monkeypatch.setattr(codec, "_MAX_PADDED_SLOTS", 40)  # 3 images x 20 Gaussians: 60
    items = [_splats(c, seed=c) for c in (4, 20, 7)]
    batch = [(encode(s, "lossless"), f"t{i}", f"k{i}") for i, s in enumerate(items)]
    with pytest.raises(CodecError, match="60 Gaussian slots exceeds 40"):
        codec.decode_batch([p for p, _, _ in batch])
    splats, texts = collate_splats(batch + [(b"junk", "t3", "k3")], 8, on_error=lambda e: None)
    assert splats.counts.tolist() == [4, 8, 7] and texts == ["t0", "t1", "t2"]
    want = pad_splats(items, 8)
    for name in ("means", "chol", "colors", "counts", "image_sizes"):
        assert torch.equal(getattr(splats, name), getattr(want, name)), name


def test_pad_splats_pads_and_keeps_the_most_important_when_trimming():
    small = _splats(3, 1)
    big = _splats(6, 2)
    # Make slots 1 and 4 unimportant (dark and tiny): trimming to 4 must drop exactly them.
    big.colors[0, [1, 4]] = 0.01
    big.chol[0, [1, 4], 0] = big.chol[0, [1, 4], 2] = 1e-3
    out = pad_splats([small, big], 4)
    assert out.capacity == 4 and out.counts.tolist() == [3, 4]
    torch.testing.assert_close(out.means[0, :3], small.means[0])
    assert (out.means[0, 3] == 0.5).all() and (out.colors[0, 3] == 0).all()  # compact's padding
    keep = [0, 2, 3, 5]  # stored order kept
    torch.testing.assert_close(out.means[1], big.means[0, keep])
    torch.testing.assert_close(out.chol[1], big.chol[0, keep])
    torch.testing.assert_close(out.colors[1], big.colors[0, keep])
    assert out.image_sizes.tolist() == [[24, 32], [24, 32]]
    assert out.opacities is None
    # Items of several images: the same, a whole item at a time.
    both = pad_splats([Splats.cat([small, big])], 4)
    for name in ("means", "chol", "colors", "counts", "image_sizes"):
        assert torch.equal(getattr(both, name), getattr(out, name)), name
    # Exactly N: nothing to do but copy.
    same = pad_splats([big], 6)
    torch.testing.assert_close(same.means, big.means)
    with pytest.raises(ValueError):
        pad_splats([small], 0)


def test_pad_splats_keeps_opacities_only_when_every_image_has_them():
    a = _splats(3, 3)
    a.opacities = torch.full((1, 3, 1), 0.5)
    b = _splats(2, 4)
    both = pad_splats([a, a], 5)
    assert both.opacities is not None and both.opacities.shape == (2, 5, 1)
    mixed = pad_splats([a, b], 5)
    assert mixed.opacities is None
    torch.testing.assert_close(mixed.colors[0, :3], a.colors[0] * 0.5)


def test_collate_and_pipeline_take_a_tokenizer(shards):
    def tokenizer(texts: list[str]) -> torch.Tensor:
        return torch.tensor([[len(t), 1, 2] for t in texts], dtype=torch.long)

    items = [(_splats(5, i), f"text {'x' * i}", f"k{i}") for i in range(3)]
    splats, tokens = collate_splats(items, 4, tokenizer)
    assert splats.capacity == 4 and tokens.dtype == torch.long
    assert tokens[:, 0].tolist() == [5, 6, 7]
    pipeline = splat_pipeline(
        shards, n=16, batch_size=3, tokenizer=tokenizer, handler=wds.ignore_and_continue
    )
    splats, tokens = next(iter(pipeline))  # the first three samples, less the corrupt third
    assert splats.means.shape == (2, 16, 2) and tokens.shape == (2, 3)


def test_dataloader_with_two_workers_yields_every_sample_once(shards):
    pipeline = splat_pipeline(
        shards, n=8, batch_size=3, handler=wds.ignore_and_continue, with_keys=True
    )
    loader = DataLoader(pipeline, batch_size=None, num_workers=2)
    keys, sizes = [], []
    for splats, texts, ks in loader:
        assert isinstance(splats, Splats) and splats.capacity == 8
        assert list(texts) == [f"caption {k}" for k in ks]
        keys += ks
        sizes.append(len(ks))
    assert sorted(keys) == _good_keys() and len(keys) == len(set(keys))
    assert sum(sizes) == len(_good_keys()) and max(sizes) == 3


def _rows(batches) -> dict:
    """key → that image's fields (copied), from ``(Splats, texts, keys)`` batches."""
    out = {}
    for splats, texts, keys in batches:
        for i, key in enumerate(keys):
            one = splats[i]
            fields = [one.means, one.chol, one.colors, one.counts, one.image_sizes]
            if one.opacities is not None:
                fields.append(one.opacities)
            out[key] = ([f.clone() for f in fields], texts[i])
    return out


def test_splat_loader_hands_over_the_same_batches_through_its_shared_buffers(tmp_path):
    """More batches per worker than buffer slots: every batch kept to the end must still hold
    its own values (a slot rewritten before it was copied out would show), with and without
    opacities, and equal what the pipeline yields in-process."""
    urls = []
    for s in range(2):
        with ShardWriter(tmp_path / f"{s:05d}.tar") as w:
            for i in range(14):
                one = _splats(3 + (i * 5) % 11, seed=100 * s + i)
                if s == 1:  # this shard's images keep an opacity each
                    one = Splats(one.means, one.chol, one.colors, one.counts, one.image_sizes,
                                 torch.rand(1, one.capacity, 1))  # fmt: skip
                payload = encode(one, "lossless")
                w.write(_key(s, i), {"gsv": payload, "txt": f"caption {_key(s, i)}"})
            urls.append(str(w.commit()))
    pipeline = splat_pipeline(urls, n=16, batch_size=2, with_keys=True)
    expected = _rows(iter(pipeline))
    assert len(expected) == 28
    loader = SplatLoader(pipeline, num_workers=2, prefetch_factor=1)
    assert loader.ring["fields"].shape[:2] == (2, 3)  # 3 slots per worker, 7 batches each
    batches = list(loader)
    assert all(isinstance(b[0], Splats) and b[0].means.is_contiguous() for b in batches)
    got = _rows(batches)
    assert got.keys() == expected.keys()
    for key, (fields, text) in expected.items():
        assert got[key][1] == text
        assert len(got[key][0]) == len(fields)  # opacities exactly where they were
        for a, b in zip(got[key][0], fields, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(list(SplatLoader(pipeline, num_workers=0))) == len(batches)  # no workers: as is


def test_splat_loader_refuses_batches_its_buffers_cannot_hold(shards):
    class Bigger(torch.utils.data.IterableDataset):  # says n=4 but yields 8 slots
        n, batch_size = 4, 3

        def __iter__(self):
            yield from splat_pipeline(shards, n=8, batch_size=3, handler=wds.ignore_and_continue)

    with pytest.raises(ValueError, match="does not fit the loader's buffers"):
        list(SplatLoader(Bigger(), num_workers=1))


def test_shuffled_and_resampled_pipelines(shards):
    shuffled = splat_pipeline(
        shards, n=8, batch_size=2, shuffle=8, handler=wds.ignore_and_continue, with_keys=True
    )
    keys = [k for _, _, ks in shuffled for k in ks]
    assert sorted(keys) == _good_keys()
    resampled = splat_pipeline(
        shards, n=8, batch_size=2, resampled=True, handler=wds.ignore_and_continue
    ).with_epoch(5)
    batches = list(resampled)
    assert len(batches) == 5 and all(s.capacity == 8 for s, _ in batches)


def test_rgb_pipeline_yields_open_clip_style_224_batches(tmp_path):
    from gsvision.data.synthetic import make_image_text_shards

    urls = [str(p) for p in make_image_text_shards(tmp_path, shards=1, per_shard=5)]
    batches = list(rgb_pipeline(urls, batch_size=3, with_keys=True))
    assert [len(ks) for _, _, ks in batches] == [3, 2]
    images, texts, keys = batches[0]
    assert images.shape == (3, 3, 224, 224) and images.dtype == torch.float32
    assert all(isinstance(t, str) and t for t in texts)
    assert keys == ["000000000", "000000001", "000000002"]
    # CLIP normalisation: values leave [0, 1]
    assert images.min() < 0 and math.isfinite(float(images.abs().max()))
