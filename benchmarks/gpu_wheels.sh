#!/usr/bin/env bash
# Here (with PyPI access): download, into .whl/, the Python 3.12 wheels of what the GPU machine's
# image lacks for benchmarks/gpu_check.py, or has at another version than pyproject pins. The
# image has torch, torchvision, accelerate, timm, safetensors, numpy, scipy, pandas, scikit-learn,
# matplotlib, tifffile, pillow, typer, rich, huggingface_hub (/work/.library/device/KINDS.md).
# The server's packages (fastapi, uvicorn) are left out: the check does not serve. About 46 MB;
# the device tool carries at most 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.whl/" >> .git/info/exclude; }
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
    transformers==5.24.0 tokenizers==0.23.3 peft==0.21.2 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 \
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing_extensions==4.16.0 faiss-cpu==1.15.1 pydicom==3.0.2 nibabel==5.4.2 wfdb==4.3.1 soundfile==0.14.0
du -sh .whl
