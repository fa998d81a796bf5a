"""The ``evaluate`` stage: the paper's experiments as one call, every table comparing the
original unbound models, the bound models and the final M3Bind model.

Variants (in table order):
- ``unbound``: the pretrained / published models (the paper's baselines), each with its own text encoder, mapped
  to the shared width by the untrained semi-orthogonal heads binding starts from (an isometry,
  so their own zero-shot and few-shot numbers are exactly the original models').
- ``bound``: after binding, each modality with its own bound text encoder.
- ``m3bind``: the final model: bound image encoders + the SESKD student text encoder.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np
import torch

from m3bind.eval.fewshot import linear_probe
from m3bind.eval.metrics import classification_metrics, multilabel_metrics
from m3bind.eval.prompts import (expert_prompts, naive_prompts, presence_pairs, presence_probabilities,
                                 sampled_prompts)
from m3bind.data.store import take_rows
from m3bind.eval.protocol import (UNBOUND_HEAD_DRAWS, embed_images, embed_texts, heldout_texts, modality_classes,
                                  paired_retrieval, prompt_set_for, retrieval_pairs, unbound_retrieval)
from m3bind.eval.retrieval import retrieval_scores
from m3bind.eval.zeroshot import class_prototypes, single_label_targets
from m3bind.devices import on_main_process
from m3bind.experiment import Experiment
from m3bind.stages.artifacts import bind_dir, load_bound, model_dir

SAMPLED_PROMPTS = 10  # prompts per class for the sampled (CheXpert 5x200 style) protocol

VARIANTS = {
    "unbound": "pretrained models, each with its own text encoder (the paper's baselines)",
    "bound": "after binding, each modality with its own bound text encoder",
    "m3bind": "final model: bound image encoders + the SESKD student text encoder",
}


def load_variants(exp: Experiment, names: Sequence[str]) -> dict[str, dict]:
    """{variant: {modality: encoder view}} for the variants whose files exist."""
    from m3bind.models.binding import BoundModality
    from m3bind.models.bound import M3Bind

    unbound = {}
    for index, m in enumerate(names):
        unbound[m] = BoundModality(exp.load_unbound(m), exp.cfg.shared_dim, seed=exp.cfg.seed + index).to(exp.device)
    variants = {"unbound": unbound}
    if (bind_dir(exp) / "model" / "bound.json").exists():
        variants["bound"] = load_bound(exp)
    if (model_dir(exp) / "m3bind.json").exists():
        final = M3Bind.from_pretrained(model_dir(exp)).to(exp.device)
        variants["m3bind"] = {m: final.view(m) for m in final.modalities}
    for views in variants.values():
        for view in views.values():
            view.eval()
    return variants


@torch.no_grad()
def zero_shot_tables(exp: Experiment, modality: str, view) -> dict:
    """naive / expert single-label metrics and CT-RATE style presence metrics for one modality."""
    studies = exp.studies(modality, "test")
    classes = modality_classes(exp, modality)
    prompt_set = prompt_set_for(exp, modality)
    keep, targets = single_label_targets(studies.labels, classes)
    image_emb = embed_images(view.encode_image, studies.images)
    out = {}
    styles = {"naive": naive_prompts(prompt_set, classes), "expert": expert_prompts(prompt_set, classes),
              # CheXpert 5x200 / GLoRIA: several prompts sampled per class, their embeddings averaged.
              "sampled": sampled_prompts(prompt_set, classes, n=SAMPLED_PROMPTS, seed=exp.cfg.seed, use_template=True)}
    for style, prompts in styles.items():
        protos = class_prototypes(view.encode_texts, prompts)
        scores = (image_emb[torch.as_tensor(keep)] @ protos.T).numpy()
        out[style] = classification_metrics(targets, scores, classes)
    findings = classes[1:]
    pairs = presence_pairs(prompt_set, findings)
    pos = embed_texts(view.encode_texts, [pairs[f][0] for f in findings])
    neg = embed_texts(view.encode_texts, [pairs[f][1] for f in findings])
    probs = presence_probabilities(image_emb, pos, neg, float(view.logit_scale())).numpy()
    truth = np.array([[f in labels for f in findings] for labels in studies.labels], dtype=int)
    out["presence"] = multilabel_metrics(truth, probs, classes=findings)
    return out


@torch.no_grad()
def few_shot_table(exp: Experiment, modality: str, view) -> dict:
    classes = modality_classes(exp, modality)
    train, test = exp.studies(modality, "train"), exp.studies(modality, "test")
    train_keep, train_y = single_label_targets(train.labels, classes)
    test_keep, test_y = single_label_targets(test.labels, classes)
    train_emb = embed_images(view.encode_image, take_rows(train.images, train_keep)).numpy()
    test_emb = embed_images(view.encode_image, take_rows(test.images, test_keep)).numpy()
    result = linear_probe(train_emb, train_y, test_emb, test_y, exp.cfg.eval.shots, exp.cfg.eval.seeds, classes)
    return {str(k): v for k, v in result.items()}


@torch.no_grad()
def text_to_image(exp: Experiment, modality: str, view) -> dict:
    """Each test report retrieves its own study among the test studies (concept = finding set)."""
    studies = exp.studies(modality, "test")
    text_emb = embed_texts(view.encode_texts, studies.texts)
    image_emb = embed_images(view.encode_image, studies.images)
    ids = [str(r) for r in studies.rows]
    findings = [frozenset(labels) for labels in studies.labels]
    return retrieval_scores(text_emb, image_emb, ids, ids, findings, findings, exp.cfg.eval.recall_at)


@torch.no_grad()
def embedding_sample(exp: Experiment, views: dict) -> dict:
    """Test-split image embeddings of every modality, with modality and finding names (for the map)."""
    embs, modality, concept = [], [], []
    for m, view in views.items():
        studies = exp.studies(m, "test")
        embs.append(embed_images(view.encode_image, studies.images).numpy())
        modality += [m] * len(studies)
        concept += ["|".join(sorted(labels)) or "normal" for labels in studies.labels]
    return {"emb": np.concatenate(embs), "modality": modality, "concept": concept}


def _stringify_k(scores: dict) -> dict:
    """JSON keys for K are strings."""
    return {key: ({str(k): v for k, v in value.items()} if isinstance(value, dict) else value)
            for key, value in scores.items()}


def run_eval(exp: Experiment, *, command: str = "m3bind eval", log=print, few_shot: bool = True) -> dict:
    """Compute every table for the variants available and write the report next to the outputs."""
    import m3bind
    from m3bind.eval.report import write_report
    from m3bind.train.bind import cross_encoder_text_recall, text_agreement

    start = time.perf_counter()
    names = exp.cfg.bind.modalities or exp.modalities
    variants = load_variants(exp, names)
    report: dict = {"m3bind_version": m3bind.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "command": command, "modalities": list(names),
                    "variants": {v: VARIANTS[v] for v in variants}, "zero_shot": {}, "few_shot": {},
                    "retrieval": {}, "text_to_image": {}, "text_space": {}, "notes": []}
    for m in names:
        report["zero_shot"][m] = {v: zero_shot_tables(exp, m, views[m]) for v, views in variants.items() if m in views}
        if few_shot:
            report["few_shot"][m] = {v: few_shot_table(exp, m, views[m]) for v, views in variants.items() if m in views}
        log(f"evaluated {m}")
    texts = heldout_texts(exp, names)
    pairs = retrieval_pairs(exp)
    for v, views in variants.items():
        scores = (unbound_retrieval(exp, views, pairs) if v == "unbound" else paired_retrieval(exp, views, pairs))
        report["retrieval"][v] = {pair: _stringify_k(s) for pair, s in scores.items()}
        report["text_to_image"][v] = {m: _stringify_k(text_to_image(exp, m, views[m])) for m in names if m in views}
        if v != "m3bind":
            report["text_space"][v] = {"agreement": text_agreement(views, texts),
                                       "text_recall": cross_encoder_text_recall(views, texts)}
    report["notes"].append("Image-image retrieval compares two image modalities in the shared space; no paired "
                           "image data was used in training. Concept precision counts a hit when the retrieved "
                           "study shows the same cross-modal concepts as the query (synthetic patients with the "
                           "same findings are interchangeable). Concept AUC asks whether studies showing the "
                           "query's concept rank above those that do not (chance 0.5). The unbound models live in "
                           f"unrelated spaces, so their retrieval is averaged over {UNBOUND_HEAD_DRAWS} random head "
                           "draws (± the spread of the concept AUC).")
    report["notes"].append("Few-shot probes use frozen image embeddings; binding trains text-side LoRA and linear "
                           "heads, so the probes of the three variants differ only through the heads.")
    for split, items in exp.skipped_studies().items():
        report["notes"].append(f"{len(items)} unreadable {split} studies were left out (data.on_error: skip): "
                               + "; ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
    ablations = {path.parent.name: json.loads(path.read_text())
                 for path in sorted((exp.out_dir / "ablations").glob("*/ablation.json"))}
    if ablations:
        report["ablations"] = ablations
    embeddings = {"before": embedding_sample(exp, variants["unbound"])}
    if "m3bind" in variants:
        embeddings["after"] = embedding_sample(exp, variants["m3bind"])
    elif "bound" in variants:
        embeddings["after"] = embedding_sample(exp, variants["bound"])
    report["seconds"] = time.perf_counter() - start
    out_dir = exp.out_dir / "report"
    if on_main_process(lambda: write_report(report, out_dir, embeddings=embeddings)) is not None:
        log(f"report written to {out_dir / 'report.md'}")
    return report
