"""The ``distill`` stage (SESKD): one student text encoder learns every bound
text encoder; writes distill/summary.json and the final model."""
from __future__ import annotations

import torch

from m3bind.eval.protocol import (choose_model_similarity, describe_zero_shot, modality_zero_shot, paired_retrieval,
                                  prompt_corpus, retrieval_pairs, stage_prototype_rule)
from m3bind.devices import on_main_process
from m3bind.eval.report_markdown import similarity_reason
from m3bind.experiment import Experiment, keeps_sentence_vectors
from m3bind.models.view import SharedSpaceView
from m3bind.stages.artifacts import export_model, load_bound, model_dir, write_summary


@keeps_sentence_vectors
def run_distill(exp: Experiment, *, resume: bool = False, progress=None, log=print) -> dict:
    """Distil the bound text encoders of ``bind`` into the configured student; save the final model."""
    from m3bind.models.student import build_student
    from m3bind.train.bind import balance_for
    from m3bind.train.distill import distill_student

    bound = load_bound(exp)
    names = list(bound)
    pairs = retrieval_pairs(exp)
    train = {m: exp.studies(m, "train") for m in names}
    corpus = [t for m in names for t in train[m].texts]
    prompts = {m: prompt_corpus(exp, m) for m in names} if exp.cfg.distill.prompt_texts else {}
    # The built-in student's tokenizer is trained on every text it will be distilled on.
    vocabulary_texts = corpus + [t for texts in prompts.values() for t in texts]
    # Seeded here, not only inside build_student: a folder student's dropout masks would otherwise
    # depend on whatever ran before in the process.
    torch.manual_seed(exp.cfg.seed)
    student = build_student(exp.cfg.distill.student, vocabulary_texts, exp.cfg.shared_dim, seed=exp.cfg.seed,
                            config_dir=exp.config_path.parent if exp.config_path else None).to(exp.device)
    exp.sentence_encoder.adopt([*bound.values(), student])
    probabilities = balance_for({m: len(train[m]) for m in names}, exp.cfg.bind).probabilities
    before_retrieval = paired_retrieval(exp, bound, pairs)
    outcome = distill_student(student, bound, train, exp.cfg.distill, exp.out_dir / "distill",
                              probabilities=probabilities, seed=exp.cfg.seed, resume=resume, progress=progress,
                              prompt_texts=prompts, image_tables=exp.image_tables_dir)
    student.eval()
    zero_shot = {m: modality_zero_shot(exp, m, SharedSpaceView(bound[m].model, bound[m].head, student))
                 for m in names}
    after_retrieval = paired_retrieval(exp, bound, pairs)
    final = export_model(bound, student)
    similarity = choose_model_similarity(exp, final, pairs, log=log)
    on_main_process(lambda: final.save_pretrained(model_dir(exp)))
    summary = {"steps": outcome.steps_done, "update_heads": exp.cfg.distill.update_heads,
               "student": exp.cfg.distill.student.model_dump(),
               "zero_shot_prompts": f"expert, {stage_prototype_rule(exp).name} prototypes, val split",
               "zero_shot_student": zero_shot, "retrieval_before": before_retrieval,
               "retrieval_after": after_retrieval, "diagnostics_similarity": "cosine",
               "retrieval_similarity": similarity,  # how the saved model ranks (search, the report)
               "final_losses": outcome.history[-1] if outcome.history else {},
               "skipped_studies": exp.skipped_studies(), "read_notes": exp.read_notes()}
    on_main_process(lambda: write_summary(exp.out_dir / "distill" / "summary.json", summary))
    for m, z in zero_shot.items():
        log(f"{m}: zero-shot accuracy with the student text encoder {describe_zero_shot(z)}")
    log(f"image queries rank by '{final.retrieval_similarity}' similarity ({similarity_reason(similarity)})")
    log(f"bound model saved to {model_dir(exp)}")
    return summary

