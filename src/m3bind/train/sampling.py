"""How every training stage draws its data: per-step generators, image-text batches, text batches.

Batches depend only on (seed, step, stream), never on what ran before, so a resumed run sees
exactly the batches an uninterrupted run would, and N processes drawing the same global batch
agree on it without communicating.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step, stream): batches do not depend on history."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 97 + stream)


def sample_batch(n_items: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of one batch without repeats (the whole set when it is smaller than the batch)."""
    return torch.randperm(n_items, generator=generator)[:batch_size]


def sample_text_sources(corpora: Mapping[str, Sequence[str]], probabilities: Mapping[str, float], n: int,
                        generator: torch.Generator) -> list[tuple[str, str]]:
    """n (modality, text) pairs: each from modality m with probability p_m (AMB eq. 3), uniformly
    within that corpus."""
    names = list(corpora)
    probs = torch.tensor([probabilities[m] for m in names], dtype=torch.float64)
    picks = torch.multinomial(probs, n, replacement=True, generator=generator).tolist()
    drawn = []
    for m_index in picks:
        corpus = corpora[names[m_index]]
        drawn.append((names[m_index], corpus[int(torch.randint(len(corpus), (1,), generator=generator))]))
    return drawn


def sample_texts(corpora: Mapping[str, Sequence[str]], probabilities: Mapping[str, float], n: int,
                 generator: torch.Generator) -> list[str]:
    """n texts drawn as :func:`sample_text_sources` draws them."""
    return [text for _, text in sample_text_sources(corpora, probabilities, n, generator)]
