"""The `m3bind` command line (typer + rich).

Each command is a thin layer over the Python API: parse options, call one library function,
print a summary. Library errors (M3BindError) are shown as one clear line, never a traceback.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from m3bind.output import friendly_errors as friendly_errors_on
from m3bind.output import progress_display, quiet_libraries

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="m3bind: bind medical CLIP models of many modalities into one embedding space through text.")
console = Console()
# Every command reports errors as one line (see m3bind.output.friendly_errors).
friendly_errors = friendly_errors_on(console)


@app.callback()
def main(ctx: typer.Context,
         debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails.")) -> None:
    ctx.obj = {"debug": debug}


def log_line(message: str) -> None:
    """A stage's progress message: one line, never wrapped (logs are read with grep)."""
    console.print(message, soft_wrap=True)


def progress_bar():
    """Progress for a long command (live bars in a terminal, plain lines elsewhere)."""
    quiet_libraries()
    return progress_display(console)


def cohort_progress(bar, patients: int):
    """The cohort writer's ``progress(done, total)`` callback, shown on ``bar``."""
    task = bar.add_task(f"cohort ({patients} patients)", total=None)

    def on_progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)
    return on_progress


def _print_cohort_summary(out: Path) -> None:
    import json

    info = json.loads((out / "cohort.json").read_text())
    table = Table(title=f"synthetic cohort in {out}")
    table.add_column("modality")
    for split in ("train", "val", "test"):
        table.add_column(split, justify="right")
    counts = info["counts"]
    for modality, by_split in counts.items():
        table.add_row(modality, *(str(by_split.get(s, 0)) for s in ("train", "val", "test")))
    console.print(table)


@app.command()
@friendly_errors
def cohort(out: Path = typer.Option(Path("m3bind-demo/cohort"), help="Folder to write the cohort into."),
           patients: int = typer.Option(2000, min=10, help="Number of patients (size scales with it)."),
           seed: int = typer.Option(0, help="Random seed; the same seed gives the same cohort."),
           workers: int = typer.Option(2, min=1, help="Processes used for rendering."),
           preview: bool = typer.Option(False, "--preview", help="Also write preview.png, a contact sheet."),
           ) -> None:
    """Generate the built-in synthetic five-modality cohort (X-ray DICOM, CT NIfTI, retina PNG,
    pathology JPEG, ECG WFDB) with reports, manifests and a paired cross-modal test set."""
    from m3bind.cohort import generate_cohort

    start = time.perf_counter()
    with progress_bar() as bar:
        generate_cohort(out, n_patients=patients, seed=seed, workers=workers, progress=cohort_progress(bar, patients))
    _print_cohort_summary(out)
    if preview:
        from m3bind.cohort import write_preview

        png = write_preview(out, out / "preview.png")
        console.print(f"preview: {png}")
    console.print(f"cohort written to {out} in {time.perf_counter() - start:.1f} s")


@app.command("config")
@friendly_errors
def config_command(path: Optional[Path] = typer.Argument(None, help="A YAML config to validate."),
                   reference: bool = typer.Option(False, "--reference", help="Print every key with its default."),
                   data: bool = typer.Option(True, "--data/--no-data",
                                             help="Also read every manifest (rows, splits, that each study "
                                                  "file exists) and decode its first study."),
                   ) -> None:
    """Validate an experiment config (and its manifests), or print the config reference."""
    from m3bind.config import config_reference, load_config

    if reference or path is None:
        table = Table(title="config reference")
        for column in ("key", "default", "description"):
            table.add_column(column)
        for key, default, description in config_reference():
            table.add_row(key, default, description)
        console.print(table)
    if path is not None:
        cfg = load_config(path)
        if data:
            _print_manifests(path)
        console.print(f"[green]{path}: valid[/] ({len(cfg.modalities)} modalities: {', '.join(cfg.modalities)}; "
                      f"defaults of the {cfg.resolved_recipe} recipe for the keys it leaves out)")
        builtin = [m for m, spec in cfg.modalities.items() if spec.model.type == "builtin" and spec.model.path is None]
        if builtin:
            console.print("built-in text towers: " + ", ".join(f"{m} {TEXT_BACKBONES[cfg.text_backbone(m)]}"
                                                               for m in builtin))
        if cfg.distill.student.type == "builtin":
            console.print(f"student: built-in, {TEXT_BACKBONES[cfg.distill.student.backbone]}")


TEXT_BACKBONES = {"minilm": "frozen all-MiniLM-L6-v2 + trainable layers", "scratch": "small BERT from scratch"}


def _print_manifests(config: Path) -> None:
    """Read every manifest of the config (a bad row or a missing file stops here, named) and show
    what each holds, so a long run is not the first to find out."""
    from m3bind.data.datasets import load_item
    from m3bind.data.transforms import build_transform
    from m3bind.eval.protocol import check_paired_set, modality_classes
    from m3bind.experiment import Experiment

    exp = Experiment.from_file(config)
    check_paired_set(exp)  # what `m3bind run` refuses before training, refused here too
    table = Table(title="manifests")
    for column in ("modality", "set", "train", "val", "test", "patients", "classes", "first study"):
        table.add_column(column, overflow="fold")
    sources = [(m, "training", exp.manifest) for m in exp.modalities]
    sources += [(m, "paired", exp.paired_manifest) for m in exp.cfg.paired_manifests]
    for modality, kind, read in sources:
        manifest = read(modality)
        rows = manifest.table
        counts = rows["split"].value_counts()
        # Decoding one study through the model's preprocessing finds an unreadable format or a
        # preprocessing mismatch (lead count, channels) in seconds rather than at training.
        first = load_item(manifest, 0, build_transform(modality, exp.preprocess(modality)), exp.cfg.data.read_limits)
        patients = rows["patient_id"][rows["patient_id"] != ""].nunique()
        classes = modality_classes(exp, modality)[1:] if kind == "training" else []
        shown = ", ".join(classes[:6]) + (f" (+{len(classes) - 6})" if len(classes) > 6 else "")
        table.add_row(modality, kind, *(str(int(counts.get(split, 0))) for split in ("train", "val", "test")),
                      str(patients), shown if kind == "training" else "", "x".join(map(str, first.shape)))
    console.print(table)
    for modality in exp.modalities:
        joined = [name for name in exp.manifest(modality).label_names() if any(sep in name for sep in ",;")]
        if joined:
            console.print(f"[yellow]note:[/] {modality}: {len(joined)} classes hold ',' or ';' (e.g. "
                          f"'{joined[0]}'); findings are separated by '|' in a labels cell, so each such cell "
                          "is one class")
    _print_unused_rows(exp)
    _print_prompt_coverage(exp)


def _print_unused_rows(exp) -> None:
    """A table shared by several modalities (a 'modality' column) may hold rows of a modality the
    config does not name; they are read by nobody, so say so rather than leave them out silently."""
    from m3bind.data.manifest import read_manifest

    readers: dict = {}
    shared = set()  # files a modality took its rows out of (only these can hold rows nobody reads)
    sources = [(m, exp.manifest) for m in exp.modalities] + [(m, exp.paired_manifest) for m in exp.cfg.paired_manifests]
    for m, read in sources:
        manifest = read(m)
        readers.setdefault(manifest.source.resolve(), set()).add(m.casefold())
        if manifest.source_rows is not None:
            shared.add(manifest.source.resolve())
    for path, names in readers.items():
        if path not in shared:
            continue
        counts = read_manifest(path, check_files=False).table["modality"].str.strip().value_counts()
        unused = {name: int(n) for name, n in counts.items() if name and name.casefold() not in names}
        if len(counts) > 1 and unused:
            listed = ", ".join(f"{n} of '{name}'" for name, n in sorted(unused.items()))
            console.print(f"[yellow]note:[/] {path}: rows not read ({listed}): no modality of the config "
                          f"by that name uses this file")


def _print_prompt_coverage(exp) -> None:
    """Which prompts zero-shot will use for each modality's findings, and which concepts each
    retrieval pair can be scored on: a class spelled unlike any prompt entry (a naive prompt) or
    two manifests without a shared finding show here, before a run, not in its report."""
    from m3bind.eval.prompts import missing_classes
    from m3bind.eval.protocol import (REPORT_SPLIT, concepts_from_column, has_findings, manifest_concepts,
                                      modality_classes, prompt_set_for, prompt_set_origin, retrieval_pairs)

    table = Table(title="zero-shot prompts")
    for column in ("modality", "prompt set", "findings with naive prompts only (no entry in the set)"):
        table.add_column(column, overflow="fold")
    for m in exp.modalities:
        if not has_findings(exp, m):
            table.add_row(m, "-", "no findings: evaluated by retrieval only")
            continue
        origin = prompt_set_origin(exp, m)
        source = {"file": str(exp.cfg.modalities[m].prompts), None: "none (naive prompts)"}.get(
            origin, f"shipped '{origin}'" + (f" (handled like {origin})" if origin != m else ""))
        missing = missing_classes(prompt_set_for(exp, m), modality_classes(exp, m)[1:])
        table.add_row(m, source, ", ".join(missing) or "none")
    console.print(table)
    for m in exp.modalities:
        if exp.manifest(m).read_as_normal:
            console.print(f"{m}: labels read as the normal class (other names of it in the prompt set): "
                          f"{', '.join(exp.manifest(m).read_as_normal)}")
        if exp.manifest(m).other_label_separator:
            console.print(f"{m}: {exp.manifest(m).label_separator_note()}")
    pairs = {tuple(sorted(pair)) for pair in retrieval_pairs(exp)} if exp.cfg.paired_manifests else set()
    if not pairs:
        return
    column = "concepts" if concepts_from_column(exp) else "labels"
    table = Table(title=f"paired concepts on the {REPORT_SPLIT} split (from the '{column}' columns)")
    for name in ("pair", "concepts both can show"):
        table.add_column(name, overflow="fold")
    for a, b in sorted(pairs):
        shared = sorted(manifest_concepts(exp, a, REPORT_SPLIT) & manifest_concepts(exp, b, REPORT_SPLIT))
        table.add_row(f"{a} / {b}", ", ".join(shared) if shared else
                      "none: Recall@K only (a 'concepts' column names cross-modal concepts)")
    console.print(table)


SKIP_BAD = typer.Option(False, "--skip-bad-studies",
                        help="Leave unreadable study files out (counted and listed in the summary) instead of "
                             "stopping; the same as data.on_error: skip in the config.")


def _experiment(config: Path, skip_bad: bool = False):
    from m3bind.experiment import Experiment

    exp = Experiment.from_file(config)
    if skip_bad:
        exp.cfg.data.on_error = "skip"
    return exp


@app.command()
@friendly_errors
def pretrain(config: Path = typer.Argument(..., help="Experiment config (YAML)."),
             modality: Optional[list[str]] = typer.Option(None, "--modality", "-m",
                                                          help="Only these modalities (repeatable)."),
             resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoints."),
             skip_bad: bool = SKIP_BAD,
             ) -> None:
    """Pretrain each built-in modality model on its own image-text pairs (published models skip this)."""
    from m3bind.stages import run_pretrain

    exp = _experiment(config, skip_bad)
    with progress_bar() as bar:
        run_pretrain(exp, modality or None, resume=resume, progress=bar, log=log_line)


@app.command()
@friendly_errors
def bind(config: Path = typer.Argument(..., help="Experiment config (YAML)."),
         resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
         skip_bad: bool = SKIP_BAD,
         ) -> None:
    """Bind: LoRA + heads, per-modality CLIP losses, cross-encoder text alignment, AMB."""
    from m3bind.stages import run_bind

    exp = _experiment(config, skip_bad)
    with progress_bar() as bar:
        summary = run_bind(exp, resume=resume, progress=bar, log=log_line)
    _print_bind_summary(summary)



@app.command()
@friendly_errors
def distill(config: Path = typer.Argument(..., help="Experiment config (YAML)."),
            resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
            skip_bad: bool = SKIP_BAD,
            ) -> None:
    """Distill (SESKD): the bound text encoders into one student; writes the final model."""
    from m3bind.stages import run_distill

    exp = _experiment(config, skip_bad)
    with progress_bar() as bar:
        run_distill(exp, resume=resume, progress=bar, log=log_line)


@app.command("run")
@friendly_errors
def run_all(config: Path = typer.Argument(..., help="Experiment config (YAML)."),
            resume: bool = typer.Option(False, "--resume", help="Continue every stage from its checkpoints."),
            skip_bad: bool = SKIP_BAD,
            ) -> None:
    """Every stage: pretrain (built-in models), bind, distill, evaluate."""
    from m3bind.stages import run_bind, run_distill, run_eval, run_pretrain

    from m3bind.eval.protocol import check_paired_set

    exp = _experiment(config, skip_bad)
    check_paired_set(exp)  # before any training: a paired set that pairs nothing is a data error
    with progress_bar() as bar:
        run_pretrain(exp, resume=resume, progress=bar, log=log_line)
        summary = run_bind(exp, resume=resume, progress=bar, log=log_line)
        run_distill(exp, resume=resume, progress=bar, log=log_line)
    _print_bind_summary(summary)
    _print_report_summary(run_eval(exp, command=f"m3bind run {config}", log=log_line))


@app.command()
@friendly_errors
def extend(config: Path = typer.Argument(..., help="Experiment config naming the new modality's model and data."),
           model: Path = typer.Option(..., "--model", help="The bound model folder to extend."),
           modality: str = typer.Option(..., "--modality", "-m", help="The modality to add."),
           out: Path = typer.Option(..., "--out", help="Folder for the extended model and its summary."),
           resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
           skip_bad: bool = SKIP_BAD,
           ) -> None:
    """Bind a new modality into an existing bound model (its LoRA + head only; the rest stays unchanged)."""
    from m3bind.stages import run_extend

    exp = _experiment(config, skip_bad)
    with progress_bar() as bar:
        run_extend(exp, model, modality, out, resume=resume, progress=bar, log=log_line)


@app.command("eval")
@friendly_errors
def eval_command(config: Path = typer.Argument(..., help="Experiment config (YAML)."),
                 few_shot: bool = typer.Option(True, "--few-shot/--no-few-shot", help="Run linear probes."),
                 skip_bad: bool = SKIP_BAD,
                 ) -> None:
    """Zero-shot, few-shot and cross-modal retrieval for the unbound, bound and final models; writes the report."""
    from m3bind.stages import run_eval

    quiet_libraries()
    exp = _experiment(config, skip_bad)
    report = run_eval(exp, command=f"m3bind eval {config}", log=log_line, few_shot=few_shot)
    _print_report_summary(report)



@app.command()
@friendly_errors
def ablate(config: Path = typer.Argument(..., help="Experiment config (YAML) with pretrain done."),
           study: str = typer.Option("amb_seskd", "--study", help="'subsets' (paper Table 4) or 'amb_seskd' (Table 5)."),
           skip_bad: bool = SKIP_BAD,
           ) -> None:
    """Ablations: modality subsets, or AMB and SESKD on/off; adds an ablation table to the report."""
    from m3bind.stages import run_ablation
    from m3bind.stages.ablate import ablation_path

    exp = _experiment(config, skip_bad)
    with progress_bar() as bar:
        rows = run_ablation(exp, study, progress=bar, log=log_line)
    table = Table(title=f"ablation: {study}")
    table.add_column("setting")
    pairs = sorted({p for r in rows for p in r["retrieval"]})[:3]
    for pair in pairs:
        table.add_column(f"{pair} R@10 / concept P@10", justify="right")
    table.add_column("mean zero-shot acc", justify="right")
    for row in rows:
        setting = ", ".join(f"{k}{'+' if v else '-'}" for k, v in row["setting"].items())
        cells = [f"{_number(row['retrieval'][p]['recall']['10'])} / {_number(row['retrieval'][p]['concept_precision']['10'])}"
                 if p in row["retrieval"] else "–" for p in pairs]
        accs = list(row["zero_shot"].values())
        table.add_row(setting, *cells, f"{sum(accs) / len(accs):.3f}")
    table.caption = (f"zero-shot accuracy with {rows[0]['zero_shot_prompts']} prompts; retrieval by "
                     f"{rows[0].get('retrieval_similarity', 'cosine')} similarity" if rows else None)
    console.print(table)
    console.print(f"written to {ablation_path(exp, study)}")


def _number(value: float | None) -> str:
    """A table cell: three decimals, or '–' for an undefined or unmeasured number."""
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _print_report_summary(report: dict) -> None:
    table = Table(title=f"summary (test splits; zero-shot with expert prompts, "
                        f"{report['protocol']['prototype_rule']} prototypes)")
    table.add_column("metric")
    for variant in report["variants"]:
        table.add_column(variant, justify="right")

    def cells(get):
        values = []
        for variant in report["variants"]:
            try:
                value = get(variant)
            except (KeyError, TypeError):
                value = None
            values.append(_number(value))
        return values

    for m in report["modalities"]:
        table.add_row(f"{m} zero-shot acc", *cells(lambda v: report["zero_shot"][m][v]["expert"]["accuracy"]))
    for pair, unbound in report["retrieval"].get("random_heads", {}).items():
        k = max(unbound["recall"], key=int)
        table.add_row(f"{pair} R@{k} (chance {unbound['recall_chance'][k]:.3f})",
                      *cells(lambda v: report["retrieval"][v][pair]["recall"][k]))
        table.add_row(f"{pair} concept P@{k} (chance {_number(unbound['concept_chance'])})",
                      *cells(lambda v: report["retrieval"][v][pair]["concept_precision"][k]))
        table.add_row(f"{pair} concept AUC (chance 0.500)",
                      *cells(lambda v: report["retrieval"][v][pair].get("concept_auc")))
    console.print(table)


def _print_bind_summary(summary: dict) -> None:
    table = Table(title=f"binding: before -> after (validation splits; zero-shot: {summary['zero_shot_prompts']}; "
                        f"retrieval by {summary.get('diagnostics_similarity', 'cosine')} similarity)")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    table.add_row("text agreement", _number(summary['before']['text_agreement']),
                  _number(summary['after']['text_agreement']))
    for pair, after in summary["after"]["retrieval"].items():
        before = summary["before"]["retrieval"][pair]
        for k, value in after["recall"].items():
            table.add_row(f"{pair} R@{k} (chance {after['recall_chance'][k]:.3f})",
                          f"{before['recall'][k]:.3f}", f"{value:.3f}")
        table.add_row(f"{pair} concept P@5 (chance {_number(after['concept_chance'])})",
                      _number(before["concept_precision"].get(5)), _number(after["concept_precision"].get(5)))
        if after.get("concept_auc") is not None:
            table.add_row(f"{pair} concept AUC (chance 0.500)", f"{before['concept_auc']:.3f}",
                          f"{after['concept_auc']:.3f}")
    for m, after in summary["after"]["zero_shot"].items():
        table.add_row(f"{m} zero-shot acc", _number(summary["before"]["zero_shot"][m]["accuracy"]),
                      _number(after["accuracy"]))
    console.print(table)


@app.command()
@friendly_errors
def demo(out: Path = typer.Option(Path("m3bind-demo"), help="Folder for the cohort, checkpoints and report."),
         patients: int = typer.Option(2000, min=10, help="Cohort size."),
         seed: int = typer.Option(0, help="Random seed of the cohort and of training; seeds 0, 1, 2 give "
                                          "three independent repeats."),
         quick: bool = typer.Option(False, "--quick", help="A small, fast run (CI's integration test)."),
         ) -> None:
    """Run the whole method on the built-in synthetic cohort and write the report."""
    from m3bind.stages.demo import demo_patients, run_demo

    start = time.perf_counter()
    with progress_bar() as bar:
        report = run_demo(out, patients, seed, quick, cohort_progress=cohort_progress(bar, demo_patients(patients, quick)),
                          progress=bar, log=log_line)
    _print_cohort_summary(out / "cohort")
    _print_report_summary(report)
    console.print(f"report: {out / 'report' / 'report.md'}")
    console.print(f"demo finished in {time.perf_counter() - start:.1f} s; outputs in {out}")

def _register_search_commands() -> None:
    from m3bind.search.commands import register

    register(app, console)


_register_search_commands()

if __name__ == "__main__":
    app()
