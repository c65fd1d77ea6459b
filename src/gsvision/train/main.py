"""``gsvision train``: the training program (stages ``rgb``, ``distill``, ``contrastive``).

- ``rgb``: a plain open_clip CLIP trained contrastively on image–text shards (all parameters);
  written as an open_clip state dict, to be the frozen backbone of the next stages when no
  pretrained CLIP can be downloaded (the demo). ``--lock-text`` trains it LiT-style instead: the
  (pretrained) text tower is locked but for its projection, e.g. ``GS-ViT-Tiny-8-64-MiniLM``'s
  sentence encoder, and only the image tower, the projection and the temperature learn.
- ``distill`` (paper, stage 1): only the splat stem trains; loss = MSE between the L2-normalised
  embeddings of the frozen RGB tower on the image and the splat tower on its splats (shards
  converted with ``--keep-image``).
- ``contrastive`` (stage 2): symmetric InfoNCE between splat and text embeddings, with the
  ``paper`` (or ``paper-text``) trainable preset.

AdamW (no weight decay on gains, biases, embeddings and the scale), linear warm-up then cosine
decay, gradient clipping, bf16 autocast on GPU, DDP under ``torchrun`` (gloo on CPU, nccl on GPU).
Checkpoints are safetensors (``model.safetensors``: what :func:`gsvision.model.load_model`
reads; ``train_state.safetensors``: optimizer, RNG and position in the data) and resume is exact:
the same losses and weights as an uninterrupted run (data order is deterministic per epoch, and
a resumed epoch skips the batches already consumed). Logs go to the console and ``log.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gsvision.io import write_atomic
from gsvision.train.loss import contrastive_loss, distill_loss

__all__ = ["STAGES", "TrainConfig", "add_arguments", "run", "train"]

STAGES = ("rgb", "distill", "contrastive")
_DEFAULT_TRAINABLE = {"distill": "stem", "contrastive": "paper"}


@dataclass
class TrainConfig:
    """One training run; every field is a ``gsvision train`` flag (``--train-data`` etc.)."""

    stage: str
    train_data: str  # shard pattern (splat shards; image–text shards for ``rgb``)
    out: str  # run directory: checkpoints, log.jsonl, params.json, final model
    model: str = "ViT-B-16"  # open_clip / gsvision model name, or a gsvision checkpoint
    pretrained: str | None = None  # open_clip weights: tag or file (e.g. the rgb stage's output)
    trainable: str | None = None  # preset; default: stem (distill), paper (contrastive)
    num_latents: int = 98
    resampler_layers: int = 4
    n: int = 1024  # Gaussian slots per image
    epochs: int = 1
    batch_size: int = 64  # per rank
    lr: float = 5e-4
    wd: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int = 100  # steps
    grad_clip: float = 1.0  # max gradient norm; 0: off
    shuffle: int = 1000  # sample shuffle buffer
    workers: int = 1
    seed: int = 0
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU), fp32, bf16
    save_every: int = 0  # steps between checkpoints (0: each epoch end only)
    log_every: int = 10
    keep_checkpoints: int = 2
    resume: str | None = None  # "latest" or a checkpoint directory
    stop_after: int | None = None  # stop (checkpointed) after this many steps in all (tests)
    lock_text: bool = False  # rgb stage: freeze the text tower except its projection (LiT)
    model_kwargs: dict = field(default_factory=dict)  # more create_model arguments

    def check(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"--stage must be one of {STAGES}, got {self.stage!r}")
        for name in ("epochs", "batch_size", "n", "num_latents", "resampler_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError("--precision must be auto, fp32 or bf16")
        if self.lock_text and self.stage != "rgb":
            raise ValueError("--lock-text is for the rgb stage (later stages: --trainable)")


# ------------------------------------------------------------------------------------ distributed
def _dist_init() -> tuple[int, int, torch.device]:
    """``(rank, world, device)``; joins the torchrun process group when there is one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return rank, world, device


def _all_min(x: int, device: torch.device) -> int:
    if not dist.is_initialized():
        return x
    t = torch.tensor([x], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ------------------------------------------------------------------------------------ data
def _shard_counts(urls: list[str], need: tuple[str, ...]) -> list[int]:
    """Samples per shard holding every extension in ``need`` (``_stats.json`` is not trusted:
    the count must match what the loader yields, so the shard is listed)."""
    from gsvision.data.shards import iter_samples

    counts = []
    for url in urls:
        n = 0
        try:
            for sample in iter_samples(url):
                if all(any(e in sample.files for e in alts.split("|")) for alts in need):
                    n += 1
        except Exception:  # an unreadable shard is skipped by the loader too; count what it gives
            pass
        counts.append(n)
    return counts


@dataclass
class _Data:
    """This rank's shards and how many full batches each epoch gives (equal on every rank)."""

    urls: list[str]
    steps_per_epoch: int
    samples: int


def _plan_data(cfg: TrainConfig, rank: int, world: int, device: torch.device) -> _Data:
    from gsvision.data.shards import expand_urls

    urls = expand_urls(cfg.train_data)
    if len(urls) < world:
        raise ValueError(f"{len(urls)} shards for {world} ranks: need at least one shard per rank")
    mine = urls[rank::world]
    need = {"rgb": ("jpg|jpeg|png|webp", "txt"), "contrastive": ("gsv", "txt")}.get(
        cfg.stage, ("gsv", "txt", "jpg|jpeg|png|webp")
    )
    samples = sum(_shard_counts(mine, need))
    steps = _all_min(samples // cfg.batch_size, device)
    if steps < 1:
        raise ValueError(
            f"{cfg.train_data}: rank {rank} has {samples} usable samples, fewer than one batch of "
            f"{cfg.batch_size} (stage {cfg.stage} needs members {', '.join(need)})"
        )
    return _Data(mine, steps, samples)


def _loader(cfg: TrainConfig, data: _Data, epoch: int, tokenizer, preprocess):
    import webdataset as wds

    from gsvision.data.loader import SplatDataset, SplatLoader, rgb_pipeline

    kw = dict(
        shuffle=cfg.shuffle,
        seed=cfg.seed,
        tokenizer=tokenizer,
        split_by_node=False,  # shards are assigned to ranks already (rank::world)
        split_by_worker=True,
        partial=False,
        epoch=epoch,
    )
    workers = min(cfg.workers, len(data.urls))
    if cfg.stage == "rgb":
        ds = rgb_pipeline(data.urls, cfg.batch_size, preprocess=preprocess, **kw)
        return wds.WebLoader(ds, batch_size=None, num_workers=workers)
    pre = preprocess if cfg.stage == "distill" else None
    ds = SplatDataset(data.urls, cfg.n, cfg.batch_size, image_preprocess=pre, **kw)
    return SplatLoader(ds, num_workers=workers)  # batches through shared buffers made once


# ------------------------------------------------------------------------------------ model
def _build(cfg: TrainConfig, device: torch.device):
    """``(model to train, module whose state is saved, tokenizer, RGB preprocess)``."""
    import open_clip

    from gsvision.model import create_model, get_tokenizer
    from gsvision.model.factory import _check_available, _open_clip, rgb_transform

    if cfg.stage == "rgb":
        _open_clip()  # registers gsvision's configs
        _check_available(cfg.model)
        clip = open_clip.create_model(
            cfg.model, pretrained=cfg.pretrained, device=device, output_dict=True
        )
        tokenizer = open_clip.get_tokenizer(cfg.model)
        return clip, clip, tokenizer, rgb_transform(clip)
    trainable = cfg.trainable or _DEFAULT_TRAINABLE[cfg.stage]
    kw = dict(cfg.model_kwargs)
    if not cfg.model.endswith(".safetensors"):
        kw.setdefault("num_latents", cfg.num_latents)
        kw.setdefault("resampler", {"layers": cfg.resampler_layers})
    model = create_model(
        cfg.model, pretrained=cfg.pretrained, trainable=trainable, device=device, **kw
    )
    tokenizer = get_tokenizer(model.cfg.model_name)
    return model, model, tokenizer, rgb_transform(model.clip)


def lock_text_tower(clip: nn.Module) -> None:
    """LiT: freeze an open_clip CLIP's text tower but for its projection, which maps the locked
    features into the joint space and keeps training (open_clip's ``lock_text_tower`` freezes it
    too on its own text transformer, and leaves it trainable on a Hugging Face one)."""
    clip.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    text = getattr(clip, "text", clip)
    proj = getattr(text, "text_projection", None)
    if proj is None:
        proj = getattr(text, "proj", None)  # HFTextEncoder
    if proj is not None:
        proj.requires_grad_(True)


def _eval_frozen_text(model: nn.Module) -> None:
    """Run a wholly frozen Hugging Face text encoder in eval mode: its dropout (0.1 in MiniLM)
    would only add noise to features that nothing inside it learns from."""
    clip = getattr(model, "clip", model)
    encoder = getattr(getattr(clip, "text", None), "transformer", None)
    if encoder is not None and not any(p.requires_grad for p in encoder.parameters()):
        encoder.eval()


def _param_groups(model: nn.Module, wd: float) -> list[dict]:
    """open_clip's rule: no decay for 1-d tensors (gains, biases), embeddings and the scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def _lr_at(step: int, cfg: TrainConfig, total: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    e = step - cfg.warmup
    es = max(1, total - cfg.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(e, es) / es)) * cfg.lr


# ------------------------------------------------------------------------------------ checkpoints
def _checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:07d}"


def _save(out: Path, step: int, epoch: int, batch_in_epoch: int, saved, opt, cfg, rank) -> None:
    """Rank 0 writes ``checkpoints/step_N/`` atomically (temporary folder, then rename)."""
    if rank != 0:
        return
    from safetensors.torch import save_file

    final = _checkpoint_dir(out, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_weights(saved, tmp / "model.safetensors", cfg)
    tensors, meta = _optimizer_tensors(opt)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "optimizer": meta}
    save_file(tensors, str(tmp / "train_state.safetensors"), metadata={"state": json.dumps(state)})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    write_atomic(out / "checkpoints" / "latest", final.name.encode())
    kept = sorted((out / "checkpoints").glob("step_???????"))
    for old in kept[: max(0, len(kept) - cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)


def _save_weights(saved: nn.Module, path: Path, cfg: TrainConfig) -> None:
    from gsvision.model import GSCLIP, save_model

    if isinstance(saved, GSCLIP):
        save_model(saved, path, {"stage": cfg.stage})
    else:  # the rgb stage: an open_clip state dict (open_clip's pretrained=FILE reads it)
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in saved.state_dict().items()}
        save_file(state, str(path), metadata={"stage": cfg.stage, "model_name": cfg.model})


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _load_train_state(ckpt: Path, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(ckpt / "train_state.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    tensors = load_file(str(ckpt / "train_state.safetensors"))
    meta = state["optimizer"]
    opt_state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        opt_state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state


def _resolve_resume(cfg: TrainConfig, out: Path) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        pointer = out / "checkpoints" / "latest"
        if not pointer.is_file():
            return None  # nothing saved yet: start from the beginning
        return out / "checkpoints" / pointer.read_text().strip()
    path = Path(cfg.resume)
    if not (path / "train_state.safetensors").is_file():
        raise ValueError(f"--resume {path}: not a checkpoint directory (no train_state)")
    return path


def _load_weights(saved: nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    saved.load_state_dict(load_file(str(path)), strict=True)


# ------------------------------------------------------------------------------------ the loop
def _forward(cfg: TrainConfig, model: nn.Module, batch, device, autocast):
    """``(loss, stats)`` for one batch of the configured stage."""
    with autocast():
        if cfg.stage == "rgb":
            images, text = batch
            out = model(images.to(device), text.to(device))
            return contrastive_loss(
                out["image_features"], out["text_features"], out["logit_scale"], text.to(device)
            )
        if cfg.stage == "distill":
            splats, _, images = batch
            core = model.module if hasattr(model, "module") else model
            with torch.no_grad():
                teacher = core.encode_image(images.to(device))
            student = model(splats=splats.to(device))["image_features"]
            return distill_loss(student, teacher)
        splats, text = batch
        out = model(splats=splats.to(device), text=text.to(device))
        return contrastive_loss(
            out["image_features"], out["text_features"], out["logit_scale"], text.to(device)
        )


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final summary (also ``OUT/summary.json``).

    Raises:
        ValueError: for bad arguments, too little data, or an ``OUT`` holding another run
            without ``resume``.
    """
    cfg.check()
    rank, world, device = _dist_init()
    torch.manual_seed(cfg.seed + rank)
    out = Path(cfg.out)
    resume_dir = _resolve_resume(cfg, out)
    if resume_dir is None and (out / "checkpoints").exists() and rank == 0:
        raise ValueError(
            f"{out} holds another run's checkpoints: pass --resume latest, or clear it"
        )
    _barrier()
    out.mkdir(parents=True, exist_ok=True)
    model, saved, tokenizer, preprocess = _build(cfg, device)
    if cfg.stage == "rgb":
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.lock_text:
            lock_text_tower(model)
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(
        _param_groups(model, cfg.wd), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps
    )
    start_step, start_epoch, skip = 0, 0, 0
    if resume_dir is not None:
        _load_weights(saved, resume_dir / "model.safetensors")
        state = _load_train_state(resume_dir, opt)
        start_step, start_epoch, skip = state["step"], state["epoch"], state["batch_in_epoch"]
    data = _plan_data(cfg, rank, world, device)
    total = data.steps_per_epoch * cfg.epochs
    if rank == 0:
        (out / "params.json").write_text(json.dumps(asdict(cfg), indent=2))
        print(
            f"gsvision train: stage {cfg.stage}, {world} rank(s) on {device}, "
            f"{data.steps_per_epoch} steps/epoch × {cfg.epochs} epochs, batch {cfg.batch_size}"
            f"/rank, {n_train:,} trainable parameters"
            + (f", resuming at step {start_step}" if start_step else "")
        )
        if hasattr(model, "trainable_summary"):
            s = model.trainable_summary()
            print(f"  trainable {s['trainable']:,} of {s['total']:,} ({100 * s['fraction']:.1f}%)")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(model, device_ids=ids)
    step, log_f = start_step, (out / "log.jsonl").open("a") if rank == 0 else None
    t_start, last = time.perf_counter(), None
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        _eval_frozen_text(model)
        loader = _loader(cfg, data, epoch, tokenizer, preprocess)
        it = iter(loader)
        b_in_epoch = skip if epoch == start_epoch else 0
        for _ in range(b_in_epoch):
            next(it)  # already trained on before the resumed checkpoint
        t0 = time.perf_counter()
        while b_in_epoch < data.steps_per_epoch:
            batch = next(it)
            lr = _lr_at(step, cfg, total)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, stats = _forward(cfg, ddp, batch, device, autocast)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or float("inf"))
            opt.step()
            if cfg.stage != "distill":  # open_clip clamps the scale to ≤ 100
                core = model.module if hasattr(model, "module") else model
                with torch.no_grad():
                    core.logit_scale.clamp_(0, math.log(100))
            step += 1
            b_in_epoch += 1
            if step % cfg.log_every == 0 or b_in_epoch == data.steps_per_epoch:
                now = time.perf_counter()
                rate = (
                    cfg.batch_size
                    * world
                    * (cfg.log_every if last else b_in_epoch)
                    / (now - (last or t0))
                )
                last = now
                rec = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss.item(),
                    "lr": lr,
                    "grad_norm": float(gnorm),
                    "samples_per_s": rate,
                    **stats,
                }
                if rank == 0:
                    log_f.write(json.dumps(rec) + "\n")
                    log_f.flush()
                    extra = " ".join(f"{k} {v:.3f}" for k, v in stats.items())
                    print(
                        f"  step {step}/{total} epoch {epoch} loss {rec['loss']:.4f} {extra} "
                        f"lr {lr:.2e} {rate:.1f} samples/s",
                        flush=True,
                    )
            at_end = b_in_epoch == data.steps_per_epoch
            stop = cfg.stop_after is not None and step >= cfg.stop_after
            if (cfg.save_every and step % cfg.save_every == 0) or at_end or stop:
                next_epoch, next_b = (epoch + 1, 0) if at_end else (epoch, b_in_epoch)
                _save(out, step, next_epoch, next_b, saved, opt, cfg, rank)
            if stop:
                break
        del it, loader
        if cfg.stop_after is not None and step >= cfg.stop_after:
            break
    _barrier()
    summary = {
        "stage": cfg.stage,
        "steps": step,
        "total_steps": total,
        "finished": step >= total,
        "wall_s": time.perf_counter() - t_start,
        "world_size": world,
        "trainable_parameters": n_train,
    }
    if rank == 0:
        log_f.close()
        if step >= total:
            _save_weights(saved, out / "model.safetensors", cfg)
        write_atomic(out / "summary.json", json.dumps(summary, indent=2).encode())
    _barrier()
    return summary


# ------------------------------------------------------------------------------------ CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``gsvision train`` flags: one per :class:`TrainConfig` field."""
    d = TrainConfig(stage="contrastive", train_data="", out="")
    p.add_argument("--stage", required=True, choices=STAGES)
    p.add_argument(
        "--train-data", required=True, help="shard pattern, e.g. 'dir/{00000..00009}.tar'"
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--model", default=d.model, help="model name or gsvision checkpoint")
    p.add_argument("--pretrained", default=None, help="open_clip weights: tag or file")
    p.add_argument("--trainable", default=None, help="stem | paper | paper-text")
    for name in (
        "num_latents",
        "resampler_layers",
        "epochs",
        "batch_size",
        "warmup",
        "shuffle",
        "workers",
        "seed",
        "save_every",
        "log_every",
        "keep_checkpoints",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "wd", "beta1", "beta2", "eps", "grad_clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    p.add_argument(
        "-n", "--gaussians", dest="n", type=int, default=d.n, help="Gaussian slots per image"
    )
    p.add_argument("--precision", default=d.precision, choices=("auto", "fp32", "bf16"))
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint directory")
    p.add_argument("--stop-after", type=int, default=None, help="stop after this many steps")
    p.add_argument(
        "--lock-text",
        action="store_true",
        help="rgb stage: freeze the text tower except its projection (LiT)",
    )


def run(args: argparse.Namespace) -> int:
    names = {f for f in TrainConfig.__dataclass_fields__}
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    summary = train(cfg)
    return 0 if summary["finished"] or cfg.stop_after is not None else 1
