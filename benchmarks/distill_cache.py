"""Seconds per SESKD step with cached vs recomputed teacher/image embeddings.

    python benchmarks/distill_cache.py m3bind-demo/config.yaml [steps, default 30]
    python benchmarks/distill_cache.py --paper [--batch 4] [--ct-studies 2] [steps, default 2]
    python benchmarks/distill_cache.py --paper --tiny 1    # configs/paper-tiny.yaml (the CPU test)

The first form needs a finished binding stage in that experiment (e.g. after `m3bind demo`).
``--paper`` needs nothing: configs/paper.yaml's five published models and its BioClinicalBERT
student, on randomly initialised checkpoints in their original formats (as benchmarks/mfu.py
builds them), with random studies of each model's preprocessed shape (CT-CLIP: 240 x 480 x 480
volumes) and report-like texts; ``--batch`` studies per modality and per step (CT at most
``--ct-studies``), because the paper's batch of 64 does not fit a small CPU.

Both modes time ``steps`` phase-B steps (the expensive phase: KD + contrastive for every
modality) from the same starting student and heads (between an untimed first and last step); the
first step's loss is printed for both to show they compute the same thing.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from m3bind.config import DistillConfig
from m3bind.data.datasets import StudySet
from m3bind.models.binding import BoundModality
from m3bind.models.sentence import share_sentence_backbones
from m3bind.models.student import StudentTextEncoder, build_student
from m3bind.train.distill import distill_student


@dataclass
class DistillSetup:
    """Bound models, their training studies, a way to make the same fresh student, the settings."""

    name: str
    bound: dict[str, BoundModality]
    train: dict[str, StudySet]
    new_student: Callable[[], StudentTextEncoder]
    distill: DistillConfig
    probabilities: dict[str, float]


def demo_experiment(config: str) -> DistillSetup:
    from m3bind.experiment import Experiment
    from m3bind.stages.artifacts import load_bound
    from m3bind.train.bind import balance_for

    exp = Experiment.from_file(config)
    bound = load_bound(exp)
    names = list(bound)
    train = {m: exp.studies(m, "train") for m in names}
    corpus = [t for m in names for t in train[m].texts]

    def new_student() -> StudentTextEncoder:
        # As the distill stage does: a frozen-MiniLM student shares the towers' backbone and its
        # cache of sentence vectors.
        student = build_student(exp.cfg.distill.student, corpus, exp.cfg.shared_dim, seed=0)
        share_sentence_backbones([*bound.values(), student])
        return student

    if share_sentence_backbones(bound.values()):
        # Every report's sentence vector computed once before either timed run, as in any run
        # after its first pass over the reports: neither mode is charged for filling that cache.
        with torch.no_grad():
            next(iter(bound.values())).encode_texts(list(dict.fromkeys(corpus)))
    return DistillSetup("demo", bound, train, new_student, exp.cfg.distill,
                        balance_for({m: len(train[m]) for m in names}, exp.cfg.bind).probabilities)


def paper_experiment(work: Path, batch: int, ct_studies: int, tiny: bool = False) -> DistillSetup:
    from binding_bench import paper_setup
    from m3bind.config import load_config
    from m3bind.models.adapters.random_checkpoints import PUBLISHED, TINY
    from m3bind.train.bind import balance_for

    config_name = "paper-tiny.yaml" if tiny else "paper.yaml"
    setup = paper_setup(work, config_name, TINY if tiny else PUBLISHED, image_batch=batch, ct_studies=ct_studies)
    config_path = work / "configs" / config_name
    cfg = load_config(config_path)
    corpus = [t for studies in setup.train.values() for t in studies.texts]
    distill = cfg.distill.model_copy(update={"batch_size": batch})
    return DistillSetup(config_name.removesuffix(".yaml"), setup.bound, setup.train,
                        lambda: build_student(cfg.distill.student, corpus, cfg.shared_dim, seed=0,
                                              config_dir=config_path.parent).to(setup.device),
                        distill, balance_for({m: len(s) for m, s in setup.train.items()}, cfg.bind).probabilities)


def timed_run(setup: DistillSetup, cache: bool, steps: int) -> tuple[float, float, float]:
    """(seconds per step, one-off seconds, first-step loss) of ``steps`` phase-B steps from a fresh
    student and the starting heads, timed by the loop's own progress reports: the steps between a
    first (which builds the caches) and a last (which also writes the checkpoint). The one-off cost
    is the time to the end of the first step minus one step."""
    from binding_bench import StepClock

    heads = {m: {k: v.clone() for k, v in module.head.state_dict().items()} for m, module in setup.bound.items()}
    cfg = setup.distill.model_copy(update={"kd_steps": 0, "contrastive_steps": steps + 2,
                                           "cache_embeddings": cache, "checkpoint_every": 10 ** 6})
    student = setup.new_student()
    clock = StepClock(student.device)
    torch.manual_seed(0)  # the student's dropout draws the same masks in both modes
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        result = distill_student(student, setup.bound, setup.train, cfg, Path(run_dir),
                                 probabilities=setup.probabilities, tensorboard=False, progress=clock)
    for m, module in setup.bound.items():  # update_heads moves them; the next run starts where this one did
        module.head.load_state_dict(heads[m])
    per_step = clock.seconds_per_step(1, 1 + steps)
    return per_step, clock.marks[1] - start - per_step, result.history[0]["loss"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="a demo experiment's config.yaml (not with --paper)")
    parser.add_argument("steps", nargs="?", type=int, help="timed steps (default 30; 2 with --paper)")
    parser.add_argument("--paper", action="store_true", help="the published models at their sizes")
    parser.add_argument("--batch", type=int, default=4, help="--paper: studies per modality and step")
    parser.add_argument("--ct-studies", type=int, default=2, help="--paper: CT volumes per step")
    parser.add_argument("--tiny", action="store_true", help="--paper: configs/paper-tiny.yaml's small sizes")
    args = parser.parse_args(argv)
    if args.paper == (args.config is not None and not args.config.isdigit()):
        parser.error("give either a config or --paper")
    if args.paper and args.config is not None:  # `--paper 3`: the number is the steps
        args.steps, args.config = int(args.config), None

    with tempfile.TemporaryDirectory() as scratch:
        setup = (paper_experiment(Path(scratch), args.batch, args.ct_studies, args.tiny) if args.paper
                 else demo_experiment(args.config))
        steps = args.steps or (2 if args.paper else 30)
        rows = {cache: timed_run(setup, cache, steps) for cache in (True, False)}
    batches = ", ".join(f"{m} {min(setup.distill.batch_size, len(s))}" for m, s in setup.train.items())
    print(f"{setup.name} models: phase-B steps, studies per modality per step: {batches}; "
          f"KD batch {setup.distill.batch_size} texts; {steps} steps timed")
    for cache, (per_step, setup_seconds, loss) in rows.items():
        name = "cached" if cache else "recomputed"
        print(f"{name:>10}: {per_step:.5f} s/step, one-off {setup_seconds:.1f} s, first-step loss {loss:.5f}")
    print(f"per-step speed-up from caching: {rows[False][0] / rows[True][0]:.2f}x")


if __name__ == "__main__":
    main()
