"""The conversion job, end to end on tiny shards: bad input, resume, SIGKILL, torchrun."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gsvision.cli import main
from gsvision.codec import decode
from gsvision.data.convert import ConvertConfig, JobConflictError, convert
from gsvision.data.shards import ShardWriter, iter_samples
from gsvision.data.synthetic import FAULTS, make_image_text_shards

TINY = ConvertConfig(n_gaussians=16, iters=4, size=32, batch=3, progress=False)
TINY_ARGS = ["-n", "16", "--iters", "4", "--size", "32", "--batch", "3", "-q"]
VENV_BIN = Path(sys.executable).parent


def input_keys(paths) -> set[str]:
    keys = set()
    for p in paths:
        try:
            for sample in iter_samples(str(p)):
                keys.add(sample.key)
        except OSError:  # a damaged shard: the samples before the damage count
            pass
    return keys


def output_keys(out: Path) -> list[str]:
    """Every key in the output shards (a list, so duplicates would show)."""
    keys = []
    for tar in sorted(out.glob("*.tar")):
        for sample in iter_samples(str(tar)):
            assert sorted(sample.files) == ["gsv", "json", "txt"], sample.key
            keys.append(sample.key)
    return keys


def skipped_keys(out: Path) -> list[str]:
    return [
        k["key"] for p in out.glob("*_stats.json") for k in json.loads(p.read_text())["skipped"]
    ]


def test_converts_good_samples_and_reports_every_bad_one(tmp_path):
    paths = make_image_text_shards(tmp_path / "in", shards=3, per_shard=5, faults=FAULTS)
    out = tmp_path / "out"
    summary = convert(str(tmp_path / "in" / "{00000..00003}.tar"), out, TINY)

    readable = input_keys(paths)  # the truncated shard loses its tail
    assert summary["images_converted"] == len(readable) - 3 < 15
    reasons = {s["key"]: s["reason"] for s in summary["skipped"]}
    assert "corrupt or truncated image data" in reasons["000000001"]
    assert reasons["000000002"] == "missing caption (.txt)"
    assert reasons["000000003"].startswith("no image member")
    (cut,) = [k for k, r in reasons.items() if r == "shard truncated or corrupt"]
    assert cut.startswith("00002") and cut not in readable
    errors = {e["shard"]: e["error"] for e in summary["shard_errors"]}
    assert set(errors) == {"00002", "00003"} and "empty file" in errors["00003"]
    assert summary["bytes_out"] < summary["bytes_in"] and summary["mean_psnr"] > 10
    saved = json.loads((out / "_summary.json").read_text())
    assert saved["images_converted"] == summary["images_converted"]

    # every readable input sample is converted or skipped, exactly once
    written = output_keys(out)
    assert len(written) == len(set(written)) == summary["images_converted"]
    assert set(written) | set(skipped_keys(out)) == readable | {cut}
    assert not set(written) & set(skipped_keys(out))

    tar = out / "00001.tar"
    sample = next(iter(iter_samples(str(tar))))
    splats = decode(sample.files["gsv"])
    meta = json.loads(sample.files["json"])
    assert int(splats.counts[0]) == 16 and splats.image_sizes.tolist() == [[32, 32]]
    assert meta["key"] == sample.key and meta["gsvision"]["n_gaussians"] == 16
    assert meta["gsvision"]["bytes"] == len(sample.files["gsv"]) and meta["gsvision"]["psnr"] > 10
    assert sample.files["txt"].decode() == meta["caption"]


def test_encoding_beside_the_fitting_writes_the_same_shards(tmp_path):
    """``overlap`` (off by default) moves encoding and writing to a second thread; the
    shards, stats and bad-input reports must not change, nor a byte target's budgets."""
    make_image_text_shards(tmp_path / "in", shards=3, per_shard=5, faults=FAULTS)
    pattern = str(tmp_path / "in" / "{00000..00003}.tar")
    for cfg in (TINY, ConvertConfig(**{**TINY.__dict__, "bytes": 200})):
        runs = {}
        for overlap in (False, True):
            out = tmp_path / f"out-{cfg.bytes}-{overlap}"
            summary = convert(pattern, out, ConvertConfig(**{**cfg.__dict__, "overlap": overlap}))
            shards = {
                tar.name: [(s.key, s.files["gsv"], s.files["txt"]) for s in iter_samples(str(tar))]
                for tar in sorted(out.glob("*.tar"))
            }
            stats = {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))}
            runs[overlap] = (shards, stats, summary["images_converted"], summary["skipped"])
        assert runs[True] == runs[False]
        assert runs[True][2] > 0 and len(runs[True][3]) >= 3
        if cfg.bytes:
            assert all(len(gsv) <= 200 for rows in runs[True][0].values() for _, gsv, _ in rows)


def test_shards_use_the_fast_coder_unless_asked(tmp_path):
    make_image_text_shards(tmp_path / "in", shards=1, per_shard=2)
    pattern = str(tmp_path / "in" / "00000.tar")
    for coder, version in (("zstd", 1), ("range", 4)):
        out = tmp_path / coder
        convert(pattern, out, ConvertConfig(**{**TINY.__dict__, "coder": coder}))
        payloads = [s.files["gsv"] for s in iter_samples(str(out / "00000.tar"))]
        assert len(payloads) == 2 and all(p[4] == version for p in payloads)
        counts = [int(decode(p).counts[0]) for p in payloads]
        # the range coder's closed loop drops the Gaussians not worth their bytes
        assert counts == [16, 16] if coder == "zstd" else all(1 <= c <= 16 for c in counts)
    with pytest.raises(ValueError, match="coder must be"):
        convert(pattern, tmp_path / "bad", ConvertConfig(**{**TINY.__dict__, "coder": "lzma"}))
    # the default coder leaves a job's identity as it was before the setting existed
    assert "coder" not in TINY.identity()
    assert ConvertConfig(**{**TINY.__dict__, "coder": "range"}).identity()["coder"] == "range"
    with pytest.raises(JobConflictError):  # a folder of zstd shards is another job's
        convert(pattern, tmp_path / "zstd", ConvertConfig(**{**TINY.__dict__, "coder": "range"}))
    # likewise the default effort; another effort is another job
    assert "effort" not in TINY.identity()
    assert ConvertConfig(**{**TINY.__dict__, "effort": 0}).identity()["effort"] == 0
    with pytest.raises(JobConflictError):
        convert(
            pattern,
            tmp_path / "range",
            ConvertConfig(**{**TINY.__dict__, "coder": "range", "effort": 0}),
        )
    with pytest.raises(ValueError, match="effort must be an integer 0..3"):
        convert(pattern, tmp_path / "bad", ConvertConfig(**{**TINY.__dict__, "effort": 9}))


def test_auto_level_with_the_range_coder_chooses_the_bit_depths_for_the_budget(tmp_path):
    make_image_text_shards(tmp_path / "in", shards=1, per_shard=2)
    cfg = ConvertConfig(**{**TINY.__dict__, "coder": "range", "level": "auto", "bytes": 100})
    convert(str(tmp_path / "in" / "00000.tar"), tmp_path / "o", cfg)
    samples = list(iter_samples(str(tmp_path / "o" / "00000.tar")))
    assert len(samples) == 2
    for s in samples:  # 100 bytes for 32² pixels: 0.78 bits per pixel
        meta = json.loads(s.files["json"])
        assert meta["gsvision"]["level"] == "10-5-6-7" and len(s.files["gsv"]) <= 100


def test_rerun_skips_complete_shards_and_redoes_partial_ones(tmp_path):
    make_image_text_shards(tmp_path / "in", shards=3, per_shard=3)
    pattern = str(tmp_path / "in" / "{00000..00002}.tar")
    out = tmp_path / "out"
    convert(pattern, out, TINY)
    done = (out / "00000.tar").stat().st_mtime_ns
    (out / "00001_stats.json").unlink()  # as if killed between the tar and its stats
    (out / ".00002.tar.rank0.tmp").write_bytes(b"partial")  # and a leftover temporary file
    summary = convert(pattern, out, TINY)
    assert (out / "00000.tar").stat().st_mtime_ns == done
    assert summary["images_converted"] == 9 and not summary["shards_incomplete"]
    assert not list(out.glob(".*.tmp"))
    assert sorted(output_keys(out)) == sorted(input_keys(sorted((tmp_path / "in").glob("*.tar"))))


def test_output_folder_of_another_job_is_refused_unless_resume(tmp_path, capsys):
    make_image_text_shards(tmp_path / "in", shards=1, per_shard=2)
    pattern = str(tmp_path / "in" / "00000.tar")
    out = tmp_path / "out"
    convert(pattern, out, TINY)
    other = ConvertConfig(**{**TINY.__dict__, "n_gaussians": 8})
    with pytest.raises(JobConflictError, match="holds another conversion job"):
        convert(pattern, out, other)
    other.resume = True
    assert convert(pattern, out, other)["images_converted"] == 2

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["convert", pattern, str(foreign), *TINY_ARGS]) == 2
    assert "is not empty and holds no gsvision conversion job" in capsys.readouterr().err
    assert main(["convert", pattern, str(foreign), *TINY_ARGS, "--resume"]) == 0


def test_cli_exit_codes_and_missing_output_dir(tmp_path, capsys):
    make_image_text_shards(tmp_path / "in", shards=1, per_shard=4, faults=["missing_caption"])
    out = tmp_path / "new" / "deeper"
    assert main(["convert", str(tmp_path / "in" / "00000.tar"), str(out), *TINY_ARGS]) == 1
    text = capsys.readouterr()
    assert "converted 3 images, skipped 1" in text.out
    assert "skipping 000000002: missing caption" in text.err
    assert main(["convert", str(tmp_path / "nope.tar"), str(tmp_path / "o2"), *TINY_ARGS]) == 1
    assert "no such shard" in capsys.readouterr().out
    assert main(["convert", "x.tar", str(tmp_path / "o3"), "--level", "bogus"]) == 2


def test_pipe_urls_are_read(tmp_path):
    make_image_text_shards(tmp_path / "in", shards=1, per_shard=2)
    summary = convert(f"pipe:cat {tmp_path / 'in' / '00000.tar'}", tmp_path / "out", TINY)
    assert summary["images_converted"] == 2 and (tmp_path / "out" / "00000.tar").exists()


def _convert_command(pattern: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gsvision.cli", "convert", pattern, str(out), *TINY_ARGS, *extra]


def test_sigkill_mid_run_then_rerun_loses_nothing(tmp_path):
    paths = make_image_text_shards(tmp_path / "in", shards=8, per_shard=4)
    pattern = str(tmp_path / "in" / "{00000..00007}.tar")
    out = tmp_path / "out"
    slow = ("--iters", "40")  # each shard takes a while, so the kill lands inside the job
    proc = subprocess.Popen(_convert_command(pattern, out, *slow), stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_stats.json")) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # inside the second shard
    proc.wait()
    finished = len(list(out.glob("*_stats.json")))
    assert 1 <= finished < 8, "the kill should land mid-job"
    for tar in out.glob("*.tar"):  # a final name only ever holds a complete tar
        list(iter_samples(str(tar)))
    rerun = subprocess.run(_convert_command(pattern, out, *slow), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    written = output_keys(out)
    assert sorted(written) == sorted(input_keys(paths))  # each exactly once
    assert not list(out.glob(".*.tmp"))


def test_torchrun_two_ranks_convert_every_shard_exactly_once(tmp_path):
    paths = make_image_text_shards(tmp_path / "in", shards=5, per_shard=2)
    out = tmp_path / "out"
    torchrun = VENV_BIN / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "gsvision.cli"]
    cmd += ["convert", str(tmp_path / "in" / "{00000..00004}.tar"), str(out), *TINY_ARGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["images_converted"] == 10
    timings = sorted(p.name for p in out.glob("_timings_rank*.json"))
    assert timings == ["_timings_rank0.json", "_timings_rank1.json"]
    assert sorted(output_keys(out)) == sorted(input_keys(paths))
    shards = {json.loads(p.read_text())["shard"] for p in out.glob("*_stats.json")}
    assert shards == {f"{i:05d}" for i in range(5)}


def test_class_labels_are_carried_and_images_kept_on_request(tmp_path):
    from gsvision.data.captioned_shapes import make_shapes_shards

    made = make_shapes_shards(tmp_path / "in", n_train=6, n_test=1, size=24, per_shard=3)
    src = {s.key: s for p in made["train"] for s in iter_samples(str(p))}
    pattern = str(tmp_path / "in" / "train" / "{00000..00001}.tar")
    convert(pattern, tmp_path / "plain", TINY)
    convert(pattern, tmp_path / "kept", ConvertConfig(**{**TINY.__dict__, "keep_image": True}))
    plain = {
        s.key: s for p in sorted((tmp_path / "plain").glob("*.tar")) for s in iter_samples(str(p))
    }
    kept = {
        s.key: s for p in sorted((tmp_path / "kept").glob("*.tar")) for s in iter_samples(str(p))
    }
    assert set(plain) == set(kept) == set(src)
    for key, s in src.items():
        assert plain[key].files["cls"] == kept[key].files["cls"] == s.files["cls"]
        assert json.loads(plain[key].files["json"])["cls"] == int(s.files["cls"])
        assert "jpg" not in plain[key].files
        assert kept[key].files["jpg"] == s.files["jpg"]  # byte-identical
    with pytest.raises(JobConflictError):  # keep_image is part of the job's identity
        convert(pattern, tmp_path / "plain", ConvertConfig(**{**TINY.__dict__, "keep_image": True}))


def test_keep_image_keeps_any_extension_and_cls_of_any_form(tmp_path):
    rng = np.random.default_rng(0)
    members = {}
    for key, fmt, ext, cls in (
        ("a", "PNG", "png", b"5"),
        ("b", "WEBP", "webp", b" 7\n"),  # whitespace around the number is allowed
        ("c", "JPEG", "jpeg", b"n01440764"),  # not a number: copied, not put in key.json
        ("d", "JPEG", "jpg", None),
    ):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, format=fmt)
        files = {ext: buf.getvalue(), "txt": f"sample {key}", "json": json.dumps({"key": key})}
        members[key] = {**files, **({"cls": cls} if cls is not None else {})}
    with ShardWriter(tmp_path / "in" / "00000.tar") as writer:
        for key, files in members.items():
            writer.write(key, files)
        writer.commit()
    out = tmp_path / "out"
    assert (
        main(["convert", str(tmp_path / "in" / "00000.tar"), str(out), *TINY_ARGS, "--keep-image"])
        == 0
    )
    got = {s.key: s for s in iter_samples(str(out / "00000.tar"))}
    assert set(got) == set(members)
    for key, files in members.items():
        written = got[key].files
        assert set(written) == set(files) | {"gsv"}, key
        for ext in set(files) - {"txt", "json"}:
            assert written[ext] == files[ext], (key, ext)  # byte-identical image and cls
    labels = {key: json.loads(s.files["json"]).get("cls") for key, s in got.items()}
    assert labels == {"a": 5, "b": 7, "c": None, "d": None}
    assert json.loads((out / "_job.json").read_text())["settings"]["keep_image"] is True
