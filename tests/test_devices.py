"""Device placement: the config's device decides where every model, cached embedding and batch
lives. CI has only a CPU; the same test runs on every CUDA device a machine has."""
from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from m3bind.cli import app
from m3bind.devices import resolve_device
from m3bind.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TINY = {"text_hidden_size": 16, "text_layers": 1, "text_heads": 2, "text_intermediate_size": 32,
        "native_dim": 8, "vocab_size": 120}


def test_auto_is_the_process_gpu_or_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "3")  # set by torchrun / accelerate launch for each process
    assert resolve_device("auto") == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_every_stage_computes_on_the_configured_device(tmp_path, device, monkeypatch):
    result = CliRunner().invoke(app, ["cohort", "--out", str(tmp_path / "cohort"), "--patients", "40", "--workers", "1"])
    assert result.exit_code == 0, result.output
    config = {"output_dir": "run", "shared_dim": 16, "demo_sizes": True, "device": device,
              "data": {"workers": 0},
              "modalities": {"xray": {"manifest": "cohort/xray/manifest.csv",
                                      "model": {"options": {"width": 4, "depth": 1, **TINY}}},
                             "ecg": {"manifest": "cohort/ecg/manifest.csv",
                                     "model": {"options": {"width": 8, "depth": 1, "image_heads": 2, **TINY}}}},
              "paired_manifests": {"xray": "cohort/paired/xray.csv", "ecg": "cohort/paired/ecg.csv"},
              "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 0},
              "bind": {"steps": 2, "image_batch_size": 4, "text_batch_size": 4, "warmup_steps": 0},
              "distill": {"kd_steps": 1, "contrastive_steps": 1, "batch_size": 4},
              "eval": {"shots": [1], "seeds": [0]}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))

    # Every forward pass of every module records where its parameters and its tensor inputs live.
    seen: set[str] = set()

    def record(module, args, kwargs):
        tensors = [t for t in (*args, *kwargs.values()) if torch.is_tensor(t)]
        seen.update(t.device.type for t in (*tensors, *module.parameters(recurse=False)))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: record(module, args, {}))
    try:
        for command in (["pretrain"], ["bind"], ["distill"], ["eval", "--no-few-shot"]):
            result = CliRunner().invoke(app, [*command, str(path)])
            assert result.exit_code == 0, result.output
    finally:
        handle.remove()
    assert seen == {torch.device(device).type}


def test_mixed_precision_auto_is_bf16_only_on_a_cuda_gpu_that_supports_it(monkeypatch):
    from m3bind.devices import resolve_mixed_precision

    assert resolve_mixed_precision("auto", torch.device("cpu")) == "no"
    assert resolve_mixed_precision("bf16", torch.device("cpu")) == "bf16"   # asked for: kept
    assert resolve_mixed_precision("no", torch.device("cuda", 0)) == "no"
    for supported, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert resolve_mixed_precision("auto", torch.device("cuda", 0)) == expected
