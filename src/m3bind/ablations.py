"""Ablations as one command (paper Tables 4 and 5).

- ``subsets``: bind growing subsets of the modalities (X-ray+ECG, +retina, +pathology, +CT)
  and compare cross-modal retrieval and zero-shot accuracy (Table 4).
- ``amb_seskd``: adaptive modality balancing on/off x SESKD on/off (Table 5). Without SESKD the
  bound model is evaluated with each modality's own bound text encoder.
Every setting reuses the parent experiment's phase-one models and cached studies and writes
into ``<output_dir>/ablations/<study>/<setting>/``.
"""
from __future__ import annotations

from pathlib import Path

from m3bind.experiment import Experiment
from m3bind.pipeline import (RETRIEVAL_PAIRS, ModalityView, load_bound, model_dir, modality_zero_shot,
                             paired_retrieval, run_bind, run_distill)

SUBSETS = (("xray", "ecg"), ("xray", "ecg", "retina"), ("xray", "ecg", "retina", "pathology"),
           ("xray", "ecg", "retina", "pathology", "ct"))


def _child(exp: Experiment, name: str, study: str, bind_updates: dict) -> Experiment:
    out = exp.out_dir / "ablations" / study / name
    modalities = {m: spec.model_copy(update={"model": spec.model.model_copy(
        update={"path": str(exp.phase_one_dir(m))} if spec.model.type == "builtin" else {})})
        for m, spec in exp.cfg.modalities.items()}
    cfg = exp.cfg.model_copy(update={"output_dir": str(out), "modalities": modalities,
                                     "bind": exp.cfg.bind.model_copy(update=bind_updates)})
    return Experiment(cfg, exp.config_path, cache_dir=exp.cache_dir)


def _measure(child: Experiment, seskd: bool, log) -> dict:
    if seskd:
        from m3bind.models.bound import M3Bind

        final = M3Bind.from_pretrained(model_dir(child))
        views = {m: ModalityView(final, m) for m in final.modalities}
    else:
        views = load_bound(child)
    for view in views.values():
        view.eval()
    retrieval = paired_retrieval(child, views, RETRIEVAL_PAIRS)
    zero_shot = {m: modality_zero_shot(child, m, view, "naive")["accuracy"] for m, view in views.items()}
    return {"retrieval": {pair: {key: ({str(k): v for k, v in value.items()} if isinstance(value, dict) else value)
                                 for key, value in scores.items()} for pair, scores in retrieval.items()},
            "zero_shot": zero_shot}


def run_ablation(exp: Experiment, study: str, *, progress=None, log=print) -> list[dict]:
    rows = []
    if study == "subsets":
        for subset in SUBSETS:
            if not set(subset) <= set(exp.modalities):
                continue
            child = _child(exp, "+".join(subset), study, {"modalities": list(subset)})
            run_bind(child, progress=progress, log=log)
            rows.append({"setting": {m: m in subset for m in exp.modalities}, **_measure(child, False, log)})
    elif study == "amb_seskd":
        for amb in (False, True):
            flags = {"sampling": amb, "lr_scaling": amb, "loss_weights": amb}
            child = _child(exp, f"amb-{'on' if amb else 'off'}", study,
                           {"balance": exp.cfg.bind.balance.model_copy(update=flags)})
            run_bind(child, progress=progress, log=log)
            rows.append({"setting": {"AMB": amb, "SESKD": False}, **_measure(child, False, log)})
            run_distill(child, progress=progress, log=log)
            rows.append({"setting": {"AMB": amb, "SESKD": True}, **_measure(child, True, log)})
    else:
        raise ValueError(f"unknown ablation study '{study}'; choose subsets or amb_seskd")
    return rows
