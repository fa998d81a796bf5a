"""The ``extend`` stage (beyond the paper): bind a NEW modality into a saved M3Bind model,
training only its LoRA + head against the frozen student; the other modalities stay
bit-identical."""
from __future__ import annotations

from pathlib import Path

from m3bind.devices import on_main_process
from m3bind.errors import ConfigError
from m3bind.eval.protocol import (choose_model_similarity, modality_zero_shot, paired_retrieval, retrieval_pairs,
                                  stage_prototype_rule)
from m3bind.experiment import Experiment, keeps_sentence_vectors
from m3bind.stages.artifacts import write_summary


@keeps_sentence_vectors
def run_extend(exp: Experiment, base_dir: Path, modality: str, out_dir: Path, *, resume: bool = False,
               progress=None, log=print) -> dict:
    """Bind ``modality`` (its unbound model from ``exp``) into the saved model at ``base_dir``."""
    from m3bind.models.binding import BoundModality, merge_lora
    from m3bind.models.bound import M3Bind
    from m3bind.train.extend import extend_with

    base = M3Bind.from_pretrained(base_dir).to(exp.device)
    if modality in base.modalities:
        raise ConfigError(f"{base_dir} already has a '{modality}' model; extend adds a modality it does not have")
    lora = exp.cfg.bind.lora
    new = BoundModality(exp.load_unbound(modality), base.shared_dim, seed=exp.cfg.seed + 97)
    new.prepare_for_binding(lora.r, lora.alpha, lora.dropout, text=lora.text, image=lora.image)
    new.to(exp.device)
    exp.sentence_encoder.adopt([base, new])
    train = exp.studies(modality, "train")
    outcome = extend_with(new, base.student, train, exp.cfg.bind, out_dir / "run", seed=exp.cfg.seed,
                          resume=resume, progress=progress)
    merge_lora(new.model)
    extended = M3Bind({**dict(base.models), modality: new.model}, {**dict(base.heads), modality: new.head},
                      base.student)
    # The new modality needs its own centre, and the pairs it joins may favour another ranking.
    similarity = choose_model_similarity(exp, extended, retrieval_pairs(exp), log=log)
    on_main_process(lambda: extended.save_pretrained(out_dir / "model"))
    views = {m: extended.view(m) for m in extended.modalities}
    zero_shot = modality_zero_shot(exp, modality, views[modality])
    retrieval = paired_retrieval(exp, views, retrieval_pairs(exp))
    summary = {"modality": modality, "base": str(base_dir), "steps": outcome.steps_done,
               "zero_shot_prompts": f"expert, {stage_prototype_rule(exp).name} prototypes, val split",
               "zero_shot_student": zero_shot, "retrieval": retrieval, "retrieval_similarity": similarity}
    on_main_process(lambda: write_summary(out_dir / "summary.json", summary))
    log(f"extended {base_dir} with {modality}; saved to {out_dir / 'model'}")
    return summary
