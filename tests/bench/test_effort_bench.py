import json

import pytest

from gsvision.cli import main


def test_bench_effort_quick_measures_every_effort_on_the_same_fits(tmp_path):
    assert main(["bench", "effort", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "effort.json").read_text())
    assert data["effort_rounds"] == [0, 16, 32, 64] and data["default_effort"] == 1
    assert [f["n"] for f in data["fits"]] == [24, 48]
    rows = data["rows"]
    assert [(r["n"], r["effort"]) for r in rows] == [(n, e) for n in (24, 48) for e in range(4)]
    for n in (24, 48):
        by = {r["effort"]: r for r in rows if r["n"] == n}
        assert by[1]["psnr_vs_default_db"] == 0 and by[1]["time_vs_default"] == 1
        # the same Gaussians kept whatever the effort: bytes within a few percent
        assert all(r["bytes_vs_default"] == pytest.approx(1, abs=0.05) for r in by.values())
        # no refinement at all loses PSNR to the default's (~1 dB on these quick fits)
        assert by[0]["psnr"] < by[1]["psnr"]
        assert by[0]["rounds"] == 0 and by[3]["rounds"] == 64


def test_bench_effort_refuses_mismatched_levels(capsys):
    assert main(["bench", "effort", "--n", "100", "400", "--levels", "a", "b", "c"]) == 2
    assert "give one level or one per N" in capsys.readouterr().err
    assert main(["bench", "effort", "--levels", "f16"]) == 2
    assert "float level" in capsys.readouterr().err
