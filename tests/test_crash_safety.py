"""Crash safety: a `m3bind bind` or `m3bind distill` killed with SIGKILL and rerun with --resume
ends with exactly the weights of an uninterrupted run, and a checkpoint write that fails (a full
disk) keeps the previous checkpoint and stops the run with one clear line.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from m3bind.cli import app
from m3bind.errors import CheckpointError
from m3bind.train import checkpoint
from m3bind.train.checkpoint import CheckpointManager
from m3bind.train.loop import LoopSettings, run_loop
from m3bind.train.sampling import step_generator

runner = CliRunner()

# Built-in models far smaller than the demo's, so every stage runs in seconds on two cores.
TEXT_TOWER = {"text_hidden_size": 16, "text_layers": 1, "text_heads": 2, "text_intermediate_size": 32,
              "native_dim": 8, "vocab_size": 120}
BIND_STEPS, DISTILL_STEPS = 6, 6

# The m3bind CLI, except that it stops for good in the middle of writing its second checkpoint
# (the model file is on disk, the rest is not), and says so in the file named by
# $PAUSE_MARKER. The test's SIGKILL then always lands mid-run, mid-write, with exactly one
# complete checkpoint on disk, however slow or busy the machine is.
CLI_PAUSING_IN_SECOND_CHECKPOINT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from m3bind.train import checkpoint
    from m3bind.cli import app

    write = checkpoint.save_weights
    model_files = []

    def pausing(tensors, path):
        write(tensors, path)
        if Path(path).name == checkpoint.MODEL_FILE:
            model_files.append(path)
            if len(model_files) == 2:
                Path(os.environ["PAUSE_MARKER"]).touch()
                time.sleep(600)

    checkpoint.save_weights = pausing
    app(args=sys.argv[1:], prog_name="m3bind")
""")


def _write_config(root: Path, output_dir: str) -> Path:
    config = {
        "seed": 0, "output_dir": output_dir, "shared_dim": 16, "demo_sizes": True,
        "modalities": {
            "xray": {"manifest": "cohort/xray/manifest.csv",
                     "model": {"options": {"width": 4, "depth": 1, **TEXT_TOWER}}},
            "ecg": {"manifest": "cohort/ecg/manifest.csv", "preprocess": {"normalize": "none"},
                    "model": {"options": {"width": 8, "depth": 1, "image_heads": 2, **TEXT_TOWER}}},
        },
        "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 0, "checkpoint_every": 2, "augment": False},
        # LoRA dropout (on by default) draws from the global RNG every step: a resume that does
        # not restore it ends with other weights.
        "bind": {"steps": BIND_STEPS, "image_batch_size": 4, "text_batch_size": 8, "warmup_steps": 1,
                 "lr": 1.0e-3, "checkpoint_every": 1},
        "distill": {"kd_steps": DISTILL_STEPS // 2, "contrastive_steps": DISTILL_STEPS // 2, "batch_size": 4,
                    "checkpoint_every": 1},
    }
    path = root / f"{output_dir}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _invoke(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A tiny cohort and one uninterrupted pretrain -> bind -> distill in ``<root>/reference``,
    with a copy of its output folder as each stage left it in ``<root>/after-<stage>``."""
    from m3bind.cohort import generate_cohort

    root = tmp_path_factory.mktemp("crash")
    generate_cohort(root / "cohort", n_patients=30, seed=0, workers=1)
    config = _write_config(root, "reference")
    for stage in ("pretrain", "bind", "distill"):
        _invoke(stage, str(config))
        shutil.copytree(root / "reference", root / f"after-{stage}")
    return root


def _run_after(reference: Path, name: str, stage: str) -> Path:
    """A config writing into ``<root>/<name>``, a copy of the reference's output folder after
    ``stage`` (its models, and its caches: a run is compared with a run that starts as warm)."""
    shutil.copytree(reference / f"after-{stage}", reference / name)
    return _write_config(reference, name)


def _kill_mid_run(config: Path, command: str) -> None:
    marker = config.with_suffix(".paused")
    child = subprocess.Popen([sys.executable, "-c", CLI_PAUSING_IN_SECOND_CHECKPOINT, command, str(config)],
                             env={**os.environ, "PAUSE_MARKER": str(marker)}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"`m3bind {command}` ended (exit code {child.returncode}) before its second checkpoint:\n"
                        f"{child.stdout.read()}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail(f"`m3bind {command}` did not reach its second checkpoint in 300 s")
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.communicate()
    assert child.returncode == -signal.SIGKILL


def _resume(config: Path, command: str) -> str:
    done = subprocess.run([sys.executable, "-m", "m3bind.cli", command, str(config), "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _assert_same_tensors(expected_file: Path, actual_file: Path) -> None:
    expected, actual = load_file(expected_file), load_file(actual_file)
    assert expected.keys() == actual.keys(), actual_file
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), f"{actual_file}: {name} differs from the uninterrupted run"


def _assert_killed_after_first_checkpoint(run_dir: Path) -> None:
    checkpoints = run_dir / "checkpoints"
    assert CheckpointManager(checkpoints).latest() == checkpoints / "step_0000001"
    assert (checkpoints / ".tmp_step_0000002").is_dir()  # the half-written second checkpoint


def test_killed_bind_resumes_to_the_uninterrupted_weights(reference):
    config = _run_after(reference, "killed-bind", "pretrain")
    _kill_mid_run(config, "bind")
    killed = reference / "killed-bind"
    _assert_killed_after_first_checkpoint(killed / "bind")
    assert not (killed / "bind" / "model").exists()

    output = _resume(config, "bind")
    assert f"bind: started at 1/{BIND_STEPS}" in output  # continued from the checkpoint, not from scratch
    _assert_same_tensors(reference / "reference" / "bind" / "model" / "adapters.safetensors",
                         killed / "bind" / "model" / "adapters.safetensors")
    assert not list((killed / "bind" / "checkpoints").glob(".tmp*"))


def test_killed_distill_resumes_to_the_uninterrupted_model(reference):
    config = _run_after(reference, "killed-distill", "bind")
    _kill_mid_run(config, "distill")
    killed = reference / "killed-distill"
    _assert_killed_after_first_checkpoint(killed / "distill")
    assert not (killed / "model").exists()

    output = _resume(config, "distill")
    assert f"distill (SESKD): started at 1/{DISTILL_STEPS}" in output
    expected_files = sorted((reference / "reference" / "model").rglob("*.safetensors"))
    assert len(expected_files) >= 4  # heads, the two modality models, the student
    assert sorted((killed / "model").rglob("*.safetensors")) == [
        killed / "model" / f.relative_to(reference / "reference" / "model") for f in expected_files]
    for expected in expected_files:
        _assert_same_tensors(expected, killed / "model" / expected.relative_to(reference / "reference" / "model"))


# --- a checkpoint write that fails ------------------------------------------------------------
DISK_FULL = os.strerror(errno.ENOSPC)


class _DiskFillsUp:
    """A text file on a disk that fills up: the write that ``fails_on(text)`` picks stores half
    its text and raises what Python raises then (an OSError without a file name)."""

    def __init__(self, handle, fails_on):
        self.handle, self.fails_on = handle, fails_on

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def write(self, text):
        if not self.fails_on(text):
            return self.handle.write(text)
        self.handle.write(text[:len(text) // 2])
        self.handle.flush()
        raise OSError(errno.ENOSPC, DISK_FULL)


def _disk_full_in_checkpoint(monkeypatch, step: int, file: str) -> None:
    """Make checkpoint ``step`` fail with ENOSPC half way through writing ``file``, the way the
    disk reports it: safetensors' writer raises a SafetensorError ending in "(os error 28)",
    Python's file writes an OSError (the JSON files and ``latest``)."""
    from safetensors import SafetensorError

    from m3bind import fileio
    from m3bind.models import weights

    folder, name = f".tmp_step_{step:07d}", f"step_{step:07d}"
    save_file = weights.save_file

    def filling_save_file(tensors, path, metadata=None):
        save_file(tensors, path, metadata=metadata)
        if Path(path).parent.name == folder and Path(path).name == file:
            with open(path, "r+b") as handle:
                handle.truncate(Path(path).stat().st_size // 2)
            raise SafetensorError(f"Error while serializing: I/O error: {DISK_FULL} (os error {errno.ENOSPC})")

    def filling_open(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        path = Path(path)
        # atomic_write_text writes <folder>/.<file>.<pid>.tmp first
        if path.name != f".{file}.{os.getpid()}.tmp" or "w" not in mode:
            return handle
        if file == "latest":
            return _DiskFillsUp(handle, lambda text: name in text)
        return _DiskFillsUp(handle, lambda text: path.parent.name == folder)

    monkeypatch.setattr(weights, "save_file", filling_save_file)
    monkeypatch.setattr(fileio, "open", filling_open, raising=False)


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step_fn(step):
        x = torch.randn(16, 4, generator=step_generator(7, step))
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
        return {"loss": loss}
    return model, optimizer, step_fn


@pytest.mark.parametrize("file", [checkpoint.MODEL_FILE, checkpoint.OPTIMIZER_FILE, checkpoint.STATE_FILE, "latest"])
def test_a_full_disk_keeps_the_previous_checkpoint_and_the_run_resumes(file, tmp_path, monkeypatch):
    settings = LoopSettings(total_steps=6, checkpoint_every=2, warmup_steps=1)
    model, optimizer, step_fn = _problem()
    run_loop(model, optimizer, step_fn, settings, tmp_path / "full", tensorboard=False)

    folder = tmp_path / "disk-full" / "checkpoints"
    with monkeypatch.context() as patch:
        _disk_full_in_checkpoint(patch, step=4, file=file)
        with pytest.raises(CheckpointError) as failure:
            run_loop(*_problem(), settings, tmp_path / "disk-full", tensorboard=False)
    written = folder / ("latest" if file == "latest" else f".tmp_step_0000004/{file}")
    assert str(failure.value) == (f"{folder / 'step_0000004'}: could not write the checkpoint: {DISK_FULL} (writing "
                                  f"{written}); the last complete checkpoint, step_0000002, is unchanged: make room, "
                                  "then continue with --resume")
    assert CheckpointManager(folder).latest() == folder / "step_0000002"
    assert not list(folder.glob(".tmp*"))

    resumed_model, resumed_optimizer, resumed_step_fn = _problem()
    result = run_loop(resumed_model, resumed_optimizer, resumed_step_fn, settings, tmp_path / "disk-full",
                      resume=True, tensorboard=False)
    assert result.resumed_from == 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, resumed_model.state_dict()[name]), name


def test_a_full_disk_during_bind_is_one_line_on_the_command_line(reference, monkeypatch):
    config = _run_after(reference, "disk-full-bind", "pretrain")
    _disk_full_in_checkpoint(monkeypatch, step=2, file=checkpoint.OPTIMIZER_FILE)
    result = runner.invoke(app, ["bind", str(config)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    folder = reference / "disk-full-bind" / "bind" / "checkpoints"
    assert errors == [f"error: {folder / 'step_0000002'}: could not write the checkpoint: {DISK_FULL} "
                      f"(writing {folder / '.tmp_step_0000002' / checkpoint.OPTIMIZER_FILE}); the last complete "
                      "checkpoint, step_0000001, is unchanged: make room, then continue with --resume"]
    assert CheckpointManager(folder).latest() == folder / "step_0000001"


def test_a_latest_pointer_to_a_deleted_checkpoint_stops_the_resume(tmp_path):
    settings = LoopSettings(total_steps=4, checkpoint_every=1)
    run_loop(*_problem(), settings, tmp_path, stop_after=2, tensorboard=False)
    shutil.rmtree(tmp_path / "checkpoints" / "step_0000002")
    # Starting over silently would throw away the run the user asked to continue.
    with pytest.raises(CheckpointError, match=r"latest: names step_0000002, which is not in .*; delete .* to start"):
        run_loop(*_problem(), settings, tmp_path, resume=True, tensorboard=False)
