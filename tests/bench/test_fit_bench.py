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
    scores = {row["score"] for row in data["prune"]["rows"]}
    assert scores == {"none", "luminance", "footprint"}
