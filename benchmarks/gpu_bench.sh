#!/usr/bin/env bash
# The GPU checks of issue 5 in one go: tokens/s, MFU and memory of the full recipe's training
# step at 1B scale (Llama-3.2-1B's shape, 128,771-token vocabulary, sequence 4,096, packed), with
# and without activation checkpointing. Results go to $OUT (or benchmarks/results) as JSON.
#
# On a machine with this project's environment (make setup on a CUDA box):
#   bash benchmarks/gpu_bench.sh
# On a bare machine whose python3 already has torch with CUDA but no registry access, carry the
# wheels of what it lacks in .whl/ (see benchmarks/README.md); they are installed to /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
mkdir -p "$out"
gpu=$("$PY" -c "import re, torch; print(re.sub('[^a-z0-9]+', '-', torch.cuda.get_device_name(0).lower()))")
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
for ac in ac noac; do
  flag=$([ $ac = noac ] && echo --no-activation-checkpointing || true)
  "$PY" -m ichigo_lib.cli bench train --profile full --arch llama-1b --seq-len 4096 \
    --batch-size "${BATCH:-4}" --steps "${STEPS:-10}" --warmup "${WARMUP:-5}" --compile $flag \
    --out "$out/llama-1b_seq4096_b${BATCH:-4}_${ac}_${gpu}.json"
done
