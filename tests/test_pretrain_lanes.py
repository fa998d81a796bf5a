"""Pretraining modalities side by side in processes ("lanes", m3bind.stages.lanes): the same
weights as training them one after another with the same threads, every modality's progress
and log lines reach the parent, and a lane's error reaches the caller as the library's error."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from m3bind.errors import DataError
from m3bind.experiment import Experiment
from m3bind.stages import run_pretrain
from m3bind.stages.lanes import MIN_STEPS_FOR_LANES, lane_count, lane_threads, usable_cores

TEXT_TOWER = {"text_hidden_size": 16, "text_layers": 1, "text_heads": 2, "text_intermediate_size": 32,
              "native_dim": 8, "vocab_size": 120}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from m3bind.cohort import generate_cohort

    root = tmp_path_factory.mktemp("lanes")
    generate_cohort(root / "cohort", n_patients=30, seed=0, workers=1)
    return root


def _config(root: Path, output_dir: str, processes, xray_manifest: str = "cohort/xray/manifest.csv") -> Path:
    config = {
        "seed": 0, "output_dir": output_dir, "shared_dim": 16, "demo_sizes": True,
        "modalities": {
            "xray": {"manifest": xray_manifest, "model": {"options": {"width": 4, "depth": 1, **TEXT_TOWER}}},
            "ecg": {"manifest": "cohort/ecg/manifest.csv", "preprocess": {"normalize": "none"},
                    "model": {"options": {"width": 8, "depth": 1, "image_heads": 2, **TEXT_TOWER}}},
            "retina": {"manifest": "cohort/retina/manifest.csv",
                       "model": {"options": {"width": 4, "depth": 1, **TEXT_TOWER}}},
        },
        "pretrain": {"steps": 3, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 3,
                     "processes": processes},
    }
    path = root / f"{output_dir}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class RecordingProgress:
    def __init__(self):
        self.tasks: dict[int, dict] = {}

    def add_task(self, description, total=None, completed=0, **_):
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "completed": completed}
        return len(self.tasks) - 1

    def update(self, task, completed=None, description=None, **_):
        if completed is not None:
            self.tasks[task]["completed"] = completed
        if description is not None:
            self.tasks[task]["description"] = description


def test_lanes_give_the_weights_of_in_process_pretraining_with_the_same_threads(cohort):
    threads = torch.get_num_threads()
    torch.set_num_threads(lane_threads(2))
    try:
        alone = run_pretrain(Experiment.from_file(_config(cohort, "alone", 1)), log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    lines: list[str] = []
    progress = RecordingProgress()
    lanes_exp = Experiment.from_file(_config(cohort, "lanes", 2))
    in_lanes = run_pretrain(lanes_exp, progress=progress, log=lines.append)

    assert list(in_lanes) == list(alone) == ["xray", "ecg", "retina"]  # the config's order
    alone_exp = Experiment.from_file(_config(cohort, "alone", 1))
    for modality in alone:
        ours = load_file(lanes_exp.pretrained_dir(modality) / "model.safetensors")
        reference = load_file(alone_exp.pretrained_dir(modality) / "model.safetensors")
        assert ours.keys() == reference.keys()
        for name in reference:
            assert torch.equal(ours[name], reference[name]), f"{modality}: {name} differs"
        assert in_lanes[modality]["final_loss"] == alone[modality]["final_loss"]
        assert in_lanes[modality]["zero_shot"] == alone[modality]["zero_shot"]
    assert lines[0] == "pretraining 3 modalities in 2 processes"
    for modality in alone:
        assert sum(line.startswith(f"{modality}: zero-shot accuracy") for line in lines) == 1
        finished = [t for t in progress.tasks.values() if t["description"].startswith(f"pretrain {modality}")]
        assert len(finished) == 1 and finished[0]["completed"] == finished[0]["total"] == 3
    summary = (lanes_exp.out_dir / "pretrain" / "summary.json").read_text()
    assert all(f'"{modality}"' in summary for modality in alone)


def _with_missing_file(root: Path, modality: str) -> Path:
    """A copy of ``modality``'s manifest whose row 3 names a study file that does not exist."""
    folder = root / "cohort" / modality
    rows = (folder / "manifest.csv").read_text().splitlines()
    first_path = rows[3].split(",")[0]
    rows[3] = rows[3].replace(first_path, f"studies/missing{Path(first_path).suffix}", 1)
    bad = root / f"bad_{modality}.csv"
    bad.write_text("\n".join(rows).replace("studies/", f"{folder / 'studies'}/") + "\n")
    return bad


def test_an_error_in_a_lane_reaches_the_caller_as_a_data_error_naming_the_file(cohort):
    # Every modality's manifest is bad, so no lane trains for long before the error is seen.
    config = yaml.safe_load(_config(cohort, "broken", 2).read_text())
    for modality, spec in config["modalities"].items():
        spec["manifest"] = str(_with_missing_file(cohort, modality))
    path = cohort / "broken.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(DataError, match=r"missing\.(dcm|hea|png)"):
        run_pretrain(Experiment.from_file(path), log=lambda _: None)


def test_lane_count_rules():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert lane_count(3, jobs=2, device=cpu, steps=1) == 2            # never more lanes than jobs
    assert lane_count(1, jobs=5, device=cpu, steps=1000) == 1
    assert lane_count("auto", jobs=5, device=cpu, steps=MIN_STEPS_FOR_LANES) == min(5, usable_cores())
    assert lane_count("auto", jobs=5, device=cpu, steps=MIN_STEPS_FOR_LANES - 1) == 1  # a process start costs more
    assert lane_count("auto", jobs=5, device=gpu, steps=1000) == 1
    assert lane_count("auto", jobs=1, device=cpu, steps=1000) == 1
    assert lane_threads(1) == usable_cores()
    assert lane_threads(usable_cores() * 4) == 1


def test_lane_count_is_one_inside_a_launched_group(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert lane_count("auto", jobs=5, device=torch.device("cpu"), steps=1000) == 1
