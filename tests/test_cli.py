"""The ``gsvision`` command line, end to end and in-process, on tiny images."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gsvision import __version__, decode
from gsvision.cli import COMMANDS, main
from gsvision.io import load_image, load_splats, sample_images
from gsvision.raster import backend_status

TINY = ["-n", "16", "--iters", "20", "--size", "32", "-q"]


def smooth_image(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    a, b, c = rng.random(3) * 6
    rgb = np.stack([np.sin(a * x + 1), np.cos(b * y), np.sin(c * (x + y))], -1) * 0.45 + 0.5
    return (rgb * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One `gsvision fit` run over two good images and one corrupt JPEG, shared by the tests."""
    root = tmp_path_factory.mktemp("cli")
    Image.fromarray(smooth_image(0)).save(root / "a.png")
    Image.fromarray(smooth_image(1, 40, 48)).save(root / "b.jpg", quality=95)
    data = sample_images()[0].read_bytes()
    (root / "broken.jpg").write_bytes(data[: len(data) // 3])
    out = root / "out"
    argv = ["fit", str(root / "a.png"), str(root / "broken.jpg"), str(root / "b.jpg")]
    code = main([*argv, "-o", str(out), *TINY, "--batch", "1"])
    return root, out, code


def test_fit_skips_the_corrupt_file_and_writes_the_rest(fitted, capsys):
    root, out, code = fitted
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.gsv", "b.gsv", "metrics.json"]
    report = json.loads((out / "metrics.json").read_text())
    assert [img["name"] for img in report["images"]] == ["a", "b"]
    assert len(report["failures"]) == 1
    failure = report["failures"][0]
    assert failure["source"].endswith("broken.jpg") and "corrupt or truncated" in failure["reason"]
    assert report["settings"]["n_gaussians"] == 16 and report["settings"]["size"] == 32
    for img in report["images"]:
        assert img["psnr"] > 10 and img["iterations"] <= 20
        assert img["bytes"] == (out / f"{img['name']}.gsv").stat().st_size
        assert img["level"] == "medium" and img["ratio"] == pytest.approx(3072 / img["bytes"])

    assert (out / "b.gsv").read_bytes()[4] == 4  # files: the range coder, compact headers
    splats, _ = load_splats(out / "b.gsv")
    assert splats.batch_size == 1 and int(splats.counts[0]) == 16
    assert splats.image_sizes.tolist() == [[32, 32]]


def test_fit_safetensors_keeps_float_splats_and_metadata(tmp_path):
    Image.fromarray(smooth_image(1, 40, 48)).save(tmp_path / "b.jpg", quality=95)
    out = tmp_path / "o"
    assert (
        main(["fit", str(tmp_path / "b.jpg"), "-o", str(out), *TINY, "--format", "safetensors"])
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    splats, meta = load_splats(out / "b.safetensors")
    assert int(splats.counts[0]) == 16 and splats.image_sizes.tolist() == [[32, 32]]
    assert meta["source"].endswith("b.jpg") and meta["original_size"] == [40, 48]
    assert meta["fitted_size"] == [32, 32] and meta["gsvision_version"] == __version__
    assert meta["metrics"]["psnr"] == pytest.approx(report["images"][0]["psnr"])
    assert meta["settings"]["iters"] == 20


@pytest.mark.parametrize(
    ("flags", "check"),
    [
        (["--bytes", "300"], lambda m: m["bytes"] <= 300 and m["reached"]),
        (["--ratio", "12"], lambda m: m["bytes"] <= 3072 / 12 and m["reached"]),
        (["--psnr", "25", "-n", "64"], lambda m: m["psnr"] >= 25 and m["reached"]),
        (["--level", "lossless"], lambda m: m["level"] == "lossless" and m["bytes"] > 16 * 32),
        (["--bytes", "300", "--level", "9-5-5-7"], lambda m: m["level"] == "9-5-5-7"),
        (["--bytes", "300", "--effort", "0"], lambda m: m["effort"] == 0 and m["reached"]),
        (["--psnr", "25", "-n", "64", "--effort", "3"], lambda m: m["effort"] == 3),
    ],
)
def test_fit_rate_targets(tmp_path, flags, check):
    Image.fromarray(smooth_image(6)).save(tmp_path / "a.png")
    out = tmp_path / "o"
    args = ["--iters", "60", "--size", "32", "-q", "-n", "16"]
    assert main(["fit", str(tmp_path / "a.png"), "-o", str(out), *args, *flags]) == 0
    (img,) = json.loads((out / "metrics.json").read_text())["images"]
    assert check(img), img
    assert img["bytes"] == (out / "a.gsv").stat().st_size


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--bytes", "100", "--format", "pt"], "need --format gsv"),
        (["--bytes", "100", "--ratio", "3"], "give one rate target"),
        (["--level", "ultra"], "unknown codec level"),
        (["--level", "10-5-5-40"], "color_bits must be an integer in [1, 12]"),
        (["--ratio", "0"], "--ratio must be positive"),
        (["--relocate", "1.5"], "--relocate must be in [0, 1]"),
        (["--effort", "4"], "--effort: invalid choice: 4"),
    ],
)
def test_fit_rate_flag_errors(tmp_path, capsys, flags, message):
    assert main(["fit", "x.png", "-o", str(tmp_path / "o"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_fit_budget_too_small_is_a_reported_failure(tmp_path, capsys):
    Image.fromarray(smooth_image(7)).save(tmp_path / "a.png")
    assert (
        main(["fit", str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--bytes", "50", "-q"])
        == 2
    )
    assert (
        "a budget of 50 bytes per image is below what one Gaussian needs" in capsys.readouterr().err
    )


def test_fit_all_failing_exits_2(tmp_path, capsys):
    (tmp_path / "x.png").write_text("not an image")
    code = main(
        ["fit", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "-o", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "x.png: not an image" in err and "y.png: no such file" in err
    report = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert report["images"] == [] and len(report["failures"]) == 2


def test_fit_rejected_by_the_fitter_is_a_reported_failure(tmp_path, capsys):
    Image.fromarray(smooth_image(2, 8, 8)).save(tmp_path / "small.png")
    args = ["-o", str(tmp_path / "o"), "-n", "100", "--iters", "2", "--size", "native", "-q"]
    assert main(["fit", str(tmp_path / "small.png"), *args]) == 2
    assert "n_gaussians" in capsys.readouterr().err
    assert not (tmp_path / "o" / "small.gsv").exists()


def test_fit_batch_rejected_for_one_image_retries_the_others(tmp_path, capsys):
    Image.fromarray(smooth_image(4, 8, 8)).save(tmp_path / "tiny.png")  # 64 pixels < n = 100
    Image.fromarray(smooth_image(5, 16, 16)).save(tmp_path / "ok.png")
    paths = [str(tmp_path / "tiny.png"), str(tmp_path / "ok.png")]
    args = ["-o", str(tmp_path / "o"), "-n", "100", "--iters", "2", "--size", "native", "-q"]
    assert main(["fit", *paths, *args]) == 1
    assert (tmp_path / "o" / "ok.gsv").exists()
    assert not (tmp_path / "o" / "tiny.gsv").exists()
    report = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [f["source"] for f in report["failures"]] == [paths[0]]
    assert "retrying" in capsys.readouterr().err


def test_fit_duplicate_stems_get_distinct_outputs(tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        Image.fromarray(smooth_image(3, 16, 16)).save(tmp_path / d / "same.png")
    paths = [str(tmp_path / "x" / "same.png"), str(tmp_path / "y" / "same.png")]
    args = ["-o", str(tmp_path / "o"), "-n", "4", "--iters", "2", "--size", "16", "-q"]
    assert main(["fit", *paths, *args]) == 0
    assert (tmp_path / "o" / "same.gsv").exists()
    assert (tmp_path / "o" / "same-2.gsv").exists()


def test_render_default_size_explicit_size_and_ellipses(fitted, tmp_path, capsys):
    _, out, _ = fitted
    src = str(out / "a.gsv")
    assert main(["render", src, "-o", str(tmp_path / "r.png")]) == 0
    assert load_image(tmp_path / "r.png").shape == (32, 32, 3)
    assert main(["render", src, "-o", str(tmp_path / "s.png"), "--size", "48x40"]) == 0
    assert load_image(tmp_path / "s.png").shape == (40, 48, 3)
    assert main(["render", src, "-o", str(tmp_path / "e.png"), "--ellipses"]) == 0
    overlay = load_image(tmp_path / "e.png")
    assert overlay.shape == (96, 96, 3)
    plain = load_image(tmp_path / "r.png").repeat(3, 0).repeat(3, 1).astype(int)
    assert np.abs(overlay.astype(int) - plain).max() > 100  # outlines were drawn
    assert "wrote" in capsys.readouterr().out


def test_render_user_errors_are_one_line(fitted, tmp_path, capsys):
    _, out, _ = fitted
    png = str(tmp_path / "r.png")
    assert main(["render", str(out / "a.gsv"), "-o", png, "--index", "3"]) == 2
    assert "--index 3 is out of range" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    assert main(["render", str(tmp_path / "junk.safetensors"), "-o", png]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.safetensors" in err and "Traceback" not in err
    assert main(["render", str(out / "a.gsv"), "-o", png, "--size", "big"]) == 2
    assert "expected WxH" in capsys.readouterr().err
    (tmp_path / "junk.gsv").write_bytes(b"\x89GSV" + b"\x00" * 40)
    assert main(["render", str(tmp_path / "junk.gsv"), "-o", png]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.gsv" in err and "Traceback" not in err


def test_info_describes_files(fitted, tmp_path, capsys):
    _, out, _ = fitted
    assert main(["info", str(out / "a.gsv"), str(out / "b.gsv")]) == 0
    text = capsys.readouterr().out
    size = (out / "a.gsv").stat().st_size
    assert "capacity: 16" in text and "numbers per Gaussian: 8" in text
    assert "fitted size (WxH): 32x32" in text
    assert f"bytes on disk: {size:,}" in text and "raw pixels at the fitted size: 3,072" in text
    assert f"bits per pixel: {8 * size / 1024:.3f}" in text
    assert f"ratio to raw pixels: {size / 3072:.4f}" in text
    assert "coding: image 0: 32x32, 16 Gaussians, quantised (position 12" in text
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    assert main(["info", str(out / "a.gsv"), str(tmp_path / "bad.pt")]) == 1
    assert "bad.pt" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "bad.pt")]) == 2
    assert main(["info"]) == 2


def test_info_backends(capsys):
    assert main(["info", "--backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name, reason in backend_status().items():
        (line,) = [ln for ln in lines if ln.split()[0] == name]
        assert ("usable" if reason is None else f"unavailable: {reason}") in line
    assert any(ln.startswith("auto on cpu: ") for ln in lines)


def test_bench_unknown_name_lists_what_exists(capsys):
    assert main(["bench", "no_such_benchmark", "--flag"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'no_such_benchmark'; available:" in err


def test_version_help_and_usage_errors(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 2
    assert main(["fit", "x.png"]) == 2  # -o is required
    assert main(["fit", "x.png", "-o", "o", "-n", "0"]) == 2
    assert "positive" in capsys.readouterr().err
    assert set(COMMANDS) >= {"fit", "render", "info", "demo", "bench"}


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "gsvision.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and __version__ in result.stdout


def test_demo_writes_every_picture_and_table(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        main(["demo", "--photos", "-o", str(out), "-n", "8", "--iters", "3", "--size", "24", "-q"])
        == 0
    )
    names = [p.stem for p in sample_images()]
    for name in names:
        for suffix in ("_render.png", "_ellipses.png", "_comparison.png", ".gsv"):
            assert (out / f"{name}{suffix}").stat().st_size > 0, name + suffix
    assert load_image(out / f"{names[0]}_render.png").shape == (24, 24, 3)
    assert load_image(out / f"{names[0]}_ellipses.png").shape == (72, 72, 3)
    table = (out / "metrics.md").read_text()
    assert "| image | N | PSNR | SSIM | iterations | seconds | bytes |" in table
    for name in names:  # N: what the .gsv holds (the closed loop drops what is not worth its bytes)
        n = int(decode((out / f"{name}.gsv").read_bytes()).counts[0])
        assert 1 <= n <= 8 and f"| {name} | {n} |" in table
    report = json.loads((out / "metrics.json").read_text())
    assert len(report["images"]) == len(names) and report["failures"] == []
    assert str(out) in capsys.readouterr().out
