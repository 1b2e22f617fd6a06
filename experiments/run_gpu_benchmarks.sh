#!/usr/bin/env bash
# The GPU figures in BENCHMARKS.md: workloads A, B and D (benchmark.py) and the sweep C
# (benchmark_sweep.py, two width ranges), each into its own log under OUT_DIR.
# With n1024: 1024 trials of the MLP on synthetic MNIST-sized data (60,000 x 784), jaxnn
# against the raw-JAX loop (once: minutes) and torch.func vmap, compile included.
# Usage: bash experiments/run_gpu_benchmarks.sh OUT_DIR [steps|sweeps|all|n1024]  (from the repo root)
set -u
out=${1:?usage: run_gpu_benchmarks.sh OUT_DIR [steps|sweeps|all|n1024]}
what=${2:-all}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5  # PyTorch shares the GPU in the same process.
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import jax, jaxlib, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'optax', optax.__version__, jax.devices())"
  python -c "import flax, equinox, torch; print('flax', flax.__version__, 'equinox', equinox.__version__, 'torch', torch.__version__)"
  python -c "import haiku; print('haiku', haiku.__version__)"
} > "$out/machine.txt" 2>&1
if [ "$what" = n1024 ]; then
  timeout 480 python experiments/benchmark_sweep.py --scaling 1024 --mnist-sized --epochs 2 \
    --repeats 3 --loop-repeats 1 --contenders jaxnn "raw JAX loop" "torch.func vmap" \
    > "$out/sweep_n1024.txt" 2>&1
  tail -n 40 "$out"/*.txt
  exit
fi
if [ "$what" != sweeps ]; then
  timeout 200 python experiments/benchmark.py --rounds 9 --calls 20 > "$out/benchmark.txt" 2>&1
fi
if [ "$what" != steps ]; then
  timeout 200 python experiments/benchmark_sweep.py --repeats 3 > "$out/sweep_16_128.txt" 2>&1
  timeout 200 python experiments/benchmark_sweep.py --repeats 3 --widths 64 128 256 512 \
    > "$out/sweep_64_512.txt" 2>&1
fi
tail -n 40 "$out"/*.txt
