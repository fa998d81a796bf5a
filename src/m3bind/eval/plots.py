"""PNG figures of an evaluation report: few-shot curves, retrieval bars and a 2D map of the shared space.

One function per figure; each takes plain dicts in the shape ``report.json`` stores (see
``docs/report-schema.md``), writes one PNG and returns its path. :func:`draw_report_figures` draws
every figure of a report folder.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` (rendered by the Agg backend when
saved) rather than through ``pyplot``: pyplot keeps a global registry of open figures and a global
backend choice, and a library must not change either behind its caller's back.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

DPI = 110
PCA_DIMS = 50           # t-SNE runs on the top principal components, the usual denoising step
TSNE_MAX_N = 3000       # above this, t-SNE on 2 CPU cores takes minutes: fall back to PCA
TSNE_PERPLEXITY = 30.0
# 750 iterations instead of scikit-learn's 1000: two maps of 1500 points take about 10 s on 2
# busy cores, and the layout has settled long before (the first 250 are early exaggeration).
TSNE_MAX_ITER = 750
# tab10 without its grey, which would read as the light grey "other"; with more categories than
# colours, the rarest share "other".
CATEGORY_PALETTE = tuple(matplotlib.colormaps["tab10"](i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9))
OTHER_COLOUR = (0.75, 0.75, 0.75, 1.0)


def variant_colours(variants: Sequence[str]) -> dict[str, tuple]:
    """One fixed colour per variant, by its position in table order, so every figure agrees."""
    palette = matplotlib.colormaps["tab10"]
    return {name: palette(i % 10) for i, name in enumerate(variants)}


def plot_fewshot_curves(few_shot: Mapping[str, Mapping[str, Mapping]], path: Path,
                        metric: str = "accuracy") -> Path:
    """Few-shot accuracy against shots per class (log x), one panel per modality (paper Figure 3).

    Args:
        few_shot: ``{modality: {variant: linear-probe result}}``, each result holding
            ``"shots": {k: {"mean": {metric: v}, "std": {metric: v}}}`` (k as str or int).
        path: the PNG to write.
        metric: which probe metric to draw (plotted in %).

    One line per variant with a band of ±1 std over seeds. Raises ``ValueError`` when there is
    nothing to draw.
    """
    modalities = [m for m, by_variant in few_shot.items() if by_variant]
    if not modalities:
        raise ValueError("no few-shot results to plot")
    variants = list(dict.fromkeys(v for m in modalities for v in few_shot[m]))
    colours = variant_colours(variants)
    ncols = min(3, len(modalities))
    nrows = math.ceil(len(modalities) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, modality in zip(axes, modalities):
        all_shots: set[int] = set()
        for variant, result in few_shot[modality].items():
            shots, mean, std = _curve(result, metric)
            if not shots:
                continue
            all_shots.update(shots)
            ax.plot(shots, mean, marker="o", color=colours[variant], label=variant)
            ax.fill_between(shots, mean - std, mean + std, color=colours[variant], alpha=0.2, linewidth=0)
        ax.set_xscale("log")
        if all_shots:
            ticks = sorted(all_shots)
            ax.set_xticks(ticks, [str(k) for k in ticks])
            ax.minorticks_off()
        ax.set_title(modality)
        ax.set_xlabel("shots per class")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes[len(modalities):]:
        ax.set_visible(False)
    return _save(fig, path)


def plot_retrieval_bars(results: Mapping[str, Mapping[str, Mapping]], path: Path,
                        title: str = "Cross-modal retrieval") -> Path:
    """Recall@K as grouped bars, one panel per K, one group per pair, one bar per variant.

    Args:
        results: ``{variant: {pair: retrieval scores}}`` with ``"recall"`` and ``"recall_chance"``
            mappings ``{k: value}``; a ``None`` recall draws no bar.
        path: the PNG to write.
        title: the figure title.

    Each group carries a dashed line at its own chance level (K / gallery size with one study per
    patient), since gallery sizes may differ between pairs. Raises ``ValueError`` when there is nothing to draw.
    """
    variants = [v for v, by_pair in results.items() if by_pair]
    if not variants:
        raise ValueError("no retrieval results to plot")
    pairs = list(dict.fromkeys(p for v in variants for p in results[v]))
    ks = sorted({int(k) for v in variants for scores in results[v].values() for k in scores["recall"]})
    colours = variant_colours(variants)
    width = 0.8 / len(variants)
    panel_width = max(3.5, 0.3 * len(pairs) * len(variants) + 1.0)   # wide enough for every bar
    fig = Figure(figsize=(panel_width * len(ks) + 1.5, 3.8), layout="constrained")
    axes = fig.subplots(1, len(ks), squeeze=False).ravel()
    for ax, k in zip(axes, ks):
        for p_index, pair in enumerate(pairs):
            chance = None
            for v_index, variant in enumerate(variants):
                scores = results[variant].get(pair)
                if scores is None:
                    continue
                value = _lookup_k(scores["recall"], k)
                chance = chance if chance is not None else _lookup_k(scores["recall_chance"], k)
                if value is not None:
                    x = p_index - 0.4 + width * (v_index + 0.5)
                    ax.bar(x, value, width=width * 0.95, color=colours[variant])
            if chance is not None:
                ax.hlines(chance, p_index - 0.45, p_index + 0.45, colors="black", linestyles="dashed", linewidth=1,
                          zorder=3)
        ax.set_xticks(range(len(pairs)), pairs, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"Recall@{k}")
        ax.set_ylim(0, 1.0)
        ax.set_title(f"Recall@{k}")
        ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], color=colours[v], linewidth=6, label=v) for v in variants]
    handles.append(Line2D([], [], color="black", linestyle="dashed", label="chance"))
    axes[-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title)
    return _save(fig, path)


def draw_report_figures(data: Mapping[str, Any], out_dir: Path,
                        embeddings: Mapping[str, Mapping] | None) -> tuple[dict[str, Path], dict[str, str | None]]:
    """Draw every figure of a report folder that has data.

    Args:
        data: a validated report as report.json stores it.
        out_dir: the report folder.
        embeddings: shared-space samples for the 2D map (see :func:`plot_embedding_map`), or None.

    Returns (file name -> path of each drawn figure, file name -> None when drawn or why it was
    skipped).
    """
    variants = list(data["variants"])
    few_shot = {m: {v: by_variant[v] for v in variants if v in by_variant}
                for m, by_variant in data["few_shot"].items() if by_variant}
    text_to_image = {v: {f"text->{m}": s for m, s in data["text_to_image"][v].items()}
                     for v in variants if data["text_to_image"].get(v)}
    retrieval = {v: data["retrieval"][v] for v in variants if data["retrieval"].get(v)}
    jobs = {
        "fewshot.png": (few_shot, "no few-shot results",
                        lambda path: plot_fewshot_curves(few_shot, path)),
        "retrieval.png": (retrieval, "no cross-modal retrieval results",
                          lambda path: plot_retrieval_bars(retrieval, path)),
        "text_to_image.png": (text_to_image, "no text -> image retrieval results",
                              lambda path: plot_retrieval_bars(text_to_image, path, title="Text -> image retrieval")),
        "embedding_map.png": (embeddings, "no embeddings were passed",
                              lambda path: plot_embedding_map(embeddings, path)),
    }
    paths, status = {}, {}
    for name, (has_data, why_not, draw) in jobs.items():
        path = Path(out_dir) / name
        if has_data:
            paths[name] = draw(path)
            status[name] = None
        else:
            # A figure left over from an earlier run in the same folder would contradict the report.
            path.unlink(missing_ok=True)
            status[name] = why_not
    return paths, status


def reduce_to_2d(emb: np.ndarray, tsne_max_n: int = TSNE_MAX_N, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) coordinates of the rows of ``emb`` and the method's name.

    PCA to at most 50 dimensions, then t-SNE (perplexity 30, or less for tiny N, PCA init) when
    N <= ``tsne_max_n``; above it, PCA to 2 dimensions only, to keep the report fast.
    """
    emb = np.asarray(emb, dtype=np.float64)
    n, d = emb.shape
    if n < 3 or d < 2:
        raise ValueError(f"need at least 3 embeddings of 2+ dimensions to draw a map, got {emb.shape}")
    if n > tsne_max_n or n < 6:
        return PCA(n_components=2, random_state=seed).fit_transform(emb), "PCA"
    reduced = PCA(n_components=min(PCA_DIMS, n, d), random_state=seed).fit_transform(emb)
    # t-SNE needs perplexity < N; a third of N keeps every point with a useful neighbourhood.
    perplexity = min(TSNE_PERPLEXITY, (n - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=TSNE_MAX_ITER)
    # One OpenMP thread: t-SNE's many short parallel steps spin-wait, and next to torch's own
    # OpenMP runtime on a busy machine two threads measured 5-8x SLOWER than one (3 s vs 15-25 s
    # for 1500 points). The limit is scoped to this call and restored afterwards.
    with threadpool_limits(limits=1):
        return tsne.fit_transform(reduced), "t-SNE"


def plot_embedding_map(embeddings: Mapping[str, Mapping], path: Path, tsne_max_n: int = TSNE_MAX_N) -> Path:
    """2D maps of the shared space: one row per stage (e.g. before / after binding), coloured by
    modality (left) and by concept (right).

    Args:
        embeddings: ``{stage: {"emb": (N, D) array, "modality": [str] * N, "concept": [str] * N}}``;
            the paper's figure uses ``"before"`` and ``"after"``.
        path: the PNG to write.
        tsne_max_n: largest N reduced with t-SNE; larger samples use PCA only.

    A well-bound space mixes the modalities and groups studies by concept; an unbound one shows
    one island per modality.
    """
    if not embeddings:
        raise ValueError("no embeddings to map")
    stages = {name: _check_stage(name, sample) for name, sample in embeddings.items()}
    fig = Figure(figsize=(11.0, 4.6 * len(stages)), layout="constrained")
    axes = fig.subplots(len(stages), 2, squeeze=False)
    for row, (stage, (emb, modality, concept)) in enumerate(stages.items()):
        coords, method = reduce_to_2d(emb, tsne_max_n)
        for col, (what, labels) in enumerate((("modality", modality), ("concept", concept))):
            ax = axes[row, col]
            _scatter_by_category(ax, coords, labels)
            ax.set_title(f"{stage}: coloured by {what} ({method}, N={len(labels)})", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    return _save(fig, path)


def _curve(result: Mapping, metric: str) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Sorted shots and the mean / std of ``metric`` (in %) where the mean is defined."""
    points = []
    for k, shot in result.get("shots", {}).items():
        mean = shot["mean"].get(metric)
        if mean is not None:
            std = shot.get("std", {}).get(metric)
            points.append((int(k), 100.0 * mean, 100.0 * (std or 0.0)))
    points.sort()
    shots = [p[0] for p in points]
    return shots, np.array([p[1] for p in points]), np.array([p[2] for p in points])


def _lookup_k(mapping: Mapping, k: int):
    """``mapping[k]`` whether the keys are ints or their JSON strings."""
    return mapping.get(str(k), mapping.get(k))


def _check_stage(name: str, sample: Mapping) -> tuple[np.ndarray, list[str], list[str]]:
    missing = [key for key in ("emb", "modality", "concept") if key not in sample]
    if missing:
        raise ValueError(f"embeddings['{name}'] lacks {missing}")
    emb = np.asarray(sample["emb"])
    if emb.ndim != 2:
        raise ValueError(f"embeddings['{name}']['emb'] must be (N, D), got shape {emb.shape}")
    modality, concept = [str(m) for m in sample["modality"]], [str(c) for c in sample["concept"]]
    if not len(modality) == len(concept) == len(emb):
        raise ValueError(f"embeddings['{name}']: {len(emb)} embeddings but {len(modality)} modality "
                         f"and {len(concept)} concept labels")
    return emb, modality, concept


def _scatter_by_category(ax, coords: np.ndarray, labels: Sequence[str]) -> None:
    """Scatter coloured by label; beyond the palette's size the rarest labels become "other"."""
    counts = Counter(labels)
    if len(counts) <= len(CATEGORY_PALETTE):
        shown = sorted(counts)
    else:
        shown = sorted(name for name, _ in counts.most_common(len(CATEGORY_PALETTE) - 1))
    colour_of = dict(zip(shown, CATEGORY_PALETTE))
    labels = np.asarray(labels)
    other = ~np.isin(labels, shown)
    if other.any():
        # Drawn first so the named categories stay visible on top.
        ax.scatter(coords[other, 0], coords[other, 1], s=6, color=OTHER_COLOUR,
                   label=f"other ({len(counts) - len(shown)} kinds)")
    for name in shown:
        rows = labels == name
        ax.scatter(coords[rows, 0], coords[rows, 1], s=6, color=colour_of[name], label=name)
    ax.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
