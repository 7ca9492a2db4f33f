#!/usr/bin/env bash
# The GPU check (`make gpu-check`): the *_gpu.py tests, then benchmarks/gpu_speed.py's table, in about
# five minutes on one GPU. No venv: it runs from src/ on the machine's own Python and torch (2.11 or
# later), and first installs from .whl/ the pure-Python packages epochal needs that such a machine may
# lack (`make gpu-wheels` fetches them where PyPI is reachable).
#   PYTHON=python3 bash benchmarks/gpu_check.sh     (GPU_SPEED_BUDGET=seconds, default 170; GPU_STALL=1 adds
#   checkpoint_stall.py --fsdp with 1B parameters)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
site=/tmp/epochal-gpu-site
if ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" .whl/*.whl || exit 1
fi
export PYTHONPATH="$PWD/src:$site" PYTHONUNBUFFERED=1
"$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="--timeout=120" -rfE tests/*_gpu.py | tee gpu-tests.log
tests_status=$?
"$PYTHON" benchmarks/gpu_speed.py --budget "${GPU_SPEED_BUDGET:-170}" --concurrent --json gpu_speed.json \
    --tests "$(tail -n 1 gpu-tests.log)" || exit 1
if [ -n "${GPU_STALL:-}" ]; then  # opt in (a few minutes): a 1B-parameter model's sharded save, sync vs async
    gpus=$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')
    "$PYTHON" benchmarks/checkpoint_stall.py --fsdp --procs "$gpus" --width 8192 --depth 15 --every 3 --saves 2 --repeats 1 | tee gpu-stall.log || exit 1
fi
exit "$tests_status"
