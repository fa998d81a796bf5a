"""The stages of an experiment, each one function from an :class:`Experiment` to files on disk.

The CLI and the Python API both call these; they print nothing themselves but report
through the ``console``/``progress`` objects they are given.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from m3bind.eval.zeroshot import accuracy, class_prototypes, single_label_targets, zero_shot_logits
from m3bind.experiment import Experiment


def prompt_set_for(exp: Experiment, modality: str):
    """The modality's zero-shot prompt set: the config's file, else the built-in one."""
    from m3bind.config import resolve_path
    from m3bind.eval.prompts import load_prompt_file, load_prompt_set

    path = exp.cfg.modalities[modality].prompts
    return load_prompt_file(resolve_path(exp.config_path, path)) if path else load_prompt_set(modality)


def class_prompts(exp: Experiment, modality: str, classes: Sequence[str], style: str = "expert") -> dict:
    """Prompts per class: 'naive' (the class name in the template) or 'expert' (FLAIR-style ensemble)."""
    from m3bind.eval.prompts import expert_prompts, naive_prompts

    prompt_set = prompt_set_for(exp, modality)
    return (expert_prompts if style == "expert" else naive_prompts)(prompt_set, classes)


@torch.no_grad()
def embed_images(encode_image, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    return torch.cat([encode_image(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def zero_shot_accuracy(model, studies, classes: Sequence[str], prompts: dict[str, list[str]]) -> dict[str, float]:
    """Single-label zero-shot accuracy over normal + findings (multi-finding studies left out)."""
    model.eval()
    keep, targets = single_label_targets(studies.labels, classes)
    if len(keep) == 0:
        return {"accuracy": float("nan"), "n": 0, "chance": 1.0 / len(classes)}
    image_emb = embed_images(model.encode_image, studies.images[torch.as_tensor(keep)])
    encode_texts = model.encode_texts
    protos = class_prototypes(encode_texts, prompts)
    logits = zero_shot_logits(image_emb, protos)
    return {"accuracy": accuracy(logits, targets), "n": int(len(keep)), "chance": 1.0 / len(classes)}


def modality_classes(exp: Experiment, modality: str) -> list[str]:
    return ["normal", *exp.manifest(modality).label_names()]


def modality_zero_shot(exp: Experiment, modality: str, model, style: str = "expert") -> dict[str, float]:
    """Zero-shot accuracy of ``model`` on the modality's test split with its prompt set."""
    classes = modality_classes(exp, modality)
    return zero_shot_accuracy(model, exp.studies(modality, "test"), classes, class_prompts(exp, modality, classes, style))


def run_pretrain(exp: Experiment, modalities: Sequence[str] | None = None, *, resume: bool = False,
                 progress=None, log=print) -> dict[str, dict]:
    """Phase one for every built-in modality: train, save, report zero-shot accuracy on test."""
    from m3bind.models.builtin import build_builtin_model, builtin_config
    from m3bind.train.pretrain import pretrain_modality

    results = {}
    for modality in modalities or exp.modalities:
        spec = exp.cfg.modalities[modality].model
        if spec.type != "builtin":
            log(f"{modality}: uses the published '{spec.type}' model, no phase one needed")
            continue
        torch.manual_seed(exp.cfg.seed)
        train = exp.studies(modality, "train")
        config = builtin_config(modality, demo=exp.cfg.demo_sizes)
        if spec.options:
            config = type(config).model_validate({**config.model_dump(), **spec.options})
        model = build_builtin_model(modality, train.texts, config, seed=exp.cfg.seed,
                                    preprocess=exp.preprocess(modality))
        if exp.cfg.pretrain.text_mlm_steps:
            from m3bind.train.text_pretrain import mlm_pretrain

            corpus = [t for m in exp.modalities for t in exp.studies(m, "train").texts]
            mlm_pretrain(model, corpus, exp.cfg.pretrain.text_mlm_steps, seed=exp.cfg.seed, progress=progress)
        run_dir = exp.out_dir / "pretrain" / modality
        outcome = pretrain_modality(model, train, exp.cfg.pretrain, run_dir, seed=exp.cfg.seed, resume=resume,
                                    progress=progress)
        model.save_pretrained(exp.phase_one_dir(modality))
        zero_shot = modality_zero_shot(exp, modality, model)
        results[modality] = {"train_studies": len(train), "final_loss": outcome.history[-1]["loss"]
                             if outcome.history else None, "zero_shot": zero_shot}
        log(f"{modality}: zero-shot accuracy {zero_shot['accuracy']:.3f} on {zero_shot['n']} test studies "
            f"(chance {zero_shot['chance']:.3f})")
    summary = exp.out_dir / "pretrain" / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(summary.read_text()) if summary.exists() else {}
    summary.write_text(json.dumps({**previous, **results}, indent=2))
    return results


# --- stage 1: binding ---------------------------------------------------------------------
def bind_dir(exp: Experiment) -> Path:
    return exp.out_dir / "bind"


def prepare_bound(exp: Experiment, modalities: Sequence[str]) -> dict:
    """Phase-one models wrapped with binding heads and LoRA, as binding starts them."""
    from m3bind.models.binding import BoundModality

    lora = exp.cfg.bind.lora
    bound = {}
    for index, modality in enumerate(modalities):
        module = BoundModality(exp.load_phase_one(modality), exp.cfg.shared_dim, seed=exp.cfg.seed + index)
        module.prepare_for_binding(lora.r, lora.alpha, lora.dropout, text=lora.text, image=lora.image)
        bound[modality] = module
    return bound


def save_bound(bound: dict, directory: Path, exp: Experiment) -> Path:
    """The binding result: trainable tensors (LoRA + heads) as safetensors, settings as JSON."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"{m}.{name}": p.detach().cpu().contiguous() for m, module in bound.items()
               for name, p in module.named_parameters() if p.requires_grad}
    save_file(tensors, directory / "adapters.safetensors")
    (directory / "bound.json").write_text(json.dumps({
        "modalities": list(bound), "shared_dim": exp.cfg.shared_dim,
        "lora": exp.cfg.bind.lora.model_dump(), "format": 1}, indent=2))
    return directory


def load_bound(exp: Experiment, directory: Path | None = None) -> dict:
    """Rebuild the bound modalities written by :func:`save_bound`."""
    from safetensors.torch import load_file

    from m3bind.errors import CheckpointError

    directory = directory or bind_dir(exp) / "model"
    meta_path = directory / "bound.json"
    if not meta_path.exists():
        raise CheckpointError(f"no bound model at {directory}; run `m3bind bind` first")
    meta = json.loads(meta_path.read_text())
    bound = prepare_bound(exp, meta["modalities"])
    tensors = load_file(directory / "adapters.safetensors")
    for m, module in bound.items():
        own = {k[len(m) + 1:]: v for k, v in tensors.items() if k.startswith(m + ".")}
        expected = {name for name, p in module.named_parameters() if p.requires_grad}
        if set(own) != expected:
            raise CheckpointError(f"{directory / 'adapters.safetensors'}: {m} tensors do not fit; missing "
                                  f"{sorted(expected - set(own))[:5]}, unexpected {sorted(set(own) - expected)[:5]}")
        module.load_state_dict(own, strict=False)
    return bound


def heldout_texts(exp: Experiment, modalities: Sequence[str], per_modality: int = 32) -> list[str]:
    """Validation texts from every corpus (never trained on) for the text-agreement metric."""
    texts = []
    for m in modalities:
        val = exp.manifest(m).split("val").texts()
        texts.extend(val[:per_modality])
    return texts


@torch.no_grad()
def paired_test_embeddings(exp: Experiment, encoders: dict) -> dict:
    """{modality: (image embeddings, patient ids, concept sets)} on the paired test set, for each
    modality that has an encoder (``encode_image`` callables) and a paired manifest."""
    from m3bind.data.manifest import parse_labels

    cache = {}
    for m, encode_image in encoders.items():
        if m not in exp.cfg.paired_manifests:
            continue
        studies = exp.studies(m, "test", paired=True)
        table = exp.paired_manifest(m).split("test").table
        concepts = [frozenset(parse_labels(table.at[row - 1, "concepts"])) if "concepts" in table else frozenset()
                    for row in studies.rows]
        cache[m] = (embed_images(encode_image, studies.images), studies.patient_ids, concepts)
    return cache


def pair_scores(exp: Experiment, cache: dict, pairs: Sequence[tuple[str, str]]) -> dict:
    """Recall@K, concept precision@K and concept AUC for each (query, gallery) pair in ``cache``."""
    from m3bind.eval.retrieval import retrieval_scores

    # A concept counts for a pair only if both modalities can show it (cardiomegaly for X-ray and
    # ECG, but not an effusion that only X-ray sees).
    visible = {m: frozenset().union(*concepts) for m, (_, _, concepts) in cache.items()}
    results = {}
    for query, gallery in pairs:
        if query in cache and gallery in cache:
            q, g = cache[query], cache[gallery]
            shared = visible[query] & visible[gallery]
            results[f"{query}->{gallery}"] = retrieval_scores(q[0], g[0], q[1], g[1], [c & shared for c in q[2]],
                                                              [c & shared for c in g[2]], exp.cfg.eval.recall_at)
    return results


def paired_retrieval(exp: Experiment, bound: dict, pairs: Sequence[tuple[str, str]]) -> dict:
    """Image-image retrieval on the paired test set in the shared space of ``bound``."""
    for view in bound.values():
        view.eval()
    wanted = {m for pair in pairs for m in pair} & set(bound)
    return pair_scores(exp, paired_test_embeddings(exp, {m: bound[m].encode_image for m in wanted}), pairs)


# Random head draws averaged for the unbound retrieval baseline (see unbound_retrieval).
UNBOUND_HEAD_DRAWS = 10


@torch.no_grad()
def unbound_retrieval(exp: Experiment, unbound: dict, pairs: Sequence[tuple[str, str]],
                      draws: int = UNBOUND_HEAD_DRAWS) -> dict:
    """Retrieval between the phase-one models, averaged over ``draws`` random head draws.

    Before binding the spaces are unrelated: comparing them needs some map into one space, and
    with random orthogonal heads every score is a random variable whose mean is chance (flipping
    one head's sign turns a concept AUC a into 1 - a). One draw can land far from it either way,
    so the baseline is the mean over draws, with the spread of the concept AUC beside it.
    """
    from m3bind.models.heads import BindingHead

    wanted = {m for pair in pairs for m in pair} & set(unbound)
    for m in wanted:
        unbound[m].eval()
    native = paired_test_embeddings(exp, {m: unbound[m].model.encode_image for m in wanted})
    runs = []
    for draw in range(draws):
        cache = {}
        for m, (emb, ids, concepts) in native.items():
            # draw 0 uses the unbound variant's own heads (seed + position in the config)
            seed = exp.cfg.seed + list(unbound).index(m) + 1000 * draw
            head = BindingHead(emb.shape[1], exp.cfg.shared_dim, torch.Generator().manual_seed(seed))
            cache[m] = (head(emb), ids, concepts)
        runs.append(pair_scores(exp, cache, pairs))
    return {pair: _mean_scores([run[pair] for run in runs]) for pair in runs[0]}


def _mean_scores(runs: list[dict]) -> dict:
    """Average retrieval_scores outputs leaf by leaf; adds the draw count and concept-AUC spread."""
    import numpy as np

    def mean(values):
        if isinstance(values[0], dict):
            return {k: mean([v[k] for v in values]) for k in values[0]}
        if values[0] is None or isinstance(values[0], int):
            return values[0]
        return float(np.mean(values))

    out = mean(runs)
    out["head_draws"] = len(runs)
    aucs = [run["concept_auc"] for run in runs if run["concept_auc"] is not None]
    out["concept_auc_std"] = float(np.std(aucs)) if aucs else None
    return out


@torch.no_grad()
def bound_zero_shot(exp: Experiment, bound: dict) -> dict[str, dict]:
    """Zero-shot accuracy in the shared space, each modality with its own bound text encoder."""
    return {m: modality_zero_shot(exp, m, module) for m, module in bound.items()}


RETRIEVAL_PAIRS = (("xray", "ecg"), ("ecg", "xray"), ("xray", "ct"), ("ct", "xray"), ("ct", "ecg"), ("ecg", "ct"))


def run_bind(exp: Experiment, *, resume: bool = False, progress=None, log=print) -> dict:
    """Stage 1 on the configured modalities; writes bind/model and bind/summary.json."""
    from m3bind.models.binding import parameter_report
    from m3bind.train.bind import balance_for, bind_models, text_agreement

    names = exp.cfg.bind.modalities or exp.modalities
    torch.manual_seed(exp.cfg.seed)
    bound = prepare_bound(exp, names)
    train = {m: exp.studies(m, "train") for m in names}
    texts = heldout_texts(exp, names)
    params = parameter_report(bound)
    before = {"text_agreement": text_agreement(bound, texts), "retrieval": unbound_retrieval(exp, bound, RETRIEVAL_PAIRS),
              "zero_shot": bound_zero_shot(exp, bound)}
    log(f"before binding: text agreement {before['text_agreement']:.3f}")
    outcome = bind_models(bound, train, exp.cfg.bind, bind_dir(exp), heldout_texts=texts, seed=exp.cfg.seed,
                          resume=resume, progress=progress)
    save_bound(bound, bind_dir(exp) / "model", exp)
    after = {"text_agreement": text_agreement(bound, texts), "retrieval": paired_retrieval(exp, bound, RETRIEVAL_PAIRS),
             "zero_shot": bound_zero_shot(exp, bound)}
    log(f"after binding: text agreement {after['text_agreement']:.3f}")
    balance = balance_for({m: len(train[m]) for m in names}, exp.cfg.bind)
    summary = {"modalities": names, "steps": outcome.steps_done, "parameters": params,
               "balance": {"probabilities": balance.probabilities, "lr_scales": balance.lr_scales,
                           "loss_weights": balance.loss_weights},
               "before": before, "after": after}
    (bind_dir(exp) / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# --- stage 2: SESKD distillation and export ----------------------------------------------
def model_dir(exp: Experiment) -> Path:
    return exp.out_dir / "model"


class StudentView:
    """Zero-shot with the student: a bound modality's images against the student's texts."""

    def __init__(self, bound_module, student):
        self.bound_module = bound_module
        self.student = student

    def eval(self):
        self.bound_module.eval()
        self.student.eval()
        return self

    def encode_image(self, images):
        return self.bound_module.encode_image(images)

    def encode_texts(self, texts):
        return self.student.encode_texts(texts)


def export_model(bound: dict, student) -> "M3Bind":
    """Merge LoRA into the modality models and assemble the user-facing M3Bind."""
    from m3bind.models.binding import merge_lora
    from m3bind.models.bound import M3Bind

    for module in bound.values():
        merge_lora(module.model)
    return M3Bind({m: b.model for m, b in bound.items()}, {m: b.head for m, b in bound.items()}, student)


def run_distill(exp: Experiment, *, resume: bool = False, progress=None, log=print) -> dict:
    """SESKD on the bound text encoders; writes distill/summary.json and the final model."""
    from m3bind.models.student import build_student
    from m3bind.train.bind import balance_for
    from m3bind.train.distill import distill_student

    bound = load_bound(exp)
    names = list(bound)
    train = {m: exp.studies(m, "train") for m in names}
    corpus = [t for m in names for t in train[m].texts]
    student = build_student(exp.cfg.distill.student, corpus, exp.cfg.shared_dim, seed=exp.cfg.seed,
                            config_dir=exp.config_path.parent if exp.config_path else None)
    probabilities = balance_for({m: len(train[m]) for m in names}, exp.cfg.bind).probabilities
    before_retrieval = paired_retrieval(exp, bound, RETRIEVAL_PAIRS)
    outcome = distill_student(student, bound, train, exp.cfg.distill, exp.out_dir / "distill",
                              probabilities=probabilities, seed=exp.cfg.seed, resume=resume, progress=progress)
    student.eval()
    zero_shot = {m: modality_zero_shot(exp, m, StudentView(bound[m], student)) for m in names}
    after_retrieval = paired_retrieval(exp, bound, RETRIEVAL_PAIRS)
    final = export_model(bound, student)
    final.save_pretrained(model_dir(exp))
    summary = {"steps": outcome.steps_done, "update_heads": exp.cfg.distill.update_heads,
               "student": exp.cfg.distill.student.model_dump(), "zero_shot_student": zero_shot,
               "retrieval_before": before_retrieval, "retrieval_after": after_retrieval,
               "final_losses": outcome.history[-1] if outcome.history else {}}
    (exp.out_dir / "distill" / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    for m, z in zero_shot.items():
        log(f"{m}: zero-shot accuracy with the student text encoder {z['accuracy']:.3f}")
    log(f"bound model saved to {model_dir(exp)}")
    return summary


# --- extending a bound model with a new modality ------------------------------------------
class ModalityView:
    """One modality of an M3Bind, seen through the small interface the evaluations use."""

    def __init__(self, model, modality: str):
        self.model = model
        self.modality = modality

    def eval(self):
        self.model.eval()
        return self

    def encode_image(self, images):
        return self.model.encode_images(self.modality, images)

    def encode_texts(self, texts):
        return self.model.encode_texts(texts)

    def logit_scale(self):
        """The modality model's temperature (used by the presence prompts)."""
        return self.model.models[self.modality].logit_scale()


def run_extend(exp: Experiment, base_dir: Path, modality: str, out_dir: Path, *, resume: bool = False,
               progress=None, log=print) -> dict:
    """Bind ``modality`` (its phase-one model from ``exp``) into the saved model at ``base_dir``."""
    from m3bind.models.binding import BoundModality, merge_lora
    from m3bind.models.bound import M3Bind
    from m3bind.train.extend import extend_with

    base = M3Bind.from_pretrained(base_dir)
    if modality in base.modalities:
        from m3bind.errors import ConfigError

        raise ConfigError(f"{base_dir} already has a '{modality}' model; extend adds a modality it does not have")
    lora = exp.cfg.bind.lora
    new = BoundModality(exp.load_phase_one(modality), base.shared_dim, seed=exp.cfg.seed + 97)
    new.prepare_for_binding(lora.r, lora.alpha, lora.dropout, text=lora.text, image=lora.image)
    train = exp.studies(modality, "train")
    outcome = extend_with(new, base.student, train, exp.cfg.bind, out_dir / "run" , seed=exp.cfg.seed,
                          resume=resume, progress=progress)
    merge_lora(new.model)
    extended = M3Bind({**dict(base.models), modality: new.model}, {**dict(base.heads), modality: new.head},
                      base.student)
    extended.save_pretrained(out_dir / "model")
    views = {m: ModalityView(extended, m) for m in extended.modalities}
    zero_shot = modality_zero_shot(exp, modality, views[modality])
    retrieval = paired_retrieval(exp, views, RETRIEVAL_PAIRS)
    summary = {"modality": modality, "base": str(base_dir), "steps": outcome.steps_done,
               "zero_shot_student": zero_shot, "retrieval": retrieval}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"extended {base_dir} with {modality}; saved to {out_dir / 'model'}")
    return summary
