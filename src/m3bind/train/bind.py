"""Binding (paper eq. 1-6): keep each model's image-text alignment while pulling all
text encoders into one space.

Per step:
  L_total = sum_m w_m L_CLIP^(m)  +  lambda * sum_{m1 != m2} w_m1 w_m2 L_MSE^(m1, m2)
where L_CLIP^(m) is the symmetric CLIP loss on a batch of modality m's own image-text pairs and
L_MSE^(m1, m2) compares what two text encoders make of the SAME texts (each through its own
tokenizer), drawn from all corpora with probabilities p_m. As in the authors' code, L_MSE is
``F.mse_loss`` (mean over texts and dimensions) and each unordered pair counts once; lambda = 10
is tuned for that scale (see ``m3bind.train.losses.embedding_mse``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations
from pathlib import Path

import torch
from torch import Tensor, nn

from m3bind.config import BindConfig
from m3bind.data.datasets import StudySet
from m3bind.models.binding import BoundModality
from m3bind.train.balance import Balance, modality_balance
from m3bind.train.frozen import FrozenImageEmbeddings
from m3bind.train.losses import binding_loss, clip_objective, labels_vary
from m3bind.train.loop import LoopResult, LoopSettings, run_loop
from m3bind.train.sampling import sample_batch, sample_texts, step_generator


@torch.no_grad()
def _text_embeddings(bound: Mapping[str, BoundModality], texts: Sequence[str]) -> dict[str, Tensor]:
    """Each encoder's embeddings of ``texts``, in eval mode (each module's mode is restored)."""
    was_training = {m: b.training for m, b in bound.items()}
    for b in bound.values():
        b.eval()
    embeddings = {m: b.encode_texts(list(texts)) for m, b in bound.items()}
    for m, b in bound.items():
        b.train(was_training[m])
    return embeddings


def _mean_pair_cosine(embeddings: Mapping[str, Tensor]) -> float:
    cosines = [(embeddings[a] * embeddings[b]).sum(-1).mean() for a, b in permutations(embeddings, 2)]
    return float(torch.stack(cosines).mean()) if cosines else 1.0


def _same_text_recall(embeddings: Mapping[str, Tensor]) -> float:
    first = next(iter(embeddings.values()))
    target = torch.arange(len(first), device=first.device)
    hits = [((embeddings[a] @ embeddings[b].T).argmax(1) == target).float().mean()
            for a, b in permutations(embeddings, 2)]
    return float(torch.stack(hits).mean()) if hits else 1.0


def text_space(bound: Mapping[str, BoundModality], texts: Sequence[str]) -> dict[str, float | None]:
    """{"text_agreement", "text_recall"} from one encoding pass (each encoder reads each distinct
    text once); see :func:`text_agreement` and :func:`cross_encoder_text_recall`. Both are None
    (not measured) without texts (no validation rows) or with a single encoder (nothing to agree)."""
    if not texts or len(bound) < 2:
        return {"text_agreement": None, "text_recall": None}
    distinct = list(dict.fromkeys(texts))
    embeddings = _text_embeddings(bound, distinct)
    position = {text: i for i, text in enumerate(distinct)}
    rows = torch.tensor([position[text] for text in texts], device=next(iter(embeddings.values())).device)
    return {"text_agreement": _mean_pair_cosine({m: e[rows] for m, e in embeddings.items()}),
            "text_recall": _same_text_recall(embeddings)}


def text_agreement(bound: Mapping[str, BoundModality], texts: Sequence[str]) -> float | None:
    """Mean cosine between every pair of text encoders on the same texts (1 = identical spaces)."""
    return text_space(bound, texts)["text_agreement"]


def cross_encoder_text_recall(bound: Mapping[str, BoundModality], texts: Sequence[str]) -> float | None:
    """For every pair of encoders, the share of distinct texts whose nearest neighbour under the
    other encoder is the same text. Unlike the mean cosine, this cannot be gamed by collapsing every
    text onto one point; chance is 1 / (number of distinct texts)."""
    return text_space(bound, texts)["text_recall"]


def balance_for(sizes: Mapping[str, int], cfg: BindConfig) -> Balance:
    return modality_balance(sizes, sampling=cfg.balance.sampling, lr_scaling=cfg.balance.lr_scaling,
                            loss_weights=cfg.balance.loss_weights, beta=cfg.balance.beta)


def build_optimizer(bound: Mapping[str, BoundModality], cfg: BindConfig, balance: Balance) -> torch.optim.AdamW:
    """One parameter group per modality with learning rate eta_0 * scale_m (AMB eq. 4)."""
    groups = []
    for m, module in bound.items():
        params = [p for p in module.parameters() if p.requires_grad]
        groups.append({"params": params, "lr": cfg.lr * balance.lr_scales[m], "name": m})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def bind_models(bound: Mapping[str, BoundModality], train: Mapping[str, StudySet], cfg: BindConfig,
                run_dir: Path, *, heldout_texts: Sequence[str], seed: int = 0, resume: bool = False,
                progress=None, stop_after: int | None = None, tensorboard: bool = True,
                image_tables: Path | None = None) -> LoopResult:
    """Bind already LoRA-prepared ``bound`` modules (see BoundModality.prepare_for_binding).
    ``image_tables``: where frozen image embeddings are shared by content between runs
    (:class:`~m3bind.train.frozen.FrozenImageEmbeddings`); default: this run's own folder."""
    from m3bind.devices import process_folder, resolve_mixed_precision, training_accelerator
    from m3bind.errors import ConfigError
    from m3bind.train.distributed import DataParallel

    device = next(iter(bound.values())).model.device
    precision = resolve_mixed_precision(cfg.mixed_precision, device)
    accelerator = training_accelerator(device)
    parallel = DataParallel(accelerator)
    for name in ("image_batch_size", "text_batch_size"):
        if getattr(cfg, name) % parallel.world:
            raise ConfigError(f"bind.{name} ({getattr(cfg, name)}) must be divisible by the number of "
                              f"processes ({parallel.world})")
    names = list(bound)
    sizes = {m: len(train[m]) for m in names}
    balance = balance_for(sizes, cfg)
    container = nn.ModuleDict(dict(bound))
    optimizer = build_optimizer(bound, cfg, balance)
    corpora = {m: train[m].texts for m in names}
    label_aware = {m: cfg.label_aware and labels_vary(train[m].labels) for m in names}
    frozen = {m: FrozenImageEmbeddings(bound[m], train[m].images, directory=process_folder(run_dir / "frozen") / m,
                                       shared=image_tables, source_key=train[m].key)
              for m in names if not cfg.lora.image}

    def encode_images(m: str, index: Tensor) -> Tensor:
        if m in frozen:
            return bound[m].head(frozen[m][index])
        return bound[m].encode_image(train[m].images[index].to(bound[m].model.device))

    def step_fn(step: int) -> dict[str, Tensor]:
        # The lambda = 0 control: the alignment term weighs nothing, so it samples no texts.
        aligned = [] if cfg.lambda_text == 0 else parallel.shard(
            sample_texts(corpora, balance.probabilities, cfg.text_batch_size, step_generator(seed, step, 0)))
        clip_losses: dict[str, Tensor] = {}
        aligned_emb: dict[str, Tensor] = {}
        for stream, m in enumerate(names, start=1):
            full_index = sample_batch(sizes[m], cfg.image_batch_size, step_generator(seed, step, stream))
            index = parallel.shard(full_index)
            image_emb = parallel.gather(encode_images(m, index), len(full_index))
            reports = [train[m].texts[i] for i in index.tolist()]
            # One text-tower pass over its reports and the alignment texts together, not two: a GPU
            # step is bound by kernel launches, not arithmetic (docs/findings.md).
            both = bound[m].encode_texts(reports + aligned)
            text_emb = parallel.gather(both[:len(reports)], len(full_index))
            aligned_emb[m] = both[len(reports):]
            # gather() restores global-batch order, so the labels follow full_index
            labels = [train[m].labels[i] for i in full_index.tolist()] if label_aware[m] else None
            clip_losses[m] = clip_objective(image_emb, text_emb, bound[m].logit_scale(), labels)
        parts = binding_loss(clip_losses, balance.loss_weights, aligned_emb if aligned else {}, cfg.lambda_text)
        if not aligned:
            del parts["text_mse"]
        return {**{f"clip/{m}": loss_m for m, loss_m in clip_losses.items()}, **parts}

    def agreement(step: int) -> dict[str, float]:
        return text_space(bound, heldout_texts)  # restores each module's training mode

    settings = LoopSettings(total_steps=cfg.steps, warmup_steps=cfg.warmup_steps, grad_accum=cfg.grad_accum,
                            checkpoint_every=cfg.checkpoint_every, mixed_precision=precision,
                            description="bind")
    return run_loop(container, optimizer, step_fn, settings, run_dir, accelerator=accelerator, resume=resume,
                    progress=progress, on_checkpoint=agreement if heldout_texts and len(names) > 1 else None,
                    stop_after=stop_after, tensorboard=tensorboard)
