"""`gsvision demo --quick`: every step of the GS-CLIP demo runs and the report is written."""

from __future__ import annotations

import json

from gsvision.cli import main


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "-o", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for tower in ("splat tower", "RGB tower", "splat tower, distilled only"):
        acc = results["zeroshot"][tower]
        assert 0 <= acc["top1"] <= acc["top5"] <= 1 and acc["images"] == 32
    assert results["compression_vs_raw"] > 10  # 64 Gaussians at 64x64
    assert results["tokens_per_image"] == {"RGB tower": 65, "splat tower": 17}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "Zero-shot" in html
    for stage in ("rgb", "distill", "contrastive"):
        assert (out / "runs" / stage / "model.safetensors").is_file()
    assert "report:" in capsys.readouterr().out
