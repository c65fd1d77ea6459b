import json

from gsvision.cli import main


def test_bench_load_quick_writes_its_json(tmp_path):
    assert main(["bench", "load", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "load.json").read_text())
    assert data["machine"]["cpu_count"] >= 1
    assert set(data["throughput"]) == {"1", "2"}
    for row in data["throughput"].values():
        assert row["rgb_samples_per_s"] > 0 and row["splat_medium_samples_per_s"] > 0
        assert row["speedup_splat_medium"] > 0 and row["speedup_splat_medium_ring"] > 0
    assert data["bytes"]["jpeg"]["samples"] == data["bytes"]["splat_medium"]["samples"] == 12
    # both source sizes by default: the crawl's small images and DataComp's 512 px ones
    assert data["bytes"]["jpeg_datacomp"]["samples"] == 12
    for row in data["throughput"].values():
        assert row["rgb_datacomp_samples_per_s"] > 0 and row["speedup_datacomp_splat_medium"] > 0
    assert set(data["by_source"]) == {"crawl", "datacomp"}
    assert data["target_source"] == "datacomp"  # the paper's 31x is DataComp loading
    assert data["best_speedup"] == data["by_source"]["datacomp"]["best_speedup"]
    assert data["bytes"]["splat_medium"]["gsv_bytes_per_sample"] > 0
    assert data["target_speedup"] == 31 and isinstance(data["meets_target"], bool)
    breakdown = data["breakdown_us_per_sample_one_thread"]
    steps = ("codec_decode_us", "codec_decode_batch_us", "collate_us", "splat_tar_read_us")
    steps += ("splat_tar_read_webdataset_us", "zstd_decompress_us", "jpeg_decode_us_datacomp")
    for step in steps:
        assert breakdown[step] > 0, step
