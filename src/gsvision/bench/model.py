"""`gsvision bench model`: image-tower forward time and memory, splat tower vs RGB tower.

Side by side in one run, on one backbone (random weights: speed does not depend on them): the RGB
tower (``encode_image`` on ``[B, 3, 224, 224]``, 197 tokens for ViT-B/16) against the splat tower
(``encode_splats`` on a padded ``Splats [B, N]``: stem → resampler → K + 1 tokens → the same blocks)
for each K. The splat tower's time *includes* its stem and resampler; the same passes are split
(forward hooks: ``perf_counter`` on CPU, CUDA events on GPU) into stem, resampler and the rest
(class token, positions, ``ln_pre``, transformer blocks, ``ln_post``, pooling, projection).

Timing: ``torch.inference_mode()``, one warm-up pass per configuration, then ``--repeats`` rounds
with the configurations interleaved (RGB, K₁, K₂, ... each round); median and minimum per pass. On
CPU in float32; on CUDA also bf16 autocast (``torch.cuda.synchronize`` around each pass), and each
precision once more with every pass (both towers alike) captured in a CUDA graph and replayed
(``cuda_fp32_graph``, ...; ``--no-graphs`` skips them): eager GPU timings include Python and
kernel-launch overhead, which a front end of many small ops pays most; a graph leaves GPU time.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` above what was allocated before the pass. On
CPU, the peak resident-set increase of one pass, measured in a fresh subprocess per configuration:
``MALLOC_MMAP_THRESHOLD_`` is fixed so freed tensors go back to the system, one warm-up pass, then
the kernel's RSS high-water mark is reset (``/proc/self/clear_refs``) and read after the pass
(without ``clear_refs``: the ``ru_maxrss`` increase over a first pass, noted as such).

Also: FLOPs per image (``torch.utils.flop_counter`` on a batch of 4, divided) and the
trainable-parameter fraction of every preset in :data:`gsvision.model.TRAINABLE_PRESETS` for ViT-B/16 and ViT-L/14, with the
default resampler and an attention-only one (``mlp_ratio=0``). Writes
``benchmarks/results/model.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace

import torch
from torch import Tensor

from gsvision.bench._common import write_result
from gsvision.splats import Splats, chol_from_axes

__all__ = ["main", "random_splats"]

TARGET_SPEEDUP_K98 = 1.8  # the target: splat tower (K = 98) vs RGB tower, whole forward
PAPER_FRACTIONS = {"paper": 0.097, "paper-text": 0.138}  # what the paper reports (ViT-L/14)
_MMAP_THRESHOLD = 65536  # bytes; fixed, so glibc returns every freed tensor to the system


def random_splats(
    batch: int, n: int, image_size: tuple[int, int] = (224, 224), seed: int = 0
) -> Splats:
    """A padded batch ``Splats [batch, n]`` of random valid Gaussians (7/8 to all slots valid).

    Sizes are log-uniform between 0.7% and 13.5% of the image (a fitted image at N = 1,024 spans
    about that), axis ratios 0.1–1, any orientation, colours in [0, 1].
    """
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(batch, n, 2, generator=g)
    major = torch.exp(torch.empty(batch, n).uniform_(-5, -2, generator=g))
    minor = major * torch.empty(batch, n).uniform_(0.1, 1.0, generator=g)
    theta = torch.rand(batch, n, generator=g) * math.pi
    colors = torch.rand(batch, n, 3, generator=g)
    counts = torch.randint(n - n // 8, n + 1, (batch,), generator=g)
    chol = chol_from_axes(major, minor, theta)
    return Splats.create(means, chol, colors, image_size, counts=counts).compact(n)


#: Resampler variants ``--variants`` can add beside the default (at the first K), by name.
VARIANTS = {
    "attention_only": {"mlp_ratio": 0.0},  # no MLP in the resampler's layers
    "two_layers": {"layers": 2},
    "no_latent_kv": {"attend_latents": False},  # keys/values: the Gaussians (and null) only
    "full_width": {"attn_ratio": 1.0, "mlp_ratio": 1.0},  # the resampler before narrowing
}


def _build(args, device: str = "cpu"):
    """``(models by name, images, splats)``: one backbone, a splat tower per K (``splat_k98``)
    and per resampler variant (``splat_k98_attention_only``) sharing it."""
    from gsvision.model import create_model
    from gsvision.model.gsclip import GSCLIP

    torch.manual_seed(args.seed)
    first = create_model(args.model, None, num_latents=args.latents[0])
    models = {f"splat_k{args.latents[0]}": first}
    res = first.cfg.resampler
    for name, change in [
        *((f"splat_k{k}", {"num_latents": k}) for k in args.latents[1:]),
        *((f"splat_k{args.latents[0]}_{v}", VARIANTS[v]) for v in args.variants),
    ]:
        cfg = replace(first.cfg, resampler=replace(res, **change))
        models[name] = GSCLIP(first.clip, cfg)  # shares the backbone: only the front end is new
    for m in models.values():
        m.eval().to(device)
    visual = first.clip.visual
    size = tuple(visual.image_size) if hasattr(visual, "image_size") else (224, 224)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(args.batch, 3, *size, generator=g).to(device)
    splats = random_splats(args.batch, args.n, size, args.seed).to(device)
    return models, images, splats


def _passes(models, images, splats) -> dict:
    """Name → a zero-argument forward pass of a whole image tower."""
    first = next(iter(models.values()))
    out = {"rgb": lambda: first.encode_image(images)}
    for name, m in models.items():
        out[name] = lambda m=m: m.encode_splats(splats)
    return out


def _tokens(models) -> dict[str, int]:
    first = next(iter(models.values()))
    out = {"rgb": int(first.clip.visual.positional_embedding.shape[0])}
    for name, m in models.items():
        out[name] = m.cfg.resampler.num_latents + 1  # class token + K latents
    return out


# ------------------------------------------------------------------------------------ timing
class _Split:
    """Time stamps inside a splat-tower pass (hooks): stem start, stem end, resampler end.

    CPU: ``perf_counter``; CUDA: events, which do not synchronise, so the pass runs as it would.
    """

    def __init__(self, tower, device: str):
        self.device, self.marks = device, {}
        self.handles = [
            tower.stem.register_forward_pre_hook(lambda mod, a: self._mark("start")),
            tower.stem.register_forward_hook(lambda mod, a, o: self._mark("stem")),
            tower.resampler.register_forward_hook(lambda mod, a, o: self._mark("resampler")),
        ]

    def _mark(self, name: str) -> None:
        if self.device == "cuda":
            self.marks[name] = torch.cuda.Event(enable_timing=True)
            self.marks[name].record()
        else:
            self.marks[name] = time.perf_counter()

    def seconds(self) -> tuple[float, float]:
        """``(stem, resampler)`` seconds of the last pass (after it has synchronised)."""
        m = self.marks
        if self.device == "cuda":
            return m["start"].elapsed_time(m["stem"]) / 1e3, m["stem"].elapsed_time(
                m["resampler"]
            ) / 1e3
        return m["stem"] - m["start"], m["resampler"] - m["stem"]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _autocast(device: str, precision: str, cache: bool = True):
    if precision == "bf16":
        return torch.autocast(device, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def _profile_front(models, splats: Splats, device: str, precision: str, rows: int = 15) -> dict:
    """The operators that take the time in one pass of each splat tower's stem + resampler
    (``torch.profiler``, after a warm-up pass), as a printed table: name → table text."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    out = {}
    with torch.inference_mode(), _autocast(device, precision):
        for name, m in models.items():
            m.splat.tokens(splats)  # warm-up
            with profile(activities=activities) as prof:
                m.splat.tokens(splats)
                if device == "cuda":
                    torch.cuda.synchronize()
            table = prof.key_averages().table(sort_by=sort, row_limit=rows)
            print(f"  front end, {name}, {device} {precision}:\n{table}", flush=True)
            out[name] = table
    return out


def _graphed(passes: dict, precision: str) -> tuple[dict, dict[str, str]]:
    """Each pass captured once in a CUDA graph on its fixed inputs: name → ``replay``.

    Replaying a graph launches the whole pass at once, so what remains is GPU time, without the
    Python and kernel-launch overhead of eager mode (the way a serving stack runs a model of fixed
    shapes). Autocast's weight cache is off while capturing, as graphs require. Returns the graphed
    passes and, by name, why a pass could not be captured.
    """
    graphs, errors = {}, {}
    with torch.inference_mode(), _autocast("cuda", precision, cache=False):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
            for fn in passes.values():
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        for name, fn in passes.items():
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    fn()
            except Exception as exc:  # a pass that synchronises, say: reported, not timed
                errors[name] = f"{type(exc).__name__}: {exc}"
                torch.cuda.synchronize()
                continue
            graphs[name] = graph.replay
    return graphs, errors


def _time(
    passes: dict, splits: dict, device: str, precision: str, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per pass over interleaved rounds: name → list, plus ``NAME_stem`` and
    ``NAME_resampler`` from the same passes for every name in ``splits``."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    runs: dict[str, list[float]] = {}
    with torch.inference_mode(), _autocast(device, precision):
        for _ in range(warmup):
            for fn in passes.values():
                fn()
        sync()
        for r in range(repeats):
            for name, fn in passes.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                runs.setdefault(name, []).append(time.perf_counter() - t0)
                if name in splits:
                    stem, resampler = splits[name].seconds()
                    runs.setdefault(f"{name}_stem", []).append(stem)
                    runs.setdefault(f"{name}_resampler", []).append(resampler)
            line = ", ".join(f"{n} {runs[n][-1]:.3f}" for n in passes)
            print(f"  {device} {precision} round {r}: {line} s", flush=True)
    return runs


def _summarise(runs: dict, tokens: dict, batch: int, names: list[str]) -> dict:
    rgb = runs["rgb"]
    out = {
        "rgb": {
            "tokens": tokens["rgb"],
            "median_s": statistics.median(rgb),
            "min_s": min(rgb),
            "images_per_s": batch / statistics.median(rgb),
        }
    }
    for name in names:
        if name not in runs:  # not captured (graphed mode): the reason is recorded elsewhere
            continue
        full = runs[name]
        med = statistics.median(full)
        out[name] = {"tokens": tokens[name], "median_s": med, "min_s": min(full)}
        out[name]["images_per_s"] = batch / med
        if f"{name}_stem" in runs:  # the split (hooks) is measured in eager mode only
            stem, res = runs[f"{name}_stem"], runs[f"{name}_resampler"]
            front = [s + r for s, r in zip(stem, res, strict=True)]
            rest = [f - s for f, s in zip(full, front, strict=True)]
            out[name].update(
                stem_median_s=statistics.median(stem),
                resampler_median_s=statistics.median(res),
                stem_resampler_median_s=statistics.median(front),
                blocks_and_head_median_s=statistics.median(rest),
                stem_resampler_share=statistics.median(
                    [s / f for s, f in zip(front, full, strict=True)]
                ),
            )
        out[name] |= {
            "speedup_vs_rgb_median": statistics.median(rgb) / med,
            "speedup_vs_rgb_min": min(rgb) / min(full),
            # per round: each splat pass against the RGB pass of the same round
            "speedup_vs_rgb_per_round": [r / f for r, f in zip(rgb, full, strict=True)],
        }
    return out


def _flops(models, image: Tensor, ns: list[int], seed: int) -> dict:
    """FLOPs per image (a multiply-add counts 2) of the RGB tower, and of each splat tower and
    its stem + resampler at each N in ``ns``: counted on a batch of ``len(image)`` and divided,
    so what a pass computes once for its batch (the fused stem/key-value weights) is shared as in
    a real batch, not charged to one image."""
    from torch.utils.flop_counter import FlopCounterMode

    b = len(image)

    def count(fn) -> int:
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return round(counter.get_total_flops() / b)

    first = next(iter(models.values()))
    for m in models.values():
        m.train()  # nn.MultiheadAttention's inference fast path hides its matmuls from the counter
    try:  # with grad on: the counter's module tracker fails on no_grad outputs of trained parts
        rgb = count(lambda: first.encode_image(image))
        by_n = {}
        for n in ns:
            one = random_splats(b, n, tuple(image.shape[-2:]), seed).to(image.device)
            row = {}
            for name, m in models.items():
                total = count(lambda m=m, one=one: m.encode_splats(one))
                front = count(lambda m=m, one=one: m.splat.tokens(one))
                row[name] = {
                    "total": total,
                    "stem_resampler": front,
                    "rgb_over_splat": rgb / total,
                }
            by_n[str(n)] = row
    finally:
        for m in models.values():
            m.eval()
    return {"rgb": rgb, "by_n": by_n}


# ------------------------------------------------------------------------------------ memory
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


def _memory_worker(args) -> dict:
    """In this (fresh) process: the peak RSS increase of one pass of each named configuration."""
    models, images, splats = _build(args)
    passes = _passes(models, images, splats)
    resettable = os.path.exists("/proc/self/clear_refs") and _reset_hwm()
    out = {}
    with torch.inference_mode():
        for name in args.memory_worker.split(","):
            fn = passes[name]
            gc.collect()
            if resettable:
                fn()  # warm-up: one-time buffers, lazy initialisation
                gc.collect()
                base = _status_kb("VmRSS")
                _reset_hwm()
                fn()
                peak = _status_kb("VmHWM")
                method = "VmHWM after clear_refs, second pass"
            else:  # the high-water mark cannot be reset: only the first configuration is honest
                base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                fn()
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                method = "ru_maxrss increase, first pass"
            out[name] = {
                "peak_increase_bytes": (peak - base) * 1024,
                "rss_before_bytes": base * 1024,
                "method": method,
            }
    return out


def _cpu_memory(args, names: list[str], fresh: bool = True) -> dict:
    """Peak RSS increase per configuration, in a fresh subprocess each (``fresh``) or one for all."""
    out = {}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD)}
    for group in [[n] for n in names] if fresh else [names]:
        cmd = [sys.executable, "-m", "gsvision.bench.model", "--memory-worker", ",".join(group)]
        cmd += ["--model", args.model, "--batch", str(args.batch), "--n", str(args.n)]
        cmd += ["--latents", ",".join(map(str, args.latents)), "--seed", str(args.seed)]
        cmd += ["--variants", ",".join(args.variants)] if args.variants else []
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"memory worker {group} failed:\n{proc.stderr[-2000:]}")
        rows = json.loads(proc.stdout.strip().splitlines()[-1])
        for name, row in rows.items():
            out[name] = {**row, "fresh_process": fresh or len(group) == 1}
            mib = row["peak_increase_bytes"] / 2**20
            print(f"  memory {name}: +{mib:.0f} MiB peak RSS", flush=True)
    return out


def _cuda_memory(passes: dict, names: list[str], precision: str) -> dict:
    out = {}
    with torch.inference_mode(), _autocast("cuda", precision):
        for name in names:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            passes[name]()
            torch.cuda.synchronize()
            out[name] = {
                "peak_increase_bytes": torch.cuda.max_memory_allocated() - base,
                "method": "torch.cuda.max_memory_allocated above memory_allocated before",
            }
    return out


# ------------------------------------------------------------------------------------ fractions
def _fractions(model_names: list[str], num_latents: int) -> dict:
    """``model → resampler variant → preset → trainable_summary()`` (K = ``num_latents``)."""
    from gsvision.model import TRAINABLE_PRESETS, GSCLIPCfg, ResamplerCfg, create_model
    from gsvision.model.gsclip import GSCLIP

    variants = {"default": {}, "attention_only": {"mlp_ratio": 0.0}}
    out = {}
    for name in model_names:
        t0 = time.perf_counter()
        clip = create_model(name, None, num_latents=num_latents).clip  # builds the backbone once
        out[name] = {}
        for variant, res_kw in variants.items():
            rows = {}
            for preset, t in TRAINABLE_PRESETS.items():
                res = ResamplerCfg(num_latents=num_latents, **res_kw)
                m = GSCLIP(clip, GSCLIPCfg(model_name=name, resampler=res, trainable=t))
                rows[preset] = {k: float(v) if k == "fraction" else int(v)
                                for k, v in m.trainable_summary().items()}  # fmt: skip
                del m
            out[name][variant] = rows
        del clip
        gc.collect()
        print(f"  fractions {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    return out


# ------------------------------------------------------------------------------------ report
def _print_table(result: dict) -> None:
    for key, rows in result["timing"].items():
        mem = result["memory"].get(key, {})
        print(f"\n{result['settings']['model']}, batch {result['settings']['batch']}, {key}:")
        wide = max(12, *(len(name) for name in rows))
        print(f"  {'tower':<{wide}} {'tokens':>6} {'median s':>9} {'min s':>8} {'img/s':>7} "
              f"{'front s':>8} {'speed-up':>8} {'peak MiB':>9}")  # fmt: skip
        for name, r in rows.items():
            peak = mem.get(name, {}).get("peak_increase_bytes")
            print(
                f"  {name:<{wide}} {r['tokens']:>6} {r['median_s']:>9.3f} {r['min_s']:>8.3f} "
                f"{r['images_per_s']:>7.1f} {r.get('stem_resampler_median_s', 0):>8.3f} "
                f"{r.get('speedup_vs_rgb_median', 1):>7.2f}x "
                f"{(peak or 0) / 2**20:>9.0f}"
            )
    flops = result["flops_per_image"]
    for n, row in flops["by_n"].items():
        line = ", ".join(
            f"{name} {r['total'] / 1e9:.2f} G ({r['rgb_over_splat']:.2f}x fewer)"
            for name, r in row.items()
        )
        print(f"  FLOPs/image at N = {n}: rgb {flops['rgb'] / 1e9:.2f} G, {line}")
    for name, variants in result["trainable"].items():
        for variant, rows in variants.items():
            line = ", ".join(f"{p} {100 * r['fraction']:.1f}%" for p, r in rows.items())
            print(f"  trainable {name} ({variant} resampler): {line}")


def _parse(argv):
    ap = argparse.ArgumentParser(prog="gsvision bench model", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ViT-B-16", help="backbone for the timing")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--n", type=int, default=1024, help="Gaussian slots per image")
    ap.add_argument("--latents", default="98,196", help="K values, comma-separated")
    ap.add_argument("--variants", default="",
                    help="resampler variants to time beside the default at the first K, "
                    f"comma-separated: {', '.join(VARIANTS)}")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    ap.add_argument("--warmup", type=int, default=1, help="untimed passes per configuration")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--fraction-models", default="ViT-B-16,ViT-L-14",
                    help="backbones for the trainable fractions, comma-separated ('' = none)")  # fmt: skip
    ap.add_argument("--flops-n", default="256,512,1024,2048",
                    help="N values for the FLOP count (batch 4; cheap), comma-separated")  # fmt: skip
    ap.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    ap.add_argument("--profile", action="store_true",
                    help="also profile one pass of each splat tower's stem + resampler per "
                    "precision (torch.profiler; the top operators go to the JSON)")  # fmt: skip
    ap.add_argument("--no-graphs", action="store_true",
                    help="on CUDA, skip the CUDA-graph timings (eager only)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the harness")
    ap.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.batch, args.n, args.latents = "GS-ViT-Tiny-8-64", 4, 64, "16,32"
        args.repeats, args.warmup, args.fraction_models = 2, 1, "GS-ViT-Tiny-8-64"
        args.flops_n = "32"
    args.latents = [int(k) for k in str(args.latents).split(",") if k]
    args.variants = [v for v in str(args.variants).split(",") if v]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        ap.error(f"unknown --variants {unknown}; choose from {sorted(VARIANTS)}")
    args.fraction_models = [m for m in args.fraction_models.split(",") if m]
    args.flops_n = [int(n) for n in str(args.flops_n).split(",") if n]
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the model benchmark; returns what it writes to ``model.json``."""
    args = _parse(argv)
    if args.memory_worker:
        result = _memory_worker(args)
        print(json.dumps(result), flush=True)
        return result
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precisions = ["fp32", "bf16"] if device == "cuda" else ["fp32"]
    print(f"gsvision bench model: {args.model}, batch {args.batch}, N {args.n}, "
          f"K {args.latents}, {device}", flush=True)  # fmt: skip
    t_start = time.perf_counter()
    models, images, splats = _build(args, device)
    first = next(iter(models.values()))
    passes = _passes(models, images, splats)
    tokens = _tokens(models)
    full_names = ["rgb", *models]
    timing, runs_all, memory, graph_errors, profiles = {}, {}, {}, {}, {}
    for precision in precisions:
        key = f"{device}_{precision}"
        splits = {name: _Split(m.splat, device) for name, m in models.items()}
        runs = _time(passes, splits, device, precision, args.warmup, args.repeats)
        for split in splits.values():
            split.remove()
        runs_all[key] = runs
        timing[key] = _summarise(runs, tokens, args.batch, list(models))
        if device == "cuda" and not args.no_memory:
            memory[key] = _cuda_memory(passes, full_names, precision)
        if args.profile:
            profiles[key] = _profile_front(models, splats, device, precision)
        if device == "cuda" and not args.no_graphs:
            graphed, errors = _graphed(passes, precision)
            if "rgb" in graphed:
                runs = _time(graphed, {}, device, f"{precision}_graph", 0, args.repeats)
                runs_all[f"{key}_graph"] = runs
                timing[f"{key}_graph"] = _summarise(runs, tokens, args.batch, list(models))
            if errors:
                graph_errors[key] = errors
            del graphed
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    flops = _flops(models, images[:4], sorted({*args.flops_n, args.n}), args.seed)
    params = {
        "rgb_tower": sum(p.numel() for p in first.clip.visual.parameters()),
        **{
            f"{name}_stem_resampler": m.trainable_summary()["stem_and_resampler"]
            for name, m in models.items()
        },  # fmt: skip
    }
    del models, first, passes, images, splats
    gc.collect()
    if device == "cpu" and not args.no_memory:
        memory["cpu_fp32"] = _cpu_memory(args, full_names, fresh=not args.quick)
    trainable = _fractions(args.fraction_models, 98 if not args.quick else args.latents[0])

    headline = timing[f"{device}_fp32"].get("splat_k98") if 98 in args.latents else None
    result = {
        "settings": {**vars(args), "device": device, "precisions": precisions},
        "timing": timing,
        "runs_s": runs_all,
        "memory": memory,
        "flops_per_image": flops,
        "parameters": params,
        "trainable": trainable,
        "paper_fractions": PAPER_FRACTIONS,
        "target_speedup_k98": TARGET_SPEEDUP_K98,
        "speedup_k98": headline["speedup_vs_rgb_median"] if headline else None,
        "speedup_k98_by_mode": {
            key: rows["splat_k98"]["speedup_vs_rgb_median"]
            for key, rows in timing.items()
            if "splat_k98" in rows
        },
        "cuda_graph_errors": graph_errors,
        "front_end_profiles": profiles,
        "meets_target": (headline["speedup_vs_rgb_median"] >= TARGET_SPEEDUP_K98)
        if headline
        else None,
        "wall_seconds": time.perf_counter() - t_start,
    }
    path = write_result("model", result, args.out)
    _print_table(result)
    if headline:
        print(f"  K = 98 speed-up {result['speedup_k98']:.2f}x (target {TARGET_SPEEDUP_K98}x)")
    print(f"  wrote {path}")
    return result


if __name__ == "__main__":
    main()
