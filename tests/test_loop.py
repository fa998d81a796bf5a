"""The shared training loop: schedule, exact resume, NaN guard, atomic checkpoints, logs."""
import csv

import pytest
import torch

from m3bind.errors import ConfigError, TrainingError
from m3bind.train.checkpoint import CheckpointManager
from m3bind.train.loop import LoopSettings, run_loop, warmup_cosine
from m3bind.train.sampling import step_generator


def _problem(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    target = torch.randn(4, 1, generator=torch.Generator().manual_seed(0))

    def step_fn(step):
        g = step_generator(7, step)
        x = torch.randn(16, 4, generator=g)
        loss = ((model(x) - x @ target) ** 2).mean()
        return {"loss": loss, "mse": loss}
    return model, optimizer, step_fn


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0)
    assert lrs[8] == pytest.approx(0.5)         # halfway through the cosine part
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))


def test_killed_and_resumed_run_ends_with_identical_weights(tmp_path):
    settings = LoopSettings(total_steps=30, warmup_steps=3, checkpoint_every=10)
    model, opt, step_fn = _problem()
    run_loop(model, opt, step_fn, settings, tmp_path / "full", tensorboard=False)

    model2, opt2, step_fn2 = _problem()
    run_loop(model2, opt2, step_fn2, settings, tmp_path / "killed", stop_after=17, tensorboard=False)
    # A new process: fresh model and optimizer, state comes only from the checkpoint (step 17).
    model3, opt3, step_fn3 = _problem(seed=123)
    torch.manual_seed(999)  # resume must restore the RNG, whatever the state now
    result = run_loop(model3, opt3, step_fn3, settings, tmp_path / "killed", resume=True, tensorboard=False)
    assert result.resumed_from == 17
    for a, b in zip(model.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)
    rows = list(csv.DictReader((tmp_path / "killed" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 31))


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    model, opt, step_fn = _problem()

    def poisoned(step):
        parts = step_fn(step)
        if step == 12:
            parts["loss"] = parts["loss"] * float("nan")
        return parts
    settings = LoopSettings(total_steps=30, checkpoint_every=5)
    with pytest.raises(TrainingError, match="non-finite loss at step 13.*last good checkpoint is step 10"):
        run_loop(model, opt, poisoned, settings, tmp_path, tensorboard=False)
    assert CheckpointManager(tmp_path / "checkpoints").latest().name == "step_0000010"


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    model, opt, step_fn = _problem()
    run_loop(model, opt, step_fn, LoopSettings(total_steps=20, checkpoint_every=5), tmp_path, tensorboard=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_0000015", "step_0000020"]
    assert not list((tmp_path / "checkpoints").glob(".tmp*"))
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "step_0000020").iterdir())
    assert files == ["model.safetensors", "optimizer.json", "optimizer.safetensors", "state.json"]


def test_gradients_are_clipped_per_modality_group():
    from m3bind.train.loop import clip_per_group

    big, small = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(4))
    big.grad, small.grad = torch.full((4,), 5.0), torch.full((4,), 0.05)  # norms 10 and 0.1
    optimizer = torch.optim.AdamW([{"params": [big], "name": "ct"}, {"params": [small], "name": "ecg"}])
    clip_per_group(optimizer, 1.0)
    assert big.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert small.grad.norm().item() == pytest.approx(0.1, rel=1e-6)  # a global norm would have shrunk it too


def test_pretraining_decays_weights_but_not_biases_norms_or_temperature():
    from m3bind.train.pretrain import weight_decay_groups

    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    model.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
    decay, no_decay = weight_decay_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert {id(p) for p in no_decay["params"]} == {id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                  id(model.logit_scale)}


def test_one_process_trains_in_full_precision_then_under_bf16_autocast(tmp_path):
    # The demo and the Python API pretrain in float32 and then bind in bf16 in one process. With
    # the precision handed to accelerate, the second loop raised "AcceleratorState has already
    # been initialized" (first seen on an H200); the same sequence runs on the CPU here.
    seen = {}
    for precision in ("no", "bf16", "no"):
        model, opt, step_fn = _problem()

        def watched(step, step_fn=step_fn, precision=precision):
            parts = step_fn(step)
            seen[precision] = (torch.is_autocast_enabled("cpu"), parts["loss"].dtype)
            return parts
        result = run_loop(model, opt, watched, LoopSettings(total_steps=2, mixed_precision=precision),
                          tmp_path / f"run-{len(seen)}", tensorboard=False)
        assert result.steps_done == 2
        autocast_on, loss_dtype = seen[precision]
        assert autocast_on is (precision == "bf16")
        assert loss_dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    model, opt, step_fn = _problem()
    with pytest.raises(ConfigError, match="mixed_precision: 'fp16' is not one of"):
        run_loop(model, opt, step_fn, LoopSettings(total_steps=1, mixed_precision="fp16"), tmp_path / "fp16",
                 tensorboard=False)
