"""report.md: the numbers of a validated report as tables laid out like the paper's, with links
to the figures. Only documented fields are shown; extra leaf keys stay in report.json alone.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from m3bind.eval.report_schema import (AblationRow, ClassificationScores, FewShotResult, Report, RetrievalScores,
                                       ZeroShotEntry)

MISSING = "–"      # printed for a null (undefined or not measured) number
CHECK = "✓"
AUC_CHANCE = 0.5
# Figure file name -> its heading in report.md, in the order the figures are listed.
FIGURE_TITLES = {
    "fewshot.png": "Few-shot curves (paper Figure 3)",
    "retrieval.png": "Cross-modal retrieval, Recall@K",
    "text_to_image.png": "Text -> image retrieval, Recall@K",
    "embedding_map.png": "2D map of the shared space, before / after binding",
}


def fmt_number(value: float | None, digits: int = 3) -> str:
    """'0.352' (fixed decimals), or '–' for a null."""
    return MISSING if value is None else f"{value:.{digits}f}"


def fmt_ci(value: float | None, ci: Sequence[float] | None, digits: int = 3) -> str:
    """'0.512 (0.441–0.580)': a number with its interval; the number alone without one."""
    if value is None or ci is None:
        return fmt_number(value, digits)
    return f"{fmt_number(value, digits)} ({fmt_number(ci[0], digits)}–{fmt_number(ci[1], digits)})"


def _extra(model: Any, key: str) -> Any:
    """An extra (undeclared) key of a leaf model, e.g. an interval, or None."""
    return (getattr(model, "model_extra", None) or {}).get(key)


def fmt_percent(mean: float | None, std: float | None = None, digits: int = 1) -> str:
    """A fraction as a percentage with its std: '85.3 ± 1.2', '85.3' without std, '–' for a null."""
    if mean is None:
        return MISSING
    text = f"{100.0 * mean:.{digits}f}"
    return text if std is None else f"{text} ± {100.0 * std:.{digits}f}"


def fmt_duration(seconds: float) -> str:
    """'42.0 s', '3 min 05 s', '1 h 02 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub markdown table; '|' inside a cell is escaped so it cannot split the cell."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def _k_values(mappings: Sequence[Mapping[str, Any]]) -> list[str]:
    """The K (or shot) keys present in any of ``mappings``, in numeric order."""
    return sorted({k for m in mappings for k in m}, key=int)


def _first(values) -> Any:
    """The first non-None value, or None."""
    return next((v for v in values if v is not None), None)


def _header_section(report: Report) -> list[str]:
    return [
        "# M3Bind evaluation report",
        "",
        f"- m3bind version: {report.m3bind_version}",
        f"- created: {report.created}",
        f"- command: `{report.command}`",
        f"- run time: {fmt_duration(report.seconds)}",
        f"- modalities: {', '.join(report.modalities)}",
        "",
        "**How to read.** Numbers are fractions in [0, 1] except few-shot accuracies, which are in %. "
        f"`{MISSING}` marks a number that is undefined or was not measured. Tables have a *chance* row where "
        "the chance level is known: "
        "zero-shot accuracy and ACA 1/C for C classes, AUC 0.5, Recall@K = K / gallery size (computed exactly "
        "when a patient has several gallery studies), concept precision = the expected precision of a random "
        "ranking.",
        "",
        "## Compared models",
        "",
        *md_table(["variant", "what it is"], [[name, text] for name, text in report.variants.items()]),
    ]


def _zero_shot_section(report: Report) -> list[str]:
    lines = ["## Zero-shot classification (Table 1 style)", ""]
    if not report.zero_shot:
        return lines + ["_No zero-shot results in this run._"]
    lines += ["Naive prompts (one per class) and expert-knowledge prompt ensembles (FLAIR's "
              "π_naive / π_EK); F1 and precision are macro averages; ACA is the average class accuracy.", ""]
    protocol = report.protocol or {}
    if protocol.get("prototype_rule"):
        lines += [f"Class prototypes: '{protocol['prototype_rule']}' ({protocol.get('prototype_rule_description', '')}), "
                  f"chosen on the {protocol.get('tuning_split', 'val')} splits; numbers on the "
                  f"{protocol.get('report_split', 'test')} splits, with 95% bootstrap intervals in brackets.", ""]
    header = ["variant", "naive acc", "naive F1", "naive prec", "naive AUC",
              "expert acc", "expert F1", "expert prec", "expert AUC", "expert ACA"]
    for modality in _ordered(report.zero_shot, report.modalities):
        entries = _in_variant_order(report.zero_shot[modality], report.variants)
        if not entries:
            lines += [f"### {modality}", "", "_Not measured (see the notes)._", ""]
            continue
        rows = []
        for variant, entry in entries:
            naive, expert = entry.naive, entry.expert
            rows.append([variant, *_classification_cells(naive, with_aca=False),
                         *_classification_cells(expert, with_aca=True)])
        chance = _first(s.chance for _, e in entries for s in (e.naive, e.expert) if s is not None)
        rows.append(["*chance*", fmt_number(chance), MISSING, MISSING, fmt_number(AUC_CHANCE),
                     fmt_number(chance), MISSING, MISSING, fmt_number(AUC_CHANCE), fmt_number(chance)])
        lines += [f"### {modality}", "", *md_table(header, rows), ""]
        lines += _zero_shot_sizes(entries)
        sampled = [(v, e.sampled) for v, e in entries if e.sampled is not None]
        if sampled:
            lines += [f"Sampled prompts ({modality}, CheXpert 5x200 style: prompts sampled per class from "
                      "attribute combinations or descriptions, embeddings averaged):", ""]
            rows = [[v, fmt_number(c.accuracy), fmt_number(c.f1_macro), fmt_number(c.auc_macro), fmt_number(c.aca)]
                    for v, c in sampled]
            lines += md_table(["variant", "acc", "F1", "AUC", "ACA"], rows) + [""]
        by_rule = [(v, e.expert_by_rule) for v, e in entries if e.expert_by_rule]
        if by_rule:
            rules = list(dict.fromkeys(r for _, table in by_rule for r in table))
            lines += [f"Expert-prompt accuracy ({modality}) under every prototype rule (test split; the tables "
                      "above use the one chosen on validation):", ""]
            rows = [[v, *(fmt_number(table[r].accuracy) if table.get(r) is not None else MISSING for r in rules)]
                    for v, table in by_rule]
            lines += md_table(["variant", *rules], rows) + [""]
        presence = [(v, e.presence) for v, e in entries if e.presence is not None]
        if presence:
            lines += [f"Presence ({modality}, CT-RATE style \"<finding> is present.\" vs \"... is not present.\", "
                      "one yes/no decision per finding, macro averages):", ""]
            rows = [[v, fmt_number(p.auc_macro), fmt_number(p.f1_macro), fmt_number(p.accuracy_macro),
                     fmt_number(p.precision_macro)] for v, p in presence]
            rows.append(["*chance*", fmt_number(AUC_CHANCE), MISSING, MISSING, MISSING])
            lines += md_table(["variant", "macro AUC", "macro F1", "accuracy", "precision"], rows) + [""]
    return lines


def _classification_cells(scores: ClassificationScores | None, with_aca: bool) -> list[str]:
    if scores is None:
        return [MISSING] * (5 if with_aca else 4)
    cells = [fmt_ci(scores.accuracy, _extra(scores, "accuracy_ci")), fmt_number(scores.f1_macro),
             fmt_number(scores.precision_macro), fmt_ci(scores.auc_macro, _extra(scores, "auc_macro_ci"))]
    return (cells + [fmt_number(scores.aca)]) if with_aca else cells


def _zero_shot_sizes(entries: list[tuple[str, ZeroShotEntry]]) -> list[str]:
    """One line with the test size, the classes and the always-majority accuracy, where known."""
    scores = [s for _, e in entries for s in (e.naive, e.expert) if s is not None]
    parts = []
    n = _first(s.n for s in scores)
    classes = _first(s.classes for s in scores)
    majority = _first(s.majority_rate for s in scores)
    # Presence scores every study; the classification tables only single-finding ones.
    total = _first(e.presence.n for _, e in entries if e.presence is not None)
    if n is not None:
        parts.append(f"{n} test studies" + (f" of {total} (the {total - n} with several findings are scored only "
                                            f"in the presence table)" if total and total > n else ""))
    if classes:
        parts.append(f"{len(classes)} classes ({', '.join(classes)})")
    if majority is not None:
        parts.append(f"always answering the most frequent class scores {fmt_number(majority)}")
    return [f"_{'; '.join(parts)}._", ""] if parts else []


def _few_shot_section(report: Report) -> list[str]:
    lines = ["## Few-shot linear probes (Table 2 style)", ""]
    modalities = [m for m in _ordered(report.few_shot, report.modalities) if report.few_shot[m]]
    if not modalities:
        return lines + ["_No few-shot results in this run._"]
    lines += ["Accuracy in %, mean ± std over seeds, of a logistic-regression probe on frozen image "
              "embeddings trained with k studies per class.", ""]
    for modality in modalities:
        entries = _in_variant_order(report.few_shot[modality], report.variants)
        shots = _k_values([r.shots for _, r in entries])
        rows = [[variant, *(fmt_percent(r.shots[k].mean.get("accuracy"), r.shots[k].std.get("accuracy"))
                            if k in r.shots else MISSING for k in shots)] for variant, r in entries]
        classes = _first(r.classes for _, r in entries)
        if classes:
            rows.append(["*chance*", *[fmt_percent(1.0 / len(classes))] * len(shots)])
        lines += [f"### {modality}", "", *md_table(["variant", *(f"{k}-shot" for k in shots)], rows), ""]
        lines += _few_shot_sizes(entries, shots)
    return lines


def _few_shot_sizes(entries: list[tuple[str, FewShotResult]], shots: list[str]) -> list[str]:
    """Training-set sizes, test size and seeds, and classes that had fewer studies than k."""
    results = [r for _, r in entries]
    sizes = [f"{k}-shot: {_first(r.shots[k].n_train for r in results if k in r.shots)}" for k in shots]
    parts = [f"training studies per seed: {', '.join(sizes)}"]
    n_test = _first(r.n_test for r in results)
    seeds = _first(r.seeds for r in results)
    if n_test is not None:
        parts.append(f"{n_test} test studies")
    if seeds:
        parts.append(f"{len(seeds)} seeds")
    lines = [f"_{'; '.join(parts)}._", ""]
    for k in shots:
        short = _first(r.shots[k].short_classes or None for r in results if k in r.shots)
        if short:
            listed = ", ".join(f"{name} ({count})" for name, count in short.items())
            lines += [f"_{k}-shot: classes with fewer than {k} training studies (all used): {listed}._", ""]
    return lines


def _auc_cell(scores: RetrievalScores) -> str:
    if scores.concept_auc is not None and scores.concept_auc_std is not None:
        return f"{fmt_ci(scores.concept_auc, _extra(scores, 'concept_auc_ci'))} ± {fmt_number(scores.concept_auc_std)}"
    return fmt_ci(scores.concept_auc, _extra(scores, "concept_auc_ci"))


def _variant_label(variant: str) -> str:
    """Table label of a variant; the random-head draws are chance, and say so."""
    return "random_heads (chance)" if variant == "random_heads" else variant


def _retrieval_table(results: Mapping[str, Mapping[str, RetrievalScores]], variants: Mapping[str, str],
                     key_header: str, label: Callable[[str], str] = str) -> list[str]:
    """Rows = (pair or modality) x variant, then a chance row per pair; columns R@K, concept P@K,
    concept AUC."""
    keys = list(dict.fromkeys(key for variant in variants for key in results.get(variant, {})))
    all_scores = [s for by_key in results.values() for s in by_key.values()]
    ks = _k_values([s.recall for s in all_scores] + [s.concept_precision for s in all_scores])
    header = [key_header, "variant", *(f"R@{k}" for k in ks), *(f"concept P@{k}" for k in ks),
              "concept AUC", "queries", "gallery"]
    rows = []
    for key in keys:
        scored = [(v, results[v][key]) for v in variants if key in results.get(v, {})]
        for variant, s in scored:
            recall_ci, precision_ci = _extra(s, "recall_ci") or {}, _extra(s, "concept_precision_ci") or {}
            rows.append([label(key), _variant_label(variant), *(fmt_ci(s.recall.get(k), recall_ci.get(k)) for k in ks),
                         *(fmt_ci(s.concept_precision.get(k), precision_ci.get(k)) for k in ks), _auc_cell(s),
                         str(s.queries), str(s.gallery)])
        first = scored[0][1]
        rows.append([label(key), "*chance*", *(fmt_number(first.recall_chance.get(k)) for k in ks),
                     *(fmt_number(first.concept_chance) for _ in ks),
                     fmt_number(AUC_CHANCE if first.concept_auc is not None else None), str(first.queries), str(first.gallery)])
    return md_table(header, rows)


def _retrieval_section(report: Report) -> list[str]:
    lines = ["## Cross-modal retrieval (Table 3 style)", ""]
    if not any(report.retrieval.values()):
        return lines + ["_No cross-modal retrieval results in this run. Retrieval is scored on a paired set: "
                        "`paired_manifests` in the config, two or more modalities whose manifests share "
                        "`patient_id`s on their val and test rows (and `eval.retrieval_pairs`, when set, "
                        "not empty)._"]
    lines += ["A study of the query modality ranks every gallery study of the other modality by cosine "
              "similarity in the shared space; no paired images were used in training. R@K: the query "
              "patient's own study is in the top K. Concept P@K: share of the top K with the query's "
              "concept set. Baselines: random_heads is chance (random maps of the unbound models, ± the "
              "spread over draws); chaining and control are what a user could do without binding's text "
              "alignment (see the compared models).", ""]
    return lines + _retrieval_table(report.retrieval, report.variants, "pair")


def _text_to_image_section(report: Report) -> list[str]:
    lines = ["## Text -> image retrieval", ""]
    if not any(report.text_to_image.values()):
        return lines + ["_No text -> image retrieval results in this run._"]
    lines += ["Each test report retrieves its own study among the test studies of its modality.", ""]
    return lines + _retrieval_table(report.text_to_image, report.variants, "query -> gallery",
                                    label=lambda modality: f"text->{modality}")


def _text_space_section(report: Report) -> list[str]:
    lines = ["## Agreement between the bound text encoders", ""]
    if not report.text_space:
        return lines + ["_No text-space results in this run._"]
    lines += ["Agreement: mean cosine between every two modalities' text encoders on the same held-out "
              "texts (1 = one shared space). Text recall: share of texts whose nearest neighbour under "
              "another encoder is the same text (chance 1 / number of texts).", ""]
    rows = [[v, fmt_number(s.agreement), fmt_number(s.text_recall)]
            for v, s in _in_variant_order(report.text_space, report.variants)]
    return lines + md_table(["variant", "agreement", "text recall"], rows)


def _protocol_section(report: Report) -> list[str]:
    protocol = report.protocol
    if not protocol:
        return []
    lines = ["## Choices made on validation", ""]
    choice = protocol.get("prototype_choice") or {}
    if choice.get("validation"):
        rules = list(next(iter(choice["validation"].values())))
        rows = [[v, *(fmt_number(table.get(r)) for r in rules)] for v, table in choice["validation"].items()]
        rows.append(["*mean*", *(fmt_number(choice["validation_mean"].get(r)) for r in rules)])
        lines += [f"Prototype rule: mean expert-prompt zero-shot accuracy over the modalities' validation splits; "
                  f"chosen: **{choice['chosen']}**" + ("" if choice.get("agree") else
                                                      " (the variants disagree; see expert_by_rule)") + ".", "",
                  *md_table(["variant", *rules], rows), ""]
    elif choice.get("default"):
        lines += [f"Prototype rule: {protocol['prototype_rule']}, the default ({choice.get('reason', 'not chosen')}).",
                  ""]
    elif protocol.get("prototype_rule"):
        lines += [f"Prototype rule: {protocol['prototype_rule']} (set in the config).", ""]
    chaining = protocol.get("chaining")
    if chaining and not chaining.get("concepts"):
        lines += ["Chaining baseline: not run; no concept is shared by two paired modalities (see the notes).", ""]
    elif chaining:
        table = chaining.get("validation_concept_auc")
        chosen = ("validation mean concept AUC: " + ", ".join(f"{p} {fmt_number(v)}" for p, v in table.items())
                  if table else "not chosen on validation: the paired set has no val rows")
        lines += [f"Chaining baseline: concept prompts {', '.join(chaining.get('concepts', []))}; score profiles "
                  f"**{chaining['chosen']}** ({chosen}).", ""]
    lines += _similarity_lines(protocol.get("retrieval_similarity"))
    boot = protocol.get("bootstrap")
    if boot:
        lines += [f"Intervals: {int(boot['level'] * 100)}% percentile bootstrap, {boot['resamples']} resamples, "
                  f"seed {boot['seed']}.", ""]
    return lines


def _similarity_lines(choices: dict | None) -> list[str]:
    """How each trained variant ranked image-image retrieval, and why."""
    if not choices:
        return []
    parts = [f"{variant} **{choice['chosen']}** ({similarity_reason(choice)})" for variant, choice in choices.items()]
    return ["Image-image retrieval similarity ('centred': the query minus its modality's mean training embedding): "
            + "; ".join(parts) + ".", ""]


def similarity_reason(choice: Mapping[str, Any]) -> str:
    """Why a variant ranks image-image retrieval as it does (the report, and distill's log line)."""
    if choice.get("configured"):
        return "set in the config"
    table = choice.get("validation_concept_auc")
    why = ("validation mean concept AUC " + ", ".join(f"{s} {fmt_number(v)}" for s, v in table.items()) if table
           else "the default: the paired set has no val rows")
    return f"{why}; {choice['reason']}" if choice.get("reason") else why


def _differences_section(report: Report) -> list[str]:
    if not report.differences:
        return []
    lines = ["## Differences, with paired bootstrap intervals", "",
             "Each difference resamples the same test studies or queries for both sides. ✓: the 95% interval "
             "excludes zero. *bound - best baseline* compares with the baseline whose test estimate is highest.", ""]
    rows = [[d.claim, d.where, d.metric, f"{d.a} - {d.b}", fmt_ci(d.difference, d.ci),
             CHECK if d.excludes_zero else ""] for d in report.differences]
    return lines + md_table(["claim", "where", "metric", "variants", "difference (95% CI)", "excludes 0"], rows)


def _student_check_section(report: Report) -> list[str]:
    check = report.student_check
    if not check:
        return []
    cohort = check.get("cohort", {})
    lines = ["## Student check: a second cohort in unseen wording", "",
             f"A second synthetic cohort (seed {cohort.get('seed')}, {cohort.get('report_vocabulary')} report "
             f"vocabulary, {cohort.get('test_patients')} test studies per modality) that no model was trained on. "
             "*image*: image zero-shot with the modality's prompts; *image, new wording*: with the alternative "
             "vocabulary's class descriptions; *reports*: each report classified by its text against those "
             f"descriptions. Bar: the final model within {fmt_number(100 * check.get('bar', 0.05), 0)} points of "
             "the teachers in accuracy and AUC.", ""]
    rows = []
    for modality, measures in check.get("modalities", {}).items():
        for measure, result in measures.items():
            t, f, d = result["teachers"], result["final"], result["difference"]
            rows.append([modality, measure.replace("image_alternative", "image, new wording"),
                         fmt_ci(t["accuracy"], t.get("accuracy_ci")), fmt_ci(f["accuracy"], f.get("accuracy_ci")),
                         fmt_ci(d.get("accuracy"), d.get("accuracy_ci")),
                         fmt_number(t.get("auc_macro")), fmt_number(f.get("auc_macro")),
                         fmt_ci(d.get("auc_macro"), d.get("auc_macro_ci")), CHECK if result["within_bar"] else ""])
    lines += md_table(["modality", "measure", "teachers acc", "final acc", "final - teachers acc", "teachers AUC",
                       "final AUC", "final - teachers AUC", "within bar"], rows)
    worst = check.get("worst_difference")
    lines += ["", f"_Meets the bar everywhere: {'yes' if check.get('meets_bar') else 'no'}; largest shortfall "
                  f"{fmt_number(worst)}._"]
    return lines


def _real_reports_section(report: Report) -> list[str]:
    real = report.real_reports
    if not real:
        return []
    lines = ["## Real clinical language: Indiana University chest X-ray reports", ""]
    if real.get("skipped"):
        return lines + [f"_Skipped: {real['skipped']}_"]
    counts = ", ".join(f"{c} {n}" for c, n in real.get("per_class", {}).items())
    modality = real.get("modality", "xray")
    lines += [f"{real['reports']} real reports ({counts}) whose MeSH major findings name one of the {modality} "
              f"classes, classified by their text embedding against those classes' prototypes "
              f"({real.get('prototypes')}). Source: {real.get('licence')}, read from the installed package.", ""]
    rows = [[v, fmt_ci(r["accuracy"], r.get("accuracy_ci")), fmt_ci(r.get("auc_macro"), r.get("auc_macro_ci")),
             fmt_number(r.get("aca")), fmt_number(r.get("majority_rate"))] for v, r in real.get("variants", {}).items()]
    lines += md_table(["text encoder", "accuracy", "macro AUC", "ACA", "majority class"], rows)
    agreement = real.get("agreement")
    if agreement:
        a, b = agreement["between"]
        lines += ["", f"Agreement of {a} and {b} on the predicted class: {fmt_ci(agreement['share'], agreement.get('share_ci'))}"
                      f" (Cohen's kappa {fmt_number(agreement.get('kappa'))})."]
    return lines


def _ablation_section(report: Report) -> list[str]:
    if not report.ablations:
        return []
    lines = ["## Ablations (Tables 4 and 5 style)", ""]
    for study, rows in report.ablations.items():
        lines += [f"### {study}", ""]
        if not rows:
            lines += ["_No settings in this study._", ""]
            continue
        flag_header, flag_cells = _flag_columns(rows, report.modalities)
        pairs = list(dict.fromkeys(p for r in rows for p in r.retrieval))
        pair_ks = {p: _k_values([r.retrieval[p].recall for r in rows if p in r.retrieval]) for p in pairs}
        zero_shot = [_zero_shot_dict(r) for r in rows]
        zs_columns = list(dict.fromkeys((m, style) for z in zero_shot for m, by_style in z.items() for style in by_style))
        auc_pairs = [p for p in pairs if any(p in r.retrieval and r.retrieval[p].concept_auc is not None for r in rows)]
        header = [*flag_header, *(f"{p} R@{k}" for p in pairs for k in pair_ks[p]),
                  *(f"{p} concept AUC" for p in auc_pairs),
                  *(f"{m} zero-shot {'acc' if style == 'accuracy' else style}" for m, style in zs_columns)]
        table = []
        for row, flags, zs in zip(rows, flag_cells, zero_shot):
            recalls = [fmt_number(row.retrieval[p].recall.get(k)) if p in row.retrieval else MISSING
                       for p in pairs for k in pair_ks[p]]
            aucs = [_auc_cell(row.retrieval[p]) if p in row.retrieval else MISSING for p in auc_pairs]
            table.append([*flags, *recalls, *aucs, *(fmt_number(zs.get(m, {}).get(style)) for m, style in zs_columns)])
        lines += md_table(header, table) + [""]
    return lines


def _flag_columns(rows: Sequence[AblationRow], modalities: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Setting flags as columns: a list flag (e.g. modalities) gets a ✓ column per member, a yes/no
    flag one ✓ column, anything else its value."""
    names = list(dict.fromkeys(name for r in rows for name in r.setting))
    header: list[str] = []
    cells: list[list[str]] = [[] for _ in rows]
    for name in names:
        values = [r.setting.get(name) for r in rows]
        if any(isinstance(v, list) for v in values):
            members = [str(m) for v in values if isinstance(v, list) for m in v]
            # Modalities in the report's order first, as the paper's Table 4 does.
            ordered = [m for m in modalities if m in members] + list(dict.fromkeys(m for m in members if m not in modalities))
            header += ordered
            for cell, v in zip(cells, values):
                chosen = {str(m) for m in v} if isinstance(v, list) else set()
                cell += [CHECK if m in chosen else "" for m in ordered]
        elif all(isinstance(v, bool) or v is None for v in values):
            header.append(name)
            for cell, v in zip(cells, values):
                cell.append(CHECK if v else "")
        else:
            header.append(name)
            for cell, v in zip(cells, values):
                cell.append(MISSING if v is None else str(v))
    return header, cells


def _zero_shot_dict(row: AblationRow) -> dict[str, dict[str, float | None]]:
    """An ablation row's zero-shot numbers as modality -> {prompt set: value}; a bare number is accuracy."""
    return {m: (dict(v) if isinstance(v, dict) else {"accuracy": v}) for m, v in row.zero_shot.items()}


def _figures_section(figures: Mapping[str, str | None]) -> list[str]:
    lines = ["## Figures", ""]
    for name, title in FIGURE_TITLES.items():
        reason = figures.get(name)
        if reason is None:
            lines += [f"### {title}", "", f"![{title}]({name})", ""]
        else:
            lines += [f"- {title}: skipped ({reason}).", ""]
    return lines


def _notes_section(report: Report) -> list[str]:
    if not report.notes:
        return []
    return ["## Notes", "", *(f"- {note}" for note in report.notes)]


def _ordered(mapping: Mapping[str, Any], order: Sequence[str]) -> list[str]:
    """The keys of ``mapping`` in ``order``."""
    return [name for name in order if name in mapping]


def _in_variant_order(mapping: Mapping[str, Any], variants: Mapping[str, str]) -> list[tuple[str, Any]]:
    """(variant, value) pairs in table order; variants missing from ``mapping`` are left out."""
    return [(v, mapping[v]) for v in variants if v in mapping]


def render_markdown(report: Report, figures: Mapping[str, str | None]) -> str:
    """report.md for a validated report.

    ``figures``: PNG file name -> ``None`` when it was drawn, or the reason it was skipped.
    """
    sections = [_header_section(report), _protocol_section(report), _zero_shot_section(report),
                _few_shot_section(report), _retrieval_section(report), _differences_section(report),
                _text_to_image_section(report), _text_space_section(report), _student_check_section(report),
                _real_reports_section(report), _ablation_section(report), _figures_section(figures),
                _notes_section(report)]
    lines: list[str] = []
    for section in sections:
        while section and not section[-1]:     # one blank line between sections, not two
            section = section[:-1]
        if section:
            lines += [*section, ""]
    return "\n".join(lines).rstrip() + "\n"
