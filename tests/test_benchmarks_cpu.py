"""The GPU check and the MFU benchmark in their CPU modes, so that they keep running where CI has no GPU."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    # No GPU is visible, whatever the machine: the CPU mode is what is under test. One thread:
    # on a CPU shared with other jobs, two threads waiting for each other make small steps crawl.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


@pytest.fixture
def binding_bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import binding_bench

    return binding_bench


def test_device_watch_names_what_is_not_on_the_device(binding_bench):
    watch = binding_bench.DeviceWatch(torch.device("meta"))
    layer = nn.Linear(2, 3)
    watch.start()
    layer(torch.zeros(1, 2))
    watch.stop()
    layer(torch.zeros(1, 2))  # no longer watched
    assert watch.calls == 1
    assert watch.problems == ["Linear parameter weight (3, 2) on cpu", "Linear parameter bias (3,) on cpu",
                              "Linear input 0 (1, 2) on cpu"]
    watch.check_parameters({"head": layer})
    assert watch.problems[-1] == "head.bias (3,) on cpu after binding"

    on_cpu = binding_bench.DeviceWatch(torch.device("cpu"))
    on_cpu.start()
    layer(torch.zeros(1, 2))
    on_cpu.stop()
    assert on_cpu.calls == 1 and on_cpu.problems == []


def test_gpu_check_runs_its_cpu_version_and_exits_zero():
    result = run_script("gpu_check.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no CUDA device: skipping the quick demo" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| binding step, paper-tiny.yaml"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    steps_per_second, samples_per_second = float(cells[1]), float(cells[2])
    assert steps_per_second > 0
    # 5 modalities x 8 image-text pairs + 8 alignment texts per step.
    assert samples_per_second == pytest.approx(48 * steps_per_second, rel=0.01)
    calls = int(re.search(r"(\d+) module calls checked: every parameter, buffer and tensor input was on cpu",
                          result.stdout).group(1))
    assert calls > 100


def mfu_flops(result) -> float:
    assert result.returncode == 0, result.stdout + result.stderr
    return float(re.search(r"; ([\d.]+) GFLOP per step \(forward \+ backward\)", result.stdout).group(1))


def test_mfu_counts_flops_and_compares_with_the_matmul_peak():
    result = run_script("mfu.py", "--models", "demo", "--steps", "1", "--image-batch", "4", "--text-batch", "4",
                        "--matmul-size", "512", "--text-backbone", "scratch", "--studies", "16")
    flops = mfu_flops(result)
    # Five text encoders (2 layers of width 128) and heads on 4 + 4 x 5 texts: well above 0.1 GFLOP.
    assert flops > 0.1
    for clock in ("wall clock", "process CPU time"):
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {clock} |"))
        _, seconds, achieved, peak, mfu = (cell.strip() for cell in row.strip("|").split("|"))
        assert float(seconds) > 0
        assert float(achieved.split()[0]) == pytest.approx(flops / float(seconds), rel=0.02, abs=0.05)
        assert 0 < float(mfu.strip("*%")) < 100
    assert "FLOPs by operator: aten." in result.stdout
    assert "_scaled_dot_product_flash_attention_for_cpu" in result.stdout  # attention counted on the CPU too


def test_mfu_on_the_demos_minilm_towers_counts_the_trained_layers_not_the_cached_backbone():
    """The demo's towers: a frozen MiniLM whose sentence vectors are cached before timing, under
    MLPs. A step is the MLPs, LoRA and heads (a few MFLOP); one MiniLM forward of the step's 24
    texts alone would be about 40 GFLOP, so a count above 0.1 means the cache was not used."""
    flops = mfu_flops(run_script("mfu.py", "--models", "demo", "--steps", "1", "--image-batch", "4",
                                 "--text-batch", "4", "--matmul-size", "512", "--studies", "16"))
    assert 0 < flops < 0.1


def test_distill_cache_on_the_paper_adapters_computes_the_same_loss_both_ways():
    """The SESKD cache benchmark in its published-models mode, at paper-tiny sizes: both modes
    run the same first step (identical loss), and the speed-up is the ratio of the two rates."""
    result = run_script("distill_cache.py", "--paper", "--tiny", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "studies per modality per step: xray 4, ct 2, retina 4, ecg 4, pathology 4" in result.stdout
    rows = {m.group(1): (float(m.group(2)), m.group(3)) for m in
            re.finditer(r"(cached|recomputed): ([\d.]+) s/step, one-off [-\d.]+ s, first-step loss ([\d.]+)",
                        result.stdout)}
    assert set(rows) == {"cached", "recomputed"}
    assert rows["cached"][1] == rows["recomputed"][1]
    speedup = float(re.search(r"speed-up from caching: ([\d.]+)x", result.stdout).group(1))
    if rows["cached"][0] > 0:
        assert speedup == pytest.approx(rows["recomputed"][0] / rows["cached"][0], rel=0.05)


def test_peft_mha_drift_reports_a_small_nonzero_drift_of_the_frozen_weights():
    result = run_script("peft_mha_drift.py", "--steps", "100", "--width", "64")
    assert result.returncode == 0, result.stderr
    drifts = [float(x) for x in re.findall(r"relative RMS ([0-9.e+-]+)", result.stdout)]
    assert len(drifts) == 3  # steps 1, 10, 100
    # Rounding from merge/unmerge: not zero (peft does move the frozen weights), far below 1e-5.
    assert 0 < drifts[-1] < 1e-5


def test_gpu_wheels_are_the_versions_pyproject_pins():
    """The GPU machine runs with the wheels benchmarks/gpu_wheels.sh downloads: a pin that drifted
    from pyproject's would measure another library than the one users install."""
    import tomllib

    def normalise(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    pins = dict(re.findall(r"([A-Za-z0-9_.-]+)==([^\s\"]+)", (REPO / "benchmarks" / "gpu_wheels.sh").read_text()))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = dict(spec.split("==") for spec in project)
    pinned = {normalise(k): v for k, v in pinned.items()}
    shared = {normalise(k): v for k, v in pins.items() if normalise(k) in pinned}
    assert {"peft", "open-clip-torch", "pydantic", "pydicom", "nibabel", "wfdb"} <= set(shared)
    # Left to the image (transformers, tokenizers) or out (faiss) for the carry limit, as the script says.
    assert not {"transformers", "tokenizers", "faiss-cpu"} & set(shared)
    for name, version in shared.items():
        assert version == pinned[name], f"{name}: gpu_wheels.sh {version}, pyproject {pinned[name]}"
    runner = (REPO / "benchmarks" / "gpu_device_run.sh").read_text()
    assert "benchmarks/gpu_check.py" in runner and ".whl/*.whl" in runner
    # The MiniLM package travels as float16 and is widened back before anything loads it.
    assert "model.safetensors.fp16" in (REPO / "benchmarks" / "gpu_wheels.sh").read_text()
    assert "model.safetensors.fp16" in runner and runner.index("model.safetensors.fp16") < runner.index("gpu_check.py --work")


def test_gpu_check_leaves_out_only_the_demo_index_where_faiss_is_missing(monkeypatch):
    import m3bind.stages.demo as demo

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    monkeypatch.setattr(demo, "index_test_studies", demo.index_test_studies)   # restored afterwards
    assert gpu_check.skip_index_without_faiss() is False                      # faiss is installed here
    assert demo.index_test_studies.__module__ == "m3bind.stages.demo"
    monkeypatch.setitem(sys.modules, "faiss", None)                           # as on the GPU machine
    assert gpu_check.skip_index_without_faiss() is True
    assert demo.index_test_studies(None, Path("/x/index"), 2) == Path("/x/index") / "(skipped: no faiss)"
