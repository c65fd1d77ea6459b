"""decode_batch(payloads): one padded batch, bit for bit what decode() gives for each payload, every
payload checked as decode() checks it; bad payloads raise naming their index, or are skipped."""

from __future__ import annotations

import codec_cases as C
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gsvision.codec as codec
from gsvision.codec import CodecError, QuantSpec, decode, decode_batch, encode
from gsvision.splats import Splats

LEVELS = [
    "lossless",
    "f16",
    "high",
    "medium",
    "low",
    QuantSpec(16, 12, 12, 12),
    QuantSpec(3, 2, 2, 2),
]
LEVEL_IDS = ["lossless", "f16", "high", "medium", "low", "spec-16-12-12-12", "spec-3-2-2-2"]
FILLS = {"means": 0.5, "chol": 1.0, "colors": 0.0, "opacities": 0.0}


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def payloads_for(level, seed: int = 0, opacity: bool = True) -> list[bytes]:
    """Payloads of one and several images, of different sizes and counts (some empty)."""
    cases = [
        ([(37, 53)], 40, None),
        ([(8, 61), (64, 64)], 13, [0, 13]),
        ([(20, 9)], 7, None),
        ([(30, 40), (16, 16), (5, 7)], 25, [25, 3, 1]),
    ]
    return [
        encode(C.random_splats(sizes, n, seed + k, counts, opacity=opacity), level)
        for k, (sizes, n, counts) in enumerate(cases)
    ]


def assert_rows_match(batch: Splats, payloads: list[bytes]) -> None:
    """Each payload's decode() is the next rows of ``batch``: valid slots bit for bit, padded
    slots filled as Splats.compact fills them; opacities folded into the colours where the batch
    has none."""
    row = 0
    for payload in payloads:
        want = decode(payload)
        if batch.opacities is None:
            want = want.fold_opacity()
        rows = slice(row, row + want.batch_size)
        assert torch.equal(batch.counts[rows], want.counts)
        assert torch.equal(batch.image_sizes[rows], want.image_sizes)
        mask = want.mask
        for name, t in batch.fields().items():
            got = t[rows]
            assert got.dtype == torch.float32 and got.is_contiguous()
            assert torch.equal(bits(got[:, : want.capacity][mask]), bits(want.fields()[name][mask]))
            pad = torch.arange(batch.capacity)[None, :] >= want.counts[:, None]
            assert (got[pad] == FILLS[name]).all(), name
        row += want.batch_size
    assert row == batch.batch_size


@pytest.mark.parametrize("level", LEVELS, ids=LEVEL_IDS)
def test_equals_decode_of_each_payload(level):
    payloads = payloads_for(level)
    out = decode_batch(payloads)
    assert out.batch_size == 7 and out.capacity == 40
    assert (out.opacities is not None) == (level in ("lossless", "f16"))  # float modes keep them
    assert_rows_match(out, payloads)


def test_mixed_levels_sizes_and_opacities_in_one_batch():
    """Modes and bit depths decode as separate parts, then interleave in payload order; one
    payload without opacities makes every opacity fold into its colours (as Splats.cat)."""
    payloads = [p for level in LEVELS for p in payloads_for(level, seed=3)[:2]]
    payloads += [encode(C.random_splats([(12, 12)], 5, 99), "lossless")]  # no opacities
    out = decode_batch(payloads)
    assert out.opacities is None and out.batch_size == 3 * len(LEVELS) + 1
    assert_rows_match(out, payloads)
    only_lossless = payloads_for("lossless", seed=4)
    assert decode_batch(only_lossless).opacities is not None


def test_runs_of_images_and_equal_counts(monkeypatch):
    """Many images decode in runs of ~_RUN_GAUSSIANS Gaussians; equal counts take the reshape
    paths (and a padded batch that needs no padding is returned without a copy)."""
    equal = [encode(C.random_splats([(24, 24)], 16, k), "medium") for k in range(9)]
    equal += [encode(C.random_splats([(24, 24)], 16, k, opacity=True), "f16") for k in range(3)]
    for run in (1 << 14, 20, 1):
        monkeypatch.setattr(codec, "_RUN_GAUSSIANS", run)
        out = decode_batch(equal)
        assert out.capacity == 16 and out.counts.tolist() == [16] * 12
        assert_rows_match(out, equal)
        mixed = payloads_for("medium") + payloads_for("f16")
        assert_rows_match(decode_batch(mixed), mixed)


def test_a_bad_payload_raises_naming_it_or_is_skipped():
    good = payloads_for("medium")
    corrupt = bytearray(good[1])
    corrupt[-10] ^= 0x40
    payloads = [good[0], bytes(corrupt), good[2], b"not a payload", good[3]]
    with pytest.raises(CodecError, match=r"^payload 1: checksum mismatch"):
        decode_batch(payloads)
    out, skipped = decode_batch(payloads, errors="skip")
    assert sorted(skipped) == [1, 3]
    for k, exc in skipped.items():
        with pytest.raises(CodecError) as info:
            decode(payloads[k])
        assert str(exc) == str(info.value)  # decode()'s own message
    assert_rows_match(out, [good[0], good[2], good[3]])


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (C.one_image(n=1, raw_len=32, body=b"not zstd at all"), "image 0: zstd data is corrupt"),
        (C.one_image(n=1, raw_len=31), "image 0: declares 31 decoded bytes"),
        (
            C.one_image(C.varints([0, 1 << 24]) + bytes(18), n=2, mode=2, bits=(12, 8, 8, 9),
                        ranges=(0.0, 0.0, 1.0, 1.0, -1, -2, 1, 0.5, 0, -0.3, -0.3, 1.7, 0.3, 0.3)),
            "image 0: a position code exceeds 24 bits",
        ),
        (
            C.one_image(bytes([0x80] * 20), n=2, mode=2, bits=(12, 8, 8, 9),
                        ranges=(0.0, 0.0, 1.0, 1.0, -1, -2, 1, 0.5, 0, -0.3, -0.3, 1.7, 0.3, 0.3)),
            "image 0: position stream holds 0 complete varints, expected 2",
        ),
        (
            C.one_image(C.float_raw(np.array([[0.5, 0.5, 0.0, 0, 0.1, 0.2, 0.3, 0.4]]), np.float32),
                        n=1),
            "image 0: decoded splats are invalid: Gaussian 0 is not positive-definite",
        ),
    ],
    ids=["zstd", "raw-len", "morton", "varints", "values"],
)  # fmt: skip
def test_each_kind_of_bad_image_is_found_among_good_ones(bad, phrase):
    """A bad stream in one image, between good images of the same mode, is found and named as
    decode() names it, and the images around it decode as if it were not there."""
    good = payloads_for("medium", seed=7) + payloads_for("lossless", seed=8, opacity=False)
    payloads = good[:3] + [bad] + good[3:]
    out, skipped = decode_batch(payloads, errors="skip")
    assert list(skipped) == [3] and phrase in str(skipped[3])
    assert_rows_match(out, good)
    with pytest.raises(CodecError, match=r"^payload 3: " + phrase.split(":")[0]):
        decode_batch(payloads)


def test_the_first_bad_image_of_a_payload_is_named():
    """Two images of a payload fail (the second at its zstd frame, before anything is decoded;
    the first at its varints, later): the message is the first image's, as decode() gives."""
    s = C.random_splats([(20, 20), (20, 20)], 4, 0)
    payload = encode(s, "medium", coder="zstd")
    images = C.split(payload)[2]
    raw = C.raw_bodies(payload)
    images[0] = (images[0][0], C.compress(b"\x80" + raw[0][1:]))
    images[1] = (images[1][0], b"garbage")
    bad = C.rebuild(payload, images)
    with pytest.raises(CodecError) as info:
        decode(bad)
    assert str(info.value).startswith("image 0: ")
    _, skipped = decode_batch([payload, bad], errors="skip")
    assert str(skipped[1]) == str(info.value)


def test_capacity():
    payloads = payloads_for("low")  # largest count 40
    out = decode_batch(payloads, capacity=48)
    assert out.capacity == 48
    assert_rows_match(out, payloads)
    assert decode_batch(payloads, capacity=40).capacity == 40
    with pytest.raises(
        CodecError, match=r"^payload 0: image 0: 40 Gaussians exceed the capacity 30"
    ):
        decode_batch(payloads, capacity=30)
    out, skipped = decode_batch(payloads, capacity=13, errors="skip")
    assert sorted(skipped) == [0, 3]  # images of 40 and 25 Gaussians
    assert "image 0: 40 Gaussians exceed the capacity 13" in str(skipped[0])
    assert out.capacity == 13
    assert_rows_match(out, [payloads[1], payloads[2]])
    with pytest.raises(ValueError, match="capacity"):
        decode_batch(payloads, capacity=-1)


def test_images_per_payload_and_the_slot_budget(monkeypatch):
    payloads = payloads_for("medium")
    out, skipped = decode_batch(payloads, errors="skip", images_per_payload=1)
    assert sorted(skipped) == [1, 3] and "holds 2 images, expected 1" in str(skipped[1])
    assert_rows_match(out, [payloads[0], payloads[2]])
    monkeypatch.setattr(codec, "_MAX_PADDED_SLOTS", 7 * 40 - 1)
    with pytest.raises(CodecError, match="280 Gaussian slots exceeds 279"):
        decode_batch(payloads, errors="skip")  # a limit of the batch, not of a payload
    assert decode_batch(payloads, capacity=39, errors="skip")[0].batch_size == 6


def test_empty_batches():
    out = decode_batch([])
    assert out.batch_size == 0 and out.capacity == 0 and out.opacities is None
    out, skipped = decode_batch([], capacity=16, errors="skip")
    assert out.means.shape == (0, 16, 2) and skipped == {}
    out, skipped = decode_batch([b"", b"x"], capacity=4, errors="skip")
    assert out.means.shape == (0, 4, 2) and sorted(skipped) == [0, 1]
    with pytest.raises(ValueError, match="errors"):
        decode_batch([], errors="ignore")


@given(st.lists(C.hostile_payloads(), min_size=1, max_size=4))
@C.fuzz_settings(60, seed_random=False)
def test_fuzz_agrees_with_decode(payloads):
    """On any mix of payloads, good and hostile: the same payloads fail, with decode()'s message,
    and the rest decode to the same values."""
    good, errors = [], {}
    for k, p in enumerate(payloads):
        try:
            decode(p)
            good.append(p)
        except CodecError as exc:
            errors[k] = str(exc)
    try:
        out, skipped = decode_batch(payloads, errors="skip")
    except CodecError as exc:
        assert "Gaussian slots exceeds" in str(exc)
        return
    assert {k: str(e) for k, e in skipped.items()} == errors
    assert_rows_match(out, good)
