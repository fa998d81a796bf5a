"""Masked-language-model pretraining of a built-in text tower, before pretraining.

Published text encoders (BioClinicalBERT, CXR-BERT) learned clinical language from large note
corpora before their CLIP training; our built-in towers start from random weights and would
otherwise only ever see their own modality's few hundred reports. A short BERT-style MLM pass
over the reports of ALL modalities (a stand-in for such a note corpus; text only, no images)
gives every tower the same kind of language knowledge while each keeps its own tokenizer and
weights. Measured effect on the demo (docs/findings.md): zero-shot of the pretrained models goes
up markedly for CT and retina.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from m3bind.train.sampling import step_generator


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, tokenizer, generator: torch.Generator,
                probability: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (simplified: every chosen token becomes [MASK]); returns (masked ids, labels)."""
    special = (input_ids == tokenizer.cls_token_id) | (input_ids == tokenizer.sep_token_id) | (attention_mask == 0)
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    masked = input_ids.clone()
    masked[chosen] = tokenizer.mask_token_id
    return masked, labels


def mlm_pretrain(model, corpus: Sequence[str], steps: int, batch_size: int = 32, lr: float = 1e-3,
                 seed: int = 0, progress=None) -> list[float]:
    """Train ``model.text_encoder.bert`` (a built-in model) with MLM on ``corpus``; returns the losses.

    Deterministic given ``seed`` (head init and dropout draw from a forked, seeded RNG, so the
    caller's random state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _mlm_steps(model, corpus, steps, batch_size, lr, seed, progress)


def _mlm_steps(model, corpus, steps, batch_size, lr, seed, progress) -> list[float]:
    bert = model.text_encoder.bert
    head = nn.Linear(bert.config.hidden_size, bert.config.vocab_size).to(model.device)
    optimizer = torch.optim.AdamW(list(bert.parameters()) + list(head.parameters()), lr=lr)
    task = progress.add_task(f"text MLM {model.modality}", total=steps) if progress else None
    losses = []
    bert.train()
    for step in range(steps):
        generator = step_generator(seed, step, 101)
        index = torch.randint(len(corpus), (batch_size,), generator=generator)
        tokens = model.tokenize([corpus[i] for i in index.tolist()])
        masked, labels = mask_tokens(tokens["input_ids"], tokens["attention_mask"], model.tokenizer, generator)
        hidden = bert(input_ids=masked.to(model.device),
                      attention_mask=tokens["attention_mask"].to(model.device)).last_hidden_state
        logits = head(hidden)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.to(model.device).reshape(-1),
                                           ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(task, completed=step + 1)
    return losses
