"""The splat loader's tar reader: the same samples as webdataset's, stricter on damaged shards."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
import torch
import webdataset as wds

from gsvision.codec import encode
from gsvision.data.loader import splat_pipeline
from gsvision.data.shards import ShardReadError, ShardWriter
from gsvision.data.tarstream import TarFormatError, iter_tar_members, iter_url_samples, tar_samples
from gsvision.splats import Splats


def _splats(n: int, seed: int) -> Splats:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g) * 0.8 + 0.1
    chol = torch.stack([torch.full((n,), 0.05), torch.zeros(n), torch.full((n,), 0.04)], -1)
    return Splats.create(means, chol, torch.rand(n, 3, generator=g), (24, 32))


def _wds(urls: list[str]) -> list[dict]:
    return list(wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))


def _ours(urls: list[str], handler=wds.reraise_exception) -> list[dict]:
    return list(tar_samples(({"url": u} for u in urls), handler=handler))


def _tar(path, members, fmt=tarfile.USTAR_FORMAT, **kw) -> str:
    """A tar of ``(name, bytes or None for a directory, type)`` members written by tarfile."""
    with tarfile.open(path, "w", format=fmt, **kw) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, tuple):  # ("symlink", target)
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def _shard(path, keys, ext="gsv") -> str:
    with ShardWriter(path) as w:
        for i, key in enumerate(keys):
            payload = encode(_splats(3 + i, seed=i), "lossless") if ext == "gsv" else bytes(i)
            w.write(key, {ext: payload, "txt": f"caption {key}", "json": "{}"})
        return str(w.commit())


@pytest.fixture
def shards(tmp_path):
    return [
        _shard(tmp_path / f"{s:05d}.tar", [f"{s:05d}{i:04d}" for i in range(6)]) for s in range(3)
    ]


def test_same_samples_as_webdataset_on_our_shards(shards):
    ours = _ours(shards)
    assert ours == _wds(shards)
    assert [s["__key__"] for s in ours[:2]] == ["000000000", "000000001"]
    assert set(ours[0]) == {"__key__", "__url__", "gsv", "txt", "json"}
    assert ours[0]["__url__"] == shards[0] and ours[0]["txt"] == b"caption 000000000"


@pytest.mark.parametrize(
    "fmt",
    [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
    ids=["ustar", "gnu", "pax"],
)
def test_same_samples_as_webdataset_on_other_layouts(tmp_path, fmt):
    """Long names (ustar prefix, GNU long-name members, pax path records), non-ASCII names,
    directories, links, names without an extension, metadata names, upper-case extensions, dots in
    directory names and several dots in a basename."""
    long_dir = "d" * 90 + "/" + "e" * 60  # > 100 characters: needs a prefix / long name
    members = [
        ("top", None),
        ("README", b"not a sample member"),
        ("__meta__", b"skipped"),
        ("a.b/c.d.JPG", b"jpeg"),
        ("a.b/c.d.TXT", b"caption"),
        ("a.b/link.txt", ("symlink", "c.d.TXT")),
        (f"{long_dir}/0001.jpg", b"x" * 1000),
        (f"{long_dir}/0001.txt", b"long"),
        ("café/clé.txt", "é".encode()),
        ("k.seg.png", bytes(513)),
        ("k.txt", b""),
        ("k/__skip__/x.txt", b"meta dir"),
    ]
    if fmt == tarfile.USTAR_FORMAT:
        members = [m for m in members if not m[0].startswith("café")]  # ustar: ASCII only
    url = _tar(tmp_path / "layout.tar", members, fmt)
    ours = _ours([url])
    assert ours == _wds([url])
    assert [s["__key__"] for s in ours] == ["a.b/c", f"{long_dir}/0001"] + (
        ["café/clé"] if fmt != tarfile.USTAR_FORMAT else []
    ) + ["k", "k/__skip__/x"]  # (webdataset skips __x__ names at the top level only)
    assert ours[0]["d.jpg"] == b"jpeg"  # the key: up to the first dot of the basename
    assert ours[-2]["seg.png"] == bytes(513) and ours[-2]["txt"] == b""


def test_webdataset_tarwriter_and_compressed_shards(tmp_path):
    """img2dataset writes shards with webdataset's TarWriter; gzip'd tars are read too."""
    path = tmp_path / "w.tar"
    with wds.TarWriter(str(path)) as sink:
        for i in range(5):
            sink.write({"__key__": f"s{i:03d}", "jpg": bytes(100 * i + 1), "txt": f"t{i}"})
    gz = tmp_path / "w.tar.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    want = _wds([str(path)])
    assert len(want) == 5 and _ours([str(path)]) == want
    got = _ours([str(gz)])
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in got] == [
        {k: v for k, v in s.items() if k != "__url__"} for s in want
    ]


def test_reader_groups_and_reads_every_member_of_a_long_shard(tmp_path):
    """More than one 1 MiB read, and a member larger than a read."""
    keys = [f"{i:06d}" for i in range(300)]
    url = _tar(
        tmp_path / "big.tar",
        [
            (f"{k}.{e}", bytes([i % 251]) * (5000 + i))
            for i, k in enumerate(keys)
            for e in ("a", "b")
        ]
        + [("huge.bin", b"\x07" * (3 << 20))],
    )
    ours = _ours([url])
    assert ours == _wds([url]) and len(ours) == 301
    assert len(ours[-1]["bin"]) == 3 << 20


def _warned(urls):
    errors = []

    def handler(exn):
        errors.append(exn)
        return True

    return _ours(urls, handler), errors


def test_truncated_shard_yields_what_came_before_and_goes_on(tmp_path, shards):
    data = open(shards[1], "rb").read()
    cut_member = tmp_path / "cut_member.tar"
    cut_member.write_bytes(data[: 512 * 9 + 100])  # inside the 4th member (2nd sample's .gsv)
    cut_header = tmp_path / "cut_header.tar"
    cut_header.write_bytes(data[: 512 * 6 + 200])  # inside the 2nd sample's first header
    got, errors = _warned([shards[0], str(cut_member), shards[2]])
    keys = [s["__key__"] for s in got]
    assert keys[:6] == [f"00000{i:04d}" for i in range(6)]
    assert keys[6:] == ["000010000"] + [f"00002{i:04d}" for i in range(6)]  # cut sample dropped
    assert len(errors) == 1 and isinstance(errors[0], ShardReadError)
    assert "cut_member.tar: truncated or corrupt tar in sample '000010001'" in str(errors[0])
    assert errors[0].key == "000010001"
    got, errors = _warned([str(cut_header)])
    # the sample before a cut header is dropped too: its next member might have been its own
    assert got == [] and "in sample '000010000'" in str(errors[0])
    assert "inside a header" in str(errors[0])


def test_shard_without_its_end_blocks_is_an_error(tmp_path, shards):
    """tarfile (so webdataset) stops quietly where the data ends at a member boundary."""
    data = open(shards[0], "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 * 12])  # 2 whole samples (a header + one data block per member)
    assert [s["__key__"] for s in _wds([str(cut)])] == ["000000000", "000000001"]
    got, errors = _warned([str(cut)])
    assert [s["__key__"] for s in got] == ["000000000"]  # the last may lack members
    assert "without the end-of-archive block" in str(errors[0])


def test_garbage_headers_are_errors(tmp_path, shards):
    data = bytearray(open(shards[0], "rb").read())
    bad = tmp_path / "bad.tar"
    data[512 * 8 + 130] ^= 0x01  # the 2nd sample's .txt header: checksum no longer matches
    bad.write_bytes(bytes(data))
    quiet = _wds([str(bad)])  # tarfile: silently the end of the archive, a sample short of .txt
    assert [sorted(s) for s in quiet][1] == ["__key__", "__url__", "gsv"]
    got, errors = _warned([str(bad)])
    assert [s["__key__"] for s in got] == ["000000000"]
    assert "in sample '000000001' (bad header checksum at byte 4096)" in str(errors[0])
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"this is not a tar file at all" * 100)
    got, errors = _warned([str(junk), shards[1]])
    assert len(got) == 6 and "(not a tar?)" in str(errors[0])
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    assert "empty file" in str(_warned([str(empty)])[1][0])
    with pytest.raises(ShardReadError, match="no such shard"):
        _ours([str(tmp_path / "missing.tar")])


def test_header_size_fields_are_checked_and_never_size_an_allocation(tmp_path):
    def header(name: bytes, size_field: bytes, kind=b"0") -> bytes:
        h = bytearray(512)
        h[: len(name)] = name
        h[100:108], h[108:116], h[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
        h[124:136] = size_field
        h[136:148] = b"00000000000\0"
        h[156:157] = kind
        h[257:265] = b"ustar\x0000"
        h[148:156] = b" " * 8
        h[148:156] = b"%06o\0 " % sum(h)
        return bytes(h)

    huge = header(b"a.bin", b"\x80" + (1 << 60).to_bytes(11, "big"))  # base-256: 1 EiB
    with pytest.raises(TarFormatError, match="truncated"):
        list(iter_tar_members(io.BytesIO(huge + bytes(2048))))
    for field, phrase in [(b"-0000000001\0", "negative size"), (b"12345678x01\0", "bad size")]:
        with pytest.raises(TarFormatError, match=phrase):
            list(iter_tar_members(io.BytesIO(header(b"a.bin", field) + bytes(2048))))
    sparse = header(b"a.bin", b"00000000000\0", kind=b"S")
    with pytest.raises(TarFormatError, match="sparse"):
        list(iter_tar_members(io.BytesIO(sparse + bytes(2048))))
    ok = header(b"a.bin", b"00000000003\0") + b"abc" + bytes(509) + bytes(1024)
    assert list(iter_tar_members(io.BytesIO(ok))) == [("a.bin", b"abc")]


def test_duplicate_member_goes_to_the_handler(tmp_path):
    url = _tar(tmp_path / "dup.tar", [("k.txt", b"1"), ("k.txt", b"2"), ("m.txt", b"3")])
    got, errors = _warned([url])
    assert [(s["__key__"], s["txt"]) for s in got] == [("k", b"1"), ("m", b"3")]
    assert isinstance(errors[0], ValueError) and "duplicate file name" in str(errors[0])
    with pytest.raises(ValueError, match="duplicate"):
        list(iter_url_samples(url))


def test_handler_that_returns_false_stops_the_stage(tmp_path, shards):
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"x" * 4096)
    assert [s["__key__"] for s in _ours([shards[0], str(junk), shards[1]], lambda e: False)] == [
        f"00000{i:04d}" for i in range(6)
    ]


def test_splat_pipeline_reads_past_a_damaged_shard(tmp_path, shards):
    data = open(shards[1], "rb").read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 * 9 + 100])
    urls = [shards[0], str(cut), shards[2]]
    with pytest.warns(UserWarning, match="ShardReadError"):
        batches = list(splat_pipeline(urls, n=8, batch_size=4, with_keys=True))
    keys = [k for _, _, ks in batches for k in ks]
    assert keys == [f"00000{i:04d}" for i in range(6)] + ["000010000"] + [
        f"00002{i:04d}" for i in range(6)
    ]
    with pytest.raises(ShardReadError, match="cut.tar"):
        list(splat_pipeline(urls, n=8, batch_size=4, handler=wds.reraise_exception))
