"""Several processes: two data-parallel processes follow the single-process binding loss curve, and every stage runs launched in two."""
import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bind_processes.py"


def _run(args, out):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, *args, str(SCRIPT), str(out)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return list(csv.DictReader(out.open()))


@pytest.mark.slow
def test_two_processes_match_one_process_loss_curve(tmp_path):
    one = _run([], tmp_path / "one.csv")
    two = _run(["-m", "torch.distributed.run", "--nproc_per_node", "2"], tmp_path / "two.csv")
    assert {r["processes"] for r in one} == {"1"} and {r["processes"] for r in two} == {"2"}
    assert len(one) == len(two) == 8
    for a, b in zip(one, two):
        for key in ("loss", "clip", "text_mse"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4), (a["step"], key)
    assert float(one[-1]["text_mse"]) < 0.8 * float(one[0]["text_mse"])  # it does train


def _gather_uneven(rank: int, world: int, init_file: str, results) -> None:
    import torch
    import torch.distributed as dist

    from m3bind.train.distributed import DataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        total = 5                                      # 3 rows on rank 0, 2 on rank 1
        parallel = DataParallel(types.SimpleNamespace(process_index=rank, num_processes=world,
                                                      device=torch.device("cpu")))
        local = parallel.shard(torch.arange(total * 2, dtype=torch.float32).reshape(total, 2)).requires_grad_(True)
        gathered = parallel.gather(local, total)
        gathered.sum().backward()
        results[rank] = (gathered.detach().tolist(), local.grad.tolist())
    finally:
        dist.destroy_process_group()


def test_gather_restores_a_global_batch_that_does_not_split_evenly(tmp_path):
    """A modality with fewer training studies than the batch is sampled whole, often an odd number."""
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_gather_uneven, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
        results = dict(results)
    expected = [[float(2 * i), float(2 * i + 1)] for i in range(5)]
    assert results[0][0] == results[1][0] == expected  # global order, the padding dropped
    # Each process's loss reads every row, so a row's gradient is the sum over the 2 processes:
    # every real row gets it, whichever shard it was in (the padding takes none away).
    assert results[0][1] == [[2.0, 2.0]] * 3 and results[1][1] == [[2.0, 2.0]] * 2


@pytest.mark.slow
def test_every_stage_runs_in_two_launched_processes(tmp_path):
    """`torchrun --nproc_per_node 2 -m m3bind.cli run CONFIG` (the CPU twin of `accelerate launch
    --multi_gpu`): pretrain, bind (data-parallel, a modality sampled whole in an odd batch), distill
    and the evaluation (control, student check) complete; files every process would write are
    written once or per process, and the processes wait for each other."""
    import yaml

    from m3bind.cohort import generate_cohort

    generate_cohort(tmp_path / "cohort", n_patients=40, seed=0, workers=1, test_patients=12, paired_patients=30)
    modalities = ("xray", "ct", "ecg")
    train_sizes = {m: int((pd.read_csv(tmp_path / "cohort" / m / "manifest.csv")["split"] == "train").sum())
                   for m in modalities}
    assert any(size % 2 for size in train_sizes.values()), train_sizes  # the uneven shards are exercised
    tower = {"text_hidden_size": 16, "text_layers": 1, "text_heads": 2, "text_intermediate_size": 32,
             "native_dim": 8, "vocab_size": 120, "text_backbone": "scratch"}
    config = {
        "seed": 0, "output_dir": str(tmp_path / "run"), "shared_dim": 16, "demo_sizes": True,
        "modalities": {m: {"manifest": str(tmp_path / "cohort" / m / "manifest.csv"),
                           "model": {"options": {"width": 4, "depth": 1, **tower}}} for m in modalities},
        "paired_manifests": {m: str(tmp_path / "cohort" / "paired" / f"{m}.csv") for m in modalities},
        "pretrain": {"steps": 2, "batch_size": 4, "warmup_steps": 0},
        "bind": {"steps": 2, "image_batch_size": 2 * max(train_sizes.values()), "text_batch_size": 8,
                 "warmup_steps": 0},
        "distill": {"kd_steps": 2, "contrastive_steps": 2, "batch_size": 4,
                    "student": {"backbone": "scratch", "width": 32, "layers": 1}},
        "eval": {"shots": [1], "seeds": [0], "bootstrap_resamples": 20, "lambda0_control": True,
                 "student_check": {"enabled": True, "patients": 30, "test_patients": 6}, "real_reports": False},
        "data": {"workers": 0},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "m3bind.cli",
                           "run", str(tmp_path / "config.yaml")], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert list(report["variants"]) == ["unbound", "random_heads", "chaining", "control", "bound", "m3bind"]
    assert set(report["student_check"]["modalities"]) == set(modalities)
    assert not list((tmp_path / "run").rglob("*.tmp"))       # every temporary folder published or removed
    assert sorted(p.name for p in (tmp_path / "run" / "distill" / "frozen").iterdir()) == ["process-0", "process-1"]
    assert done.stdout.count("student check: writing a second cohort") == 1  # written by the main process alone


def _main_then_train(rank: int, world: int, port: int, results) -> None:
    import torch

    from m3bind.devices import on_main_process, training_accelerator

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    written = on_main_process(lambda: f"written by {rank}")
    accelerator = training_accelerator(torch.device("cpu"))
    results[rank] = (written, accelerator.num_processes, accelerator.process_index, accelerator.is_main_process)
    torch.distributed.destroy_process_group()


def test_waiting_for_the_main_process_before_any_loop_keeps_the_processes_a_group(tmp_path):
    """The demo writes its cohort on the main process before pretraining: joining the group for
    that wait must leave later loops data-parallel (joined through accelerate's PartialState, both
    processes became a lone main process and wrote the same checkpoints)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_main_then_train, args=(2, port, results), nprocs=2, join=True)
        results = dict(results)
    assert results == {0: ("written by 0", 2, 0, True), 1: (None, 2, 1, False)}
