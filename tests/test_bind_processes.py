"""Two data-parallel processes follow the single-process binding loss curve."""
import csv
import os
import subprocess
import sys
from pathlib import Path

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
