"""The ``ablate`` stage (paper Tables 4 and 5).

- ``subsets``: bind growing subsets of the modalities (X-ray+ECG, +retina, +pathology, +CT)
  and compare cross-modal retrieval and zero-shot accuracy (Table 4).
- ``amb_seskd``: adaptive modality balancing on/off x SESKD on/off (Table 5). Without SESKD the
  bound model is evaluated with each modality's own bound text encoder.
Every setting reuses the parent experiment's pretrained models and cached studies and writes
into ``<output_dir>/ablations/<study>/<setting>/``; the rows go to
``<output_dir>/ablations/<study>/ablation.json``, which the report picks up.
"""
from __future__ import annotations

import json
from pathlib import Path

from m3bind.devices import on_main_process
from m3bind.errors import ConfigError
from m3bind.eval.bootstrap import Bootstrap
from m3bind.eval.protocol import REPORT_SPLIT, modality_zero_shot, paired_query_scores, retrieval_pairs
from m3bind.experiment import Experiment
from m3bind.fileio import atomic_write_text
from m3bind.stages.artifacts import load_bound, model_dir
from m3bind.stages.bind import run_bind
from m3bind.stages.distill import run_distill

STUDIES = ("subsets", "amb_seskd")
# Paper Table 4: modalities added one at a time in this order, starting from the pair with the
# most paired data.
TABLE4_ORDER = ("xray", "ecg", "retina", "pathology", "ct")


def modality_subsets(exp: Experiment) -> list[tuple[str, ...]]:
    """Table 4's growing subsets of the configured modalities: the first two, then one more at a
    time, in the paper's order of the built-in modality each one is (a 'cxr' handled like xray
    comes first), modalities of no built-in kind last, in config order."""
    def rank(m: str) -> int:
        kind = m if m in TABLE4_ORDER else exp.known_as(m)
        return TABLE4_ORDER.index(kind) if kind in TABLE4_ORDER else len(TABLE4_ORDER)

    ordered = sorted(exp.modalities, key=rank)  # stable: ties keep the config's order
    return [tuple(ordered[:k]) for k in range(2, len(ordered) + 1)]


def ablation_path(exp: Experiment, study: str) -> Path:
    return exp.out_dir / "ablations" / study / "ablation.json"


def child_experiment(exp: Experiment, out: Path, bind_updates: dict) -> Experiment:
    """A variant of ``exp`` writing into ``out``: the parent's pretrained models (no second
    pretraining) and preprocessed-study cache, with ``bind_updates`` applied to its bind config."""
    modalities = {m: spec.model_copy(update={"model": spec.model.model_copy(
        update={"path": str(exp.pretrained_dir(m))} if exp.trains_from_scratch(m) else {})})
        for m, spec in exp.cfg.modalities.items()}
    cfg = exp.cfg.model_copy(update={"output_dir": str(out), "modalities": modalities,
                                     "bind": exp.cfg.bind.model_copy(update=bind_updates)})
    return Experiment(cfg, exp.config_path, cache_dir=exp.cache_dir, sentence_encoder=exp.sentence_encoder)


def _child(exp: Experiment, name: str, study: str, bind_updates: dict) -> Experiment:
    return child_experiment(exp, exp.out_dir / "ablations" / study / name, bind_updates)


def _measure(child: Experiment, seskd: bool) -> dict:
    """A setting's row: retrieval on the paired test set (with bootstrap intervals over the
    queries) and naive-prompt zero-shot accuracy on the test splits."""
    if seskd:
        from m3bind.models.bound import M3Bind

        final = M3Bind.from_pretrained(model_dir(child)).to(child.device)
        child.sentence_encoder.adopt([final])
        views = {m: final.view(m) for m in final.modalities}
    else:
        views = load_bound(child)
    for view in views.values():
        view.eval()
    bootstrap = Bootstrap(child.cfg.eval.bootstrap_resamples, child.cfg.eval.bootstrap_seed)
    scores = paired_query_scores(child, views, retrieval_pairs(child), REPORT_SPLIT)
    retrieval = {pair: {**s.summary(), **s.intervals(bootstrap)} for pair, s in scores.items()}
    zero_shot = {m: modality_zero_shot(child, m, view, "naive", split=REPORT_SPLIT)["accuracy"] for m, view in views.items()}
    return {"retrieval": {pair: {key: ({str(k): v for k, v in value.items()} if isinstance(value, dict) else value)
                                 for key, value in entry.items()} for pair, entry in retrieval.items()},
            "zero_shot_prompts": "naive", "split": REPORT_SPLIT, "zero_shot": zero_shot,
            # Every setting ranks the same way, so rows compare; the report ranks by its validated choice.
            "retrieval_similarity": "cosine"}


def run_ablation(exp: Experiment, study: str, *, progress=None, log=print) -> list[dict]:
    """Run one ablation study; returns its rows and writes them to :func:`ablation_path`."""
    rows = []
    if study == "subsets":
        subsets = modality_subsets(exp)
        if not subsets:
            raise ConfigError("the subsets ablation binds growing sets of two or more modalities; "
                              f"this config has {len(exp.modalities)}")
        for subset in subsets:
            child = _child(exp, "+".join(subset), study, {"modalities": list(subset)})
            run_bind(child, progress=progress, log=log)
            rows.append({"setting": {m: m in subset for m in exp.modalities}, **_measure(child, False)})
    elif study == "amb_seskd":
        for amb in (False, True):
            flags = {"sampling": amb, "lr_scaling": amb, "loss_weights": amb}
            child = _child(exp, f"amb-{'on' if amb else 'off'}", study,
                           {"balance": exp.cfg.bind.balance.model_copy(update=flags)})
            run_bind(child, progress=progress, log=log)
            rows.append({"setting": {"AMB": amb, "SESKD": False}, **_measure(child, False)})
            run_distill(child, progress=progress, log=log)
            rows.append({"setting": {"AMB": amb, "SESKD": True}, **_measure(child, True)})
    else:
        raise ConfigError(f"unknown ablation study '{study}'; choose one of {', '.join(STUDIES)}")
    on_main_process(lambda: atomic_write_text(ablation_path(exp, study), json.dumps(rows, indent=2)))
    return rows
