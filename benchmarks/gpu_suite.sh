#!/usr/bin/env bash
# Everything a GPU session checks, in one command that fits a short lease: the software found, the fused
# kernels' numerics on the GPU (tests/test_gpu_kernels.py), then GPT-2 small in bf16 (benchmarks/bench_gpu.py)
# with the variants that say what each accelerator setting buys, as ratios measured in the same process.
#   bash benchmarks/gpu_suite.sh [OUTDIR]     (default bench/gpu; `make gpu-suite`)
# Variants that keep the parameters' shapes come first: they reuse the state (bench_gpu.py), the rest re-initialise. Every run is
# also profiled (bench_gpu.py --trace-dir): its time by category in the JSON, the traces kept in OUTDIR/trace.tar.
# BUDGET_S caps the benchmark's variants (the ones not started by then are recorded as skipped); SMOKE=1: tiny shapes;
# TESTS: the test files to run first (default: the GPU kernels' and the fused head's).
set -u
dir=${1:-bench/gpu}
mkdir -p "$dir"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$dir/gpu_info.txt"
python3 -c "import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__,
'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$dir/gpu_info.txt"
timeout "${TESTS_TIMEOUT_S:-180}" python3 -m pytest -n 0 -p no:cacheprovider -q -rs \
  ${TESTS:-tests/test_gpu_kernels.py tests/test_fused_xent.py} 2>&1 \
  | tee "$dir/gpu_tests.log" | tail -25
python3 benchmarks/bench_gpu.py ${SMOKE:+--smoke} --out "$dir/gpu.json" --budget-s "${BUDGET_S:-inf}" \
  --trace-dir "$dir/trace" \
  --variant model.xent_chunk=0 \
  --variant train.batch_size=32 \
  --variant train.batch_size=64 \
  --variant train.batch_size=128 \
  --variant model.remat=true \
  --variant model.attention_impl=xla \
  --variant model.attention_impl=pallas \
  --variant model.vocab_pad_multiple=0
rc=$?
# one file for the traces (trace/<run>/{trace.json.gz,hlo.txt.gz,meta.json}): `tar -xf` it where the JSON is read
tar -C "$dir" -cf "$dir/trace.tar" trace && rm -rf "$dir/trace"
exit $rc
