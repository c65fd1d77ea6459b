#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (see docs/benchmarks.md):
#   1. the GPU tests (pytest -m gpu: compiled Triton and sparse kernels vs the dense reference, the
#      codec's geometry refinement on the GPU);
#   2. gsvision bench raster_gpu, model (fp32 + bf16, eager and CUDA graphs, a front-end profile),
#      fit (batched vs one by one) and a profile of a fitting step, convert (with and without the
#      encoder thread), a quick demo (training in bf16 on the GPU), serve.
# Each step has its own time limit and the next step runs whatever happened; results go to
# $OUT (default gpu-out/) as <bench>.json plus one log, gpu_check.log.
#
# On a machine whose Python lacks the project's dependencies, put their wheels in .whl/ (a folder
# git ignores); they are installed into /tmp/site first. For the lent GPU machines (Python 3.12,
# torch, triton, timm, numba there already), on this machine:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl open_clip_torch==3.3.0 \
#     webdataset==1.0.2 braceexpand==0.1.7 zstandard==0.25.0 ftfy==6.3.1 wcwidth==0.9.4 \
#     fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 \
#     annotated-types==0.8.0 typing-inspection==0.4.5 uvicorn==0.54.0 python-multipart==0.0.34 \
#     annotated-doc==0.0.7 typing_extensions==4.16.0 opentelemetry-api==1.45.2
# and name .whl in the run's carry. The checkout is used in place (src/ on
# PYTHONPATH), so nothing needs `pip install -e`. STEPS="tests model ..." runs some steps only; QUICK=1
# passes --quick to the benchmarks (a dry run of the script itself on any machine).
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
QUICK=${QUICK:-}
q=${QUICK:+--quick}

STEPS=" ${STEPS:-tests raster_gpu model fit fit_profile convert convert_overlap demo_quick serve} "  # which steps to run
step() {  # step NAME SECONDS CMD...: run CMD with a time limit, report its status
    local name=$1 limit=$2
    shift 2
    [[ $STEPS == *" $name "* ]] || return 0
    echo "=== $(date +%T) $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@"
    echo "=== $name: rc=$? in $((SECONDS - t0))s"
}

echo "=== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
"$PY" -c "import torch, triton, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"

# the compiled Triton kernel is checked first; if it fails, the benches fall back to sparse
step tests 150 "$PY" -m pytest -q -x -m gpu -p no:cacheprovider tests/raster tests/codec
"$PY" - <<'EOF' || export GSVISION_BACKEND=sparse
import torch
from gsvision.raster import render, resolve_backend
if not torch.cuda.is_available():
    raise SystemExit(0)
import sys
sys.path.insert(0, "tests/raster")
import raster_cases as H
s = H.random_splats(batch=2, n=256, height=64, width=64, seed=0).to("cuda")
a = render(s, 64, 64, backend="triton")
b = render(s, 64, 64, backend="reference")
err = (a - b).abs().max().item()
print("triton vs reference max |diff| at 64²:", err)
raise SystemExit(0 if err < 1e-3 else 1)
EOF
echo "=== rasteriser backend for the benches: ${GSVISION_BACKEND:-auto}"

step raster_gpu 60 "$PY" -m gsvision.cli bench raster_gpu --out-dir "$OUT" \
    ${QUICK:+--batches 1 --n 64 --iters 2}
step model 100 "$PY" -m gsvision.cli bench model --repeats 3 --profile --variants attention_only,no_latent_kv --out "$OUT" $q
step fit 120 "$PY" -m gsvision.cli bench fit --sections quality batch --inits grid --out "$OUT" $q
# a GPU fits a batch of 128 in about the time it fits 16: give it enough images to show it
convert_args=${CONVERT_ARGS:---shards 4 --per-shard 128 --batch 128 --workers 4}
[ -n "$QUICK" ] && convert_args=--quick
# where a fitting step's time goes at a conversion-sized batch (top operators by GPU time)
step fit_profile 60 "$PY" - <<'PYEOF'
import torch
from torch.profiler import ProfilerActivity, profile
from gsvision.fit import fit
from gsvision.io import load_image, sample_images
cuda = torch.cuda.is_available()
b, size = (128, 224) if cuda else (4, 32)  # a dry run on CPU: tiny
images = ([load_image(p) for p in sample_images()] * 22)[:b]
fit(images, 1024 if cuda else 16, iters=5, size=size)  # compile, warm up
acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
with profile(activities=acts) as prof:
    fit(images, 1024 if cuda else 16, iters=20, size=size)
    if cuda:
        torch.cuda.synchronize()
for key in (["cuda_time_total"] if cuda else []) + ["cpu_time_total"]:
    print(prof.key_averages().table(sort_by=key, row_limit=20))
PYEOF
# a warm-up (Triton and numba compile on first use), then the job, then the same job with encoding
# on a second thread (--overlap), side by side
step convert 20 "$PY" -m gsvision.cli bench convert --quick --out /tmp/gsv-warm-up
step convert 90 "$PY" -m gsvision.cli bench convert --out "$OUT" $convert_args
mkdir -p "$OUT/overlap"
step convert_overlap 90 "$PY" -m gsvision.cli bench convert --out "$OUT/overlap" $convert_args \
    --overlap
# training on the GPU (bf16 autocast), distillation, contrastive stage and zero-shot evaluation, small
step demo_quick 150 "$PY" -m gsvision.cli demo --quick -o /tmp/gsv-demo-quick
step serve 90 "$PY" -m gsvision.cli bench serve --out "$OUT" $q
ls -la "$OUT"
