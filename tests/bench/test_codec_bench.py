import json
import math

import pytest

from gsvision.bench.codec import (
    bytes_for_psnr,
    interp_at_bytes,
    pareto_front,
    probe_plan,
    retry_at,
)
from gsvision.cli import main


def test_bench_codec_quick_writes_its_json_and_figure(tmp_path):
    import gsvision.codec

    before = gsvision.codec.DEFAULT_CODER
    assert main(["bench", "codec", "--quick", "--out", str(tmp_path)]) == 0
    assert gsvision.codec.DEFAULT_CODER == before  # --coder only for its own run
    data = json.loads((tmp_path / "codec.json").read_text())
    assert data["settings"]["coder"] == "range"
    assert (tmp_path / "rd.png").stat().st_size > 1000  # --quick plots beside its JSON
    assert data["machine"]["cpu_count"] >= 1
    assert [f["n"] for f in data["gsvision"]["fits"]] == [24, 64]
    points = data["gsvision"]["points"]
    levels = set(data["settings"]["levels"])  # every level measured at every N
    assert {p["level"] for p in points} == levels >= {"f16", "high", "xxlow", "9-5-5-7"}
    for p in points + [r for rows in data["codecs"].values() for r in rows]:
        assert p["bytes"] > 0 and math.isfinite(p["psnr"]) and -1 <= p["ssim"] <= 1
        assert p["ratio"] == pytest.approx(3 * 64 * 64 / p["bytes"])
    for n in (24, 64):  # finer levels cost more bytes
        by_level = {p["level"]: p["bytes"] for p in points if p["n"] == n}
        assert by_level["high"] >= by_level["medium"] >= by_level["low"] >= by_level["xlow"]
        assert by_level["lower"] >= by_level["xlow"] >= by_level["10-5-6-7"] >= by_level["xxlow"]
        assert by_level["10-5-6-7"] >= by_level["10-5-5-7"] >= by_level["9-5-5-7"]
    assert data["codecs"]["jpeg"], "Pillow always has JPEG"
    for rows in data["codecs"].values():
        nbytes = [r["bytes"] for r in sorted(rows, key=lambda r: r["quality"])]
        assert nbytes == sorted(nbytes), "bytes grow with quality"
    summary = data["summary"]
    f16 = summary["f16_same_psnr_fewer_bytes"]
    assert [r["n"] for r in f16["rows"]] == [24, 64]
    assert all(r["ratio_vs_plain_f16"] > 1 for r in f16["rows"])
    assert isinstance(f16["met_for_every_n"], bool)
    rows = summary["equal_bytes"]["rows"]
    assert [r["bpp"] for r in rows] == [0.2, 0.3, 0.5, 0.75, 1.0]
    for r in rows:
        assert set(r["psnr"]) == {"gsvision", *data["codecs"]}
        assert all(v is None or math.isfinite(v) for v in r["psnr"].values())
    raw = summary["ratio_to_raw"]
    assert raw["raw_bytes"] == 3 * 64 * 64 and 1 < raw["min_ratio"] <= raw["max_ratio"]


def test_front_and_interpolation():
    pts = [
        {"bytes": 100, "psnr": 20.0},
        {"bytes": 150, "psnr": 19.0},  # dominated
        {"bytes": 400, "psnr": 24.0},
    ]
    front = pareto_front(pts)
    assert [p["bytes"] for p in front] == [100, 400]
    assert interp_at_bytes(front, 200) == pytest.approx(22.0)  # halfway in log-bytes
    assert interp_at_bytes(front, 50) is None and interp_at_bytes(front, 500) is None
    assert bytes_for_psnr(front, 22.0) == (pytest.approx(200.0), True)
    assert bytes_for_psnr(front, 25.0) == (None, False)
    assert bytes_for_psnr(front, 19.0) == (100.0, False)  # a bound: the cheapest already does


def _pt(n, level, psnr, nbytes=None):
    return {"n": n, "level": level, "psnr": psnr, "bytes": nbytes or 16 * n}


LADDER = [
    _pt(100, "f16", 30.0),
    _pt(200, "f16", 33.0),
    _pt(100, "xlow", 29.5, 500),
    _pt(200, "xlow", 32.5, 1000),
    _pt(100, "xxlow", 29.0, 400),
    _pt(200, "xxlow", 32.0, 800),
]


def test_probe_plan_predicts_each_levels_n_at_the_goal_and_takes_the_cheapest():
    plan = probe_plan(LADDER, ["xlow", "xxlow"])
    # N = 100's goal, 29.9 dB: xlow at 100·2^(0.4/3) ≈ 110 (548 B), xxlow at 100·2^0.3 ≈ 124 (492 B);
    # N = 200's goal is above every level's curve: no extrapolation, no probe
    assert list(plan) == [124]
    assert plan[124]["level"] == "xxlow" and plan[124]["for_n"] == 100
    assert plan[124]["goal_psnr"] == pytest.approx(29.9)
    assert plan[124]["predicted_bytes"] == pytest.approx(400 * 2**0.3)
    assert probe_plan(LADDER, ["xlow"]) == {
        110: {
            "level": "xlow",
            "for_n": 100,
            "goal_psnr": pytest.approx(29.9),
            "predicted_bytes": pytest.approx(500 * 2 ** (0.4 / 3)),
        }
    }
    # a finer level that reaches N = 100's goal at N = 100 costs more than the prediction: still
    # probed; one that costs less makes the probe pointless
    assert list(probe_plan([*LADDER, _pt(100, "low", 29.95, 700)], ["low", "xxlow"])) == [124]
    assert probe_plan([*LADDER, _pt(100, "low", 29.95, 450)], ["low", "xxlow"]) == {}


def test_probe_points_fit_and_encode_the_plan_and_step_again_when_short():
    from argparse import Namespace

    from gsvision.bench.codec import _load, _probe_points

    names, u8 = _load(["coffee"], 32)
    ladder = [  # a goal (39.9 dB) that a 5-iteration fit at 32² cannot reach
        _pt(8, "f16", 40.0),
        _pt(24, "f16", 46.0),
        _pt(8, "xxlow", 30.0, 60),
        _pt(24, "xxlow", 45.0, 150),
    ]
    args = Namespace(iters=5, size=32, seed=0, effort=1)
    first, second = _probe_points(u8, args, ladder, ["xxlow"])
    assert first["n"] == 17  # 8·3^(9.9/15) ≈ 16.5 Gaussians, rounded up
    assert first["probe"] and first["level"] == "xxlow" and first["attempt"] == 1
    assert first["for_n"] == 8 and first["bytes"] > 0 and 10 < first["psnr"] < 39.9
    assert first["fit_seconds"] > 0 and first["bytes_per_gaussian"] == first["bytes"] / 17
    # short of the goal: once more between the probe and the ladder's 24 (never past it), aimed
    # a little past the goal
    assert second["attempt"] == 2 and 17 < second["n"] < 24 and second["for_n"] == 8
    assert (second["n"], second["predicted_bytes"]) == retry_at(first, ladder[3], 39.9)


def test_a_second_probe_aims_a_little_past_the_goal_and_never_past_the_ladder():
    from gsvision.bench.codec import RETRY_PAST_GOAL_DB

    short, above = _pt(100, "xxlow", 29.0, 500), _pt(200, "xxlow", 31.0, 900)
    assert RETRY_PAST_GOAL_DB == 0.05
    n, nbytes = retry_at(short, above, 29.9)  # aims at 29.95 dB: t = 0.475 along the chord
    assert n == math.ceil(100 * 2**0.475) == 139 and nbytes == pytest.approx(500 * 1.8**0.475)
    assert retry_at(short, above, 30.98) == (200, pytest.approx(900))  # capped at the ladder's
