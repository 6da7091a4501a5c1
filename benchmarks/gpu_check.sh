#!/usr/bin/env bash
# The project's GPU checks as one script, for a machine with a CUDA GPU (such as the device tool's
# H200, whose image has PyTorch but not Hydra): the CUDA tests, then the benchmark scripts on
# CUDA with AMP (float32, float16, bfloat16), and the p4 rows (bench_p4_model.py: ours against the
# hand-written G-CNN, float32 and bfloat16). Logs and tables go to $OUT (default gpu-check/).
# Pure-Python packages that machine lacks install from .whl/ if it exists, made beforehand with
#   pip download --no-deps -d .whl hydra-core==1.3.8 omegaconf==2.3.1
#   pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3     (a source package: built here)
# About 11 minutes at most (each step has its own time limit).
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/* \
        && export PYTHONPATH=/tmp/site:$PWD
fi
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, output to the screen and $out/NAME
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name"
    echo "== $name: exit status ${PIPESTATUS[0]}"
}
step gpu.txt 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
step tests.log 150 python3 -m pytest -q -p no:cacheprovider -k cuda tests/nn/test_layers.py tests/benchmarks/test_benchmarks.py \
    tests/models/test_p4_models.py
step bench_gmconv.md 120 python3 benchmarks/bench_gmconv.py --device cuda --repeats 10
step bench_training.md 240 python3 benchmarks/bench_training.py --device cuda --rounds 3
# the p4 classifier against the hand-written conv2d G-CNN, training and inference, both boundaries
step bench_p4_model_float32.md 90 python3 benchmarks/bench_p4_model.py --device cuda --rounds 5
step bench_p4_model_bfloat16.md 90 python3 benchmarks/bench_p4_model.py --device cuda --rounds 5 --amp-dtype bfloat16
