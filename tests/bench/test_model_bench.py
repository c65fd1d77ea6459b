import json
import math

from gsvision.bench.model import random_splats
from gsvision.cli import main


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_model_quick_writes_its_json(tmp_path):
    args = ["--quick", "--profile", "--variants", "attention_only", "--out", str(tmp_path)]
    assert main(["bench", "model", *args]) == 0
    data = json.loads((tmp_path / "model.json").read_text())
    profile = data["front_end_profiles"]["cpu_fp32"]
    assert (
        set(profile) == {"splat_k16", "splat_k32", "splat_k16_attention_only"}
        and "aten::linear" in profile["splat_k16"]
    )
    assert data["cuda_graph_errors"] == {}
    assert data["benchmark"] == "model" and data["machine"]["cpu_count"] >= 1
    assert data["settings"]["model"] == "GS-ViT-Tiny-8-64" and data["settings"]["latents"] == [
        16,
        32,
    ]
    rows = data["timing"]["cpu_fp32"]
    variant = rows.pop("splat_k16_attention_only")  # a resampler variant, beside the default
    assert variant["tokens"] == 17 and _positive(variant["speedup_vs_rgb_median"])
    assert set(rows) == {"rgb", "splat_k16", "splat_k32"}
    assert [rows[n]["tokens"] for n in ("rgb", "splat_k16", "splat_k32")] == [65, 17, 33]
    for name, r in rows.items():
        assert _positive(r["median_s"]) and _positive(r["min_s"]) and r["min_s"] <= r["median_s"]
        assert _positive(r["images_per_s"])
        if name != "rgb":
            for key in ("stem_median_s", "resampler_median_s", "speedup_vs_rgb_median"):
                assert _positive(r[key]), (name, key)
            assert 0 < r["stem_resampler_share"] < 1
            assert len(r["speedup_vs_rgb_per_round"]) == 2
    for name in rows:
        mem = data["memory"]["cpu_fp32"][name]
        assert mem["peak_increase_bytes"] >= 0 and mem["rss_before_bytes"] > 0
    flops = data["flops_per_image"]
    assert _positive(flops["rgb"]) and set(flops["by_n"]) == {"32", "64"}
    for row in flops["by_n"].values():
        for r in row.values():
            assert 0 < r["stem_resampler"] < r["total"] and _positive(r["rgb_over_splat"])
    fractions = data["trainable"]["GS-ViT-Tiny-8-64"]
    assert set(fractions) == {"default", "attention_only"}
    for variant in fractions.values():
        assert set(variant) == {"stem", "paper", "paper-text"}
        assert 0 < variant["stem"]["fraction"] < variant["paper"]["fraction"] < 1
        assert variant["paper"]["trainable"] < variant["paper-text"]["trainable"]
    assert fractions["attention_only"]["paper"]["total"] < fractions["default"]["paper"]["total"]
    assert data["speedup_k98"] is None and data["meets_target"] is None  # no K = 98 in --quick


def test_random_splats_are_valid_and_padded():
    s = random_splats(5, 40, seed=1)
    s.validate()
    assert s.capacity == 40 and ((s.counts >= 35) & (s.counts <= 40)).all()
    assert s.means.shape == (5, 40, 2) and s.chol.shape == (5, 40, 3)
