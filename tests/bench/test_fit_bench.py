import json

from gsvision.cli import main


def test_bench_fit_quick_writes_its_json(tmp_path):
    assert main(["bench", "fit", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "fit.json").read_text())
    assert data["machine"]["cpu_count"] >= 1
    assert set(data["quality"]) == {"16", "64"}
    assert data["init"]["64"]["adaptive"]["psnr@30"] > data["init"]["64"]["random"]["psnr@30"]
    batch = data["batch_vs_single"]
    assert batch["batch_seconds"] > 0 and batch["speedup_batch_vs_one_at_a_time"] > 0
    assert batch["reference_seconds_per_iteration"] > 0
    assert batch["speedup_batch_vs_reference_random_one_at_a_time"] > 1
    scores = {row["score"] for row in data["prune"]["rows"]}
    assert scores == {"none", "luminance", "footprint"}


def test_bench_fit_update_keeps_the_other_sections(tmp_path):
    (tmp_path / "fit.json").write_text(json.dumps({"quality": {"keep": 1}, "wall_seconds": 5}))
    args = ["bench", "fit", "--quick", "--out", str(tmp_path), "--sections", "batch", "--update"]
    assert main(args) == 0
    data = json.loads((tmp_path / "fit.json").read_text())
    assert data["quality"] == {"keep": 1} and data["wall_seconds"] == 5
    assert data["batch_vs_single"]["reference_random_one_at_a_time_extrapolated"] is True
