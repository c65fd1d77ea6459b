import json

from gsvision.cli import main


def test_bench_convert_quick_writes_its_json(tmp_path):
    assert main(["bench", "convert", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "convert.json").read_text())
    assert data["images"] == 6 and data["images_per_second"] > 0
    stages = {"decode", "wait_input", "fit", "encode", "write", "wait_encode"}
    assert set(data["seconds_by_stage"]) == stages
    assert 0 < data["fit_share"] <= data["compute_share"] <= 1.0
    assert data["machine"]["cpu_count"] >= 1
