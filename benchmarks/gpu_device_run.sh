#!/usr/bin/env bash
# On the lent GPU machine, from the repository root: install .whl/ (made here by
# benchmarks/gpu_wheels.sh) beside the image's own packages, print the versions that will run,
# then run benchmarks/gpu_check.py with any arguments given. The log is kept in $OUT when set.
#   device run: {command: "bash benchmarks/gpu_device_run.sh", carry: [".whl"], timeout_s: 540}
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed: run benchmarks/gpu_wheels.sh here first"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/benchmarks" PYTHONUNBUFFERED=1
python3 - <<'PY' || exit 1
import faiss, nibabel, open_clip, peft, pydantic, pydicom, torch, transformers, wfdb
import m3bind
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, peft {peft.__version__}, open_clip {open_clip.__version__}, "
      f"pydantic {pydantic.__version__}, m3bind from {m3bind.__file__}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/gpu_check.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
