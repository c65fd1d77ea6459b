import json

from gsvision.cli import main


def test_bench_load_quick_writes_its_json(tmp_path):
    assert main(["bench", "load", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "load.json").read_text())
    assert data["machine"]["cpu_count"] >= 1
    assert set(data["throughput"]) == {"1", "2"}
    for row in data["throughput"].values():
        assert row["rgb_samples_per_s"] > 0 and row["splat_medium_samples_per_s"] > 0
        assert row["speedup_splat_medium"] > 0
    assert data["bytes"]["jpeg"]["samples"] == data["bytes"]["splat_medium"]["samples"] == 12
    assert data["bytes"]["splat_medium"]["gsv_bytes_per_sample"] > 0
    assert data["target_speedup"] == 31 and isinstance(data["meets_target"], bool)
    breakdown = data["breakdown_us_per_sample_one_thread"]
    for step in ("codec_decode_us", "codec_decode_batch_us", "collate_us", "splat_tar_read_us"):
        assert breakdown[step] > 0, step
