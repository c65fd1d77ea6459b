import json

from gsvision.cli import main


def test_bench_serve_quick_writes_its_json(tmp_path):
    assert main(["bench", "serve", "--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "serve.json").read_text())
    assert data["benchmark"] == "serve" and data["machine"]["cpu_count"] >= 1
    assert data["service"]["model"] == "GS-ViT-Tiny-8-64"
    serial, loaded = data["levels"]
    assert (serial["clients"], loaded["clients"]) == (1, 8)
    for level in data["levels"]:
        assert level["errors"] == 0 and level["lost"] == 0, level["error_samples"]
        assert level["ok"] == level["requests"] and level["requests_per_s"] > 0
        lat = level["latency_s"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert serial["images_per_forward"] == 1.0
    assert loaded["model_forwards"] >= 1 and loaded["images_per_forward"] >= 1.0
    b = data["payloads"]["bytes_per_request"]
    assert b["raw"] == 64 * 64 * 3 and 0 < b["gsv"] < b["raw"] and b["jpeg_q90"] > 0
    assert data["payloads"]["x_smaller_than_raw"] == b["raw"] / b["gsv"]
    assert data["errors_total"] == 0 and data["lost_total"] == 0
