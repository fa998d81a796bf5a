"""The stages of an experiment, each one function from an :class:`~m3bind.experiment.Experiment`
to files on disk (and a summary it returns):

    run_pretrain -> run_bind -> run_distill -> run_eval       (run_extend, run_ablation on top)

The CLI and the Python API both call these; they print nothing themselves but report through
the ``log`` and ``progress`` objects they are given.
"""
from m3bind.stages.ablate import run_ablation
from m3bind.stages.bind import run_bind
from m3bind.stages.distill import run_distill
from m3bind.stages.evaluate import run_eval
from m3bind.stages.extend import run_extend
from m3bind.stages.pretrain import run_pretrain

__all__ = ["run_pretrain", "run_bind", "run_distill", "run_eval", "run_extend", "run_ablation"]
