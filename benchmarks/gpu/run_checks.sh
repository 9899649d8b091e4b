#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (no network there: the working tree only, run
# from src/ with the machine's own torch and transformers). Writes its logs and results to $OUT (or ./gpu-out).
set -o pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, transformers, peft, accelerate, platform; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'python', platform.python_version())"
} 2>&1 | tee "$OUT/env.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_host_copies.py -k cuda -rs -s 2>&1 | tee "$OUT/tests.log"
timeout 200 python3 benchmarks/gpu/step_cuda.py --out "$OUT/step_cuda.json" 2>&1 | tee "$OUT/bench.log"
