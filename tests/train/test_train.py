"""`gsvision train`: the three stages, exact resume, frozen parts, refusals, two-process DDP."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsvision.codec import encode
from gsvision.data.shards import ShardWriter
from gsvision.model import create_model, load_model
from gsvision.splats import Splats, chol_from_axes
from gsvision.train.main import TrainConfig, train

TINY = "GS-ViT-Tiny-8-64"
VENV_BIN = Path(sys.executable).parent
WORDS = ["red", "green", "blue"]


def _splats(rng: np.random.Generator, color: int, n: int = 12) -> Splats:
    g = torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    means = torch.rand(1, n, 2, generator=g)
    major = torch.exp(torch.empty(1, n).uniform_(-4, -2, generator=g))
    chol = chol_from_axes(major, major * 0.5, torch.rand(1, n, generator=g) * 3.14)
    colors = torch.full((1, n, 3), 0.1)
    colors[..., color] = 0.9
    return Splats.create(means, chol, colors, (32, 32))


def make_shards(root: Path, shards: int = 2, per_shard: int = 16, seed: int = 0) -> str:
    """Splat shards with images kept (as ``convert --keep-image`` writes): 3 colour classes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for s in range(shards):
        w = ShardWriter(root / f"{s:05d}.tar")
        for i in range(per_shard):
            c = int(rng.integers(3))
            img = np.full((32, 32, 3), 25, np.uint8)
            img[..., c] = 230
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG")
            w.write(
                f"{s:05d}{i:04d}",
                {
                    "gsv": encode(_splats(rng, c)),
                    "jpg": buf.getvalue(),
                    "txt": f"a {WORDS[c]} image",
                },
            )
        w.commit()
    return str(root / f"{{00000..{shards - 1:05d}}}.tar")


def cfg(stage: str, data: str, out: Path, **kw) -> TrainConfig:
    base = dict(
        model=TINY,
        num_latents=4,
        resampler_layers=1,
        n=12,
        batch_size=4,
        epochs=2,
        warmup=2,
        workers=0,
        shuffle=8,
        log_every=1,
        lr=1e-3,
    )
    return TrainConfig(stage=stage, train_data=data, out=str(out), **{**base, **kw})


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    return make_shards(tmp_path_factory.mktemp("train") / "shards")


def test_contrastive_resume_is_exact(data, tmp_path):
    full = train(cfg("contrastive", data, tmp_path / "a", save_every=3))
    assert full["finished"] and full["steps"] == 16  # 32 samples / batch 4 × 2 epochs
    cut = train(cfg("contrastive", data, tmp_path / "b", save_every=3, stop_after=5))
    assert not cut["finished"] and cut["steps"] == 5
    assert not (tmp_path / "b" / "model.safetensors").exists()
    resumed = train(cfg("contrastive", data, tmp_path / "b", save_every=3, resume="latest"))
    assert resumed["finished"]
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # bit-identical, mid-epoch resume
    a = load_model(tmp_path / "a" / "model.safetensors").state_dict()
    b = load_model(tmp_path / "b" / "model.safetensors").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    kept = sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step_*"))
    assert kept == ["step_0000015", "step_0000016"]  # keep_checkpoints = 2
    assert losses(tmp_path / "a")[-1] < losses(tmp_path / "a")[0]


def test_rgb_then_distill_trains_only_the_stem(data, tmp_path):
    rgb = train(cfg("rgb", data, tmp_path / "rgb", epochs=1))
    assert rgb["finished"]
    weights = tmp_path / "rgb" / "model.safetensors"
    init = create_model(TINY, pretrained=str(weights), num_latents=4, resampler={"layers": 1})
    assert not torch.equal(  # the RGB stage trained the backbone the next stage loads
        init.clip.visual.conv1.weight, create_model(TINY).clip.visual.conv1.weight
    )
    out = train(cfg("distill", data, tmp_path / "d", pretrained=str(weights)))
    assert out["finished"]
    d = load_model(tmp_path / "d" / "model.safetensors")
    before, after = init.state_dict(), d.state_dict()
    for k in before:
        same = torch.equal(before[k], after[k])
        stem = k.startswith(("splat.stem", "splat.resampler", "splat.class", "splat.pos"))
        assert same != stem, k
    record = json.loads((tmp_path / "d" / "log.jsonl").read_text().splitlines()[-1])
    assert "cosine" in record and record["samples_per_s"] > 0


def test_rgb_lock_text_trains_the_image_tower_and_text_projection_only(data, tmp_path):
    """LiT on open_clip's own text tower: all of it frozen but ``text_projection``."""
    out = train(cfg("rgb", data, tmp_path / "lit", epochs=1, lock_text=True))
    assert out["finished"]
    from safetensors.torch import load_file

    from gsvision.model.factory import _open_clip

    torch.manual_seed(0)  # train() seeds the same way: the same initial weights
    init = _open_clip().create_model(TINY).state_dict()
    after = load_file(str(tmp_path / "lit" / "model.safetensors"))
    learns = ("visual.", "text_projection", "logit_scale")
    changed = {k for k in init if not torch.equal(init[k], after[k])}
    assert {k for k in changed if not k.startswith(learns)} == set()
    assert "text_projection" in changed and "visual.conv1.weight" in changed
    with pytest.raises(ValueError, match="rgb stage"):
        train(cfg("contrastive", data, tmp_path / "x", lock_text=True))


def test_refuses_another_runs_directory_and_bad_data(data, tmp_path):
    train(cfg("contrastive", data, tmp_path / "a", epochs=1, stop_after=1))
    with pytest.raises(ValueError, match="another run"):
        train(cfg("contrastive", data, tmp_path / "a", epochs=1))
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(cfg("contrastive", data, tmp_path / "b", batch_size=64))
    with pytest.raises(ValueError, match="--stage"):
        train(cfg("finetune", data, tmp_path / "c"))


def test_cli_two_process_ddp(data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        str(VENV_BIN / "torchrun"),
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "gsvision.cli",
    ]
    cmd += ["train", "--stage", "contrastive", "--train-data", data, "--out", str(out)]
    cmd += ["--model", TINY, "--num-latents", "4", "--resampler-layers", "1", "-n", "12"]
    cmd += ["--batch-size", "4", "--epochs", "1", "--warmup", "1", "--workers", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["finished"] and summary["steps"] == 4
    assert "2 rank(s)" in result.stdout
    assert load_model(out / "model.safetensors").trainable_summary()["trainable"] > 0
