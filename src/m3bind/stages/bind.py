"""The ``bind`` stage: LoRA + binding heads, each modality's CLIP loss, the
cross-encoder text alignment and adaptive modality balancing; writes bind/model and
bind/summary.json with the measurements before and after."""
from __future__ import annotations

import torch

from m3bind.eval.protocol import (check_paired_set, heldout_texts, paired_retrieval, random_head_retrieval,
                                  retrieval_pairs, stage_prototype_rule, zero_shot_by_modality)
from m3bind.devices import on_main_process
from m3bind.experiment import Experiment, keeps_sentence_vectors
from m3bind.stages.artifacts import bind_dir, prepare_bound, save_bound, write_summary
from m3bind.train.losses import labels_vary


@keeps_sentence_vectors
def run_bind(exp: Experiment, *, resume: bool = False, progress=None, log=print) -> dict:
    """Bind the configured modalities (``bind.modalities``, default all)."""
    from m3bind.models.binding import parameter_report
    from m3bind.train.bind import balance_for, bind_models, text_agreement

    names = exp.cfg.bind.modalities or exp.modalities
    pairs = retrieval_pairs(exp)
    check_paired_set(exp)
    torch.manual_seed(exp.cfg.seed)
    bound = prepare_bound(exp, names)
    train = {m: exp.studies(m, "train") for m in names}
    texts = heldout_texts(exp, names)
    params = parameter_report(bound)
    before = {"text_agreement": text_agreement(bound, texts), "retrieval": random_head_retrieval(exp, bound, pairs),
              "zero_shot": zero_shot_by_modality(exp, bound)}
    log(f"before binding: text agreement {_agreement(before['text_agreement'])}")
    if exp.cfg.bind.label_aware:
        for m in names:
            if not labels_vary(train[m].labels):
                log(f"{m}: every training study has the same findings: bound with plain CLIP targets")
    outcome = bind_models(bound, train, exp.cfg.bind, bind_dir(exp), heldout_texts=texts, seed=exp.cfg.seed,
                          resume=resume, progress=progress, image_tables=exp.image_tables_dir)
    on_main_process(lambda: save_bound(bound, bind_dir(exp) / "model", exp))
    after = {"text_agreement": text_agreement(bound, texts), "retrieval": paired_retrieval(exp, bound, pairs),
             "zero_shot": zero_shot_by_modality(exp, bound)}
    log(f"after binding: text agreement {_agreement(after['text_agreement'])}")
    balance = balance_for({m: len(train[m]) for m in names}, exp.cfg.bind)
    summary = {"modalities": names, "steps": outcome.steps_done, "parameters": params,
               "balance": {"probabilities": balance.probabilities, "lr_scales": balance.lr_scales,
                           "loss_weights": balance.loss_weights},
               "zero_shot_prompts": f"expert, {stage_prototype_rule(exp).name} prototypes, val split",
               # The report and the final model rank by the similarity chosen on validation later
               # (distill, evaluate); this stage's diagnostics use plain cosine, and say so.
               "diagnostics_similarity": "cosine",
               "before": before, "after": after,
               "skipped_studies": exp.skipped_studies(), "read_notes": exp.read_notes()}
    on_main_process(lambda: write_summary(bind_dir(exp) / "summary.json", summary))
    return summary


def _agreement(value: float | None) -> str:
    return "not measured (needs two modalities and validation reports)" if value is None else f"{value:.3f}"
